"""Configurations of the StyleGAN v1 generator and discriminator that GH-Feat inverts.

The channel widths follow StyleGAN v1: a block working at resolution ``2**r`` has
``nf(r - 1)`` feature maps, with ``nf(stage) = min(int(fmap_base / 2**(stage * fmap_decay)), fmap_max)``.
The released GH-Feat models use the NVIDIA defaults at 256 px (``fmap_base=8192, fmap_max=512``),
which gives 14 synthesis layers with style codes of widths
``[1024] * 8 + [512] * 2 + [256] * 2 + [128] * 2`` (9,984 values).
"""

from __future__ import annotations

import math

from transformers import PreTrainedConfig


def feature_maps(stage: int, fmap_base: int, fmap_decay: float, fmap_max: int) -> int:
    """StyleGAN v1 ``nf(stage)``: the number of feature maps of a network stage."""
    return min(int(fmap_base / (2.0 ** (stage * fmap_decay))), fmap_max)


def _resolution_log2(resolution: int) -> int:
    log2 = int(math.log2(resolution)) if resolution > 0 else 0
    if resolution < 4 or 2**log2 != resolution:
        raise ValueError(f"StyleGAN resolution must be a power of two >= 4, got {resolution}.")
    return log2


class _StyleGANWidthsMixin:
    """Width arithmetic, validation and fusing rule shared by the generator and discriminator configs."""

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _resolution_log2(self.resolution)
        if self.fused_scale not in ("auto", True, False):
            raise ValueError(f"fused_scale must be 'auto', True or False, got {self.fused_scale!r}.")

    def fused_at(self, resolution: int) -> bool:
        """Whether the resampling convolution at ``resolution`` is fused ('auto': at >= 128 px, as officially)."""
        return resolution >= 128 if self.fused_scale == "auto" else bool(self.fused_scale)

    @property
    def resolution_log2(self) -> int:
        return _resolution_log2(self.resolution)

    def channels_at(self, resolution: int) -> int:
        """Number of feature maps of the block working at ``resolution`` (a power of two)."""
        return feature_maps(_resolution_log2(resolution) - 1, self.fmap_base, self.fmap_decay, self.fmap_max)


class StyleGANGeneratorConfig(_StyleGANWidthsMixin, PreTrainedConfig):
    r"""
    Configuration of a StyleGAN v1 generator (mapping network + synthesis network).

    resolution (`int`, defaults to 256): output resolution, a power of two >= 4.
    num_channels (`int`, defaults to 3): image channels (RGB).
    fmap_base, fmap_decay, fmap_max: StyleGAN v1 width schedule (see module docstring).
    latent_size (`int`, defaults to 512): dimension of z.
    dlatent_size (`int`, defaults to 512): dimension of w.
    mapping_layers (`int`, defaults to 8): dense layers of the mapping network.
    mapping_fmaps (`int`, defaults to 512): width of the hidden mapping layers.
    mapping_lr_multiplier (`float`, defaults to 0.01): equalized-lr multiplier of the mapping network.
    normalize_latents (`bool`, defaults to True): pixel-normalise z before mapping.
    use_style_mod (`bool`, defaults to True): keep the per-layer StyleMod affines (w -> style codes).
        GH-Feat's modified synthesis network has none; the original generator has them.
    fused_scale (`str` or `bool`, defaults to "auto"): fused up-convolution; "auto" fuses at >= 128 px,
        exactly like the official code. Fused and non-fused convolutions are NOT interchangeable.
    truncation_psi (`float`, *optional*): default truncation strength (None disables truncation).
    truncation_cutoff (`int`, defaults to 8): number of leading layers that are truncated.
    dlatent_avg_beta (`float`, defaults to 0.995): decay of the tracked average w (GAN training only).
    style_mixing_prob (`float`, defaults to 0.9): style-mixing regularisation probability (GAN training only).
    """

    model_type = "stylegan-generator"

    resolution: int = 256
    num_channels: int = 3
    fmap_base: int = 8192
    fmap_decay: float = 1.0
    fmap_max: int = 512
    latent_size: int = 512
    dlatent_size: int = 512
    mapping_layers: int = 8
    mapping_fmaps: int = 512
    mapping_lr_multiplier: float = 0.01
    normalize_latents: bool = True
    use_style_mod: bool = True
    fused_scale: str | bool = "auto"
    truncation_psi: float | None = None
    truncation_cutoff: int = 8
    dlatent_avg_beta: float = 0.995
    style_mixing_prob: float = 0.9

    @property
    def num_layers(self) -> int:
        """Number of synthesis layers (two per resolution, starting at 4x4)."""
        return 2 * self.resolution_log2 - 2

    @property
    def layer_channels(self) -> list[int]:
        """Feature maps C_l of every synthesis layer."""
        return [self.channels_at(2 ** (layer // 2 + 2)) for layer in range(self.num_layers)]

    @property
    def style_dims(self) -> list[int]:
        """Width 2*C_l of the style code (AdaIN scale offset + bias) of every synthesis layer."""
        return [2 * channels for channels in self.layer_channels]


class StyleGANDiscriminatorConfig(_StyleGANWidthsMixin, PreTrainedConfig):
    r"""
    Configuration of the StyleGAN v1 discriminator ``D_basic``.

    resolution (`int`, defaults to 256), num_channels (`int`, defaults to 3),
    fmap_base / fmap_decay / fmap_max: as in [`StyleGANGeneratorConfig`].
    mbstd_group_size (`int`, defaults to 4): minibatch-stddev group size (``min(group, batch)`` is used).
    mbstd_num_features (`int`, defaults to 1): minibatch-stddev feature maps appended.
    fused_scale (`str` or `bool`, defaults to "auto"): fused down-convolution at inputs >= 128 px.
    """

    model_type = "stylegan-discriminator"

    resolution: int = 256
    num_channels: int = 3
    fmap_base: int = 8192
    fmap_decay: float = 1.0
    fmap_max: int = 512
    mbstd_group_size: int = 4
    mbstd_num_features: int = 1
    fused_scale: str | bool = "auto"


__all__ = ["StyleGANGeneratorConfig", "StyleGANDiscriminatorConfig", "feature_maps"]
