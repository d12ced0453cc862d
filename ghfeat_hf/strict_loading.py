"""Strict loading of GH-Feat model directories: every file is checked before it is used, and only checked files
are used ([`load_checked_model`], behind [`ghfeat_hf.extraction.load_model`] and every `ghfeat` command).

`GHFeatModel.from_pretrained` follows transformers: tensors missing from the checkpoint are initialised afresh,
unexpected ones are dropped, a mismatched `config.json` only gets a warning, and keys of `config.json` steer the
loading itself (`transformers_weights` names another weights file, `quantization_config`, `dtype`). The strict
loader reads three files with `json` and `safetensors` only, and refuses with one line naming the file, the key
and what was expected ([`CheckpointError`]):

* `config.json`: a JSON object with `model_type` `"ghfeat"` that builds a [`GHFeatConfig`] (whose own checks
  cover the depth, the widths and sizes, and the head layer groups);
* `model.safetensors`: a well-formed safetensors file (its 8-byte header length, JSON header and tensor byte
  ranges are read before any tensor) holding exactly the tensors of `GHFeatModel(config)` with their shapes,
  floating tensors stored as float32, float16 or bfloat16 (integer buffers in their own dtype), every value finite
  and no negative BatchNorm running variance;
* `preprocessor_config.json` (optional): a JSON object giving a [`GHFeatImageProcessor`] that agrees with the
  model ([`check_processor`]).

The model is built on the meta device from the checked configuration and takes the checked tensors as they are
(float16/bfloat16 ones upcast to float32), so it holds exactly the weights of the file.
[`check_config_file`] takes the configuration class and [`load_checked_state_dict`] the expected state dict, so
another model directory (a StyleGAN generator) can be checked the same way.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import PreTrainedConfig

from .configuration_ghfeat import GHFeatConfig
from .errors import one_line
from .image_processing_ghfeat import GHFeatImageProcessor
from .modeling_ghfeat import GHFeatModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PROCESSOR_NAME = "preprocessor_config.json"
MAX_HEADER_BYTES = 100_000_000  # the limit of the safetensors library itself
FLOAT_DTYPES = ("F32", "F16", "BF16")
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
_INTEGER_DTYPES = {torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}
_LISTED_KEYS = 3  # keys quoted in a message about many tensors


class CheckpointError(ValueError):
    """A model directory that must not be loaded; the message is one line naming the file and the key."""


def _count_and_quote(keys: Iterable[str]) -> str:
    """`"2 tensors ('a', 'b')"`: how many keys, then the first few."""
    keys = sorted(keys)
    listed = ", ".join(repr(key) for key in keys[:_LISTED_KEYS])
    more = f" and {len(keys) - _LISTED_KEYS} more" if len(keys) > _LISTED_KEYS else ""
    return f"{len(keys)} tensor{'s' if len(keys) != 1 else ''} ({listed}{more})"


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in `path`; a [`CheckpointError`] for unreadable text, invalid JSON or another JSON value."""
    try:
        with open(path, "rb") as file:
            data = json.loads(file.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{os.fspath(path)}: not valid JSON ({one_line(error)}).") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{os.fspath(path)}: expected a JSON object, got a JSON {type(data).__name__}.")
    return data


def check_config_file(path: str | os.PathLike, config_class: type[PreTrainedConfig] = GHFeatConfig) -> PreTrainedConfig:
    """The `config_class` instance that the `config.json` at `path` describes, after checking that it is one (its
    `model_type` and the class's own checks)."""
    data = read_json_object(path)
    expected = config_class.model_type
    if data.get("model_type") != expected:
        found = f"is {data['model_type']!r}" if "model_type" in data else "is missing"
        raise CheckpointError(f"{os.fspath(path)}: key 'model_type' {found}, expected {expected!r}.")
    try:
        return config_class.from_dict(data)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{os.fspath(path)}: invalid {expected} configuration: {one_line(error)}") from error


def read_safetensors_header(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The tensor entries (`dtype`, `shape`, `data_offsets`) of the safetensors file at `path`, without
    `__metadata__`, after checking the header length, the JSON header and that every tensor's bytes lie in the file.
    """
    name = os.fspath(path)
    size = os.path.getsize(name)
    if size < 8:
        found = "the file is empty" if size == 0 else f"{size} bytes, fewer than its 8-byte header length"
        raise CheckpointError(f"{name}: not a safetensors file or truncated: {found}.")
    with open(name, "rb") as file:
        length = int.from_bytes(file.read(8), "little")
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(
                f"{name}: not a safetensors file or truncated: the 8-byte header length reads {length} bytes, the "
                f"file holds {size} bytes in all."
            )
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{name}: not a safetensors file: its header is not JSON ({one_line(error)}).") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{name}: not a safetensors file: its header is a JSON {type(header).__name__}.")
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    for key, entry in header.items():
        _check_entry(name, key, entry, data_size)
    return header


def _check_entry(name: str, key: str, entry: Any, data_size: int) -> None:
    """Raise unless `entry` describes a tensor whose bytes lie in the file's data section."""
    if not isinstance(entry, dict):
        raise CheckpointError(f"{name}: tensor {key!r} has a malformed header entry {entry!r}.")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPE_SIZES:
        raise CheckpointError(f"{name}: tensor {key!r} has unknown dtype {dtype!r}.")
    if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise CheckpointError(f"{name}: tensor {key!r} has malformed shape {shape!r}.")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(offset) is int for offset in offsets)):
        raise CheckpointError(f"{name}: tensor {key!r} has malformed data_offsets {offsets!r}.")
    begin, end = offsets
    if not 0 <= begin <= end or end - begin != math.prod(shape) * _DTYPE_SIZES[dtype]:
        raise CheckpointError(
            f"{name}: tensor {key!r} of shape {shape} and dtype {dtype} does not fit its data_offsets {offsets}."
        )
    if end > data_size:
        raise CheckpointError(
            f"{name}: truncated: tensor {key!r} needs bytes {begin}-{end} of the data section, which holds "
            f"{data_size} bytes."
        )


def load_checked_state_dict(
    path: str | os.PathLike, expected: dict[str, torch.Tensor], config_path: str | os.PathLike
) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file at `path`, after checking that they are exactly those of `expected` (the
    state dict, e.g. on the meta device, of the architecture `config_path` describes) with their shapes, in an
    accepted dtype, with finite values and non-negative running variances."""
    name = os.fspath(path)
    header = read_safetensors_header(name)
    architecture = f"the architecture of {os.fspath(config_path)}"
    missing, unexpected = expected.keys() - header.keys(), header.keys() - expected.keys()
    if missing:
        raise CheckpointError(f"{name}: missing {_count_and_quote(missing)} of {architecture}.")
    if unexpected:
        raise CheckpointError(f"{name}: holds {_count_and_quote(unexpected)} outside {architecture}.")
    for key, tensor in expected.items():
        shape, dtype = header[key]["shape"], header[key]["dtype"]
        if shape != list(tensor.shape):
            raise CheckpointError(f"{name}: tensor {key!r} has shape {shape}, {architecture} needs {list(tensor.shape)}.")
        allowed = FLOAT_DTYPES if tensor.is_floating_point() else (_INTEGER_DTYPES[tensor.dtype],)
        if dtype not in allowed:
            raise CheckpointError(f"{name}: tensor {key!r} is stored as {dtype}, expected {' or '.join(allowed)}.")
    try:
        state = load_file(name)
    except SafetensorError as error:
        raise CheckpointError(f"{name}: unreadable safetensors file ({one_line(error)}).") from error
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{name}: tensor {key!r} holds NaN or infinite values.")
        if key.rsplit(".", 1)[-1] == "running_var" and (tensor < 0).any():
            raise CheckpointError(
                f"{name}: tensor {key!r} holds negative values, a BatchNorm running variance must be >= 0."
            )
    return state


def check_processor(processor: GHFeatImageProcessor, config: GHFeatConfig, path: str | os.PathLike) -> None:
    """Raise unless `processor` (read from `path`) gives the input `config`'s model reads: its channels and,
    when it resizes, its `image_size`."""
    name = os.fspath(path)
    if processor.num_channels != config.num_channels:
        raise CheckpointError(
            f"{name}: key 'num_channels' is {processor.num_channels}, the model reads {config.num_channels} channels."
        )
    size = (processor.size.height, processor.size.width)
    if processor.do_resize and size != (config.image_size,) * 2:
        raise CheckpointError(
            f"{name}: key 'size' is {size[0]}x{size[1]}, the model reads {config.image_size}x{config.image_size} "
            "images."
        )


def _load_processor(path: str | None, config: GHFeatConfig) -> GHFeatImageProcessor:
    """The processor `preprocessor_config.json` at `path` describes, checked against `config`; the default one at
    the model's `image_size` and `num_channels` when `path` is `None`."""
    if path is None:
        size = config.image_size
        return GHFeatImageProcessor(size={"height": size, "width": size}, num_channels=config.num_channels)
    data = read_json_object(path)
    try:
        processor = GHFeatImageProcessor.from_dict(data)
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"{path}: {one_line(error)}") from error
    check_processor(processor, config, path)
    return processor


def load_checked_model(
    resolve: Callable[[str], str | None], where: str
) -> tuple[GHFeatModel, GHFeatImageProcessor]:
    """The [`GHFeatModel`] (float32, eval mode) and [`GHFeatImageProcessor`] of the model directory or Hub repo
    `where`, every file checked first; `resolve(filename)` gives a file's local path, or `None` when it is absent."""
    config_path = resolve(CONFIG_NAME)
    if config_path is None:
        raise CheckpointError(f"{where}: no {CONFIG_NAME}, not a model directory.")
    config = check_config_file(config_path)
    processor = _load_processor(resolve(PROCESSOR_NAME), config)
    weights_path = resolve(WEIGHTS_NAME)
    if weights_path is None:
        raise CheckpointError(
            f"{where}: no {WEIGHTS_NAME} (weights are read from one safetensors file only, never from pickles)."
        )
    with torch.device("meta"):
        model = GHFeatModel(config)
    model.load_state_dict(load_checked_state_dict(weights_path, model.state_dict(), config_path), assign=True)
    config.name_or_path = where
    return model.float().eval(), processor


__all__ = [
    "CONFIG_NAME",
    "PROCESSOR_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "check_config_file",
    "check_processor",
    "load_checked_model",
    "load_checked_state_dict",
    "read_json_object",
    "read_safetensors_header",
]
