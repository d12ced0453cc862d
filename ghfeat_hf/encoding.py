"""Batched GH-Feat encoding: pixel tensors in, style codes (and reconstructions) out, under `torch.inference_mode()`
and autocast for bf16/fp16 compute. Every command that runs the encoder over images goes through [`encode_batch`]
(one batch) or [`encode_images`] (many images, batch by batch)."""

from __future__ import annotations

import torch

from .modeling_stylegan import StyleCodes
from .runtime import autocast_context, resolve_dtype


def encode_batch(
    model, pixel_values: torch.Tensor, *, dtype: str | torch.dtype = "fp32", decode: bool = False
) -> tuple[StyleCodes, torch.Tensor | None]:
    """Encode one batch `pixel_values` `[N, C, S, S]` in [-1, 1] on the model's device: the per-layer style codes
    (tuple of `[N, 2C_l]`) and, with `decode`, the reconstructions `[N, C, R, R]` (about [-1, 1]), or `None`.
    Computed under inference mode and autocast for `dtype` (`"fp32"`, `"bf16"`, `"fp16"`); returned as float32
    inference tensors on the model's device."""
    device = next(model.parameters()).device
    with torch.inference_mode(), autocast_context(device, resolve_dtype(dtype)):
        codes = model.encode(pixel_values.to(device))
        decoded = model.decode(codes) if decode else None
    return tuple(code.float() for code in codes), None if decoded is None else decoded.float()


def encode_images(
    model, pixel_values: torch.Tensor, batch_size: int = 16, *, dtype: str | torch.dtype = "fp32"
) -> StyleCodes:
    """GH-Feat codes (tuple of `[N, 2C_l]`, float32 on the model's device) of `pixel_values` `[N, C, S, S]` in
    [-1, 1], [`encode_batch`] by `batch_size` images. The codes are ordinary tensors (joined outside inference
    mode), so they can start an optimisation."""
    batches = [encode_batch(model, pixel_values[start:start + batch_size], dtype=dtype)[0]
               for start in range(0, len(pixel_values), batch_size)]
    return tuple(torch.cat(list(parts)) for parts in zip(*batches))


__all__ = ["encode_batch", "encode_images"]
