"""GH-Feat: the hierarchical encoder and the transformers model pairing it with the StyleGAN synthesis network.

Encoder (official ``networks_ghfeat.Encoder``): a ResNet trunk with TF "SAME" padding, an extra bottleneck
stage (res6), a 3-level FPN on res4/res5/res6 with 3x3 laterals, a spatial alignment module (SAM) that pools
every level to the coarsest size, and three dense + BatchNorm heads; the deepest level feeds the coarse
generator layers. The output is one AdaIN style code per generator layer.

The trunk units (stage1..stage4 and the extra stage) are transformers ``GradientCheckpointingLayer``s:
``activation_checkpointing_enable()`` (or timm's ``set_grad_checkpointing``) recomputes them in the backward pass
of a training step. The stem is not checkpointed: its input, the image, does not require grad, so reentrant
checkpointing (``use_reentrant=True``) would leave the stem without gradients. The encoder
traces with ``torch.fx``: the input check and the TF "SAME" padding are leaf functions (``torch.fx.wrap``), and
every other loop runs over static config values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput
from transformers.utils import ModelOutput

from .configuration_ghfeat import HEAD_NAMES, GHFeatConfig
from .layers import LRELU_SLOPE, GHFeatSameConv2d, GHFeatSameMaxPool2d
from .modeling_stylegan import (
    StyleCodes,
    StyleGANSynthesis,
    compact_style_codes,
    init_stylegan_module,
    tile_style_codes,
)

NUM_TRUNK_FEATURES = 6  # stem, res2..res5 (stage1..stage4), res6 (extra stage)


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int, image_size: int) -> torch.Tensor:
    """``pixel_values`` itself, after raising a ValueError unless it is a floating-point
    ``[N, num_channels, image_size, image_size]`` tensor.

    A leaf of ``torch.fx`` graphs (``torch.fx.wrap`` below): a traced model checks its real input the same way.
    """
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        raise ValueError("pixel_values must be a 4-D tensor [N, C, H, W]; use GHFeatImageProcessor on images.")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be floating point in [-1, 1], got {pixel_values.dtype}; convert 8-bit "
                         "images with GHFeatImageProcessor (or x / 127.5 - 1).")
    if tuple(pixel_values.shape[1:]) != (num_channels, image_size, image_size):
        raise ValueError(f"pixel_values must be [N, {num_channels}, {image_size}, {image_size}], "
                         f"got {list(pixel_values.shape)}; resize with GHFeatImageProcessor.")
    return pixel_values


torch.fx.wrap("check_pixel_values")


class GHFeatConvNorm(nn.Module):
    """A 'SAME'-padded convolution followed by BatchNorm (the activation is applied by the caller)."""

    def __init__(self, config: GHFeatConfig, in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = True):
        super().__init__()
        self.conv = GHFeatSameConv2d(in_ch, out_ch, kernel, stride=stride, bias=bias)
        self.norm = nn.BatchNorm2d(out_ch, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class GHFeatBottleneckUnit(GradientCheckpointingLayer):
    """Official bottleneck unit (stride in the 3x3 conv): ``relu(c(b(a(x))) + shortcut(x))``, conv -> BN -> ReLU."""

    def __init__(self, config: GHFeatConfig, in_ch: int, out_ch: int, stride: int, project: bool):
        super().__init__()
        hidden = int(out_ch * 0.25)
        self.shortcut = GHFeatConvNorm(config, in_ch, out_ch, 1, stride, bias=False) if project else None
        self.conv_a = GHFeatConvNorm(config, in_ch, hidden, 1)
        self.conv_b = GHFeatConvNorm(config, hidden, hidden, 3, stride)
        self.conv_c = GHFeatConvNorm(config, hidden, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        y = F.relu(self.conv_b(F.relu(self.conv_a(x))))
        return F.relu(self.conv_c(y) + shortcut)


class GHFeatBasicUnit(GradientCheckpointingLayer):
    """Official basic block: conv -> LeakyReLU(0.2) -> BN, twice, plus the shortcut; no activation after the add."""

    def __init__(self, config: GHFeatConfig, in_ch: int, out_ch: int, stride: int, project: bool):
        super().__init__()
        self.shortcut = GHFeatConvNorm(config, in_ch, out_ch, 1, stride, bias=False) if project else None
        self.conv_a = GHFeatConvNorm(config, in_ch, out_ch, 3, stride)
        self.conv_b = GHFeatConvNorm(config, out_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        y = self.conv_a.norm(F.leaky_relu(self.conv_a.conv(x), LRELU_SLOPE))
        return self.conv_b.norm(F.leaky_relu(self.conv_b.conv(y), LRELU_SLOPE)) + shortcut


class GHFeatEncoderStem(nn.Module):
    """7x7 conv (no bias) -> BN -> LeakyReLU(0.2) -> optional 3x3/2 max pool (TF 'SAME' padding)."""

    def __init__(self, config: GHFeatConfig):
        super().__init__()
        self.conv = GHFeatSameConv2d(config.num_channels, config.base_width, 7, stride=config.stem_stride, bias=False)
        self.norm = nn.BatchNorm2d(config.base_width, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.pool = GHFeatSameMaxPool2d(3, 2) if config.stem_pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.leaky_relu(self.norm(self.conv(x)), LRELU_SLOPE))


class GHFeatFeaturePyramid(nn.Module):
    """FPN on (res4, res5, res6): 3x3 laterals, nearest top-down sums, 3x3 outputs; no activations.

    Returns ``(P0, P1, P2)`` from the finest (res4) to the coarsest (res6) level, each ``pyramid_channels`` wide.
    """

    def __init__(self, config: GHFeatConfig, in_channels: Sequence[int]):
        super().__init__()
        width = config.pyramid_channels
        self.lateral_convs = nn.ModuleList(GHFeatSameConv2d(ch, width, 3) for ch in in_channels)
        self.output_convs = nn.ModuleList(GHFeatSameConv2d(width, width, 3) for _ in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        laterals = [conv(feature) for conv, feature in zip(self.lateral_convs, features)]
        for level in range(len(laterals) - 2, -1, -1):
            laterals[level] = laterals[level] + F.interpolate(laterals[level + 1], scale_factor=2.0, mode="nearest")
        return tuple(conv(lateral) for conv, lateral in zip(self.output_convs, laterals))


class GHFeatSpatialAlignment(nn.Module):
    """SAM: pool every level to the coarsest size (2x2 average pools), 3x3 conv each, add the coarsest to the others.

    The FPN levels are 2x apart, so level ``k`` of ``n`` takes ``n - 1 - k`` pools (a static count).
    """

    def __init__(self, config: GHFeatConfig, num_levels: int = 3):
        super().__init__()
        width = config.pyramid_channels
        self.convs = nn.ModuleList(GHFeatSameConv2d(width, width, 3) for _ in range(num_levels))

    def forward(self, pyramid: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        aligned = []
        for index, (conv, level) in enumerate(zip(self.convs, pyramid)):
            for _ in range(len(self.convs) - 1 - index):
                level = F.avg_pool2d(level, 2)
            aligned.append(conv(level))
        coarsest = aligned[-1]
        return tuple(level + coarsest for level in aligned[:-1]) + (coarsest,)


class GHFeatStyleHead(nn.Module):
    """Dense + BatchNorm1d head producing the concatenated codes of its generator layers."""

    def __init__(self, config: GHFeatConfig, style_dims: Sequence[int]):
        super().__init__()
        self.style_dims = list(style_dims)
        self.code_offsets = [0, *accumulate(self.style_dims)]
        in_features = config.pyramid_channels * config.aligned_size**2
        self.linear = nn.Linear(in_features, sum(style_dims))
        self.norm = nn.BatchNorm1d(sum(style_dims), eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)

    def forward(self, x: torch.Tensor) -> StyleCodes:
        codes = self.norm(self.linear(x.flatten(1)))
        return tuple(codes[:, start:stop] for start, stop in zip(self.code_offsets[:-1], self.code_offsets[1:]))


class GHFeatEncoder(nn.Module):
    """The GH-Feat encoder: images ``[N, C, S, S]`` in [-1, 1] -> per-layer style codes.

    ``stages`` are stage1..stage4 of the ResNet trunk, ``extra_stage`` is stage5 (res6); the heads are
    ordered (coarse, middle, fine) and read the (res6, res5, res4) aligned levels.
    """

    def __init__(self, config: GHFeatConfig):
        super().__init__()
        self.image_size = config.image_size
        self.num_channels = config.num_channels
        self.stem = GHFeatEncoderStem(config)
        unit = GHFeatBottleneckUnit if config.bottleneck else GHFeatBasicUnit
        stages, in_ch = [], config.base_width
        for index, (num_units, out_ch) in enumerate(zip(config.units_per_stage, config.stage_channels)):
            stride = 1 if index == 0 else 2
            units = [unit(config, in_ch, out_ch, stride, project=True)]
            units += [unit(config, out_ch, out_ch, 1, project=False) for _ in range(num_units - 1)]
            stages.append(nn.Sequential(*units))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.extra_stage = GHFeatBottleneckUnit(config, in_ch, config.extra_stage_channels, 2, project=True)
        pyramid_inputs = [config.stage_channels[2], config.stage_channels[3], config.extra_stage_channels]
        self.fpn = GHFeatFeaturePyramid(config, pyramid_inputs)
        self.alignment = GHFeatSpatialAlignment(config)
        self.heads = nn.ModuleList(
            GHFeatStyleHead(config, [config.style_dims[layer] for layer in layers]) for layers in config.head_layers
        )
        self.head_names = HEAD_NAMES

    def forward_hidden_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every intermediate feature map, input to output: ``(stem, res2, res3, res4, res5, res6, p4, p5, p6)``.

        The stem output, stage1..stage4, the extra stage, then the FPN levels (``forward_pyramid``). Raises a
        ValueError unless ``pixel_values`` is ``[N, num_channels, image_size, image_size]``.
        """
        x = self.stem(check_pixel_values(pixel_values, self.num_channels, self.image_size))
        trunk = [x]
        for stage in self.stages:
            x = stage(x)
            trunk.append(x)
        trunk.append(self.extra_stage(x))
        return (*trunk, *self.fpn(trunk[3:]))

    def forward_pyramid(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """FPN levels ``(P0, P1, P2)``, ``[N, pyramid_channels, S/s, S/s]`` for strides ``config.pyramid_strides``."""
        return self.forward_hidden_states(pixel_values)[NUM_TRUNK_FEATURES:]

    def forward_heads(self, pyramid: Sequence[torch.Tensor]) -> StyleCodes:
        """Style codes (tuple of ``[N, 2C_l]`` in generator-layer order) from the FPN levels."""
        aligned = self.alignment(pyramid)
        codes: StyleCodes = ()
        for head, level in zip(self.heads, reversed(aligned)):
            # gathered where the aligned levels are: a device map may place the three heads on different devices
            codes += tuple(code.to(level.device) for code in head(level))
        return codes

    def forward(self, pixel_values: torch.Tensor) -> tuple[StyleCodes, tuple[torch.Tensor, ...]]:
        """Returns ``(style_codes, pyramid_features)``."""
        pyramid = self.forward_pyramid(pixel_values)
        return self.forward_heads(pyramid), pyramid


@dataclass
class GHFeatModelOutput(ModelOutput):
    """
    Output of [`GHFeatModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_layers, max_style_dim)`):
            The official GH-Feat tensor (`[N, 14, 1024]` at 256 px): one row per generator layer, codes narrower
            than the widest repeated (tiled) to fill the row, exactly as the official encoder outputs them.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, sum(style_dims))`):
            The compact GH-Feat vector (9,984 values at 256 px): per-layer codes concatenated without padding.
        style_codes (`tuple(torch.FloatTensor)`): one `(batch_size, 2 * C_l)` AdaIN code per generator layer,
            `[scale offset, bias]`; the synthesis network applies `x * (scale + 1) + bias`.
        pyramid_features (`tuple(torch.FloatTensor)`): the encoder's FPN levels from fine (res4) to coarse (res6),
            each `(batch_size, pyramid_channels, H_k, W_k)`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`): the
            encoder's 9 feature maps `(batch_size, channels, height, width)`, input to output: the stem output,
            the trunk stages res2, res3, res4, res5 (stage1..stage4), the extra stage res6, then the FPN levels
            p4, p5, p6 (`pyramid_features`). At 256 px (official model): stem 64@64x64, res2 256@64x64,
            res3 512@32x32, res4 1024@16x16, res5 2048@8x8, res6 2048@4x4, p4/p5/p6 512@16x16/8x8/4x4.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    style_codes: tuple[torch.FloatTensor, ...] | None = None
    pyramid_features: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class GHFeatPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading glue shared by the GH-Feat models."""

    config_class = GHFeatConfig
    base_model_prefix = "ghfeat"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True  # the trunk units (GradientCheckpointingLayer)
    # Blocks that combine the outputs of their sub-modules (residual, FPN and SAM sums; the code split of a head;
    # noise and bias added to a convolution) must stay on one device when device_map="auto" places the model.
    _no_split_modules = [
        "GHFeatBasicUnit",
        "GHFeatBottleneckUnit",
        "GHFeatFeaturePyramid",
        "GHFeatSpatialAlignment",
        "GHFeatStyleHead",
        "StyleGANSynthesisLayer",
    ]

    def _init_weights(self, module: nn.Module) -> None:
        if not init_stylegan_module(module):
            super()._init_weights(module)


class GHFeatModel(GHFeatPreTrainedModel):
    """GH-Feat encoder plus the (frozen in training) StyleGAN synthesis network it inverts into.

    ``model(pixel_values=x)`` encodes images ``[N, C, S, S]`` in [-1, 1] (``C = config.num_channels``, 3 or 1)
    into a [`GHFeatModelOutput`]; ``model.decode(codes)`` renders images ``[N, C, R, R]`` in [-1, 1];
    ``model.reconstruct(x)`` is ``decode(encode(x))``.
    """

    def __init__(self, config: GHFeatConfig):
        super().__init__(config)
        self.encoder = GHFeatEncoder(config)
        self.synthesis = StyleGANSynthesis(config.generator_config, use_style_mod=False)
        self.post_init()

    def encode(self, pixel_values: torch.Tensor) -> StyleCodes:
        """Per-layer style codes (tuple of ``[N, 2C_l]``) of images ``[N, C, S, S]`` in [-1, 1]."""
        return self.encoder(pixel_values)[0]

    def decode(self, style_codes: Sequence[torch.Tensor] | torch.Tensor, noise_mode: str = "const",
               noise: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Render images ``[N, C, R, R]`` (about [-1, 1]) from codes: a per-layer tuple, the official tiled
        ``[N, L, 1024]`` tensor, or the compact ``[N, 9984]`` vector; ``noise`` (one ``[N or 1, 1, r, r]`` map per
        layer) replaces the stored noise."""
        return self.synthesis(style_codes=style_codes, noise_mode=noise_mode, noise=noise)

    def reconstruct(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``decode(encode(pixel_values))``: images in, reconstructions ``[N, C, R, R]`` out."""
        return self.decode(self.encode(pixel_values))

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> GHFeatModelOutput | tuple:
        """Encode ``pixel_values`` ``[N, C, S, S]``; ``output_hidden_states`` (default: the config's) adds the
        encoder's feature maps. ``return_dict=False`` gives the output's non-None fields as a tuple."""
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        hidden_states = self.encoder.forward_hidden_states(pixel_values)
        pyramid = hidden_states[NUM_TRUNK_FEATURES:]
        style_codes = self.encoder.forward_heads(pyramid)
        output = GHFeatModelOutput(
            last_hidden_state=tile_style_codes(style_codes),
            pooler_output=compact_style_codes(style_codes),
            style_codes=style_codes,
            pyramid_features=pyramid,
            hidden_states=hidden_states if output_hidden_states else None,
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()


class GHFeatBackbone(BackboneMixin, GHFeatPreTrainedModel):
    """The GH-Feat encoder's feature pyramid as a transformers backbone.

    ``stage_names`` are ``["p4", "p5", "p6"]`` (FPN levels on res4, res5, res6); ``out_features`` /
    ``out_indices`` choose which are returned as ``feature_maps`` ``[N, pyramid_channels, S/s, S/s]``.
    ``output_hidden_states`` adds all 9 encoder feature maps, stem to p6 (as [`GHFeatModelOutput`]'s).
    Loads from a full [`GHFeatModel`] checkpoint (the synthesis weights are ignored quietly).
    """

    has_attentions = False
    _keys_to_ignore_on_load_unexpected = [r"^synthesis\.", r"^encoder\.alignment\.", r"^encoder\.heads\."]

    def __init__(self, config: GHFeatConfig):
        super().__init__(config)
        self.encoder = GHFeatEncoder(config)
        del self.encoder.alignment, self.encoder.heads  # the pyramid needs neither
        self.num_features = [config.pyramid_channels] * len(config.stage_names)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        hidden_states = self.encoder.forward_hidden_states(pixel_values)
        pyramid = hidden_states[NUM_TRUNK_FEATURES:]
        feature_maps = tuple(pyramid[self.stage_names.index(name)] for name in self.out_features)
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output = BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states if output_hidden_states else None)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()


__all__ = ["GHFeatBackbone", "GHFeatEncoder", "GHFeatModel", "GHFeatModelOutput", "GHFeatPreTrainedModel"]
