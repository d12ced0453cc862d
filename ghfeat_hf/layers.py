"""Primitive operations of the official GH-Feat / StyleGAN v1 networks, in pure PyTorch.

Every op reproduces the TensorFlow computation of the official code:

* TF "SAME" padding, which pads asymmetrically (more at the bottom/right) for stride-2 ops on even inputs;
* equalized learning rate: weights are stored unscaled and multiplied at run time by
  ``gain / sqrt(fan_in) * lr_multiplier`` where ``fan_in`` is the product of all weight dims but the output one;
* the [1, 2, 1] blur, StyleGAN v1's fused up/down-sampling convolutions, instance norm with eps 1e-8,
  AdaIN with the ``+1`` scale offset, pixel norm and minibatch standard deviation.

Module classes carry the prefix of the model family whose official code defines them, as transformers names every
class after its model: the TF 'SAME' convolution and max pool are the GH-Feat encoder's (``GHFeat...``, used by its
ResNet trunk, FPN and SAM only), the equalized-learning-rate layers are StyleGAN v1's (``StyleGAN...``, used by the
mapping, synthesis and discriminator networks, including the synthesis network inside ``GHFeatModel``).

This file, like the configuration and modeling files, ships as remote code: ``ghfeat_hf.hub.REMOTE_CODE_FILES``
copies it next to the weights, where ``trust_remote_code=True`` loads it without ``ghfeat_hf``. Those files import
each other and transformers' own dependencies only (torch, numpy, PIL), so the TF 'SAME' padding is written here
rather than taken from ``timm.layers`` (``pad_same``, ``Conv2dSame``): a remote-code load cannot count on timm.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
SQRT2 = math.sqrt(2.0)


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Padding ``(before, after)`` TF's 'SAME' applies to one spatial dim of length ``size``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad an NCHW tensor exactly like TF 'SAME' would for a ``kernel`` x ``kernel`` op with ``stride``.

    The amounts depend on the input size, so ``torch.fx`` keeps this function as one leaf node (``torch.fx.wrap``
    below): a traced graph calls it with the real tensor and pads as the eager model does.
    """
    top, bottom = tf_same_padding(x.shape[-2], kernel, stride)
    left, right = tf_same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


torch.fx.wrap("pad_same")


class GHFeatSameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TF 'SAME' padding (asymmetric where TF is), weight ``[C_out, C_in, k, k]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, self.kernel_size[0], self.stride[0]))


class GHFeatSameMaxPool2d(nn.Module):
    """Max pooling with TF 'SAME' padding (padded cells never win: they hold -inf)."""

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class StyleGANEqualizedLinear(nn.Module):
    """Dense layer with equalized learning rate: ``y = x @ (W * gain / sqrt(in) * lr_mul).T + b * lr_mul``.

    ``weight`` is ``[out_features, in_features]`` (the TF ``[in, out]`` matrix transposed).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        gain: float = SQRT2,
        lr_multiplier: float = 1.0,
        bias: bool = True,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.lr_multiplier = lr_multiplier
        self.weight_gain = gain / math.sqrt(in_features) * lr_multiplier
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.lr_multiplier
        return F.linear(x, self.weight * self.weight_gain, bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, lr_multiplier={self.lr_multiplier}"


class StyleGANEqualizedConv2d(nn.Module):
    """Convolution with equalized learning rate, 'SAME' padding, and optional 2x resampling.

    ``weight`` is ``[C_out, C_in, k, k]``, scaled at run time by ``gain / sqrt(C_in * k * k)``.
    ``resample`` is one of ``None``, ``"up"`` (2x upsampling then conv) or ``"down"`` (conv then 2x2
    average pool). With ``fused=True`` the resampling is folded into one strided (transposed) convolution
    with the 4x4 kernel StyleGAN v1 builds from the 3x3 one; the result differs from the non-fused path
    for ``"up"``, so ``fused`` must follow the network's configuration.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        gain: float = SQRT2,
        bias: bool = True,
        resample: str | None = None,
        fused: bool = False,
    ):
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.resample = resample
        self.fused = fused and resample is not None
        self.weight_gain = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.lr_multiplier = 1.0
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.weight_gain
        padding = self.kernel_size // 2
        if self.fused:
            # Sum of the four shifted copies of the zero-padded kernel: a 4x4 kernel (k=3).
            weight = F.pad(weight, (1, 1, 1, 1))
            weight = weight[:, :, 1:, 1:] + weight[:, :, :-1, 1:] + weight[:, :, 1:, :-1] + weight[:, :, :-1, :-1]
            if self.resample == "up":
                x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2, padding=1)
            else:
                x = F.conv2d(x, weight * 0.25, stride=2, padding=1)
        elif self.resample == "up":
            x = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, padding=padding)
        else:
            x = F.conv2d(x, weight, padding=padding)
            if self.resample == "down":
                x = F.avg_pool2d(x, 2)
        if self.bias is not None:
            x = x + self.bias.view(1, -1, 1, 1)
        return x

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"resample={self.resample}, fused={self.fused}"
        )


def blur(x: torch.Tensor) -> torch.Tensor:
    """Depthwise ``[1, 2, 1] x [1, 2, 1] / 16`` filter with 'SAME' (1 px) zero padding, NCHW in and out."""
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (taps[:, None] * taps[None, :]) / 16.0
    channels = x.shape[1]
    return F.conv2d(x, kernel.expand(channels, 1, 3, 3), padding=1, groups=channels)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each sample to unit mean square over dim 1: ``x * rsqrt(mean(x**2) + eps)``.

    Computed in float32 (in fp16 ``eps`` underflows to 0 and ``x**2`` overflows), returned in ``x``'s dtype.
    """
    y = x.float()
    return (y * torch.rsqrt(y.square().mean(dim=1, keepdim=True) + eps)).to(x.dtype)


def instance_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """StyleGAN v1 instance norm of an NCHW tensor (no affine): zero mean, unit mean square per channel.

    Computed in float32 like :func:`pixel_norm` (a constant fp16 channel would give NaN), returned in ``x``'s dtype.
    """
    y = x.float()
    y = y - y.mean(dim=(2, 3), keepdim=True)
    return (y * torch.rsqrt(y.square().mean(dim=(2, 3), keepdim=True) + eps)).to(x.dtype)


def adain(x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Style modulation ``x * (s + 1) + b`` with ``style = [s, b]`` of shape ``[N, 2C]``, x ``[N, C, H, W]``."""
    scale, shift = style.view(style.shape[0], 2, x.shape[1], 1, 1).unbind(dim=1)
    return x * (scale + 1.0) + shift


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_features: int = 1) -> torch.Tensor:
    """Append the minibatch standard-deviation feature maps as the last channels.

    ``x`` is ``[N, C, H, W]``. Samples are grouped with a stride: sample ``i`` belongs to group
    ``i mod (N / G)`` with ``G = min(group_size, N)``; the variance is biased (divided by ``G``).
    Returns ``[N, C + num_features, H, W]``.
    """
    n, c, h, w = x.shape
    group = min(group_size, n)
    if n % group != 0:
        raise ValueError(f"Minibatch stddev needs the batch size ({n}) to be divisible by the group size ({group}).")
    y = x.reshape(group, -1, num_features, c // num_features, h, w).float()
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = torch.sqrt(y + 1e-8).mean(dim=(2, 3, 4)).to(x.dtype)
    y = y.reshape(-1, num_features, 1, 1).repeat(group, 1, h, w)
    return torch.cat([x, y], dim=1)


__all__ = [
    "LRELU_SLOPE",
    "SQRT2",
    "GHFeatSameConv2d",
    "GHFeatSameMaxPool2d",
    "StyleGANEqualizedConv2d",
    "StyleGANEqualizedLinear",
    "adain",
    "blur",
    "instance_norm",
    "minibatch_stddev",
    "pad_same",
    "pixel_norm",
    "tf_same_padding",
]
