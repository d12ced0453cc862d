"""Opening one image, whatever holds it: a file path, bytes, a `datasets` `{"bytes", "path"}` record, a PIL image,
an array or a tensor. Every image the library reads from storage comes through [`open_image`].

Files are opened with [`ghfeat_hf.files.open_regular_file`] (a FIFO, socket, device or folder is refused unopened,
so reading never blocks), their pixels are fully decoded (a truncated file fails here, not later) and the EXIF
orientation is applied. Arrays and tensors are passed through for [`GHFeatImageProcessor`] to read (any layout and
dtype it accepts, e.g. float `[0, 1]` HWC or uint8 CHW).
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .files import open_regular_file

DecodedImage = PIL.Image.Image | np.ndarray | torch.Tensor
"""What [`open_image`] returns: a loaded PIL image, or an array / tensor passed through."""


def read_image(stream: BinaryIO) -> PIL.Image.Image:
    """The image in a binary stream, fully loaded (the stream may be closed afterwards), EXIF orientation
    applied."""
    with PIL.Image.open(stream) as opened:
        opened.load()
        image = PIL.ImageOps.exif_transpose(opened)
        return opened.copy() if image is opened else image


def unwrap_image_record(raw: Any) -> Any:
    """The bytes (else the path) of a `datasets` `{"bytes", "path"}` record; any other value as it is. A
    `ValueError` for an empty record or `None`."""
    if isinstance(raw, dict):
        if raw.get("bytes") is not None:
            return raw["bytes"]
        if raw.get("path"):
            return raw["path"]
        raise ValueError("empty image record (no bytes and no path).")
    if raw is None:
        raise ValueError("missing image (None).")
    return raw


def open_image(raw: Any) -> DecodedImage:
    """Open one image from a path, a `datasets` `{"bytes", "path"}` record, bytes, a PIL image, an array or a
    tensor (see the module docstring). Raises `ValueError` (an unsupported value, a special file), `OSError` (a
    missing or unreadable file) or PIL's errors for data that is not an image."""
    raw = unwrap_image_record(raw)
    if isinstance(raw, (np.ndarray, torch.Tensor, PIL.Image.Image)):
        return raw
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return read_image(io.BytesIO(bytes(raw)))
    if not isinstance(raw, (str, os.PathLike)):
        raise ValueError(f"unsupported image value of type {type(raw).__name__}.")
    with open_regular_file(raw) as (handle, _):
        return read_image(handle)


def to_pil_image(raw: Any) -> PIL.Image.Image:
    """A PIL image from anything [`open_image`] reads; arrays and tensors must be HWC (or HW) uint8 images."""
    image = open_image(raw)
    if isinstance(image, torch.Tensor):
        image = image.numpy()
    return image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(image))


__all__ = ["DecodedImage", "open_image", "read_image", "to_pil_image", "unwrap_image_record"]
