"""Harmonization: paste a region of one image onto another, then encode and decode the composite.

The generator can only render images it knows, so decoding the codes of a crude cut-and-paste blends the pasted
region into its surroundings (lighting, shape, texture). Regions are masks in [0, 1] (1 = taken from the source)
given at the base image's own size, as a mask image or a box, and resized to the encoder's input size ``S``
(where the composite is built); the results are at the generator's resolution ``R``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..errors import UsageError
from ..image_io import open_image
from ..modeling_stylegan import StyleCodes
from .codes import decode_codes, encode_images, resize_images

Box = tuple[int, int, int, int]


def parse_box(text: str) -> Box:
    """``"left,top,right,bottom"`` (pixels, right/bottom exclusive) -> a box tuple."""
    try:
        box = tuple(int(part) for part in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise UsageError(f"invalid box {text!r}: use left,top,right,bottom in pixels, e.g. 8,8,24,24.")
    return box


def box_mask(size: tuple[int, int], box: Box) -> torch.Tensor:
    """A ``[H, W]`` mask of an image of ``size = (width, height)``: 1 inside ``box = (left, top, right, bottom)``
    (right and bottom exclusive), 0 elsewhere."""
    width, height = size
    left, top, right, bottom = box
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise UsageError(f"box {box} is empty or outside the {width}x{height} image "
                         "(need 0 <= left < right <= width and 0 <= top < bottom <= height).")
    mask = torch.zeros(height, width)
    mask[top:bottom, left:right] = 1.0
    return mask


def _mask_values(image: PIL.Image.Image) -> np.ndarray:
    """``[H, W]`` float32 in [0, 1] of a mask image: its alpha channel unless that is fully opaque everywhere,
    else its gray level (8-bit / 255, ``I;16`` / ``I`` / 65535, ``F`` as is)."""
    if "A" in image.getbands() and image.getchannel("A").getextrema() != (255, 255):
        image = image.getchannel("A")
    if image.mode.startswith("I"):
        values, peak = np.asarray(image, dtype=np.float32), 65535.0
    elif image.mode == "F":
        values, peak = np.asarray(image, dtype=np.float32), 1.0
    else:
        values, peak = np.asarray(image.convert("L"), dtype=np.float32), 255.0
    low, high = float(values.min()), float(values.max())
    if not 0 <= low <= high <= peak:  # also false for NaN
        raise UsageError(f"the {image.mode} mask holds values from {low:g} to {high:g}, outside [0, {peak:g}]: "
                         "float masks must lie in [0, 1], integer ones in [0, 65535].")
    return values / peak


def image_mask(mask: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A ``[H, W]`` mask in [0, 1] from a mask image: a path, a PIL image, or a ``[H, W]`` / ``[H, W, C]`` array or
    tensor. The alpha channel is the mask when it is not fully opaque everywhere, else the gray level: 8-bit
    values / 255, 16- and 32-bit integers (``I;16``, ``I``, ``uint16`` arrays) / 65535, and floats (``F``,
    ``[H, W]`` float arrays) as they are, which must then lie in [0, 1] (else a ``UsageError``). With
    ``size = (width, height)``, a mask of another size is a ``UsageError``."""
    name = os.fspath(mask) if isinstance(mask, (str, os.PathLike)) else type(mask).__name__
    try:
        image = open_image(mask)
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        if isinstance(image, np.ndarray):
            image = PIL.Image.fromarray(image)
    except (OSError, ValueError, TypeError) as error:
        raise UsageError(f"cannot read the mask {name!r}: {error}") from None
    if size is not None and image.size != tuple(size):
        raise UsageError(f"the mask is {image.width}x{image.height} but the image is {size[0]}x{size[1]}; "
                         "a mask must have the size of the image it is pasted on.")
    return torch.from_numpy(_mask_values(image))


def masks_at_resolution(masks: torch.Tensor | Sequence[torch.Tensor], resolution: int) -> torch.Tensor:
    """Masks ``[H, W]`` (one, or one per image, sizes may differ) -> ``[N, 1, R, R]`` (area-averaged, so soft at
    the edges when downscaled)."""
    masks = [masks] if isinstance(masks, torch.Tensor) else list(masks)
    return torch.cat([resize_images(mask[None, None], resolution) for mask in masks]).clamp(0, 1)


def paste_region(base: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``base * (1 - mask) + source * mask``: images ``[N, C, S, S]`` (``source`` may have batch 1) and masks
    ``[N or 1, 1, S, S]`` in [0, 1]."""
    if mask.shape[-2:] != base.shape[-2:] or source.shape[-2:] != base.shape[-2:]:
        raise UsageError(f"images {tuple(base.shape[-2:])} / {tuple(source.shape[-2:])} and mask "
                         f"{tuple(mask.shape[-2:])} must share the encoder's input size.")
    mask = mask.to(base)
    return base * (1 - mask) + source.to(base) * mask


@dataclass
class HarmonizationResult:
    """Images ``[N, C, R, R]`` at the generator's resolution (CPU, about [-1, 1]): the ``pasted`` composite
    (built at the encoder's input size ``S`` and resized to ``R``), its encode-decode ``harmonized``, and
    ``base_reconstruction`` (the base image's own encode-decode, the reference outside the region)."""

    pasted: torch.Tensor
    harmonized: torch.Tensor
    base_reconstruction: torch.Tensor


def harmonize(
    model,
    base: torch.Tensor,
    source: torch.Tensor,
    mask: torch.Tensor,
    *,
    batch_size: int = 16,
    invert: Callable[[Any, torch.Tensor], StyleCodes] | None = None,
) -> HarmonizationResult:
    """Paste the ``mask`` region of ``source`` onto ``base`` and decode the composite's codes.

    Args:
        model: a [`GHFeatModel`].
        base, source: ``pixel_values`` ``[N, C, S, S]`` in [-1, 1] (``source`` may have batch 1).
        mask: ``[N or 1, 1, S, S]`` in [0, 1], see [`masks_at_resolution`].
        invert: optional ``(model, pixel_values) -> codes`` replacing the encoder alone (e.g. with refinement).

    Returns:
        A [`HarmonizationResult`], every image at the generator's resolution ``R``.
    """
    base = base.float()
    pasted = paste_region(base, source.float(), mask)
    invert = invert or (lambda model_, pixel_values: encode_images(model_, pixel_values, batch_size))
    both = torch.cat([pasted, base])
    images = decode_codes(model, invert(model, both), batch_size)
    return HarmonizationResult(resize_images(pasted.cpu(), images.shape[-1]), images[:len(base)], images[len(base):])


__all__ = [
    "HarmonizationResult",
    "box_mask",
    "harmonize",
    "image_mask",
    "masks_at_resolution",
    "paste_region",
    "parse_box",
]
