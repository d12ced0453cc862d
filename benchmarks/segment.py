#!/usr/bin/env python
"""Time and peak memory of few-shot segmentation: fitting a head on K annotated images per class and labelling images.

    python benchmarks/segment.py --out benchmarks/RESULTS_segment.md                   # embedded model, 32 px, CPU
    python benchmarks/segment.py --official-random --predict-images 200 --out /tmp/segment256.md   # 256 px

Each phase runs in a fresh process (spawned), so its peak resident memory (`VmHWM`) is its own: the process loads
the model and makes the images first (`RSS before`), then runs the phase (`peak`). Phases:

* `fit`: spatial features of K x classes images, pixel sampling and a linear head (200 AdamW steps);
* `predict`: label maps of `--predict-images` images with the factorised head (each source projected at its own
  resolution, see `ghfeat_hf.segmentation.head`);
* `predict, explicit hypercolumn` (the baseline of the same run): the same label maps through the materialised
  hypercolumn (every source upsampled to the image resolution and concatenated, then the head per pixel).

Images and masks are synthetic (smooth random images, random label blocks): time and memory do not depend on
content. `--official-random` measures the official 256 px architecture (random weights), what `--model ghfeat-ffhq`
would cost once converted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

from ghfeat_hf import GHFeatConfig, GHFeatImageProcessor, GHFeatModel  # noqa: E402
from ghfeat_hf.error_reporting import run_script  # noqa: E402
from ghfeat_hf.runtime import load_model  # noqa: E402
from ghfeat_hf.segmentation import (  # noqa: E402
    FitSettings,
    GHFeatSpatialFeatures,
    LabelSet,
    fit_segmenter,
    gather_pixels,
    predict_masks,
)

NUM_LABELS = 11
PHASES = ("fit", "predict", "predict, explicit hypercolumn")


def _memory_mib(key: str) -> float:
    """`VmRSS` / `VmHWM` of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def synthetic_data(count: int, size: int, channels: int, seed: int = 0) -> tuple[list[PIL.Image.Image], np.ndarray]:
    """`count` smooth random images and label masks of random 4x4 blocks, `size` px."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 8, 8, channels)).astype(np.uint8)
    mode = "L" if channels == 1 else "RGB"
    images = [PIL.Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).resize(
        (size, size), PIL.Image.Resampling.BICUBIC) for array in coarse]
    blocks = rng.integers(0, NUM_LABELS, (count, 4, 4))
    masks = np.kron(blocks, np.ones((size // 4, size // 4), dtype=np.int64))
    return images, masks


def _model(args: argparse.Namespace):
    if args.official_random:
        torch.manual_seed(0)
        config = GHFeatConfig()
        return GHFeatModel(config).eval(), GHFeatImageProcessor(size={"height": config.image_size,
                                                                      "width": config.image_size})
    return load_model(args.model)


def run_phase(phase: str, args: argparse.Namespace) -> dict:
    """One phase in this (fresh) process; returns its seconds and memory."""
    torch.set_num_threads(args.threads)
    model, processor = _model(args)
    features = GHFeatSpatialFeatures(model, processor, layers=args.layers)
    labels = LabelSet.from_names([str(label) for label in range(NUM_LABELS)])
    channels = model.config.num_channels
    fit_images, fit_masks = synthetic_data(args.shots * args.classes, features.size, channels)
    settings = FitSettings(steps=args.steps)
    head = None
    if phase != "fit":  # the head the predict phases use: fitted before the measurement starts
        head = fit_segmenter(features, fit_images[:2], fit_masks[:2], labels, settings=FitSettings(steps=1))
        images, _ = synthetic_data(args.predict_images, features.size, channels, seed=1)
    before = _memory_mib("VmRSS")
    start = time.perf_counter()
    if phase == "fit":
        fit_segmenter(features, fit_images, fit_masks, labels, settings=settings, batch_size=args.batch_size)
    elif phase == "predict":
        for _ in predict_masks(features, head, images, batch_size=args.batch_size, progress=False):
            pass
    else:
        every_pixel = torch.arange(features.size ** 2)
        for begin in range(0, len(images), args.batch_size):
            maps = features(images[begin:begin + args.batch_size])
            rows = gather_pixels(maps, features.size, every_pixel.expand(len(maps[0]), -1))
            head.rows_logits(rows).softmax(dim=-1).mean(dim=0).argmax(dim=-1)
    seconds = time.perf_counter() - start
    return {"phase": phase, "seconds": seconds, "rss_before_mib": before, "peak_mib": _memory_mib("VmHWM"),
            "size": features.size, "channels": sum(features.channels)}


def _child(phase: str, args: argparse.Namespace, queue) -> None:
    queue.put(run_phase(phase, args))


def measure(args: argparse.Namespace) -> list[dict]:
    """Every phase in its own spawned process."""
    context = multiprocessing.get_context("spawn")
    results = []
    for phase in args.phases:
        queue = context.Queue()
        process = context.Process(target=_child, args=(phase, args, queue))
        process.start()
        results.append(queue.get())
        process.join()
        print(json.dumps(results[-1]), flush=True)
    return results


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


def render_markdown(results: list[dict], args: argparse.Namespace, command: str) -> str:
    baseline = {row["phase"]: row for row in results}.get("predict, explicit hypercolumn")
    size, channels = results[0]["size"], results[0]["channels"]
    lines = [
        "# Few-shot segmentation: time and peak memory", "",
        f"Generated by `{command}` on {datetime.date.today().isoformat()}.", "",
        f"- Machine: {_cpu_name()}, {os.cpu_count()} CPUs, torch threads "
        f"{args.threads}; 1-min load average {os.getloadavg()[0]:.1f} at the end (the machine is shared).",
        f"- Model: {'official 256 px architecture, random weights' if args.official_random else args.model or 'the embedded ghfeat-fmnist32'}; "
        f"spatial features of synthesis layers {args.layers} ({channels} channels at {size} px); a linear head, "
        f"{NUM_LABELS} labels, {args.steps} AdamW steps.",
        f"- fit: {args.shots} images per class x {args.classes} classes; predict: {args.predict_images} images; "
        f"batches of {args.batch_size}.",
        "- Peak memory: the phase process's peak resident set (VmHWM); `RSS before`: after loading the model and "
        "making the images. The baseline is the explicit hypercolumn of the same run.", "",
        "| phase | seconds | images/s | RSS before (MiB) | peak (MiB) | peak - before (MiB) | time vs explicit | "
        "memory vs explicit |", "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        count = args.shots * args.classes if row["phase"] == "fit" else args.predict_images
        growth = row["peak_mib"] - row["rss_before_mib"]
        time_ratio = memory_ratio = "-"
        if baseline and row["phase"].startswith("predict"):
            time_ratio = f"{row['seconds'] / baseline['seconds']:.2f}x"
            memory_ratio = f"{growth / max(baseline['peak_mib'] - baseline['rss_before_mib'], 1e-9):.2f}x"
        lines.append(f"| {row['phase']} | {row['seconds']:.1f} | {count / row['seconds']:.1f} | "
                     f"{row['rss_before_mib']:.0f} | {row['peak_mib']:.0f} | {growth:.0f} | {time_ratio} | "
                     f"{memory_ratio} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a GH-Feat model (default: the embedded ghfeat-fmnist32)")
    parser.add_argument("--official-random", action="store_true",
                        help="the official 256 px architecture with random weights instead of --model")
    parser.add_argument("--layers", default="all", help="synthesis layers read (default: all)")
    parser.add_argument("--shots", type=int, default=10, help="annotated images per class (default: 10)")
    parser.add_argument("--classes", type=int, default=10, help="classes (default: 10)")
    parser.add_argument("--predict-images", type=int, default=1000, help="images labelled (default: 1000)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per batch (default: 100)")
    parser.add_argument("--steps", type=int, default=200, help="AdamW steps of the fit (default: 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES, help="phases to run")
    parser.add_argument("--out", help="write the Markdown report here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python benchmarks/segment.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = measure(args)
    markdown = render_markdown(results, args, command.strip())
    print(markdown)
    if args.out:
        Path(args.out).write_text(markdown)
    return 0


if __name__ == "__main__":
    run_script(main)
