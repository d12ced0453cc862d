"""Encode-decode round trips for people to look at: reconstructions, MSE/PSNR and a side-by-side grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from .encoding import encode_batch
from .image_metrics import picture_metrics
from .runtime import resolve_device, resolve_dtype
from .visualization import enlarged_cell_size, make_grid


class ReconstructionResult(NamedTuple):
    """`inputs[i]` is image `i` as the model sees it (resized, 8-bit, RGB or "L" for 1-channel models),
    `reconstructions[i]` its decoded codes (same mode), `metrics[i]` `{"mse", "psnr"}` between the two."""

    inputs: list[PIL.Image.Image]
    reconstructions: list[PIL.Image.Image]
    metrics: list[dict[str, float]]


def reconstruct_images(
    model,
    processor,
    images: Sequence[Any] | Any,
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "fp32",
    progress: bool = False,
) -> ReconstructionResult:
    """Encode and decode images with a [`GHFeatModel`].

    Args:
        model, processor: a [`GHFeatModel`] and its [`GHFeatImageProcessor`].
        images: one image or a list: PIL images, arrays, tensors or paths (anything the processor accepts).
        batch_size: images per model call.
        device: where to run (`None` keeps the model where it is). dtype: `"fp32"`, `"bf16"` or `"fp16"` autocast.
        progress: show a progress bar over the images.

    Returns:
        A [`ReconstructionResult`] `(inputs, reconstructions, metrics)`; metrics are [`picture_metrics`] of the
        8-bit input (after the processor's resize) and the 8-bit reconstruction.
    """
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("reconstruct_images needs at least one image.")
    compute_dtype = resolve_dtype(dtype)
    device = next(model.parameters()).device if device is None else resolve_device(device)
    model.eval().to(device)
    inputs, reconstructions = [], []
    bar = tqdm(total=len(images), desc="reconstruct", unit="image", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(images), batch_size):
        batch = list(images[start:start + batch_size])
        pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"]
        _, decoded = encode_batch(model, pixel_values, dtype=compute_dtype, decode=True)
        inputs += processor.postprocess(pixel_values.float())
        reconstructions += processor.postprocess(decoded)
        bar.update(len(batch))
    bar.close()
    metrics = [picture_metrics(a, b) for a, b in zip(inputs, reconstructions)]
    return ReconstructionResult(inputs, reconstructions, metrics)


def reconstruction_grid(
    result: ReconstructionResult, names: Sequence[str] | None = None, min_cell_size: int = 128, **grid_kwargs
) -> PIL.Image.Image:
    """A grid with one row per image, `input | reconstruction`, labelled with the name and PSNR. Small images are
    enlarged by an integer factor (nearest neighbour) until a cell is at least `min_cell_size` pixels."""
    names = list(names) if names is not None else [f"#{index}" for index in range(len(result.inputs))]
    size = max(max(image.size) for image in (*result.inputs, *result.reconstructions))
    cell = enlarged_cell_size(size, min_cell_size)
    labels = [f"{name}\nPSNR {metric['psnr']:.2f} dB" for name, metric in zip(names, result.metrics)]
    rows = [[a, b] for a, b in zip(result.inputs, result.reconstructions)]
    grid_kwargs.setdefault("cell_size", cell)
    return make_grid(rows, ["input", "reconstruction"], labels, **grid_kwargs)


def format_metrics_table(names: Sequence[str], metrics: Sequence[dict]) -> str:
    """A plain-text table `image | MSE | PSNR (dB)` with a final `mean` row (mean of the per-image values)."""
    width = max([len("image"), len("mean"), *(len(str(name)) for name in names)])
    lines = [f"{'image':<{width}}  {'MSE':>10}  {'PSNR (dB)':>10}"]
    for name, metric in zip(names, metrics):
        lines.append(f"{str(name):<{width}}  {metric['mse']:>10.6f}  {metric['psnr']:>10.4f}")
    if metrics:
        mean_mse = float(np.mean([metric["mse"] for metric in metrics]))
        mean_psnr = float(np.mean([metric["psnr"] for metric in metrics]))
        lines.append(f"{'mean':<{width}}  {mean_mse:>10.6f}  {mean_psnr:>10.4f}")
    return "\n".join(lines)


__all__ = ["ReconstructionResult", "format_metrics_table", "reconstruct_images", "reconstruction_grid"]
