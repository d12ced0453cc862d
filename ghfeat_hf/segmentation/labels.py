"""Label sets, mask reading and checking, colour-coded pictures, and the Fashion-MNIST silhouette labels.

A label set is the ordered label names (index = the value stored in a mask) and an optional RGB palette, read from
a JSON file (`{"names": [...], "palette": [[r, g, b], ...]}` or a plain list of names), from a `datasets`
`ClassLabel`, or built for the Fashion-MNIST silhouettes ([`fashion_mnist_silhouettes`]).
"""

from __future__ import annotations

import colorsys
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from ..data import FASHION_MNIST_CLASSES
from ..errors import UsageError
from ..image_io import to_pil_image
from ..visualization import to_rgb

BACKGROUND = "background"
SILHOUETTE_THRESHOLD = 16
"""Fashion-MNIST pixels at or above this value (of 255) belong to the garment, the others to the background."""
MASK_MODES = ("L", "P", "I", "I;16", "1")


@dataclass
class LabelSet:
    """Label `names` (a mask stores their indices) and an RGB `palette`, one colour per label."""

    names: list[str]
    palette: list[list[int]]

    def __post_init__(self):
        if not self.names:
            raise UsageError("the label set is empty.")
        if len(set(self.names)) != len(self.names):
            raise UsageError(f"the label set names a label twice: {self.names}.")
        if len(self.palette) < len(self.names):
            raise UsageError(f"the palette has {len(self.palette)} colours for {len(self.names)} labels.")

    @classmethod
    def from_names(cls, names: list[str], palette: list[list[int]] | None = None) -> LabelSet:
        return cls(list(names), [list(map(int, colour)) for colour in palette] if palette else default_palette(len(names)))


def default_palette(count: int) -> list[list[int]]:
    """`count` distinct RGB colours: black for label 0 (the background by convention), then evenly spaced hues."""
    colours = [[0, 0, 0]]
    for index in range(1, count):
        red, green, blue = colorsys.hsv_to_rgb((index - 1) / max(count - 1, 1), 0.75, 1.0)
        colours.append([round(255 * red), round(255 * green), round(255 * blue)])
    return colours[:count]


def load_label_set(path: str | os.PathLike) -> LabelSet:
    """A label set from a JSON file: `{"names": [...], "palette": [[r, g, b], ...]}` (palette optional) or a list of
    names. Raises [`UsageError`] when the file is missing or malformed."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the label set {str(path)!r}: {error}") from error
    if isinstance(payload, list):
        payload = {"names": payload}
    if not isinstance(payload, dict) or not isinstance(payload.get("names"), list):
        raise UsageError(f"{path}: a label set is a list of names or {{\"names\": [...], \"palette\": [...]}}.")
    return LabelSet.from_names([str(name) for name in payload["names"]], payload.get("palette"))


def save_label_set(labels: LabelSet, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps({"names": labels.names, "palette": labels.palette}, indent=2) + "\n")
    return path


def read_mask(raw, num_labels: int, *, image_size: tuple[int, int] | None = None, name: str = "mask") -> np.ndarray:
    """A label mask `[H, W]` int64 from a PNG path, bytes, a `datasets` image value or an array. Raises
    [`UsageError`] when it is not a single-channel label image, its size differs from `image_size` (`(W, H)`) or a
    value lies outside `0..num_labels-1`."""
    if isinstance(raw, np.ndarray):
        mask = raw
    else:
        image = to_pil_image(raw)
        if image.mode not in MASK_MODES:
            raise UsageError(f"{name} is a {image.mode} image; a mask is a single-channel label image (PNG mode L, P "
                             "or I) whose values are label indices.")
        mask = np.asarray(image)
    if mask.ndim != 2:
        raise UsageError(f"{name} has shape {mask.shape}; a mask is one label per pixel [H, W].")
    if image_size is not None and (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise UsageError(f"{name} is {mask.shape[1]}x{mask.shape[0]} but its image is {image_size[0]}x{image_size[1]}.")
    mask = mask.astype(np.int64)
    outside = np.unique(mask[(mask < 0) | (mask >= num_labels)])
    if outside.size:
        raise UsageError(f"{name} holds labels {outside.tolist()[:10]} outside the label set 0..{num_labels - 1}.")
    return mask


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A label mask `[H, W]` resized to `size x size` (nearest neighbour, so labels stay labels)."""
    if mask.shape == (size, size):
        return mask
    resized = PIL.Image.fromarray(mask.astype(np.int32)).resize((size, size), PIL.Image.Resampling.NEAREST)
    return np.asarray(resized).astype(np.int64)


def colorize(mask: np.ndarray, palette: list[list[int]]) -> PIL.Image.Image:
    """An RGB picture of a label mask `[H, W]`, each label in its palette colour."""
    return PIL.Image.fromarray(np.asarray(palette, dtype=np.uint8)[mask])


def overlay(image: PIL.Image.Image, mask: np.ndarray, palette: list[list[int]], alpha: float = 0.5) -> PIL.Image.Image:
    """`image` (resized to the mask) blended with the colour-coded mask, `alpha` the mask's weight."""
    base = to_rgb(image).convert("RGB").resize((mask.shape[1], mask.shape[0]), PIL.Image.Resampling.BILINEAR)
    return PIL.Image.blend(base, colorize(mask, palette), alpha)


def silhouette_labels() -> LabelSet:
    """The 11 labels of the Fashion-MNIST silhouettes: background, then the 10 garment classes."""
    return LabelSet.from_names([BACKGROUND, *FASHION_MNIST_CLASSES])


def fashion_mnist_silhouettes(images: np.ndarray, classes: np.ndarray,
                              threshold: int = SILHOUETTE_THRESHOLD) -> np.ndarray:
    """Silhouette masks `[N, H, W]` int64 of Fashion-MNIST images `[N, H, W]` uint8 with garment classes `[N]`:
    0 where the pixel is below `threshold`, else the class + 1 (labels of [`silhouette_labels`])."""
    images, classes = np.asarray(images), np.asarray(classes, dtype=np.int64)
    return np.where(images >= threshold, classes[:, None, None] + 1, 0).astype(np.int64)


__all__ = [
    "BACKGROUND",
    "SILHOUETTE_THRESHOLD",
    "LabelSet",
    "colorize",
    "default_palette",
    "fashion_mnist_silhouettes",
    "load_label_set",
    "overlay",
    "read_mask",
    "resize_mask",
    "save_label_set",
    "silhouette_labels",
]
