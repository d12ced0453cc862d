"""Annotated images for fitting and evaluating heads: image folders with PNG masks, `datasets` columns, and the
Fashion-MNIST silhouettes ([`ghfeat_hf.segmentation.labels.fashion_mnist_silhouettes`])."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from ..data import fashion_mnist_arrays
from ..errors import UsageError
from ..image_io import to_pil_image
from .labels import LabelSet, fashion_mnist_silhouettes, read_mask, resize_mask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass
class SegmentationData:
    """Images with their label masks `[N, size, size]` (at the features' resolution) and optional image classes
    `[N]` (the strata of the K-shot draws)."""

    images: list[PIL.Image.Image]
    masks: np.ndarray
    classes: np.ndarray | None = None

    def __post_init__(self):
        if len(self.images) == 0:
            raise UsageError("no annotated images: the head needs at least one image with its mask.")
        if len(self.masks) != len(self.images) or (self.classes is not None and len(self.classes) != len(self.images)):
            raise UsageError(f"{len(self.images)} images but {len(self.masks)} masks.")


def _mask_storage(masks: list[np.ndarray]) -> np.ndarray:
    """Stacked masks in the smallest integer type that holds them (memory at 256 px)."""
    stacked = np.stack(masks)
    return stacked.astype(np.uint8 if stacked.max(initial=0) < 256 else np.int32)


def silhouette_data(split: str, size: int = 32, max_images: int | None = None) -> SegmentationData:
    """The Fashion-MNIST `split` (`train` / `test`, 32 px) with its silhouette masks resized to `size` and the
    garment classes; the first `max_images` images only when given."""
    arrays, classes = fashion_mnist_arrays(split)
    arrays, classes = arrays[:max_images], classes[:max_images]
    masks = [resize_mask(mask, size) for mask in fashion_mnist_silhouettes(arrays, classes)]
    return SegmentationData([PIL.Image.fromarray(array) for array in arrays], _mask_storage(masks), classes)


def dataset_data(dataset, labels: LabelSet, size: int, *, image_column: str = "image", mask_column: str = "label",
                 class_column: str | None = None) -> SegmentationData:
    """A `datasets.Dataset` with an image column and a mask column (label images of the same size)."""
    missing = [column for column in (image_column, mask_column, class_column)
               if column and column not in dataset.column_names]
    if missing:
        raise UsageError(f"the dataset has no column {missing}; its columns are {dataset.column_names}.")
    images, masks = [], []
    for index, row in enumerate(dataset.select_columns([image_column, mask_column])):
        image = to_pil_image(row[image_column])
        mask = read_mask(row[mask_column], len(labels.names), image_size=image.size, name=f"the mask of row {index}")
        images.append(image)
        masks.append(resize_mask(mask, size))
    classes = np.asarray(dataset[class_column]) if class_column else None
    return SegmentationData(images, _mask_storage(masks) if masks else np.zeros((0, size, size)), classes)


def folder_data(images_dir: str | os.PathLike, masks_dir: str | os.PathLike, labels: LabelSet,
                size: int) -> tuple[SegmentationData, list[str]]:
    """Images of a folder and the masks of another, paired by file stem (`a.jpg` with `a.png`); returns the data
    and the stems. Raises [`UsageError`] for an image without a mask, or a bad mask."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder.")
    paths = sorted(path for path in images_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    masks_by_stem = {path.stem: path for path in masks_dir.iterdir() if path.suffix.lower() == ".png"}
    unmatched = [path.name for path in paths if path.stem not in masks_by_stem]
    if unmatched:
        raise UsageError(f"no mask (<stem>.png in {masks_dir}) for {len(unmatched)} images: {unmatched[:5]}.")
    images, masks = [], []
    for path in paths:
        image = to_pil_image(path)
        mask = read_mask(masks_by_stem[path.stem], len(labels.names), image_size=image.size,
                         name=f"mask {masks_by_stem[path.stem].name}")
        images.append(image)
        masks.append(resize_mask(mask, size))
    return SegmentationData(images, _mask_storage(masks) if masks else np.zeros((0, size, size))), [p.stem for p in paths]


__all__ = ["SegmentationData", "dataset_data", "folder_data", "silhouette_data"]
