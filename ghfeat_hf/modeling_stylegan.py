"""StyleGAN v1 networks as GH-Feat uses them: mapping, synthesis (driven by per-layer style codes) and D_basic.

GH-Feat replaces StyleGAN v1's per-layer affine ``A_l(w)`` by the encoder: the synthesis network takes the
AdaIN parameters ``y_l = [s_l, b_l]`` (``2 * C_l`` values, the real scale is ``s_l + 1``) of every layer
directly. The original generator keeps the affines (``use_style_mod=True``) so that ``w`` maps to the same
codes: ``y_l = A_l(w_l)``.

Style codes travel in one of three layouts, all accepted by :meth:`StyleGANSynthesis.forward`:

* a tuple of per-layer tensors ``[N, 2 * C_l]`` (``style_codes``);
* the official tiled tensor ``[N, L, max_l 2 * C_l]`` where narrower codes are repeated (``tiled_codes``);
* the compact vector ``[N, sum_l 2 * C_l]`` (9,984 values at 256 px).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_stylegan import StyleGANDiscriminatorConfig, StyleGANGeneratorConfig, feature_maps
from .layers import (
    LRELU_SLOPE,
    StyleGANEqualizedConv2d,
    StyleGANEqualizedLinear,
    adain,
    blur,
    instance_norm,
    minibatch_stddev,
    pixel_norm,
)

NOISE_MODES = ("const", "random", "none")
StyleCodes = tuple[torch.Tensor, ...]


def tile_style_codes(style_codes: Sequence[torch.Tensor], width: int | None = None) -> torch.Tensor:
    """Official layout: ``[N, L, width]`` with each ``[N, 2C_l]`` code repeated ``width / 2C_l`` times."""
    width = width or max(code.shape[-1] for code in style_codes)
    return torch.stack([code.repeat(1, width // code.shape[-1]) for code in style_codes], dim=1)


def compact_style_codes(style_codes: Sequence[torch.Tensor]) -> torch.Tensor:
    """The compact GH-Feat vector ``[N, sum_l 2C_l]``: per-layer codes concatenated without padding."""
    return torch.cat(list(style_codes), dim=1)


def untile_style_codes(tiled: torch.Tensor, style_dims: Sequence[int]) -> StyleCodes:
    """Per-layer codes ``[N, 2C_l]`` of the official tiled layout ``[N, L, >= max(style_dims)]`` (no shape check,
    static slicing only, so ``torch.fx`` can trace it)."""
    return tuple(tiled[:, layer, :dim] for layer, dim in enumerate(style_dims))


def as_style_code_tuple(codes: Sequence[torch.Tensor] | torch.Tensor, style_dims: Sequence[int]) -> StyleCodes:
    """Turn codes in any of the three layouts (see module docstring) into a tuple of ``[N, 2C_l]`` tensors."""
    num_layers, total = len(style_dims), sum(style_dims)
    if isinstance(codes, torch.Tensor):
        if codes.ndim == 3 and codes.shape[1] == num_layers and codes.shape[2] >= max(style_dims):
            return untile_style_codes(codes, style_dims)
        if codes.ndim == 2 and codes.shape[1] == total:
            return tuple(torch.split(codes, list(style_dims), dim=1))
        raise ValueError(
            f"Style codes of shape {tuple(codes.shape)} match neither the tiled layout [N, {num_layers}, "
            f">={max(style_dims)}] nor the compact layout [N, {total}]."
        )
    codes = tuple(codes)
    got = [tuple(code.shape[1:]) for code in codes]
    if len(codes) != num_layers or any(shape != (dim,) for shape, dim in zip(got, style_dims)):
        raise ValueError(f"Expected {num_layers} per-layer codes of widths {list(style_dims)}, got shapes {got}.")
    return codes


class StyleGANMapping(nn.Module):
    """z ``[N, latent_size]`` -> w ``[N, num_layers, dlatent_size]`` (broadcast over synthesis layers).

    Pixel norm, then ``mapping_layers`` equalized dense layers (lr multiplier 0.01), each followed by
    LeakyReLU(0.2). ``w_avg`` is the tracked average w used for truncation.
    """

    def __init__(self, config: StyleGANGeneratorConfig):
        super().__init__()
        self.normalize_latents = config.normalize_latents
        self.num_layers = config.num_layers
        self.truncation_cutoff = config.truncation_cutoff
        self.latent_size = config.latent_size
        widths = [config.latent_size] + [config.mapping_fmaps] * (config.mapping_layers - 1) + [config.dlatent_size]
        self.layers = nn.ModuleList(
            StyleGANEqualizedLinear(fan_in, fan_out, lr_multiplier=config.mapping_lr_multiplier)
            for fan_in, fan_out in zip(widths[:-1], widths[1:])
        )
        self.register_buffer("w_avg", torch.zeros(config.dlatent_size))

    def forward(
        self, z: torch.Tensor, truncation_psi: float | None = None, truncation_cutoff: int | None = None
    ) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != self.latent_size:
            shape = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be a [N, {self.latent_size}] tensor (this generator's latent_size), got {shape}.")
        x = pixel_norm(z) if self.normalize_latents else z
        for layer in self.layers:
            x = F.leaky_relu(layer(x), LRELU_SLOPE)
        w = x.unsqueeze(1).repeat(1, self.num_layers, 1)
        if truncation_psi is not None and truncation_psi != 1.0:
            cutoff = self.truncation_cutoff if truncation_cutoff is None else truncation_cutoff
            psi = torch.ones(self.num_layers, 1, dtype=w.dtype, device=w.device)
            psi[:cutoff] = truncation_psi
            w = self.w_avg + psi * (w - self.w_avg)
        return w


class StyleGANSynthesisLayer(nn.Module):
    """One synthesis layer: (const | conv | up-conv + blur) -> noise -> bias -> lrelu -> instance norm -> AdaIN."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution: int,
        kind: str,
        fused: bool = False,
        dlatent_size: int | None = None,
    ):
        super().__init__()
        self.kind = kind
        self.resolution = resolution
        if kind == "const":
            self.const = nn.Parameter(torch.ones(1, out_channels, 4, 4))
        else:
            resample = "up" if kind == "up" else None
            self.conv = StyleGANEqualizedConv2d(
                in_channels, out_channels, 3, bias=False, resample=resample, fused=fused
            )
        self.register_buffer("noise", torch.randn(1, 1, resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros(out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.style = StyleGANEqualizedLinear(dlatent_size, 2 * out_channels, gain=1.0) if dlatent_size else None

    def forward(self, x: torch.Tensor | None, style_code: torch.Tensor, noise_mode: str = "const",
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """``noise`` (``[N or 1, 1, r, r]``), when given, replaces the noise of ``noise_mode``."""
        if self.kind == "const":
            x = self.const.expand(style_code.shape[0], -1, -1, -1)
        else:
            x = self.conv(x)
            if self.kind == "up":
                x = blur(x)
        if noise is not None:
            x = x + noise.to(x.dtype) * self.noise_strength.view(1, -1, 1, 1)
        elif noise_mode == "const":
            x = x + self.noise * self.noise_strength.view(1, -1, 1, 1)
        elif noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
            x = x + noise * self.noise_strength.view(1, -1, 1, 1)
        x = F.leaky_relu(x + self.bias.view(1, -1, 1, 1), LRELU_SLOPE)
        return adain(instance_norm(x), style_code)


class StyleGANSynthesis(nn.Module):
    """StyleGAN v1 synthesis network as modified by GH-Feat.

    ``forward(style_codes=...)`` renders images ``[N, C, R, R]`` (linear output, roughly in [-1, 1]) from
    per-layer AdaIN codes in any layout; ``forward(w)`` first applies the StyleMod affines (only when built
    with ``use_style_mod``). ``noise_mode`` is ``"const"`` (the stored noise, as GH-Feat always uses),
    ``"random"`` (fresh noise, for GAN training) or ``"none"``; ``noise`` (one ``[N or 1, 1, r_l, r_l]`` map per
    layer, e.g. optimised per image) replaces it.
    """

    def __init__(self, config: StyleGANGeneratorConfig, use_style_mod: bool | None = None):
        super().__init__()
        use_style_mod = config.use_style_mod if use_style_mod is None else use_style_mod
        self.style_dims = config.style_dims
        dlatent_size = config.dlatent_size if use_style_mod else None
        layers = []
        for index, channels in enumerate(config.layer_channels):
            resolution = 2 ** (index // 2 + 2)
            if index == 0:
                kind, in_channels = "const", channels
            elif index % 2 == 0:
                kind, in_channels = "up", config.layer_channels[index - 1]
            else:
                kind, in_channels = "conv", channels
            fused = kind == "up" and config.fused_at(resolution)
            layers.append(StyleGANSynthesisLayer(in_channels, channels, resolution, kind, fused, dlatent_size))
        self.layers = nn.ModuleList(layers)
        self.to_rgb = StyleGANEqualizedConv2d(config.layer_channels[-1], config.num_channels, 1, gain=1.0)

    @property
    def has_style_mod(self) -> bool:
        return self.layers[0].style is not None

    def style_codes(self, w: torch.Tensor) -> StyleCodes:
        """Map w ``[N, dlatent]`` or w+ ``[N, L, dlatent]`` to per-layer codes ``y_l = A_l(w_l)``."""
        if not self.has_style_mod:
            raise ValueError("This synthesis network has no StyleMod affines (GH-Feat style); pass style codes.")
        if w.ndim == 2:
            w = w.unsqueeze(1).expand(-1, len(self.layers), -1)
        if w.ndim != 3 or w.shape[1] != len(self.layers):
            raise ValueError(f"w must be [N, dlatent] or [N, {len(self.layers)}, dlatent], got {tuple(w.shape)}.")
        return tuple(layer.style(w[:, index]) for index, layer in enumerate(self.layers))

    def forward(
        self,
        w: torch.Tensor | None = None,
        *,
        style_codes: Sequence[torch.Tensor] | torch.Tensor | None = None,
        noise_mode: str = "const",
        noise: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if (w is None) == (style_codes is None):
            raise ValueError("Pass exactly one of `w` or `style_codes`.")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}.")
        codes = self.style_codes(w) if w is not None else as_style_code_tuple(style_codes, self.style_dims)
        if noise is not None and len(noise) != len(self.layers):
            raise ValueError(f"noise must hold one map per layer ({len(self.layers)}), got {len(noise)}.")
        x = None
        for index, (layer, code) in enumerate(zip(self.layers, codes)):
            x = layer(x, code, noise_mode, None if noise is None else noise[index])
        return self.to_rgb(x)


class StyleGANDiscriminatorBlock(nn.Module):
    """``conv0`` (3x3) -> lrelu -> blur -> ``conv1_down`` (3x3, 2x down) -> lrelu."""

    def __init__(self, channels: int, out_channels: int, fused: bool):
        super().__init__()
        self.conv0 = StyleGANEqualizedConv2d(channels, channels, 3)
        self.conv1_down = StyleGANEqualizedConv2d(channels, out_channels, 3, resample="down", fused=fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv0(x), LRELU_SLOPE)
        return F.leaky_relu(self.conv1_down(blur(x)), LRELU_SLOPE)


class StyleGANDiscriminatorNet(nn.Module):
    """StyleGAN v1 ``D_basic``: images ``[N, C, R, R]`` in [-1, 1] -> scores ``[N, 1]``."""

    def __init__(self, config: StyleGANDiscriminatorConfig):
        super().__init__()
        self.mbstd_group_size = config.mbstd_group_size
        self.mbstd_num_features = config.mbstd_num_features
        self.from_rgb = StyleGANEqualizedConv2d(config.num_channels, config.channels_at(config.resolution), 1)
        self.blocks = nn.ModuleList(
            StyleGANDiscriminatorBlock(
                config.channels_at(2**log2), config.channels_at(2 ** (log2 - 1)), config.fused_at(2**log2)
            )
            for log2 in range(config.resolution_log2, 2, -1)
        )
        channels = config.channels_at(4)
        dense_channels = feature_maps(0, config.fmap_base, config.fmap_decay, config.fmap_max)
        self.final_conv = StyleGANEqualizedConv2d(channels + config.mbstd_num_features, channels, 3)
        self.final_dense = StyleGANEqualizedLinear(channels * 16, dense_channels)
        self.output = StyleGANEqualizedLinear(dense_channels, 1, gain=1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.from_rgb(images), LRELU_SLOPE)
        for block in self.blocks:
            x = block(x)
        return self.score(x)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The 4x4 head: features ``[N, C, 4, 4]`` after the last block -> scores ``[N, 1]`` (minibatch stddev,
        3x3 conv, two dense layers)."""
        x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_features)
        x = F.leaky_relu(self.final_conv(x), LRELU_SLOPE)
        x = F.leaky_relu(self.final_dense(x.flatten(1)), LRELU_SLOPE)
        return self.output(x)


@torch.no_grad()
def init_stylegan_module(module: nn.Module) -> bool:
    """Initialise a StyleGAN module as the official code does; returns False for modules it does not own.

    Uses ``transformers.initialization`` so tensors already loaded by ``from_pretrained`` are left alone.
    """
    if isinstance(module, (StyleGANEqualizedConv2d, StyleGANEqualizedLinear)):
        init.normal_(module.weight, std=1.0 / module.lr_multiplier)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, StyleGANSynthesisLayer):
        if module.kind == "const":
            init.ones_(module.const)
        init.normal_(module.noise)
        init.zeros_(module.noise_strength)
        init.zeros_(module.bias)
    elif isinstance(module, StyleGANMapping):
        init.zeros_(module.w_avg)
    else:
        return False
    return True


class StyleGANPreTrainedModel(PreTrainedModel):
    """Official StyleGAN initialisation for the generator and discriminator models."""

    # Kept on one device by device_map="auto": the mapping's truncation reads w_avg next to its layers' output, a
    # synthesis layer adds its noise and bias to its convolution's output, a discriminator block chains two convs.
    _no_split_modules = ["StyleGANDiscriminatorBlock", "StyleGANMapping", "StyleGANSynthesisLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        if not init_stylegan_module(module):
            super()._init_weights(module)


class StyleGANGenerator(StyleGANPreTrainedModel):
    """StyleGAN v1 generator: ``mapping`` (z -> w) and ``synthesis`` with StyleMod affines (w -> images).

    ``generator(z)`` returns images ``[N, C, R, R]``; ``generator.mapping(z)`` gives w ``[N, L, 512]``;
    ``generator.style_codes(w)`` the per-layer GH-Feat codes; ``generator.synthesis(w)`` images from w.
    """

    config_class = StyleGANGeneratorConfig
    main_input_name = "z"
    base_model_prefix = "generator"

    def __init__(self, config: StyleGANGeneratorConfig):
        super().__init__(config)
        self.mapping = StyleGANMapping(config)
        self.synthesis = StyleGANSynthesis(config)
        self.post_init()

    def style_codes(self, w: torch.Tensor) -> StyleCodes:
        """Per-layer style codes ``A_l(w_l)`` (tuple of ``[N, 2C_l]``) of w or w+."""
        return self.synthesis.style_codes(w)

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float | None = None,
        truncation_cutoff: int | None = None,
        noise_mode: str = "const",
    ) -> torch.Tensor:
        """z ``[N, latent_size]`` -> images ``[N, C, R, R]``; truncation defaults to ``config.truncation_psi``."""
        psi = self.config.truncation_psi if truncation_psi is None else truncation_psi
        w = self.mapping(z, psi, truncation_cutoff)
        return self.synthesis(w, noise_mode=noise_mode)


class StyleGANDiscriminator(StyleGANPreTrainedModel):
    """StyleGAN v1 discriminator ``D_basic``: ``discriminator(images)`` -> scores ``[N, 1]``."""

    config_class = StyleGANDiscriminatorConfig
    main_input_name = "images"
    base_model_prefix = "discriminator"

    def __init__(self, config: StyleGANDiscriminatorConfig):
        super().__init__(config)
        self.network = StyleGANDiscriminatorNet(config)
        self.post_init()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[N, C, R, R]`` in [-1, 1] -> logits ``[N, 1]``."""
        return self.network(images)


__all__ = [
    "StyleGANDiscriminator",
    "StyleGANDiscriminatorNet",
    "StyleGANGenerator",
    "StyleGANMapping",
    "StyleGANPreTrainedModel",
    "StyleGANSynthesis",
    "as_style_code_tuple",
    "compact_style_codes",
    "init_stylegan_module",
    "tile_style_codes",
    "untile_style_codes",
]
