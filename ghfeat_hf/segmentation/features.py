"""Spatial feature maps of images, the input of the few-shot segmentation head.

GH-Feat codes are global (one AdaIN code per generator layer); the synthesis network turns them into spatial
maps. *Spatial GH-Feat* reads those maps: encode the image, run the synthesis network on its own codes (optionally
refined per image first) and keep every chosen synthesis layer's activation, after its AdaIN. Upsampled to the
image resolution and concatenated they form a per-pixel "hypercolumn"; the encoder's FPN levels can join them.

A [`SpatialFeatures`] extractor returns the maps at their native resolutions, a list of `[N, C_s, H_s, W_s]`
tensors (one per *source*), never the full hypercolumn: the head's first layer is linear, so it runs on each
source at its own resolution and only its outputs are upsampled ([`ghfeat_hf.segmentation.head`]). Only the
pixels sampled for fitting are ever gathered into hypercolumn rows ([`gather_pixels`]).

Extractors: [`GHFeatSpatialFeatures`] (synthesis maps and/or encoder pyramid levels of a [`GHFeatModel`]) and
[`PixelPositionFeatures`] (raw pixels plus position encodings, the no-learning baseline).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..editing.inversion import refine_style_codes
from ..errors import UsageError
from ..modeling_ghfeat import GHFeatModel
from ..runtime import autocast_context, parse_layers, resolve_dtype
from ..visualization import to_rgb

SPATIAL_SOURCES = ("synthesis", "pyramid")


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling (`align_corners=False`) of `[N, C, h, w]` to `[N, C, size, size]`; the identity at
    `size`. Its weights sum to one, so it commutes with per-channel affine maps (what the head relies on)."""
    if maps.shape[-1] == size and maps.shape[-2] == size:
        return maps
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


class SpatialFeatures:
    """Images -> a list of feature maps `[N, C_s, H_s, W_s]` (float32, CPU), one per source; `size` is the label
    maps' resolution (every source is upsampled to it). Subclasses set `name`, `kind` and `channels`."""

    name: str = ""
    kind: str = ""
    size: int = 0
    channels: list[int]

    def __call__(self, images: Sequence[PIL.Image.Image]) -> list[torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What a report or a saved head records about these features."""
        return {"name": self.name, "kind": self.kind, "size": self.size, "channels": list(self.channels)}


class GHFeatSpatialFeatures(SpatialFeatures):
    """Spatial GH-Feat: the activation maps of the synthesis `layers` driven by the image's own codes and/or the
    encoder's FPN levels (`pyramid=True`), at the model's resolution.

    Args:
        model, processor: a [`GHFeatModel`] and its processor.
        layers: synthesis layers read (a [`parse_layers`] selection; default all); `"none"` or `[]` for no
            synthesis maps (the pyramid-only baseline).
        pyramid: also return the encoder's three FPN levels.
        refine_steps: Adam steps of inversion refinement on the codes before synthesis (0: the encoder's codes).
    """

    kind = "ghfeat-spatial"

    def __init__(
        self,
        model: GHFeatModel,
        processor,
        *,
        layers: str | Sequence[int] | None = None,
        pyramid: bool = False,
        refine_steps: int = 0,
        dtype: str | torch.dtype = "fp32",
        name: str = "spatial GH-Feat",
    ):
        self.model, self.processor, self.name = model.eval(), processor, name
        config = model.config
        self.layers = [] if layers in ("none", []) else parse_layers(layers, config)
        self.pyramid, self.refine_steps = pyramid, refine_steps
        if not self.layers and not pyramid:
            raise UsageError("spatial features need synthesis layers or the encoder pyramid (or both).")
        self.dtype = resolve_dtype(dtype)
        self.size = config.generator_config.resolution
        self.channels = [config.generator_config.layer_channels[layer] for layer in self.layers]
        self.channels += [config.pyramid_channels] * (3 if pyramid else 0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _codes(self, pixel_values: torch.Tensor, codes):
        if not self.refine_steps:
            return codes
        return refine_style_codes(self.model, pixel_values, codes, steps=self.refine_steps, progress=False,
                                  batch_size=len(pixel_values)).style_codes

    def __call__(self, images: Sequence[PIL.Image.Image]) -> list[torch.Tensor]:
        pixel_values = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode(), autocast_context(self.device, self.dtype):
            codes, pyramid = self.model.encoder(pixel_values)
        maps: list[torch.Tensor] = []
        if self.layers:
            codes = self._codes(pixel_values, tuple(code.float().clone() for code in codes))
            with torch.inference_mode(), autocast_context(self.device, self.dtype):
                x = None
                for index, (layer, code) in enumerate(zip(self.model.synthesis.layers, codes)):
                    x = layer(x, code, "const")
                    if index in self.layers:
                        maps.append(x)
                    if index >= self.layers[-1]:
                        break
        if self.pyramid:
            maps += list(pyramid)
        return [tensor.float().cpu() for tensor in maps]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": str(getattr(self.model.config, "name_or_path", "") or ""),
                "layers": self.layers, "pyramid": self.pyramid, "refine_steps": self.refine_steps}


def random_init_spatial_model(model: GHFeatModel, seed: int = 0) -> GHFeatModel:
    """A [`GHFeatModel`] of `model`'s configuration with both the encoder and the synthesis network freshly
    initialised (seeded, the library's initialisation): the no-training baseline of spatial features."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GHFeatModel(copy.deepcopy(model.config)).eval()


class PixelPositionFeatures(SpatialFeatures):
    """Raw pixels plus position: the image's channels in `[0, 1]` (grayscale for a 1-channel model) and, per pixel,
    its coordinates `x, y` in `[-1, 1]` with `num_frequencies` sine / cosine pairs of each; one source
    `[N, C + 2 + 4 * num_frequencies, size, size]`."""

    kind = "pixels+position"

    def __init__(self, size: int, mode: str = "L", num_frequencies: int = 4, name: str = "raw pixels + position"):
        if mode not in ("RGB", "L"):
            raise UsageError(f"pixel features mode must be RGB or L, got {mode!r}.")
        self.size, self.mode, self.name, self.num_frequencies = size, mode, name, num_frequencies
        coords = torch.linspace(-1 + 1 / size, 1 - 1 / size, size)
        y, x = torch.meshgrid(coords, coords, indexing="ij")
        planes = [x, y]
        for frequency in range(num_frequencies):
            scale = math.pi * 2**frequency
            planes += [torch.sin(scale * x), torch.cos(scale * x), torch.sin(scale * y), torch.cos(scale * y)]
        self.position = torch.stack(planes)
        self.channels = [(3 if mode == "RGB" else 1) + len(planes)]

    def __call__(self, images: Sequence[PIL.Image.Image]) -> list[torch.Tensor]:
        arrays = [torch.from_numpy(np.array(
            to_rgb(image).convert(self.mode).resize((self.size, self.size), PIL.Image.Resampling.BILINEAR)))
            for image in images]
        pixels = torch.stack(arrays).float().div(255).reshape(len(arrays), self.size, self.size, -1).permute(0, 3, 1, 2)
        return [torch.cat([pixels, self.position.expand(len(arrays), -1, -1, -1)], dim=1)]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mode": self.mode, "num_frequencies": self.num_frequencies}


def gather_pixels(maps: Sequence[torch.Tensor], size: int, indices: torch.Tensor) -> torch.Tensor:
    """Hypercolumn rows `[P, sum C_s]` of flat pixel `indices` `[N, P_i]` (or a list of per-image index tensors)
    into the `size x size` label map of each image: every source upsampled to `size` and read there."""
    rows = []
    for image, pixel_indices in enumerate(indices):
        columns = [upsample(source[image:image + 1], size).flatten(2)[0][:, pixel_indices] for source in maps]
        rows.append(torch.cat(columns).T)
    return torch.cat(rows)


__all__ = [
    "SPATIAL_SOURCES",
    "GHFeatSpatialFeatures",
    "PixelPositionFeatures",
    "SpatialFeatures",
    "gather_pixels",
    "random_init_spatial_model",
    "upsample",
]
