"""Saving, loading and publishing GH-Feat directories on the Hugging Face Hub.

A GH-Feat directory written by :func:`save_ghfeat_directory` serves every loader from one ``model.safetensors``:

* ``AutoModel`` / ``AutoImageProcessor`` / ``pipeline`` after ``import ghfeat_hf``;
* the same with ``trust_remote_code=True`` for users who do not install the package (self-contained module
  files are copied into the directory and named in ``auto_map``);
* :func:`load_backbone` (``AutoBackbone`` semantics, see below);
* timm, through a registered name and the weights file or repo:
  ``timm.create_model("ghfeat_resnet50_256", pretrained=True, pretrained_cfg_overlay=dict(file=<dir>/model.safetensors))``
  (the architecture is read from ``config.json``, see :func:`ghfeat_hf.timm_models.weights_ghfeat_config`).

``config.json`` is a plain transformers configuration. Directories written before version 0.2 also hold timm's
keys (``architecture``, ``pretrained_cfg``, ``model_args``, ...); transformers >= 5.25 reads such a *local*
directory's processor settings from ``config.json``, which [`GHFeatImageProcessor`] answers with the model's own
resolution, so they keep loading unchanged.

transformers 5.x ``AutoBackbone.from_pretrained`` treats any name it cannot find on the Hub as a timm model
name, so local directories and offline caches fail with ``HFValidationError`` / ``OfflineModeIsEnabled``.
:func:`load_backbone` resolves the backbone class from the configuration instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig, PreTrainedModel
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from .configuration_ghfeat import GHFeatConfig
from .errors import UsageError
from .files import restore_default_file_mode
from .model_card import render_model_card, write_provenance
from .model_names import find_model
from .modeling_ghfeat import GHFeatBackbone

PACKAGE_DIR = Path(__file__).resolve().parent
REMOTE_CODE_FILES = (
    "configuration_ghfeat.py",
    "configuration_stylegan.py",
    "image_processing_ghfeat.py",
    "layers.py",
    "modeling_ghfeat.py",
    "modeling_stylegan.py",
)
AUTO_MAP = {
    "AutoConfig": "configuration_ghfeat.GHFeatConfig",
    "AutoModel": "modeling_ghfeat.GHFeatModel",
    "AutoBackbone": "modeling_ghfeat.GHFeatBackbone",
    "AutoImageProcessor": "image_processing_ghfeat.GHFeatImageProcessor",
}
UPLOAD_IGNORE = ["checkpoints/*", "*.partial", "logs/*", "__pycache__/*"]
LINKED_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".h5"}  # staged as hard links by push_to_hub


def _update_json(path: Path, fields: dict[str, Any], remove: tuple[str, ...] = ()) -> None:
    saved = {key: value for key, value in json.loads(path.read_text()).items() if key not in remove}
    path.write_text(json.dumps({**saved, **fields}, indent=2, sort_keys=True) + "\n")


def save_ghfeat_directory(
    model: PreTrainedModel,
    directory: str | Path,
    *,
    processor=None,
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Save a [`GHFeatModel`] with its image processor (default: [`GHFeatImageProcessor`] at the model's
    `image_size` and `num_channels`), remote code and model card."""
    from .image_processing_ghfeat import GHFeatImageProcessor

    size, num_channels = model.config.image_size, model.config.num_channels
    processor = processor or GHFeatImageProcessor(size={"height": size, "width": size}, num_channels=num_channels)
    if getattr(processor, "num_channels", num_channels) != num_channels:
        raise ValueError(f"The processor outputs {processor.num_channels}-channel images, the model reads "
                         f"{num_channels}-channel images.")
    directory = Path(directory)
    model.save_pretrained(directory)
    restore_default_file_mode(directory)
    processor.save_pretrained(directory)
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(PACKAGE_DIR / name, directory / name)
    _update_json(directory / "config.json", {"auto_map": AUTO_MAP})
    # Without a class name in preprocessor_config.json, AutoImageProcessor takes the class from config.json: the
    # installed package's when it is imported, else the directory's own code (auto_map, trust_remote_code=True).
    # Naming it there instead would hide auto_map from remote-code users, and an auto_map there makes pipelines
    # ask for a remote video processor that does not exist.
    _update_json(directory / "preprocessor_config.json", {}, remove=("image_processor_type",))
    if provenance:
        write_provenance(directory, **provenance)
    render_model_card(directory, repo_id=repo_id, metrics=metrics)
    return directory


def save_stylegan_directory(
    model: PreTrainedModel,
    directory: str | Path,
    *,
    provenance: dict[str, Any] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Save a [`StyleGANGenerator`] or [`StyleGANDiscriminator`] with its model card."""
    directory = Path(directory)
    model.save_pretrained(directory)
    restore_default_file_mode(directory)
    if provenance:
        write_provenance(directory, **provenance)
    render_model_card(directory, repo_id=repo_id)
    return directory


def hub_repo_id(text: str) -> str:
    """argparse ``type`` of Hub repo ids (they end up in the model cards' usage snippets)."""
    try:
        validate_repo_id(text)
    except HFValidationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def load_backbone(name_or_path: str | Path, *, trust_remote_code: bool = False, **kwargs: Any) -> PreTrainedModel:
    """``AutoBackbone.from_pretrained`` that also works on local directories and offline Hub caches.

    ``name_or_path`` is a folder, a Hub id or the short name of an embedded model (``"ghfeat-fmnist32"``); any other
    name fails at once with what exists and how to create ``ghfeat-ffhq`` ([`ghfeat_hf.model_names.find_model`]).
    ``out_features`` / ``out_indices`` and the usual ``from_pretrained`` keywords are accepted.
    """
    name_or_path = find_model(name_or_path)
    config_kwargs = {key: kwargs.pop(key) for key in ("out_features", "out_indices") if key in kwargs}
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **config_kwargs)
    if isinstance(config, GHFeatConfig):
        backbone_class = GHFeatBackbone
    elif trust_remote_code and "AutoBackbone" in (getattr(config, "auto_map", None) or {}):
        backbone_class = get_class_from_dynamic_module(config.auto_map["AutoBackbone"], str(name_or_path))
    else:
        raise ValueError(
            f"{name_or_path} holds a {type(config).__name__}, not a GH-Feat model; pass trust_remote_code=True "
            "for a directory whose config.json auto_map names an AutoBackbone."
        )
    return backbone_class.from_pretrained(name_or_path, config=config, **kwargs)


def _stage(directory: Path, staging: Path) -> None:
    """A copy of `directory` in `staging` whose weight files are hard links (no copy of gigabytes) and whose
    text files (cards, JSON) are real copies that can be rewritten without touching the original."""
    for source in directory.rglob("*"):
        target = staging / source.relative_to(directory)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix in LINKED_SUFFIXES:
            try:
                os.link(source, target)
                continue
            except OSError:  # another file system, or links not allowed: copy
                pass
        shutil.copy2(source, target)


def push_to_hub(
    directory: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    metrics: dict[str, Any] | None = None,
    api: HfApi | None = None,
) -> str:
    """Upload a saved GH-Feat or StyleGAN directory (and its sub-directories) to ``repo_id``; returns the commit URL.

    ``directory`` holds a model (``config.json``), model sub-directories (``*/config.json``, e.g. the StyleGAN
    generator and discriminator converted from a ``(G, D, Gs)`` pickle), or both. The model cards are rendered again
    with ``repo_id`` (and the sub-folder) in their usage snippets, and new ``metrics`` go to the top-level card, in a
    staged copy that is uploaded; the local cards and ``metrics.json`` are updated only once the upload succeeded.
    """
    directory = Path(directory)
    subdirectories = sorted(path.parent for path in directory.glob("*/config.json"))
    has_model = (directory / "config.json").exists()
    if not has_model and not subdirectories:
        raise FileNotFoundError(f"{directory} is not a saved model directory (no config.json, nor */config.json).")
    if metrics and not has_model:
        raise UsageError(f"{directory} has no top-level model (config.json) whose card the metrics would go to.")
    nearby = directory.parent if os.access(directory.parent, os.W_OK) else None  # same file system: hard links
    with tempfile.TemporaryDirectory(prefix=f".{directory.name}.push-", dir=nearby) as scratch:
        staging = Path(scratch) / directory.name
        _stage(directory, staging)
        rendered = ([staging] if has_model else []) + [staging / sub.name for sub in subdirectories]
        if has_model:
            render_model_card(staging, repo_id=repo_id, metrics=metrics)
        for sub in subdirectories:
            render_model_card(staging / sub.name, repo_id=repo_id, subfolder=sub.name)
        api = api or HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(staging),
            commit_message=commit_message or f"Upload {directory.name} with ghfeat-hf",
            ignore_patterns=UPLOAD_IGNORE,
            repo_type="model",
        )
        for folder in rendered:  # the upload succeeded: the local cards now describe the pushed model
            local = directory / folder.relative_to(staging)
            for name in ("README.md", "metrics.json"):
                if (folder / name).is_file():
                    shutil.copy2(folder / name, local / name)
    return str(getattr(commit, "commit_url", commit))


__all__ = ["hub_repo_id", "load_backbone", "push_to_hub", "save_ghfeat_directory", "save_stylegan_directory"]
