"""Editing in GH-Feat space: layer-wise style mixing and interpolation of per-layer style codes.

Codes are tuples of ``[N, 2C_l]`` tensors (``GHFeatModelOutput.style_codes``); layer selections are lists of
generator-layer indices, or specs such as ``"coarse"``, ``"middle|fine"`` or ``"0-3,8"`` resolved against the
model configuration (coarse / middle / fine are the layers of the encoder's three heads).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .configuration_ghfeat import HEAD_NAMES, GHFeatConfig
from .modeling_stylegan import StyleCodes


def layer_groups(config: GHFeatConfig) -> dict[str, list[int]]:
    """``{"coarse": [...], "middle": [...], "fine": [...]}``: the generator layers of each encoder head."""
    return dict(zip(HEAD_NAMES, config.head_layers))


def mix_style_codes(content: StyleCodes, style: StyleCodes, layers: Sequence[int]) -> StyleCodes:
    """Codes of ``content`` with the ``layers`` taken from ``style`` (same batch size, or ``style`` of batch 1)."""
    chosen = set(layers)
    return tuple(
        (s.expand_as(c) if index in chosen else c) for index, (c, s) in enumerate(zip(content, style, strict=True))
    )


def interpolate_style_codes(
    start: StyleCodes, end: StyleCodes, steps: int, layers: Sequence[int] | None = None
) -> list[StyleCodes]:
    """``steps`` codes moving linearly from ``start`` (first) to ``end`` (last); only ``layers`` move if given."""
    if steps < 2:
        raise ValueError(f"Interpolation needs at least 2 steps, got {steps}.")
    moving = set(range(len(start))) if layers is None else set(layers)
    return [
        tuple(
            torch.lerp(a, b, t) if index in moving else a for index, (a, b) in enumerate(zip(start, end, strict=True))
        )
        for t in torch.linspace(0.0, 1.0, steps).tolist()
    ]


__all__ = ["interpolate_style_codes", "layer_groups", "mix_style_codes"]
