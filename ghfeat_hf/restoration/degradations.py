"""Degradation operators: the forward models ``A`` of image restoration through the generator.

Each operator is a small ``nn.Module`` on model-space images ``[N, C, R, R]`` in [-1, 1] (the generator's
resolution):

* ``forward(x)`` is ``A(x)``, differentiable: what the restoration loss compares with the observation;
* ``degrade(x, generator)`` makes an observation of clean images (``A(x)``, plus random noise for [`Noise`]);
* ``encoder_input(y)`` turns an observation into a full-size image for the encoder and the figures;
* ``composite(restored, y)`` is the output (the known pixels of ``y`` pasted back for [`Mask`]);
* ``classical(y)`` holds the classical restorations measured as baselines (name -> images);
* ``rows(index)`` is the operator of a subset of the images (per-image masks are sliced).

| task | operator | observation | classical baselines |
|---|---|---|---|
| inpaint | [`Mask`]: ``x * mask`` (1 = known) | masked image | mean fill, biharmonic (scikit-image) |
| superres | [`Downsample`]: area or bicubic, factor 2 / 4 / 8 | ``[N, C, R/f, R/f]`` | bicubic upsampling |
| denoise | [`Noise`]: identity (the noise is in ``y``) | ``x + n`` | Gaussian filter, non-local means / median |
| colorize | [`Grayscale`]: ITU-R 601 luma | ``[N, 1, R, R]`` | the gray image |
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError

DOWNSAMPLE_FACTORS = (2, 4, 8)
DOWNSAMPLE_MODES = ("area", "bicubic")
NOISE_KINDS = ("gaussian", "salt-pepper")
LUMA = (0.299, 0.587, 0.114)


def _require_skimage():
    """The scikit-image module, or a [`UsageError`] saying how to install it."""
    try:
        import skimage.filters  # noqa: F401
        import skimage.restoration
    except ImportError:
        raise UsageError("the classical restoration baselines need scikit-image: pip install 'ghfeat-hf[restoration]' "
                         "(or pip install scikit-image).") from None
    return skimage


def _per_image(observation: torch.Tensor, function) -> torch.Tensor:
    """Apply ``function`` (``[H, W, C]`` float64 in [0, 1] -> same) to every image of ``observation`` in [-1, 1]."""
    pixels = ((observation.detach().double().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    restored = np.stack([np.reshape(function(image), image.shape) for image in pixels])
    return torch.from_numpy(restored).permute(0, 3, 1, 2).float() * 2 - 1


class Degradation(nn.Module):
    """The forward model of one restoration task (see the module docstring); by default the identity."""

    task = "restore"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def degrade(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The observation of clean images ``[N, C, R, R]``; random parts draw from ``generator``."""
        with torch.no_grad():
            return self(images.float())

    def encoder_input(self, observation: torch.Tensor) -> torch.Tensor:
        """``[N, C, R, R]``: the observation as a full image (what the encoder sees and the figures show)."""
        return observation.float()

    def composite(self, restored: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
        """The restored images ``[N, C, R, R]`` as output (by default the generator's images themselves)."""
        return restored

    def classical(self, observation: torch.Tensor) -> dict[str, torch.Tensor]:
        """Classical restorations ``{name: [N, C, R, R]}`` of the observations."""
        return {}

    def rows(self, index: slice) -> Degradation:
        """The operator of the images ``index`` (the same operator unless it holds per-image state)."""
        return self

    def check_channels(self, num_channels: int) -> None:
        """Raise [`UsageError`] when the task makes no sense for a model of ``num_channels`` channels."""

    def observation_size(self, resolution: int) -> int:
        """The side of an observation of images of side ``resolution``."""
        return resolution

    def describe(self) -> str:
        return self.task


class Mask(Degradation):
    """Inpainting: ``A(x) = x * mask`` with ``mask`` ``[N or 1, 1, R, R]`` in {0, 1}, 1 where pixels are known."""

    task = "inpaint"

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        if mask.ndim == 2:
            mask = mask[None, None]
        if mask.ndim != 4 or mask.shape[1] != 1:
            raise ValueError(f"the mask must be [H, W] or [N, 1, H, W], got {tuple(mask.shape)}.")
        mask = (mask > 0.5).float()
        if not bool(mask.flatten(1).amax(1).all()):
            raise UsageError("a mask hides the whole image: keep some pixels known.")
        self.register_buffer("mask", mask)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.mask.to(images)

    def encoder_input(self, observation: torch.Tensor) -> torch.Tensor:
        """The biharmonic fill (the encoder never saw holes; a mean fill gives it a flat block to reproduce)."""
        return self.biharmonic_fill(observation).to(observation.device)

    def classical_mean_fill(self, observation: torch.Tensor) -> torch.Tensor:
        """The known pixels, the holes filled with each image's mean known value (per channel)."""
        mask = self.mask.to(observation).expand(len(observation), *observation.shape[1:])
        mean = (observation * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True)
        return observation * mask + mean * (1 - mask)

    def composite(self, restored: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
        """The known pixels of the observation exactly, the restored images in the holes."""
        mask = self.mask.to(restored)
        return observation.to(restored) * mask + restored * (1 - mask)

    def biharmonic_fill(self, observation: torch.Tensor) -> torch.Tensor:
        """The known pixels, the holes filled by scikit-image's biharmonic inpainting (CPU)."""
        skimage = _require_skimage()
        observation = observation.detach().float().cpu()
        masks = self.mask.cpu().expand(len(observation), -1, -1, -1).numpy()[:, 0] < 0.5  # True in the holes
        pixels = ((observation.double() + 1) / 2).permute(0, 2, 3, 1).numpy()
        filled = np.stack([skimage.restoration.inpaint_biharmonic(image, hole, channel_axis=-1)
                           for image, hole in zip(pixels, masks)])
        biharmonic = torch.from_numpy(filled).permute(0, 3, 1, 2).float().clamp(0, 1) * 2 - 1
        return self.cpu().composite(biharmonic, observation)

    def classical(self, observation: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mean fill": self.classical_mean_fill(observation), "biharmonic": self.biharmonic_fill(observation)}

    def rows(self, index: slice) -> Mask:
        return self if len(self.mask) == 1 else Mask(self.mask[index])

    def describe(self) -> str:
        hidden = 1 - float(self.mask.mean())
        return f"inpaint ({hidden:.0%} of the pixels hidden)"


class Downsample(Degradation):
    """Super-resolution: ``A(x)`` = ``x`` downsampled by ``factor`` (2, 4 or 8) with ``mode`` ``"area"`` (box
    average) or ``"bicubic"`` (antialiased)."""

    task = "superres"

    def __init__(self, factor: int = 4, mode: str = "area"):
        super().__init__()
        if factor not in DOWNSAMPLE_FACTORS:
            raise UsageError(f"the downsampling factor must be one of {DOWNSAMPLE_FACTORS}, got {factor}.")
        if mode not in DOWNSAMPLE_MODES:
            raise UsageError(f"the downsampling mode must be one of {DOWNSAMPLE_MODES}, got {mode!r}.")
        self.factor, self.mode = factor, mode

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.observation_size(images.shape[-1])
        if self.mode == "area":
            return F.interpolate(images, size=(size, size), mode="area")
        return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)

    def encoder_input(self, observation: torch.Tensor) -> torch.Tensor:
        return self.upsample(observation)

    def upsample(self, observation: torch.Tensor) -> torch.Tensor:
        """Bicubic upsampling by ``factor`` (clamped to [-1, 1]): the classical super-resolution."""
        size = observation.shape[-1] * self.factor
        return F.interpolate(observation.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)

    def classical(self, observation: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"bicubic": self.upsample(observation)}

    def observation_size(self, resolution: int) -> int:
        if resolution % self.factor:
            raise UsageError(f"images of {resolution} px cannot be downsampled by {self.factor}.")
        return resolution // self.factor

    def describe(self) -> str:
        return f"superres x{self.factor} ({self.mode})"


class Noise(Degradation):
    """Denoising: ``A`` is the identity and the observation carries the noise: Gaussian with standard deviation
    ``sigma`` (on pixels in [0, 1]), or salt-and-pepper on a fraction ``amount`` of the pixels."""

    task = "denoise"

    def __init__(self, sigma: float = 0.1, kind: str = "gaussian", amount: float = 0.1):
        super().__init__()
        if kind not in NOISE_KINDS:
            raise UsageError(f"the noise must be one of {NOISE_KINDS}, got {kind!r}.")
        if not (math.isfinite(sigma) and sigma > 0) or not 0 < amount < 1:
            raise UsageError(f"the noise needs sigma > 0 and 0 < amount < 1, got sigma {sigma:g}, amount {amount:g}.")
        self.sigma, self.kind, self.amount = sigma, kind, amount

    def degrade(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        images = images.float()
        if self.kind == "gaussian":
            noise = torch.randn(images.shape, generator=generator, device=images.device)
            return images + 2 * self.sigma * noise
        draws = torch.rand((len(images), 1, *images.shape[2:]), generator=generator, device=images.device)
        salt, pepper = draws < self.amount / 2, draws > 1 - self.amount / 2
        return images.masked_fill(salt, 1.0).masked_fill(pepper, -1.0)

    def classical(self, observation: torch.Tensor) -> dict[str, torch.Tensor]:
        skimage = _require_skimage()
        if self.kind == "salt-pepper":
            median = _per_image(observation, lambda image: np.stack(
                [skimage.filters.median(image[..., c]) for c in range(image.shape[-1])], axis=-1))
            return {"median filter": median}
        gaussian = _per_image(observation, lambda image: skimage.filters.gaussian(
            image, sigma=1.0, channel_axis=-1, preserve_range=True))
        nl_means = _per_image(observation, lambda image: skimage.restoration.denoise_nl_means(
            image, h=0.8 * self.sigma, sigma=self.sigma, patch_size=3, patch_distance=5, channel_axis=-1,
            fast_mode=True))
        return {"Gaussian filter": gaussian, "non-local means": nl_means}

    def describe(self) -> str:
        return f"denoise (Gaussian, sigma {self.sigma:g})" if self.kind == "gaussian" else (
            f"denoise (salt-and-pepper, {self.amount:.0%})")


class Grayscale(Degradation):
    """Colorization: ``A(x)`` is the luma ``0.299 R + 0.587 G + 0.114 B`` ``[N, 1, R, R]``; 3-channel models only."""

    task = "colorize"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != 3:
            raise UsageError(f"colorization needs 3-channel images, got {images.shape[1]} channel(s).")
        weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)

    def encoder_input(self, observation: torch.Tensor) -> torch.Tensor:
        return observation.float().expand(-1, 3, -1, -1)

    def classical(self, observation: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"gray image": self.encoder_input(observation)}

    def check_channels(self, num_channels: int) -> None:
        if num_channels != 3:
            raise UsageError(f"colorize needs a colour (3-channel) model; this model has {num_channels} channel(s) "
                             "and its images have no colour to restore.")


def centered_box_mask(resolution: int, size: int) -> torch.Tensor:
    """``[1, 1, R, R]``: 1 everywhere but a centred ``size x size`` hole."""
    if not 0 < size < resolution:
        raise UsageError(f"the hole must be between 1 and {resolution - 1} px wide, got {size}.")
    mask = torch.ones(1, 1, resolution, resolution)
    start = (resolution - size) // 2
    mask[..., start:start + size, start:start + size] = 0
    return mask


def random_box_masks(count: int, resolution: int, min_size: int, max_size: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``[count, 1, R, R]``: one rectangular hole per image, sides in ``[min_size, max_size]``, placed at random."""
    if not 0 < min_size <= max_size < resolution:
        raise UsageError(f"hole sides must satisfy 0 < min <= max < {resolution}, got {min_size} and {max_size}.")
    masks = torch.ones(count, 1, resolution, resolution)
    sides = torch.randint(min_size, max_size + 1, (count, 2), generator=generator)
    for index, (height, width) in enumerate(sides.tolist()):
        top = int(torch.randint(0, resolution - height + 1, (1,), generator=generator))
        left = int(torch.randint(0, resolution - width + 1, (1,), generator=generator))
        masks[index, :, top:top + height, left:left + width] = 0
    return masks


def random_stroke_masks(count: int, resolution: int, strokes: int = 3, width: int = 3, length: int = 12,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """``[count, 1, R, R]``: ``strokes`` random brush strokes per image (random walks of ``length`` steps of a
    ``width``-pixel square brush, turning by up to 60 degrees per step) as holes."""
    masks = torch.ones(count, 1, resolution, resolution)
    radius = width // 2
    for index in range(count):
        for _ in range(strokes):
            y, x = (torch.rand(2, generator=generator) * resolution).tolist()
            angle = float(torch.rand(1, generator=generator)) * 2 * math.pi
            for _ in range(length):
                row, col = int(y), int(x)
                masks[index, :, max(row - radius, 0):row + radius + 1, max(col - radius, 0):col + radius + 1] = 0
                angle += (float(torch.rand(1, generator=generator)) - 0.5) * 2 * math.pi / 3
                y = min(max(y + math.sin(angle), 0), resolution - 1)
                x = min(max(x + math.cos(angle), 0), resolution - 1)
    return masks


__all__ = [
    "DOWNSAMPLE_FACTORS",
    "DOWNSAMPLE_MODES",
    "NOISE_KINDS",
    "Degradation",
    "Downsample",
    "Grayscale",
    "Mask",
    "Noise",
    "centered_box_mask",
    "random_box_masks",
    "random_stroke_masks",
]
