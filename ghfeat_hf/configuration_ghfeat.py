"""GH-Feat configuration: the encoder's hyper-parameters and the StyleGAN generator it inverts.

Heads and generator layers
--------------------------
The encoder has three dense heads fed by the three aligned pyramid levels. The deepest (coarsest) feature
drives the first (coarse) generator layers, exactly as in the official model where, at 256 px,
``HighLevel`` -> layers 0-3 (4x4, 8x8), ``MidLevel`` -> layers 4-7 (16x16, 32x32) and
``LowLevel`` -> layers 8-13 (64x64 to 256x256).

For a generator with another number of layers the resolutions (two layers each) are split into three
contiguous groups as evenly as possible, any remainder going first to the fine group and then to the coarse
group: 7 resolutions (256 px) -> 2/2/3 resolutions = 4/4/6 layers (the official split), 4 resolutions
(32 px) -> 1/1/2 = 2/2/4 layers, 5 (64 px) -> 2/1/2, 8 (512 px) -> 3/2/3, 9 (1024 px) -> 3/3/3.
``head_layer_groups`` overrides this with explicit layer counts (coarse, middle, fine) summing to the number
of generator layers. Every head outputs the concatenation of the codes of its layers, in layer order.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

from .configuration_stylegan import StyleGANGeneratorConfig

RESNET_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
HEAD_NAMES = ("coarse", "middle", "fine")
PYRAMID_LEVELS = ["p4", "p5", "p6"]  # FPN levels built on res4, res5, res6 (fine to coarse)
MAX_RESOLUTION = 2**14  # of the input and of the generator
# Inclusive ranges of the integer hyper-parameters: positive, and far above any released model (64/2048/512/256 px).
INTEGER_RANGES = {
    "base_width": (1, 2**12),
    "extra_stage_channels": (1, 2**16),
    "pyramid_channels": (1, 2**16),
    "image_size": (1, MAX_RESOLUTION),
    "stem_stride": (1, 4),
}


def default_head_layer_groups(num_layers: int) -> list[int]:
    """Split ``num_layers`` generator layers (two per resolution) into coarse/middle/fine layer counts."""
    resolutions = num_layers // 2
    base, remainder = divmod(resolutions, 3)
    coarse, middle, fine = base + (remainder == 2), base, base + (remainder >= 1)
    return [2 * coarse, 2 * middle, 2 * fine]


def _is_int(value) -> bool:
    """An integer, not a bool (JSON ``true`` would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class GHFeatConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a GH-Feat model (encoder + the StyleGAN synthesis network it inverts into).
    The defaults are the released FFHQ-256 model.

    depth (`int`, defaults to 50): ResNet depth of the trunk, one of 18, 34 (basic blocks), 50, 101 (bottlenecks).
    base_width (`int`, defaults to 64): stem width; stage widths are ``base_width * [1, 2, 4, 8]`` for basic
        blocks and ``base_width * [4, 8, 16, 32]`` for bottlenecks (the official 64 gives 256..2048).
    extra_stage_channels (`int`, defaults to 2048): width of the extra bottleneck stage ("stage5", res6).
    pyramid_channels (`int`, defaults to 512): width of the FPN and of the spatial alignment module.
    image_size (`int`, defaults to 256): input resolution.
    num_channels (`int`, defaults to 3): input channels, 3 (RGB) or 1 (grayscale); must equal the generator's
        `num_channels` (the reconstruction is compared with the input).
    stem_stride (`int`, defaults to 2): stride of the 7x7 stem convolution.
    stem_pool (`bool`, defaults to True): the 3x3/2 max pool after the stem. Small models (32 px) may drop
        the stem downsampling so that the pyramid keeps a useful size; the official model keeps both.
    head_layer_groups (`list[int]`, *optional*): generator layers per head (coarse, middle, fine); see the
        module docstring for the default rule.
    batch_norm_eps (`float`, defaults to 1e-5), batch_norm_momentum (`float`, defaults to 0.1): BatchNorm
        settings of the official code (TF decay 0.9).
    initializer_range (`float`, defaults to 0.02): std of the normal init of the encoder weights.
    generator_config (`dict` or [`StyleGANGeneratorConfig`]): the generator the encoder inverts. Only its
        synthesis part is used by [`GHFeatModel`]; it is stored without StyleMod affines. Defaults to the
        FFHQ-256 generator with `num_channels` channels.
    out_features (`list[str]`, *optional*), out_indices (`list[int]`, *optional*): pyramid levels returned by
        [`GHFeatBackbone`], among `stage_names = ["p4", "p5", "p6"]` (FPN levels on res4, res5, res6, strides
        `pyramid_strides`). Defaults to the coarsest level, as transformers backbones do.
    """

    model_type = "ghfeat"
    sub_configs_defaults = {"generator_config": StyleGANGeneratorConfig}

    depth: int = 50
    base_width: int = 64
    extra_stage_channels: int = 2048
    pyramid_channels: int = 512
    image_size: int = 256
    num_channels: int = 3
    stem_stride: int = 2
    stem_pool: bool = True
    head_layer_groups: list[int] | None = None
    batch_norm_eps: float = 1e-5
    batch_norm_momentum: float = 0.1
    initializer_range: float = 0.02
    generator_config: dict | StyleGANGeneratorConfig | None = None

    def __post_init__(self, **kwargs):
        self.stage_names = list(PYRAMID_LEVELS)
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        if self.generator_config is None:
            self.generator_config = StyleGANGeneratorConfig(num_channels=self.num_channels)
        super().__post_init__(**kwargs)
        self.check_ranges()
        if self.num_channels != self.generator_config.num_channels:
            raise ValueError(
                f"num_channels ({self.num_channels}) must equal the generator's num_channels "
                f"({self.generator_config.num_channels}): the encoder reads the images the generator renders."
            )
        if self.image_size % self.total_stride:
            raise ValueError(
                f"image_size ({self.image_size}) must be divisible by the encoder's total stride "
                f"({self.total_stride})."
            )
        if self.head_layer_groups is None:
            self.head_layer_groups = default_head_layer_groups(self.num_layers)
        if not isinstance(self.head_layer_groups, (list, tuple)):
            raise ValueError(f"head_layer_groups must be a list of three layer counts, got {self.head_layer_groups!r}.")
        self.head_layer_groups = list(self.head_layer_groups)
        self.check_head_layer_groups()

    def check_ranges(self) -> None:
        """Raise a ValueError naming the first hyper-parameter of a wrong type or out of range."""
        if not _is_int(self.depth) or self.depth not in RESNET_UNITS:
            raise ValueError(f"depth must be one of {sorted(RESNET_UNITS)}, got {self.depth!r}.")
        for key, (low, high) in INTEGER_RANGES.items():
            value = getattr(self, key)
            if not _is_int(value) or not low <= value <= high:
                raise ValueError(f"{key} must be an integer in [{low}, {high}], got {value!r}.")
        if not _is_int(self.num_channels) or self.num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 (grayscale) or 3 (RGB), got {self.num_channels!r}.")
        if not isinstance(self.stem_pool, bool):
            raise ValueError(f"stem_pool must be true or false, got {self.stem_pool!r}.")
        if not _is_number(self.batch_norm_eps) or not 0 < self.batch_norm_eps <= 1:
            raise ValueError(f"batch_norm_eps must be a number in (0, 1], got {self.batch_norm_eps!r}.")
        if self.batch_norm_momentum is not None and not (
            _is_number(self.batch_norm_momentum) and 0 <= self.batch_norm_momentum <= 1
        ):
            raise ValueError(f"batch_norm_momentum must be null or a number in [0, 1], got {self.batch_norm_momentum!r}.")
        if self.generator_config.resolution > MAX_RESOLUTION:
            raise ValueError(
                f"generator_config.resolution must be at most {MAX_RESOLUTION}, got {self.generator_config.resolution}."
            )
        widths = self.generator_config.layer_channels
        if min(widths) < 1:
            raise ValueError(f"generator_config gives synthesis layers without channels: layer widths {widths}.")

    def check_head_layer_groups(self) -> None:
        """Raise a ValueError unless ``head_layer_groups`` splits the generator's layers in three.

        The groups are fixed when the config is built: after assigning another ``generator_config``, set them
        again (e.g. to ``default_head_layer_groups(config.num_layers)``).
        """
        groups = self.head_layer_groups
        counts_ok = all(_is_int(count) and count >= 0 for count in groups)
        if len(groups) != 3 or not counts_ok or sum(groups) != self.num_layers:
            raise ValueError(
                f"head_layer_groups must be three layer counts summing to {self.num_layers} (the generator's "
                f"layers), got {self.head_layer_groups}; set them again after changing generator_config."
            )

    @property
    def bottleneck(self) -> bool:
        """Whether the trunk uses bottleneck units (depth 50/101) rather than basic blocks (18/34)."""
        return self.depth >= 50

    @property
    def units_per_stage(self) -> tuple[int, ...]:
        return RESNET_UNITS[self.depth]

    @property
    def stage_channels(self) -> list[int]:
        """Output widths of stage1..stage4."""
        factors = (4, 8, 16, 32) if self.bottleneck else (1, 2, 4, 8)
        return [self.base_width * factor for factor in factors]

    @property
    def total_stride(self) -> int:
        """Stride of the coarsest pyramid level (res6) with respect to the input."""
        return self.stem_stride * (2 if self.stem_pool else 1) * 16

    @property
    def pyramid_strides(self) -> list[int]:
        """Strides of the three pyramid levels (res4, res5, res6)."""
        return [self.total_stride // 4, self.total_stride // 2, self.total_stride]

    @property
    def aligned_size(self) -> int:
        """Spatial size all pyramid levels are pooled to (4 for the official model)."""
        return self.image_size // self.total_stride

    @property
    def num_layers(self) -> int:
        """Number of generator layers (style codes)."""
        return self.generator_config.num_layers

    @property
    def style_dims(self) -> list[int]:
        """Width 2*C_l of every layer's style code; the single source all shapes derive from."""
        return self.generator_config.style_dims

    @property
    def head_layers(self) -> list[list[int]]:
        """Generator layer indices produced by the coarse, middle and fine heads."""
        self.check_head_layer_groups()
        bounds = [0]
        for count in self.head_layer_groups:
            bounds.append(bounds[-1] + count)
        return [list(range(start, stop)) for start, stop in zip(bounds[:-1], bounds[1:])]


def architecture_fields(config_class: type) -> tuple[str, ...]:
    """The hyper-parameters a config class declares itself (no transformers bookkeeping)."""
    return tuple(inspect.get_annotations(config_class))


def ghfeat_config_dict(config: GHFeatConfig) -> dict[str, Any]:
    """JSON-serialisable architecture of ``config``: its own fields, the generator reduced to its own fields."""
    fields = {name: copy.deepcopy(getattr(config, name)) for name in architecture_fields(GHFeatConfig)}
    generator = config.generator_config
    fields["generator_config"] = {
        name: copy.deepcopy(getattr(generator, name)) for name in architecture_fields(StyleGANGeneratorConfig)
    }
    return fields


__all__ = ["GHFeatConfig", "HEAD_NAMES", "PYRAMID_LEVELS", "architecture_fields", "default_head_layer_groups", "ghfeat_config_dict"]
