"""Pixel metrics shared by reconstruction, inversion, training validation and evaluation: one PSNR for the project.

Images compared here are model-space tensors in [-1, 1] (or 8-bit pictures); errors are measured on pixels scaled
to [0, 1], so PSNR has peak 1.
"""

from __future__ import annotations

import numpy as np
import torch


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


__all__ = ["pixel_mse", "psnr"]
