"""Restoration through the generator: start from codes, optimise them so that ``A(G(codes))`` matches the
observation ``y``, output ``G(codes)`` (or the operator's composite).

The start is GH-Feat's point: the encoder's codes of the observation seen as an image (the degradation's
``encoder_input``), or, as in classical GAN inversion, the average code ``A_l(w_avg)`` of the generator (its
StyleMod affines applied to the tracked average w; the affines are linear, so this is also the mean style code of
the generator's samples). The optimisation is [`ghfeat_hf.editing.refine_style_codes`] with the degradation as
its operator and, optionally, a Gaussian [`CodePrior`] and per-image noise maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..editing.codes import concat_codes, encode_images, resize_images
from ..editing.inversion import refine_style_codes
from ..errors import UsageError
from ..image_metrics import pixel_mse, psnr
from ..modeling_stylegan import StyleCodes, StyleGANGenerator
from .degradations import Degradation

STARTS = ("encoder", "average")
DEFAULT_LEARNING_RATE = 0.03


@torch.no_grad()
def average_style_codes(generator: StyleGANGenerator) -> StyleCodes:
    """The generator's average style codes ``A_l(w_avg)`` (tuple of ``[1, 2C_l]``, float32 on its device)."""
    return tuple(code.float() for code in generator.style_codes(generator.mapping.w_avg[None]))


@dataclass
class CodePrior:
    """A Gaussian prior on the codes: ``weight * mean(((codes - mean) / std)^2)`` per image (``[N]``), with a
    per-value ``mean`` and ``std`` (tuples of ``[2C_l]``) of the code distribution."""

    mean: StyleCodes
    std: StyleCodes
    weight: float

    def __call__(self, codes: StyleCodes) -> torch.Tensor:
        squares = [((code - mean.to(code)) / std.to(code)).square() for code, mean, std in
                   zip(codes, self.mean, self.std, strict=True)]
        return self.weight * torch.cat(squares, dim=1).mean(dim=1)


@torch.no_grad()
def code_prior(generator: StyleGANGenerator, weight: float, num_samples: int = 4096, seed: int = 0) -> CodePrior:
    """The [`CodePrior`] of the generator's style codes ``A_l(mapping(z))``, ``z ~ N(0, I)``, estimated from
    ``num_samples`` seeded samples: the distribution the encoder's codes are trained to stay in."""
    if weight < 0:
        raise UsageError(f"the prior weight must be at least 0, got {weight:g}.")
    device = next(generator.parameters()).device
    z = torch.randn(num_samples, generator.config.latent_size, generator=torch.Generator().manual_seed(seed))
    codes = generator.style_codes(generator.mapping(z.to(device))[:, 0])
    return CodePrior(tuple(code.float().mean(0) for code in codes),
                     tuple(code.float().std(0).clamp_min(1e-6) for code in codes), weight)


@dataclass
class RestorationResult:
    """``start_codes`` / ``codes``: the codes before and after the optimisation (tuples of ``[N, 2C_l]``, CPU);
    ``start_images`` / ``images``: their decoded images ``[N, C, R, R]``; ``outputs``: the degradation's composite
    of ``images`` (the restored images); ``start_outputs`` the same for the start; ``data_psnr``: ``[N]`` PSNR (dB)
    of ``A(images)`` against the observation; ``snapshots``: the best codes after each requested step."""

    start_codes: StyleCodes
    codes: StyleCodes
    start_images: torch.Tensor
    images: torch.Tensor
    start_outputs: torch.Tensor
    outputs: torch.Tensor
    data_psnr: torch.Tensor
    snapshots: dict[int, StyleCodes] = field(default_factory=dict)


def encoder_start(model, degradation: Degradation, observation: torch.Tensor, batch_size: int = 16) -> StyleCodes:
    """The encoder's codes of the observations seen as images (``degradation.encoder_input``, resized to the
    encoder's input size)."""
    images = degradation.encoder_input(observation)
    return encode_images(model, resize_images(images, model.config.image_size), batch_size)


@torch.no_grad()
def _decode(model, codes: StyleCodes, noise=None) -> torch.Tensor:
    return model.decode(codes, noise=noise).float().cpu()


def restore(
    model,
    observation: torch.Tensor,
    degradation: Degradation,
    start: str | StyleCodes = "encoder",
    *,
    generator: StyleGANGenerator | None = None,
    steps: int = 100,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    prior: CodePrior | None = None,
    optimize_noise: bool = False,
    snapshot_steps: Sequence[int] = (),
    batch_size: int = 64,
    progress: bool = True,
) -> RestorationResult:
    """Restore ``observation`` (``degradation.degrade`` of images ``[N, C, R, R]`` in [-1, 1]).

    Args:
        model: a [`GHFeatModel`] (not changed).
        start: ``"encoder"`` (GH-Feat's codes of the observation), ``"average"`` (the generator's average code,
            needs ``generator``) or codes (tuple of ``[N, 2C_l]``).
        steps: Adam steps (0: the start itself, e.g. encoder only).
        prior, optimize_noise, snapshot_steps: see [`refine_style_codes`] and [`CodePrior`].
        batch_size: images optimised together.
    """
    degradation.check_channels(model.config.num_channels)
    device = next(model.parameters()).device
    count = len(observation)
    if start == "encoder":
        start = encoder_start(model, degradation, observation, batch_size)
    elif start == "average":
        if generator is None:
            raise UsageError("the average-code start needs the model's StyleGAN generator (stylegan-generator).")
        start = tuple(code.expand(count, -1) for code in average_style_codes(generator.to(device)))
    elif isinstance(start, str):
        raise UsageError(f"the start must be one of {STARTS} or codes, got {start!r}.")
    degradation = degradation.to(device)
    parts = {"codes": [], "images": [], "start_images": [], "psnr": [], "snapshots": []}
    with tqdm(total=count, desc=f"{degradation.task}: {steps} steps", unit="image", disable=not progress) as bar:
        for first in range(0, count, batch_size):
            rows = slice(first, first + batch_size)
            operator, target = degradation.rows(rows), observation[rows].to(device).float()
            codes = tuple(code[rows].to(device).float() for code in start)
            noise, snapshots = None, {0: codes} if 0 in snapshot_steps else {}
            if steps:
                result = refine_style_codes(model, target, codes, steps=steps, learning_rate=learning_rate,
                                            operator=operator, prior=prior, optimize_noise=optimize_noise,
                                            snapshot_steps=snapshot_steps, batch_size=len(target), progress=False)
                codes, noise, snapshots = result.style_codes, result.noise, result.snapshots
            images = _decode(model, codes, noise)
            with torch.no_grad():
                parts["psnr"].append(psnr(pixel_mse(operator(images.to(device)), target)).cpu())
            parts["codes"].append(tuple(code.detach().cpu() for code in codes))
            parts["images"].append(images)
            parts["start_images"].append(_decode(model, tuple(code[rows].to(device) for code in start)))
            parts["snapshots"].append({step: tuple(code.cpu() for code in kept) for step, kept in snapshots.items()})
            bar.update(len(target))
    images, start_images = torch.cat(parts["images"]), torch.cat(parts["start_images"])
    observation = observation.float().cpu()
    degradation = degradation.cpu()
    return RestorationResult(
        start_codes=tuple(code.detach().cpu() for code in start), codes=concat_codes(parts["codes"]),
        start_images=start_images, images=images, start_outputs=degradation.composite(start_images, observation),
        outputs=degradation.composite(images, observation), data_psnr=torch.cat(parts["psnr"]),
        snapshots={step: concat_codes([kept[step] for kept in parts["snapshots"]]) for step in parts["snapshots"][0]},
    )


__all__ = [
    "DEFAULT_LEARNING_RATE",
    "STARTS",
    "CodePrior",
    "RestorationResult",
    "average_style_codes",
    "code_prior",
    "encoder_start",
    "restore",
]
