"""The runtime floor every command stands on: which model (name, directory or Hub id) and how it loads, the device,
the dtype and autocast, and the selection of generator layers."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.utils import cached_file

from .configuration_ghfeat import HEAD_NAMES, ghfeat_config_dict
from .embedded import embedded_model_path, embedded_models
from .errors import UsageError, one_line
from .image_processing_ghfeat import GHFeatImageProcessor
from .model_names import ModelNotFoundError, find_model, how_to_get_models, missing_model_message
from .modeling_ghfeat import GHFeatModel
from .modeling_stylegan import StyleGANGenerator
from .strict_loading import CONFIG_NAME, CheckpointError, load_checked_model

MODEL_ENV_VAR = "GHFEAT_MODEL"

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


# ----------------------------------------------------------------------------------------------------------------
# Models


def default_model_path() -> str | None:
    """The model used when neither `--model` nor `$GHFEAT_MODEL` is given: the embedded default model
    ([`ghfeat_hf.embedded`]), or `None` in an installation without it."""
    try:
        return str(embedded_model_path())
    except FileNotFoundError:
        return None


def resolve_model_path(model: str | os.PathLike | None = None) -> str:
    """`model`, else `$GHFEAT_MODEL`, else [`default_model_path`]; a [`UsageError`] when none is set, or when
    `model` is given but empty (`--model ''`; an empty `$GHFEAT_MODEL` counts as unset). The name of an embedded
    model (e.g. `"ghfeat-fmnist32"`) resolves to its directory. `default_model_path` is looked up at call time, so
    replacing it in this module (a deployment, a test) takes effect."""
    if model is not None and not os.fspath(model).strip():
        raise UsageError("--model is empty: pass a Hub id, a local model directory or the name of an embedded model.")
    for candidate in (model, os.environ.get(MODEL_ENV_VAR), default_model_path()):
        if candidate:
            candidate = os.fspath(candidate)
            return str(embedded_model_path(candidate)) if candidate in embedded_models() else candidate
    raise UsageError(f"no default model installed, pass --model (a Hub id or a local model directory) or set "
                     f"${MODEL_ENV_VAR}. {how_to_get_models()}")


def load_model(
    model: str | os.PathLike | None = None, device: str | torch.device | None = None
) -> tuple[GHFeatModel, GHFeatImageProcessor]:
    """Load a [`GHFeatModel`] (float32, eval mode) and its [`GHFeatImageProcessor`] from a Hub id or a local
    directory.

    Strict, unlike `GHFeatModel.from_pretrained` ([`ghfeat_hf.strict_loading`]): a config of another model or out of
    range, a missing, unexpected or reshaped tensor, a weight of another dtype, a NaN, a negative running variance,
    or processor settings the model cannot use raise a [`UsageError`] naming the file and the key. A directory
    without `preprocessor_config.json` gets the default processor at the model's `image_size` and `num_channels`.
    Also raises [`UsageError`] for a device that cannot run the model, and its [`ModelNotFoundError`] for a missing
    directory, a name that is neither a folder, an embedded model nor a Hub id (at once, offline) or a Hub id that
    cannot be loaded; the message lists the models there are and how to create ``ghfeat-ffhq``.
    """
    target = None if device is None else resolve_device(device)
    path = find_model(resolve_model_path(model))
    expanded = os.path.expanduser(path)
    if os.path.exists(expanded):
        if not os.path.isdir(expanded):
            raise UsageError(f"--model {path!r} is a file; pass a model directory (with config.json) or a Hub id.")
        path = os.path.abspath(expanded)
    try:
        if not os.path.isdir(path):
            cached_file(path, CONFIG_NAME)  # an unknown repo, or offline without a cached copy, fails here
        loaded, processor = load_checked_model(
            functools.partial(cached_file, path, _raise_exceptions_for_missing_entries=False), path
        )
    except CheckpointError as error:
        raise UsageError(str(error)) from error
    except OSError as error:
        if not os.path.isdir(path):
            raise ModelNotFoundError(missing_model_message(path, error)) from error
        raise UsageError(f"could not load a GH-Feat model from the local directory {path!r}: {one_line(error)}") from error
    if target is not None:
        loaded.to(target)
    return loaded, processor


# The StyleGAN generator a GH-Feat model directory may hold beside the encoder (mapping network and w_avg included).
GENERATOR_SUBFOLDER = "stylegan-generator"


def load_generator(model_path: str | os.PathLike) -> StyleGANGenerator | None:
    """The StyleGAN generator stored next to a GH-Feat model (``<model>/stylegan-generator``, eval mode), or
    ``None`` when the directory has none."""
    folder = os.path.join(model_path, GENERATOR_SUBFOLDER)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return None
    return StyleGANGenerator.from_pretrained(folder).eval()


def model_fingerprint(model) -> str:
    """A short hash of the model's configuration and of its first and last parameters: a resumed run must use the
    same model, wherever its directory now lives."""
    architecture = json.dumps(ghfeat_config_dict(model.config), sort_keys=True)  # no paths, dtypes or versions
    digest = hashlib.sha256(architecture.encode("utf-8"))
    parameters = list(model.parameters())
    for parameter in (parameters[0], parameters[-1]) if parameters else ():
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def processor_size(processor) -> tuple[int | None, int | None]:
    """`(height, width)` a processor resizes to (`None`s when it does not say)."""
    size = getattr(processor, "size", None)
    if size is None:
        return None, None
    if isinstance(size, dict):
        return size.get("height"), size.get("width")
    return getattr(size, "height", None), getattr(size, "width", None)


# ----------------------------------------------------------------------------------------------------------------
# Devices and dtypes


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`"auto"`/`None` -> CUDA when available, else MPS, else CPU; anything else is passed to `torch.device` and
    must be able to hold a tensor here (a [`UsageError`] for `meta`, a missing backend or device index)."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise UsageError(f"invalid device {device!r}: {error}") from error
    if device.type == "meta":
        raise UsageError("device 'meta' holds no data and cannot run a model; use --device cpu, cuda or auto.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {str(device)!r} requested but CUDA is not available here; use --device cpu.")
    try:
        torch.empty(1, device=device)  # an unknown index (cuda:7), a backend this build or machine lacks
    except (RuntimeError, AssertionError, NotImplementedError, ImportError) as error:
        raise UsageError(f"device {str(device)!r} cannot be used here ({one_line(error)}); use --device cpu.") from error
    return device


def launched_process_state(timeout_minutes: float | None = None):
    """The `accelerate.PartialState` of a command started by `accelerate launch` (or `torchrun`) with several
    processes (`WORLD_SIZE` > 1), else `None`. On a machine without CUDA, or with `ACCELERATE_USE_CPU=1`, the
    processes run on the CPU (gloo). `timeout_minutes` bounds how long a process waits for the others at a barrier
    (the `init_process_group` timeout); it applies only when this call creates the state."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    kwargs = {}
    if timeout_minutes is not None:
        import datetime

        kwargs["timeout"] = datetime.timedelta(minutes=timeout_minutes)
    return PartialState(cpu=cpu, **kwargs)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """`"fp32"`, `"bf16"`, `"fp16"` (or a `torch.dtype`) -> the compute dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise UsageError(f"unsupported compute dtype {dtype}; use float32, bfloat16 or float16.")
        return dtype
    if str(dtype).lower() not in _DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; use fp32, bf16 or fp16.")
    return _DTYPES[str(dtype).lower()]


def autocast_context(device: torch.device, dtype: torch.dtype):
    """`torch.autocast` for bf16/fp16 compute (weights stay float32), a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# Layer selection

ALL_LAYERS = "all"  # the selection of every generator layer


@dataclass(frozen=True)
class LayerGroup:
    """A named selection of generator layers (`"all"`, `"coarse"`, `"0-3,8"`, ...)."""

    name: str
    layers: tuple[int, ...]


def layers_by_head(config) -> dict[str, list[int]]:
    """`{"coarse": [...], "middle": [...], "fine": [...]}`: the generator layers of each encoder head."""
    return dict(zip(HEAD_NAMES, config.head_layers))


def parse_layers(spec: str | Sequence[int] | None, config) -> list[int]:
    """Parse a layer selection into sorted, unique generator layer indices.

    `spec` is `None` (all layers), a sequence of ints, or a string of comma-separated items, each an index (`8`),
    an inclusive range (`0-3`), a head name (`coarse`, `middle`, `fine`, the config's `head_layers`) or `all`;
    `|` works as a separator too (`coarse|fine`). Raises [`UsageError`] for an unknown item or a layer out of range.
    """
    num_layers = config.num_layers
    if spec is None:
        return list(range(num_layers))
    if isinstance(spec, str):
        items = [item.strip() for item in spec.replace("|", ",").split(",")]
        if not any(items):
            raise UsageError("empty --layers selection.")
        layers: set[int] = set()
        heads = layers_by_head(config)
        for item in filter(None, items):
            if item.lower() == ALL_LAYERS:
                layers.update(range(num_layers))
            elif item.lower() in heads:
                layers.update(heads[item.lower()])
            else:
                layers.update(_parse_layer_item(item))
    else:
        layers = {int(layer) for layer in spec}
    bad = sorted(layer for layer in layers if not 0 <= layer < num_layers)
    if bad or not layers:
        raise UsageError(f"layers {bad or '[]'} out of range: the model has layers 0-{num_layers - 1}.")
    return sorted(layers)


def parse_layer_groups(specs: Sequence[str] | None, config) -> list[LayerGroup]:
    """Named layer selections from specs such as `["all", "coarse", "middle", "fine", "0-3,8"]` (each parsed by
    [`parse_layers`], named by its stripped text), in order, repeated specs once; `None` or `[]` means `["all"]`."""
    groups: dict[str, LayerGroup] = {}
    for spec in specs or [ALL_LAYERS]:
        spec = spec.strip()
        groups.setdefault(spec, LayerGroup(spec, tuple(parse_layers(spec, config))))
    return list(groups.values())


def _parse_layer_item(item: str) -> range:
    """`"8"` -> `range(8, 9)`, `"0-3"` -> `range(0, 4)`."""
    try:
        start, stop = (int(part) for part in item.split("-")) if "-" in item else (int(item), int(item))
    except ValueError:
        raise UsageError(
            f"invalid --layers item {item!r}: use indices (8), ranges (0-3), {', '.join(HEAD_NAMES)} or {ALL_LAYERS}."
        ) from None
    if start > stop:
        raise UsageError(f"invalid layer range {item!r}: start is after stop.")
    return range(start, stop + 1)


__all__ = [
    "ALL_LAYERS",
    "MODEL_ENV_VAR",
    "LayerGroup",
    "autocast_context",
    "default_model_path",
    "launched_process_state",
    "layers_by_head",
    "load_model",
    "model_fingerprint",
    "parse_layer_groups",
    "parse_layers",
    "processor_size",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
]
