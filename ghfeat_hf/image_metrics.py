"""Pixel metrics shared by reconstruction, inversion, training validation and evaluation: one PSNR for the project.

Images compared here are model-space tensors in [-1, 1] ([`pixel_mse`]) or 8-bit pictures ([`picture_metrics`]);
errors are measured on pixels scaled to [0, 1], so PSNR has peak 1.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from .visualization import to_rgb


def psnr(mse: float | np.ndarray | torch.Tensor, peak: float = 1.0) -> float | np.ndarray | torch.Tensor:
    """PSNR in dB of a mean squared error: `10 log10(peak^2 / mse)`, `inf` where the MSE is 0. A tensor gives a
    tensor, an array (or a list) an array (float64), a number a float."""
    if isinstance(mse, torch.Tensor):
        return 10 * torch.log10(peak**2 / mse)
    with np.errstate(divide="ignore"):
        value = 10 * np.log10(peak**2 / np.asarray(mse, dtype=np.float64))
    return float(value) if value.ndim == 0 and not isinstance(mse, np.ndarray) else value


def pixel_mse(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image MSE `[N]` of images `[N, C, H, W]` in [-1, 1] (clamped) against a reference, on pixels scaled to
    [0, 1] (float32)."""
    difference = (images.float().clamp(-1, 1) - reference.float().clamp(-1, 1)) / 2
    return difference.square().flatten(1).mean(dim=1)


def picture_metrics(reference: PIL.Image.Image | np.ndarray, reconstruction: PIL.Image.Image | np.ndarray) -> dict:
    """MSE and PSNR (dB, peak 1) of two 8-bit RGB images (grayscale ones replicated to RGB, which leaves both
    unchanged) on pixels scaled to `[0, 1]`, over all pixels and channels. A reconstruction of another size is
    first resized (bilinear) to the reference's size. Identical images give `psnr = inf`."""
    reference, reconstruction = to_rgb(reference), to_rgb(reconstruction)
    if reconstruction.size != reference.size:
        reconstruction = reconstruction.resize(reference.size, PIL.Image.Resampling.BILINEAR)
    a = np.asarray(reference, dtype=np.float64) / 255.0
    b = np.asarray(reconstruction, dtype=np.float64) / 255.0
    mse = float(np.mean((a - b) ** 2))
    return {"mse": mse, "psnr": psnr(mse)}


__all__ = ["picture_metrics", "pixel_mse", "psnr"]
