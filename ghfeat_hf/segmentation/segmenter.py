"""Fitting a head on annotated images and predicting label maps: the glue between the spatial features
([`ghfeat_hf.segmentation.features`]) and the head ([`ghfeat_hf.segmentation.head`])."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from ..modeling_ghfeat import GHFeatModel
from .features import GHFeatSpatialFeatures, PixelPositionFeatures, SpatialFeatures, gather_pixels
from .head import FitSettings, HeadConfig, SegmentationHead, fit_head
from .labels import LabelSet

DEFAULT_PIXELS_PER_IMAGE = 128


def sample_pixels(mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`min(count, H * W)` distinct flat pixel indices of a mask `[H, W]`, drawn with probability inversely
    proportional to the frequency of their label in the mask (so small parts are sampled as often as large ones)."""
    flat = mask.reshape(-1)
    if count >= len(flat):
        return torch.arange(len(flat))
    frequency = torch.bincount(flat)[flat].double()
    return torch.multinomial(1.0 / frequency, count, replacement=False, generator=generator)


def select_sources(maps: Sequence[torch.Tensor], sources: Sequence[int] | None) -> list[torch.Tensor]:
    """The feature sources `sources` (indices) of `maps`; all of them for `None`."""
    return list(maps) if sources is None else [maps[index] for index in sources]


def annotated_rows(
    extractor: SpatialFeatures,
    images: Sequence[PIL.Image.Image],
    masks: Sequence[np.ndarray],
    *,
    pixels_per_image: int = DEFAULT_PIXELS_PER_IMAGE,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Hypercolumn rows of sampled pixels ([`sample_pixels`]) of annotated images: `([rows [P_i, sum C_s] per
    image], labels [sum P_i])`; `masks` are label maps `[size, size]` at the extractor's resolution."""
    if len(images) == 0:
        raise UsageError("no annotated images: the head needs at least one image with its mask.")
    if len(images) != len(masks):
        raise UsageError(f"{len(images)} images but {len(masks)} masks.")
    generator = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for start in range(0, len(images), batch_size):
        batch_masks = [torch.as_tensor(np.asarray(mask, dtype=np.int64)) for mask in masks[start:start + batch_size]]
        for mask in batch_masks:
            if tuple(mask.shape) != (extractor.size, extractor.size):
                raise UsageError(f"a mask is {tuple(mask.shape)}; the features are {extractor.size}x{extractor.size} "
                                 "(resize the masks to the features' resolution).")
        maps = extractor(images[start:start + batch_size])
        indices = [sample_pixels(mask, pixels_per_image, generator) for mask in batch_masks]
        for image, pixel_indices in enumerate(indices):
            rows.append(gather_pixels([source[image:image + 1] for source in maps], extractor.size, [pixel_indices]))
            labels.append(batch_masks[image].reshape(-1)[pixel_indices])
    return rows, torch.cat(labels)


def head_config(extractor: SpatialFeatures, labels: LabelSet, *, hidden: int = 0, members: int = 1,
                sources: Sequence[int] | None = None) -> HeadConfig:
    """The [`HeadConfig`] of a head over `extractor`'s `sources` (default all)."""
    channels = select_sources(extractor.channels, sources)
    features = {**extractor.describe(), "sources": None if sources is None else list(sources)}
    return HeadConfig(channels=channels, size=extractor.size, names=list(labels.names), hidden=hidden,
                      members=members, palette=labels.palette, features=features)


def rows_of_sources(rows: torch.Tensor, channels: Sequence[int], sources: Sequence[int] | None) -> torch.Tensor:
    """The columns of the hypercolumn rows `[P, sum channels]` that belong to `sources` (all for `None`)."""
    if sources is None:
        return rows
    bounds = np.concatenate([[0], np.cumsum(channels)])
    return torch.cat([rows[:, bounds[index]:bounds[index + 1]] for index in sources], dim=1)


def fit_segmenter(
    extractor: SpatialFeatures,
    images: Sequence[PIL.Image.Image],
    masks: Sequence[np.ndarray],
    labels: LabelSet,
    *,
    hidden: int = 0,
    members: int = 1,
    settings: FitSettings | None = None,
    pixels_per_image: int = DEFAULT_PIXELS_PER_IMAGE,
    batch_size: int = 64,
) -> SegmentationHead:
    """A head fitted on annotated `images` with label `masks` (`[size, size]` each, values `0..len(labels)-1`)."""
    settings = settings or FitSettings()
    rows, targets = annotated_rows(extractor, images, masks, pixels_per_image=pixels_per_image, seed=settings.seed,
                                   batch_size=batch_size)
    config = head_config(extractor, labels, hidden=hidden, members=members)
    return fit_head(config, torch.cat(rows), targets, settings)


def predict_masks(
    extractor: SpatialFeatures,
    head: SegmentationHead,
    images: Sequence[PIL.Image.Image],
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> Iterator[torch.Tensor]:
    """Label maps `[B, size, size]` (int64) of `images`, batch by batch."""
    sources = head.config.features.get("sources")
    for start in tqdm(range(0, len(images), batch_size), desc="segmenting", disable=not progress):
        yield head.predict(select_sources(extractor(images[start:start + batch_size]), sources))


def features_from_settings(settings: dict[str, Any], model: GHFeatModel | None, processor) -> SpatialFeatures:
    """Rebuild the spatial features a head was fitted on from its recorded `features` settings."""
    kind = settings.get("kind")
    if kind == PixelPositionFeatures.kind:
        return PixelPositionFeatures(settings["size"], settings["mode"], settings["num_frequencies"])
    if kind == GHFeatSpatialFeatures.kind:
        if model is None:
            raise UsageError("this head reads GH-Feat features: pass the model it was fitted with (--model).")
        extractor = GHFeatSpatialFeatures(model, processor, layers=settings["layers"] or "none",
                                          pyramid=settings["pyramid"], refine_steps=settings["refine_steps"])
        if extractor.size != settings["size"] or extractor.channels != settings["channels"]:
            raise UsageError(f"the model gives {extractor.channels} channels at {extractor.size} px, the head was fitted "
                             f"on {settings['channels']} at {settings['size']} px: pass the model it was fitted with.")
        return extractor
    raise UsageError(f"unknown spatial features {kind!r} in the head's configuration.")


__all__ = [
    "DEFAULT_PIXELS_PER_IMAGE",
    "annotated_rows",
    "features_from_settings",
    "fit_segmenter",
    "head_config",
    "predict_masks",
    "rows_of_sources",
    "sample_pixels",
    "select_sources",
]
