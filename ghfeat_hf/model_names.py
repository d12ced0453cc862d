"""The names a GH-Feat model goes by, and what to say when a name finds no model.

* ``OFFICIAL_LOCAL_NAME`` (``ghfeat-ffhq``): the folder ``ghfeat convert --pickle ghfeat-encoder-ffhq-256.pkl``
  writes, the converted official FFHQ model. Any loader takes it as a path.
* ``OFFICIAL_HUB_REPO``: the Hub copy of that folder (also the repo of timm's ``ghfeat_resnet50_256.ffhq``).
* the short names of the embedded models (``ghfeat-fmnist32``, [`ghfeat_hf.embedded`]): the command line and the
  project's loaders ([`ghfeat_hf.runtime.load_model`], [`ghfeat_hf.hub.load_backbone`]) take them.

A name that is none of these, nor an existing folder, nor a Hub id (``<org>/<name>``), fails at once, offline, with a
[`ModelNotFoundError`] listing the embedded models, the GH-Feat folders of the current directory and how to create
``ghfeat-ffhq``. :func:`add_load_hints` gives transformers' Auto classes the same message for GH-Feat names.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from .embedded import embedded_model_path, embedded_models
from .errors import UsageError, one_line

OFFICIAL_LOCAL_NAME = "ghfeat-ffhq"
OFFICIAL_HUB_REPO = "ghfeat-hf/ghfeat-ffhq-256"
OFFICIAL_REPOSITORY = "https://github.com/genforce/ghfeat"
OFFICIAL_PICKLE = "ghfeat-encoder-ffhq-256.pkl"
_MAX_CONFIG_BYTES = 2**20  # a config.json looked at while listing folders; a GH-Feat one is ~3 kB


class OfficialPickle(NamedTuple):
    """A released pickle: the folder ``ghfeat convert`` writes by default, and the image domain of its model card."""

    output: str
    domain: str


OFFICIAL_PICKLES = {
    OFFICIAL_PICKLE: OfficialPickle(OFFICIAL_LOCAL_NAME, "FFHQ faces"),
    "ghfeat-encoder-tower-256.pkl": OfficialPickle("ghfeat-tower", "LSUN towers"),
    "ghfeat-encoder-bedroom-256.pkl": OfficialPickle("ghfeat-bedroom", "LSUN bedrooms"),
    "stylegan-ffhq-256.pkl": OfficialPickle("stylegan-ffhq", "FFHQ faces"),
    "stylegan-tower-256.pkl": OfficialPickle("stylegan-tower", "LSUN towers"),
    "stylegan-bedrooms-256.pkl": OfficialPickle("stylegan-bedrooms", "LSUN bedrooms"),
}
"""The pickles the official GH-Feat repository's README links (its "Pre-trained models" table)."""


class ModelNotFoundError(UsageError, OSError):
    """No model under this name. An `OSError`, as transformers' ``from_pretrained`` raises for a missing model, and a
    [`UsageError`] (the command lines exit with status 2)."""


def _name_kind(name: str) -> str:
    """``"path"`` (it reads as a file system path), ``"hub"`` (``<org>/<name>``) or ``"bare"`` (no ``/``)."""
    name = name.rstrip("/\\")
    if name.startswith((".", "/", "~", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "path"
    slashes = name.replace("\\", "/").count("/")
    return "path" if slashes > 1 else "hub" if slashes else "bare"


def _model_type(config_file: str) -> Any:
    """The ``model_type`` of a small JSON ``config.json``; None when it is missing, large or unreadable."""
    try:
        with open(config_file, "rb") as file:
            config = json.loads(file.read(_MAX_CONFIG_BYTES + 1)[:_MAX_CONFIG_BYTES])
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


def local_model_folders(directory: str | os.PathLike = ".") -> list[str]:
    """The sub-folders of ``directory`` holding a GH-Feat model (a ``config.json`` of ``model_type`` ``ghfeat``)."""
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError:
        return []
    return [entry.name for entry in entries
            if entry.is_dir() and _model_type(os.path.join(entry.path, "config.json")) == "ghfeat"]


def how_to_get_models(short_names: bool = True) -> str:
    """What exists and how to create ``ghfeat-ffhq``: the embedded models (by short name, or through
    ``embedded_model_path`` for transformers), the GH-Feat folders here, the official pickle and ``ghfeat convert``."""
    names = embedded_models()
    if short_names or not names:
        embedded = ", ".join(names) or "none"
    else:
        embedded = ", ".join(f"ghfeat_hf.embedded_model_path({name!r})" for name in names)
    folders = ", ".join(local_model_folders()) or "none"
    return (f"Embedded models: {embedded}. GH-Feat model folders in {os.getcwd()}: {folders}. To create "
            f"{OFFICIAL_LOCAL_NAME!r}, download the official encoder pickle {OFFICIAL_PICKLE} (the README of the "
            f"official GH-Feat repository, {OFFICIAL_REPOSITORY}, links the released pickles) and run `ghfeat convert "
            f"--pickle {OFFICIAL_PICKLE}` in this folder; online, the converted model is also on the Hugging Face "
            f"Hub as {OFFICIAL_HUB_REPO!r}.")


def missing_model_message(name: str, cause: BaseException | None = None, short_names: bool = True) -> str:
    """Why ``name`` finds no model (``cause``: the Hub's error, for a Hub id), then :func:`how_to_get_models`."""
    kind = _name_kind(name)
    if kind == "path":
        what = f"model directory {name!r} does not exist."
    elif name in embedded_models() and not short_names:
        what = (f"{name!r} is an embedded model, which transformers loads by path: "
                f"from_pretrained(ghfeat_hf.embedded_model_path({name!r})).")
    elif kind == "bare":
        embedded = ", nor an embedded model" if short_names else ""
        what = (f"no model named {name!r}: it is not a folder in {os.getcwd()}{embedded}, nor (having no '<org>/' "
                "part) a Hub repo id.")
    else:
        why = f": {one_line(cause).rstrip('.')}" if cause is not None else ""
        what = f"{name!r} is not a local folder, and the Hub id could not be loaded{why}."
    return f"{what} {how_to_get_models(short_names)}"


def find_model(name: str | os.PathLike) -> str:
    """Where ``name`` loads from: an existing path as given, an embedded model's short name as its folder, a Hub id
    (``<org>/<name>``) as given. Any other name (a bare name, a path that does not exist) raises a
    [`ModelNotFoundError`] at once, with no network access."""
    name = os.fspath(name)
    if os.path.exists(os.path.expanduser(name)):
        return name
    if name in embedded_models():
        return str(embedded_model_path(name))
    if _name_kind(name) != "hub":
        raise ModelNotFoundError(missing_model_message(name))
    return name


def _is_missing_ghfeat_name(name: Any) -> bool:
    """Whether ``name`` reads as a GH-Feat model's (a part starts with ``ghfeat``: ``ghfeat-ffhq``,
    ``org/ghfeat-ffhq-256``, ``ghfeat-ffhq/stylegan-generator``) and is no path here."""
    if not isinstance(name, (str, os.PathLike)):
        return False
    name = os.fspath(name)
    parts = name.replace("\\", "/").lower().split("/")
    return any(part.startswith("ghfeat") for part in parts) and not os.path.exists(os.path.expanduser(name))


def _with_hint(from_pretrained: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(from_pretrained)
    def wrapper(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)
        except ModelNotFoundError:
            raise  # already explained by an inner Auto class (AutoModel loads its config through AutoConfig)
        except OSError as error:
            if not _is_missing_ghfeat_name(pretrained_model_name_or_path):
                raise
            name = os.fspath(pretrained_model_name_or_path)
            # from None: the message holds what matters of the original (for a Hub id), whose "couldn't connect"
            # would otherwise be printed first; it stays the exception's __context__
            raise ModelNotFoundError(missing_model_message(name, error, short_names=False)) from None

    wrapper.ghfeat_hint = True
    return wrapper


def add_load_hints(*classes: type) -> None:
    """Make ``from_pretrained`` of each class (transformers' Auto classes, the package's models) explain a GH-Feat
    name that finds no model.

    Why a wrapper: transformers 5 and huggingface_hub have no hook for a name that is neither a folder nor a cached or
    reachable repo (``transformers.utils.hub.cached_files`` turns every Hub error into a plain `OSError`, offline
    "We couldn't connect to 'https://huggingface.co'..."), and a bare ``ghfeat-ffhq`` typed in the wrong directory
    gets that connection message. The wrapper is narrow: it only catches an `OSError`, only for a name with a part
    that starts with ``ghfeat`` and that is no existing path, and raises a [`ModelNotFoundError`] (an `OSError`) with
    :func:`missing_model_message` instead (the original stays its ``__context__``). Successful loads and every other
    error are untouched, and the original is still tried first, so a Hub repo of that name loads as before.
    Idempotent.
    """
    for cls in classes:
        method = cls.from_pretrained
        if not getattr(method, "ghfeat_hint", False):
            cls.from_pretrained = classmethod(_with_hint(method.__func__))


__all__ = [
    "OFFICIAL_HUB_REPO",
    "OFFICIAL_LOCAL_NAME",
    "OFFICIAL_PICKLE",
    "OFFICIAL_PICKLES",
    "OFFICIAL_REPOSITORY",
    "ModelNotFoundError",
    "OfficialPickle",
    "add_load_hints",
    "find_model",
    "how_to_get_models",
    "local_model_folders",
    "missing_model_message",
]
