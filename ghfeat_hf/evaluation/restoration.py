"""Restoration through the generator, measured: degrade clean test images with a fixed seed, restore them, and
compare PSNR / SSIM with the clean images against baselines of the same run.

Methods per task: the classical restorations of the degradation (bicubic upsampling, biharmonic fill, non-local
means, ...), the encoder only (GH-Feat's codes of the degraded image, no optimisation), the optimisation from the
generator's average code (the classical GAN-inversion start) and the optimisation from GH-Feat's codes, both with
the same number of steps. The PSNR of both optimisations is also recorded after intermediate steps, which gives the
number of steps the GH-Feat start needs to reach the average start's final PSNR.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..editing.codes import decode_codes, resize_images
from ..errors import UsageError
from ..evaluation_report import OURS, STANDARD, EvaluationReport, MetricColumn, ProtocolItem
from ..image_metrics import psnr
from ..restoration import CodePrior, Degradation, restore
from .extractors import GHFeatExtractor
from .metrics import ssim
from .reconstruction_quality import quantize
from .splits import describe_data, require_columns

ENCODER_ONLY, AVERAGE_START, GHFEAT_START = "encoder only", "average code + optimisation", "GH-Feat + optimisation"


def restoration_metrics(outputs: torch.Tensor, originals: torch.Tensor) -> dict[str, np.ndarray]:
    """``{"psnr", "ssim"}`` (``[N]`` each) of restored images against the clean ones (``[N, C, R, R]`` in
    [-1, 1]), both rounded to 8 bits and scaled to [0, 1] as the reconstruction metrics are."""
    reference, restored = quantize(originals.float().cpu()), quantize(outputs.float().cpu())
    mse = ((reference - restored) ** 2).flatten(1).mean(1).numpy()
    return {"psnr": psnr(mse), "ssim": ssim(reference, restored).numpy()}


def clean_images(model, processor, dataset, image_column: str = "image", batch_size: int = 256) -> torch.Tensor:
    """The images of a dataset as the generator renders them: ``[N, C, R, R]`` in [-1, 1] (the processor's output
    resized to the generator's resolution)."""
    require_columns(dataset, image_column, role="image column")
    resolution = model.config.generator_config.resolution
    batches = [resize_images(processor(images=dataset[start:start + batch_size][image_column],
                                       return_tensors="pt")["pixel_values"], resolution)
               for start in range(0, len(dataset), batch_size)]
    return torch.cat(batches)


def _row(task: str, method: str, layers: str, outputs: torch.Tensor, originals: torch.Tensor,
         seconds: float) -> dict:
    values = restoration_metrics(outputs, originals)
    return {"features": f"{task}: {method}", "layers": layers, "dim": "", "psnr": float(np.mean(values["psnr"])),
            "psnr_std": float(np.std(values["psnr"])), "ssim": float(np.mean(values["ssim"])),
            "seconds_per_image": seconds / len(originals)}


def _curve(model, degradation: Degradation, snapshots: dict, observation: torch.Tensor, originals: torch.Tensor,
           batch_size: int) -> dict[int, float]:
    """Mean PSNR (dB) of the outputs of the snapshot codes, by step."""
    return {step: float(np.mean(restoration_metrics(
        degradation.composite(decode_codes(model, codes, batch_size), observation), originals)["psnr"]))
        for step, codes in sorted(snapshots.items())}


def steps_to_reach(curve: dict[int, float], level: float) -> int | None:
    """The first recorded step whose PSNR reaches ``level``, or ``None``."""
    return next((step for step, value in sorted(curve.items()) if value >= level), None)


def evaluate_task(model, degradation: Degradation, originals: torch.Tensor, *, generator, steps: int,
                  learning_rate: float, prior: CodePrior | None, snapshot_steps: Sequence[int], batch_size: int,
                  seed: int, progress: bool) -> tuple[list[dict], dict[str, dict[int, float]]]:
    """The rows of one degradation (classical methods, encoder only, both optimisations) and the PSNR-by-step
    curves of the optimisations."""
    task = degradation.task
    observation = degradation.degrade(originals, torch.Generator().manual_seed(seed))
    rows = []
    started = time.perf_counter()
    classical = degradation.classical(observation)
    for name, outputs in classical.items():  # the classical methods share one timer: they are all cheap
        rows.append(_row(task, f"classical, {name}", "-", outputs, originals,
                         (time.perf_counter() - started) / len(classical)))
    common = dict(learning_rate=learning_rate, prior=prior, batch_size=batch_size, progress=progress)
    started = time.perf_counter()
    result = restore(model, observation, degradation, "encoder", steps=0, **common)
    rows.append(_row(task, ENCODER_ONLY, "all", result.outputs, originals, time.perf_counter() - started))
    curves = {}
    for method, start in ((AVERAGE_START, "average"), (GHFEAT_START, "encoder")):
        if start == "average" and generator is None:
            continue
        started = time.perf_counter()
        result = restore(model, observation, degradation, start, generator=generator, steps=steps,
                         snapshot_steps=sorted({0, *snapshot_steps, steps}), **common)
        rows.append(_row(task, method, "all", result.outputs, originals, time.perf_counter() - started))
        curves[method] = _curve(model, degradation, result.snapshots, observation, originals, batch_size)
    if AVERAGE_START in curves:
        level = curves[AVERAGE_START][steps]
        rows[-1]["steps_to_average_final"] = steps_to_reach(curves[GHFEAT_START], level)
    return rows, curves


def evaluate_restoration(
    model,
    processor,
    dataset,
    degradations: Sequence[Degradation],
    *,
    generator=None,
    steps: int = 50,
    learning_rate: float = 0.03,
    prior: CodePrior | None = None,
    snapshot_steps: Sequence[int] = (5, 10, 20, 30, 40),
    image_column: str = "image",
    batch_size: int = 64,
    seed: int = 0,
    dataset_name: str | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """PSNR / SSIM of every method on every degradation (see the module docstring); one report, task
    ``restoration``, one row per (task, method). ``generator`` (the model's StyleGAN generator) gives the average
    code; without it that row is left out, with a note."""
    if steps < 1:
        raise UsageError(f"the restoration evaluation needs at least 1 optimisation step, got {steps}.")
    for degradation in degradations:
        degradation.check_channels(model.config.num_channels)
    started = time.perf_counter()
    originals = clean_images(model, processor, dataset, image_column)
    rows, notes = [], []
    for degradation in tqdm(degradations, desc="restoration tasks", disable=not progress or len(degradations) < 2):
        task_rows, curves = evaluate_task(model, degradation, originals, generator=generator, steps=steps,
                                          learning_rate=learning_rate, prior=prior, snapshot_steps=snapshot_steps,
                                          batch_size=batch_size, seed=seed, progress=progress)
        rows += task_rows
        for method, curve in curves.items():
            points = ", ".join(f"{step}: {value:.2f}" for step, value in curve.items())
            notes.append(f"{degradation.describe()}, {method}, mean PSNR (dB) by step: {points}.")
    if generator is None:
        notes.append(f"No {AVERAGE_START} rows: the model has no StyleGAN generator (stylegan-generator) and so no "
                     "average code.")
    protocol = [
        ProtocolItem("degradations", [degradation.describe() for degradation in degradations], OURS,
                     f"applied to the clean test images at the generator's resolution, seed {seed}"),
        ProtocolItem("optimisation", f"Adam on the style codes, {steps} steps, learning rate {learning_rate:g}, "
                     f"loss mean((A(G(codes)) - y)^2)" + (f" + {prior.weight:g} x Gaussian code prior" if prior else
                                                          "") + f", {batch_size} images per batch, the best codes "
                     "of every image kept", OURS),
        ProtocolItem("outputs", "G(codes); for inpainting the composite that keeps the known pixels, for every "
                     "method", OURS),
        ProtocolItem("PSNR / SSIM", "whole image, 8-bit outputs vs the clean images scaled to [0, 1]; SSIM 11x11 "
                     "Gaussian window, sigma 1.5", STANDARD, "Wang et al. 2004"),
        ProtocolItem("time", "wall seconds per image of each method (batched; the classical methods share one "
                     "timer), on the evaluation's device", OURS),
    ]
    columns = [MetricColumn("psnr", "PSNR (dB)", "db"), MetricColumn("psnr_std", "PSNR std (dB)", "db"),
               MetricColumn("ssim", "SSIM", "f4"), MetricColumn("seconds_per_image", "s / image", "f4"),
               MetricColumn("steps_to_average_final", "steps to the average start's final PSNR", "int")]
    report = EvaluationReport(
        task="restoration", model=GHFeatExtractor(model, processor).describe(),
        data=describe_data(dataset_name, {"test": dataset}, image_column=image_column), protocol=protocol,
        columns=columns, rows=rows, notes=notes)
    report.seconds = time.perf_counter() - started
    return report


__all__ = ["evaluate_restoration", "evaluate_task", "restoration_metrics", "steps_to_reach", "clean_images"]
