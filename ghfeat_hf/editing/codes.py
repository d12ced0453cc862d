"""Style-code algebra: layer selections, style mixing, interpolation, and batched encoding / decoding.

Codes are tuples of ``[N, 2C_l]`` tensors (``GHFeatModelOutput.style_codes``), one per generator layer. Layer
selections are lists of generator-layer indices, or specs such as ``"coarse"``, ``"middle|fine"``, ``"0-3,8"`` or
``"all"`` parsed by [`ghfeat_hf.runtime.parse_layers`] against the model configuration (coarse / middle / fine are
the layers of the encoder's three heads). Images are ``pixel_values`` ``[N, C, S, S]`` in [-1, 1], as the image
processor returns them; [`encode_images`] is [`ghfeat_hf.encoding.encode_images`].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..configuration_ghfeat import GHFeatConfig
from ..encoding import encode_images
from ..modeling_stylegan import StyleCodes
from ..runtime import layers_by_head


def describe_layers(layers: Sequence[int], config: GHFeatConfig) -> str:
    """A short label for a layer selection: ``"all layers"``, ``"coarse (0-1)"``, ``"middle+fine (2-7)"`` or
    ``"layers 0-3,8"``."""
    chosen = sorted(set(layers))
    ranges, start = [], chosen[0]
    for previous, layer in zip(chosen, chosen[1:] + [None]):
        if layer != previous + 1:
            ranges.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = layer
    span = ",".join(ranges)
    if len(chosen) == config.num_layers:
        return "all layers"
    heads = layers_by_head(config)
    names = [name for name, group in heads.items() if group and set(group) <= set(chosen)]
    if names and sorted(sum((heads[name] for name in names), [])) == chosen:
        return f"{'+'.join(names)} ({span})"
    return f"layers {span}"


def select_codes(codes: StyleCodes, index: int | slice | Sequence[int] | torch.Tensor) -> StyleCodes:
    """The rows ``index`` of every layer's codes."""
    return tuple(code[index] for code in codes)


def concat_codes(batches: Sequence[StyleCodes]) -> StyleCodes:
    """Concatenate code batches along the batch dimension."""
    return tuple(torch.cat(list(parts)) for parts in zip(*batches, strict=True))


def flatten_codes(codes: StyleCodes, layers: Sequence[int]) -> torch.Tensor:
    """``[N, sum_{l in layers} 2C_l]``: the codes of ``layers`` concatenated in layer order."""
    return torch.cat([codes[layer] for layer in sorted(layers)], dim=1)


def shift_codes(codes: StyleCodes, layers: Sequence[int], delta: torch.Tensor) -> StyleCodes:
    """``codes`` with ``delta`` (``[D]`` or ``[N, D]``, laid out as [`flatten_codes`] of ``layers``) added."""
    layers = sorted(layers)
    widths = [codes[layer].shape[1] for layer in layers]
    if delta.shape[-1] != sum(widths):
        raise ValueError(f"delta has {delta.shape[-1]} values, layers {layers} hold {sum(widths)}.")
    parts = dict(zip(layers, torch.split(delta, widths, dim=-1)))
    return tuple(code + parts[index].to(code) if index in parts else code for index, code in enumerate(codes))


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


def interpolate_keyframes(
    keyframes: Sequence[StyleCodes], steps: int, layers: Sequence[int] | None = None
) -> list[StyleCodes]:
    """A piecewise-linear path through two or more codes: ``steps`` codes per segment, each keyframe once, so
    ``(K - 1) * (steps - 1) + 1`` codes. With ``layers``, only those layers move; the others keep the first
    keyframe's codes all along."""
    if len(keyframes) < 2:
        raise ValueError(f"Interpolation needs at least 2 keyframes, got {len(keyframes)}.")
    path = [tuple(keyframes[0])]
    for end in keyframes[1:]:
        path += interpolate_style_codes(path[-1], end, steps, layers)[1:]
    return path


def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Images or masks ``[N, C, H, W]`` -> ``[N, C, R, R]`` (float) by area averaging (pixel repetition when
    enlarging by an integer factor); already ``R x R`` inputs come back as they are (as float)."""
    if images.shape[-2:] == (resolution, resolution):
        return images.float()
    return F.interpolate(images.float(), size=(resolution, resolution), mode="area")


@torch.no_grad()
def decode_codes(model, codes: StyleCodes, batch_size: int = 16) -> torch.Tensor:
    """Images ``[N, C, R, R]`` (float32 on the CPU, about [-1, 1]) of codes, decoded in batches on the model's
    device."""
    device = next(model.parameters()).device
    images = []
    for start in range(0, len(codes[0]), batch_size):
        batch = tuple(code[start:start + batch_size].to(device) for code in codes)
        images.append(model.decode(batch).float().cpu())
    return torch.cat(images)


def style_mixing(
    model, content: StyleCodes, style: StyleCodes, layers: Sequence[int], batch_size: int = 16
) -> torch.Tensor:
    """Every content image with ``layers`` taken from every style image: ``[N_content, N_style, C, R, R]``.

    ``out[i, j]`` decodes the codes of ``content`` row ``i`` whose ``layers`` are replaced by ``style`` row ``j``'s.
    """
    num_content, num_style = len(content[0]), len(style[0])
    pairs_content = tuple(code.repeat_interleave(num_style, dim=0) for code in content)
    pairs_style = tuple(code.repeat(num_content, *([1] * (code.ndim - 1))) for code in style)
    images = decode_codes(model, mix_style_codes(pairs_content, pairs_style, layers), batch_size)
    return images.view(num_content, num_style, *images.shape[1:])


__all__ = [
    "concat_codes",
    "decode_codes",
    "describe_layers",
    "encode_images",
    "flatten_codes",
    "interpolate_keyframes",
    "interpolate_style_codes",
    "mix_style_codes",
    "resize_images",
    "select_codes",
    "shift_codes",
    "style_mixing",
]
