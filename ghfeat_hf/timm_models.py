"""timm entry points for GH-Feat: ``import ghfeat_hf`` registers them (timm has no plugin mechanism).

Registered architectures (random init unless a pretrained tag / file is given), every one a
[`GHFeatConfig`] preset:

* ``ghfeat_resnet50_256``: the official encoder (``GHFeatConfig()`` defaults), with pretrained tags
  ``.ffhq``, ``.lsun_tower`` and ``.lsun_bedroom`` pointing at the converted Hub repos;
* ``ghfeat_resnet18_256``: the same with a ResNet-18 trunk;
* ``ghfeat_resnet18_32``: a narrow ResNet-18 encoder for a 32 px generator (8 style codes, 896 values), with the
  pretrained tag ``.fmnist32``: the project's own Fashion-MNIST model, shipped inside the package
  ([`ghfeat_hf.embedded`]), so ``pretrained=True`` needs no network.

Any other converted or trained architecture (a 32 px narrow model, another depth) is built from a preset plus
``ghfeat_config=dict(...)`` (or a [`GHFeatConfig`]). With ``pretrained=True`` and a ``pretrained_cfg_overlay``
naming a GH-Feat directory's weights (``file=<dir>/model.safetensors``) or Hub repo (``hf_hub_id=<repo>``), the
architecture is read from that directory's ``config.json`` (:func:`weights_ghfeat_config`), so any directory the
converter or a trainer wrote loads by the preset name alone. ``config.json`` holds no timm keys: transformers
(>= 5.25) takes a local directory whose ``config.json`` has ``pretrained_cfg`` for a timm checkpoint and builds
the wrong image processor, so timm's ``hf-hub:`` / ``local-dir:`` prefixes, which need those keys, are not used.

[`GHFeatTimm`] holds the encoder under the attribute name [`GHFeatModel`] uses (``encoder``), so the
``encoder.*`` tensors of one ``model.safetensors`` load with no renaming; the generator's ``synthesis.*``
tensors are dropped when loading (``pretrained_filter_fn`` and a ``load_state_dict`` pre-hook).

Outputs, for images ``[N, C, S, S]`` in [-1, 1] (timm's data config: mean = std = 0.5):

* ``forward_features``: the official tiled codes ``[N, L, max(style_dims)]`` (``GHFeatModel``'s
  ``last_hidden_state``);
* ``forward_head``: ``global_pool='compact'`` (default) gives the compact GH-Feat vector ``[N, sum(style_dims)]``
  (``pooler_output``, 9,984 values at 256 px), ``'avg'`` the mean over layers ``[N, max(style_dims)]``, ``''``
  no pooling; then dropout and the classifier (``num_classes=0``: none);
* ``forward_intermediates`` / ``features_only=True``: the three FPN levels ``(P0, P1, P2)``, fine to coarse,
  ``pyramid_channels`` wide at strides ``config.pyramid_strides``; ``out_indices`` index these levels.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Format
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_ghfeat import GHFeatConfig, architecture_fields, ghfeat_config_dict
from .embedded import PRETRAINED_DIR
from .model_names import OFFICIAL_HUB_REPO
from .modeling_ghfeat import GHFeatEncoder
from .modeling_stylegan import compact_style_codes, tile_style_codes, untile_style_codes

NUM_LEVELS = 3  # FPN levels P0 (res4), P1 (res5), P2 (res6)
GLOBAL_POOLS = ("compact", "avg", "")
PRESETS: dict[str, dict[str, Any]] = {
    "ghfeat_resnet50_256": {},  # GHFeatConfig() is the released FFHQ-256 model
    "ghfeat_resnet18_256": {"depth": 18},
    "ghfeat_resnet18_32": {  # the embedded ghfeat-fmnist32 model
        "depth": 18, "base_width": 32, "extra_stage_channels": 256, "pyramid_channels": 128, "stem_stride": 1,
        "stem_pool": False, "image_size": 32, "num_channels": 1, "head_layer_groups": [4, 2, 2],
        "generator_config": {"resolution": 32, "num_channels": 1, "fmap_base": 512, "fmap_max": 64,
                             "latent_size": 128, "dlatent_size": 128, "mapping_fmaps": 128, "mapping_layers": 4},
    },
}
HUB_FILENAME = "model.safetensors"


# ----------------------------------------------------------------------------------------------------------------
# Configuration helpers


@functools.cache
def _bookkeeping_keys() -> frozenset[str]:
    """Keys a saved ``GHFeatConfig`` holds besides its hyper-parameters (transformers and backbone fields)."""
    return frozenset(GHFeatConfig().to_dict()) - set(architecture_fields(GHFeatConfig))


def resolve_ghfeat_config(
    ghfeat_config: GHFeatConfig | dict[str, Any] | None = None, preset: dict[str, Any] | None = None
) -> GHFeatConfig:
    """A fresh [`GHFeatConfig`]: a config instance as is (copied), else ``preset`` updated with a dict of fields.

    Transformers bookkeeping keys in the dict (``model_type``, ``transformers_version``, ...) are ignored, so
    ``config.to_dict()`` can be passed; any other unknown key is an error.
    """
    if isinstance(ghfeat_config, GHFeatConfig):
        return GHFeatConfig(**ghfeat_config_dict(ghfeat_config))
    if ghfeat_config is not None and not isinstance(ghfeat_config, dict):
        raise TypeError(f"ghfeat_config must be a GHFeatConfig or a dict, got {type(ghfeat_config).__name__}.")
    ghfeat_config = dict(ghfeat_config or {})
    known = set(architecture_fields(GHFeatConfig))
    unknown = sorted(set(ghfeat_config) - known - _bookkeeping_keys())
    if unknown:
        raise TypeError(f"Unknown GHFeatConfig fields in ghfeat_config: {unknown}.")
    fields = dict(preset or {})
    fields.update({key: value for key, value in ghfeat_config.items() if key in known})
    return GHFeatConfig(**fields)


def _input_size(config: GHFeatConfig) -> tuple[int, int, int]:
    return config.num_channels, config.image_size, config.image_size


def weights_ghfeat_config(pretrained_cfg_overlay: dict[str, Any]) -> GHFeatConfig | None:
    """The architecture saved with the weights a ``pretrained_cfg_overlay`` points at, if they are a GH-Feat directory.

    ``file``: the ``config.json`` beside the weights file; ``hf_hub_id``: the repo's ``config.json``. Returns None
    when there is no such GH-Feat config (e.g. a bare weights file), so the preset describes the architecture.
    """
    if pretrained_cfg_overlay.get("file"):
        directory = Path(pretrained_cfg_overlay["file"]).expanduser().parent
        config_file = directory / "config.json"
        if not config_file.is_file() or json.loads(config_file.read_text()).get("model_type") != GHFeatConfig.model_type:
            return None
        return GHFeatConfig.from_pretrained(directory)
    if pretrained_cfg_overlay.get("hf_hub_id"):
        try:
            config = AutoConfig.from_pretrained(pretrained_cfg_overlay["hf_hub_id"])
        except (OSError, ValueError):  # no transformers config.json in that repo
            return None
        return config if isinstance(config, GHFeatConfig) else None
    return None


def pyramid_level_indices(indices: int | Sequence[int] | None = None) -> list[int]:
    """Absolute pyramid levels (0 = P0, fine, to 2 = P2, coarse) for timm's ``indices`` argument.

    ``None``: all levels; an int ``n``: the last (coarsest) ``n``; a sequence: those levels, negatives counted from
    the end. Out-of-range values raise a ValueError.
    """
    if indices is None:
        return list(range(NUM_LEVELS))
    if isinstance(indices, int):
        if not 0 < indices <= NUM_LEVELS:
            raise ValueError(f"indices={indices} asks for the last {indices} of {NUM_LEVELS} pyramid levels.")
        return list(range(NUM_LEVELS - indices, NUM_LEVELS))
    levels = [index + NUM_LEVELS if index < 0 else index for index in indices]
    if not levels or not all(0 <= level < NUM_LEVELS for level in levels):
        raise ValueError(f"indices={list(indices)} must name pyramid levels in [-{NUM_LEVELS}, {NUM_LEVELS - 1}].")
    return levels


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Keep the tensors of ``model``'s own top-level modules (``encoder.*``, ``head.*``); no renaming.

    A [`GHFeatModel`] checkpoint also holds the generator (``synthesis.*``), which timm does not use.
    """
    children = {name for name, _ in model.named_children()}
    return {key: value for key, value in state_dict.items() if key.split(".", 1)[0] in children}


# ----------------------------------------------------------------------------------------------------------------
# Pretrained configurations (must exist before the @register_model functions below)


def _cfg(**kwargs) -> dict[str, Any]:
    return {
        "input_size": (3, 256, 256),
        "fixed_input_size": True,  # the encoder's dense heads fix the input size
        "pool_size": None,
        "crop_pct": 1.0,
        "crop_mode": "center",
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),  # x / 255 -> [-1, 1], as GHFeatImageProcessor
        "std": (0.5, 0.5, 0.5),
        "num_classes": 0,
        "first_conv": "encoder.stem.conv",
        "classifier": "head",
        "license": "other",  # converted weights derive from NVIDIA's StyleGAN; see the model card
        "paper_ids": "arXiv:2007.10379",
        **kwargs,
    }


def _hub_cfg(repo: str, **kwargs) -> dict[str, Any]:
    return _cfg(hf_hub_id=repo, hf_hub_filename=HUB_FILENAME, origin_url="https://github.com/genforce/ghfeat",
                **kwargs)


default_cfgs = generate_default_cfgs({
    "ghfeat_resnet50_256.ffhq": _hub_cfg(OFFICIAL_HUB_REPO),
    "ghfeat_resnet50_256.lsun_tower": _hub_cfg("ghfeat-hf/ghfeat-tower-256"),
    "ghfeat_resnet50_256.lsun_bedroom": _hub_cfg("ghfeat-hf/ghfeat-bedroom-256"),
    "ghfeat_resnet18_256": _cfg(),
    "ghfeat_resnet18_32.fmnist32": _cfg(
        file=str(PRETRAINED_DIR / "ghfeat-fmnist32" / HUB_FILENAME), input_size=(1, 32, 32), mean=(0.5,), std=(0.5,),
        license="mit",
        paper_ids=None, origin_url="https://github.com/zalandoresearch/fashion-mnist",
    ),
})


# ----------------------------------------------------------------------------------------------------------------
# Model


def _image_size(img_size: int | Sequence[int]) -> int:
    if isinstance(img_size, int):
        return img_size
    height, width = tuple(img_size)
    if height != width:
        raise ValueError(f"GH-Feat takes square images, got img_size={tuple(img_size)}.")
    return int(height)


class GHFeatTimm(nn.Module):
    """GH-Feat encoder with timm's model API (see the module docstring for the outputs).

    Args:
        ghfeat_config: the architecture, a [`GHFeatConfig`] or a dict of its fields (``None``: the official one).
        num_classes: classifier outputs; 0 (default) returns the pooled codes.
        global_pool: ``'compact'`` (default), ``'avg'`` or ``''`` (see ``forward_head``).
        in_chans, img_size: override the config's ``num_channels`` (and its generator's) / ``image_size`` (timm
            passes them). Pretrained weights adapt to ``in_chans`` (timm adapts the stem) but not to ``img_size``:
            the dense style heads fix the input size, so with ``pretrained=True`` it must be the weights' own.
        drop_rate: dropout before the classifier.
        device, dtype: where and in which floating-point type the parameters and buffers are created (timm's
            ``create_model(device=..., dtype=...)``).

    ``timm.models.save_for_hf`` records the factory kwargs as ``model_args``: pass ``ghfeat_config`` to
    ``create_model`` as a dict (``ghfeat_config_dict(config)``), not a config object, to keep them JSON-able.
    """

    def __init__(
        self,
        ghfeat_config: GHFeatConfig | dict[str, Any] | None = None,
        num_classes: int = 0,
        global_pool: str = "compact",
        in_chans: int | None = None,
        img_size: int | Sequence[int] | None = None,
        drop_rate: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        config = resolve_ghfeat_config(ghfeat_config)
        overrides = {}
        if in_chans is not None and in_chans != config.num_channels:
            # GHFeatConfig requires the generator to render what the encoder reads
            generator = {**ghfeat_config_dict(config)["generator_config"], "num_channels": in_chans}
            overrides.update(num_channels=in_chans, generator_config=generator)
        if img_size is not None and _image_size(img_size) != config.image_size:
            overrides["image_size"] = _image_size(img_size)
        if overrides:
            config = GHFeatConfig(**{**ghfeat_config_dict(config), **overrides})
        self.config = config
        self.style_dims = list(config.style_dims)
        self.in_chans = config.num_channels
        self.drop_rate = drop_rate
        self.output_fmt = "NCHW"

        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.encoder = GHFeatEncoder(config)
        self.feature_info = [
            dict(num_chs=config.pyramid_channels, reduction=stride, module=f"encoder.fpn.output_convs.{level}")
            for level, stride in enumerate(config.pyramid_strides)
        ]
        self.num_classes = 0
        self.global_pool = "compact"
        self.num_features = max(self.style_dims)  # width of forward_features' tiled codes
        self.head_hidden_size = sum(self.style_dims)  # width of the pooled pre-logits (set by reset_classifier)
        self.head: nn.Module = nn.Identity()
        self.init_weights()
        if dtype is not None:
            self.encoder.to(dtype=dtype)
        self.reset_classifier(num_classes, global_pool)
        self.register_load_state_dict_pre_hook(_drop_foreign_keys)

    def init_weights(self) -> None:
        """(Re)initialise every parameter and buffer, e.g. after ``to_empty()`` of a model built on the meta device."""
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """The random init of [`GHFeatModel`]: normal(0, initializer_range) weights, zero biases, unit norms."""
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.reset_running_stats()

    # -- timm model API ------------------------------------------------------------------------------------------

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups, input to output: stem, trunk stages (units), extra stage, FPN, SAM, style heads."""
        stages = r"^encoder\.stages\.(\d+)" if coarse else r"^encoder\.stages\.(\d+)\.(\d+)"
        return dict(
            stem=r"^encoder\.stem",
            blocks=[
                (stages, None),
                (r"^encoder\.extra_stage", (len(self.encoder.stages),)),
                (r"^encoder\.fpn", (len(self.encoder.stages) + 1,)),
                (r"^encoder\.alignment", (len(self.encoder.stages) + 2,)),
                (r"^encoder\.heads", (len(self.encoder.stages) + 3,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every trunk unit in the backward pass of a training step.

        The same mechanism as transformers' ``gradient_checkpointing_enable()``: the encoder's
        ``GradientCheckpointingLayer``s run through non-reentrant ``torch.utils.checkpoint`` in train mode with
        gradients on. The recomputation updates their BatchNorm running statistics a second time.
        """
        for module in self.encoder.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.gradient_checkpointing = enable
                module._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)

    @property
    def grad_checkpointing(self) -> bool:
        """Whether ``set_grad_checkpointing`` is on."""
        return any(getattr(module, "gradient_checkpointing", False) for module in self.encoder.modules())

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> str | nn.Module:
        return "head" if name_only else self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier of ``num_classes`` outputs (0: none) on the ``global_pool`` pooled codes."""
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}.")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head_hidden_size = sum(self.style_dims) if self.global_pool == "compact" else max(self.style_dims)
        reference = next(self.encoder.parameters(), None)
        if num_classes > 0:
            factory = {} if reference is None else dict(device=reference.device, dtype=reference.dtype)
            self.head = nn.Linear(self.head_hidden_size, num_classes, **factory).train(self.training)
            nn.init.normal_(self.head.weight, std=self.config.initializer_range)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Identity().train(self.training)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = NUM_LEVELS, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep what the pyramid levels ``indices`` need; returns the absolute level indices.

        Every level needs the whole trunk and FPN (top-down path), so only the style part (SAM, style heads)
        and the classifier can go (``prune_head``). A pruned model has no ``forward_features``.
        """
        take_indices = pyramid_level_indices(indices)
        if prune_head and hasattr(self.encoder, "heads"):
            del self.encoder.alignment, self.encoder.heads
            self.reset_classifier(0, "")
        return take_indices

    def _tiled_codes(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        if not hasattr(self.encoder, "heads"):
            raise RuntimeError("The style heads were pruned (features_only / prune_intermediate_layers); "
                               "only forward_intermediates(..., intermediates_only=True) is available.")
        return tile_style_codes(self.encoder.forward_heads(pyramid), max(self.style_dims))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Pyramid levels at ``indices`` (None: all three, int: the last n, list: those, negatives from the end).

        Returns the list of levels if ``intermediates_only``, else ``(tiled_codes, levels)``. ``norm`` and
        ``stop_early`` have no effect: the levels have no norm, and the top-down FPN needs the whole trunk.
        """
        output_fmt = Format(output_fmt)
        if output_fmt not in (Format.NCHW, Format.NHWC):
            raise ValueError(f"output_fmt must be NCHW or NHWC, got {output_fmt}.")
        take_indices = pyramid_level_indices(indices)
        pyramid = self.encoder.forward_pyramid(x)
        intermediates = [pyramid[level] for level in take_indices]
        if output_fmt == Format.NHWC:
            intermediates = [level.permute(0, 2, 3, 1) for level in intermediates]
        if intermediates_only:
            return intermediates
        return self._tiled_codes(pyramid), intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The official tiled codes ``[N, L, max(style_dims)]`` (``GHFeatModel``'s ``last_hidden_state``)."""
        return self._tiled_codes(self.encoder.forward_pyramid(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Pool tiled codes ``[N, L, D]``: compact ``[N, sum(style_dims)]``, ``avg`` ``[N, D]`` or unchanged."""
        if self.global_pool == "compact":
            return compact_style_codes(untile_style_codes(x, self.style_dims))
        if self.global_pool == "avg":
            return x.mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _drop_foreign_keys(module: GHFeatTimm, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """Let strict loading (``checkpoint_path=``, ``load_state_dict``) take a full [`GHFeatModel`] checkpoint:
    drop tensors of modules this model does not have (``synthesis.*``; style heads pruned by ``features_only``)."""
    children = {name for name, _ in module.named_children()}
    pruned = () if hasattr(module.encoder, "heads") else ("encoder.alignment.", "encoder.heads.")
    for key in [key for key in state_dict if key.startswith(prefix)]:
        name = key[len(prefix):]
        if name.split(".", 1)[0] not in children or name.startswith(pruned):
            del state_dict[key]


# ----------------------------------------------------------------------------------------------------------------
# Entry points


def _create_ghfeat(variant: str, pretrained: bool = False, **kwargs) -> GHFeatTimm:
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    ghfeat_config = kwargs.pop("ghfeat_config", None)
    if ghfeat_config is None and pretrained:
        ghfeat_config = weights_ghfeat_config(overlay)
    config = resolve_ghfeat_config(ghfeat_config, PRESETS[variant])
    img_size = kwargs.get("img_size")
    if pretrained and img_size is not None and _image_size(img_size) != config.image_size:
        raise ValueError(
            f"img_size={img_size} does not fit the pretrained {variant} weights: the dense style heads fix the input "
            f"to {config.image_size} px. Resize the images to {config.image_size} px (GHFeatImageProcessor) or pass "
            "pretrained=False for a randomly initialised model of that size."
        )
    # the source checkpoint's input size follows its architecture (``in_chans`` adapts the pretrained stem)
    overlay.setdefault("input_size", _input_size(config))
    if overlay.get("hf_hub_id"):
        overlay.setdefault("hf_hub_filename", HUB_FILENAME)
    return build_model_with_cfg(
        GHFeatTimm,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=tuple(range(NUM_LEVELS))),
        ghfeat_config=config,
        **kwargs,
    )


@register_model
def ghfeat_resnet50_256(pretrained: bool = False, **kwargs) -> GHFeatTimm:
    """GH-Feat, official architecture: ResNet-50 trunk, 256 px, 14 style codes (9,984 values)."""
    return _create_ghfeat("ghfeat_resnet50_256", pretrained, **kwargs)


@register_model
def ghfeat_resnet18_32(pretrained: bool = False, **kwargs) -> GHFeatTimm:
    """GH-Feat, narrow ResNet-18 trunk for a 32 px StyleGAN: 8 style codes (896 values)."""
    return _create_ghfeat("ghfeat_resnet18_32", pretrained, **kwargs)


@register_model
def ghfeat_resnet18_256(pretrained: bool = False, **kwargs) -> GHFeatTimm:
    """GH-Feat with a ResNet-18 trunk, 256 px, 14 style codes (9,984 values)."""
    return _create_ghfeat("ghfeat_resnet18_256", pretrained, **kwargs)


__all__ = [
    "GHFeatTimm",
    "checkpoint_filter_fn",
    "pyramid_level_indices",
    "ghfeat_config_dict",
    "resolve_ghfeat_config",
    "weights_ghfeat_config",
]
