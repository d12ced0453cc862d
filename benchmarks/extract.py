#!/usr/bin/env python
"""Throughput of GH-Feat extraction: the encoder alone and the whole `ghfeat extract` path.

    python benchmarks/extract.py --device cpu --batch-sizes 1 8 64 --out benchmarks/RESULTS_extract.md
    python benchmarks/extract.py --device cuda --out benchmarks/RESULTS_extract.md      # full grid on a GPU

For every cell of batch size x dtype (fp32 / bf16 autocast) x eager / `torch.compile` x channels_last off / on:
images/s of `GHFeatModel(pixel_values=x)` (official 256 px depth-50 model, random init) on device tensors, of
timm `resnet50` (random init) in the same cell, and of the real [`extract_features`] (decode in workers +
preprocess + encode + Parquet write) over JPEG/PNG files made from scikit-image's photos; FLOPs per image of
both models from `FlopCounterMode`. Every number is also given as a ratio to a baseline of the same run (the
naive fp32 eager contiguous cell of the batch, resnet50 in the same cell); the report says how it was timed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import itertools
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from ghfeat_hf import GHFeatConfig, GHFeatImageProcessor, GHFeatModel  # noqa: E402
from ghfeat_hf.error_reporting import run_script  # noqa: E402
from ghfeat_hf.extraction import FileSource, decode_image, extract_features  # noqa: E402
from ghfeat_hf.runtime import autocast_context, resolve_device, resolve_dtype  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "camera", "moon", "coins", "grass", "gravel", "brick")
CPU_COMPILE_NOTE = ("torch.compile on CPU costs about 1.5 min of inductor compilation per model and per (batch, "
                    "dtype, layout) on 2 cores; one representative cell is measured")
CPU_E2E_NOTE = ("end to end not run for fp32 at batches above 8 on CPU (another 40-120 s of a 2-core machine for a "
                "ratio the bf16 cell at the same batch already shows)")
CPU_BIG_BATCH_NOTE = ("a batch of 64 through both models costs 40-70 s in fp32 on 2 cores; the naive baseline and "
                      "the bf16 + channels_last cell are measured")


@dataclass(frozen=True)
class Cell:
    batch: int
    dtype: str = "fp32"
    compiled: bool = False
    channels_last: bool = False
    warmup: int | None = None
    repeats: int | None = None
    e2e: bool = True  # also time the end-to-end path

    @property
    def key(self) -> tuple:
        return self.batch, self.dtype, self.compiled, self.channels_last

    @property
    def naive_key(self) -> tuple:
        return self.batch, "fp32", False, False

    def label(self) -> str:
        return (f"batch {self.batch} {self.dtype} {'compile' if self.compiled else 'eager'} "
                f"{'channels_last' if self.channels_last else 'contiguous'}")


@dataclass
class Settings:
    """What to measure (the command-line options; `None` picks a per-device default, see `build_parser`).
    `grid`: `full` (every cell), `cpu` (the reduced CPU grid of `plan_cells`) or `auto` (`cpu` on a CPU)."""

    device: str = "cpu"
    batch_sizes: Sequence[int] = (1, 8, 64)
    dtypes: Sequence[str] = ("fp32", "bf16")
    modes: Sequence[str] = ("eager", "compile")
    channels_last: Sequence[bool] = (False, True)
    grid: str = "auto"
    quick: bool = False
    warmup: int = 2
    repeats: int = 3
    min_time: float = 0.5
    max_iters: int = 50
    e2e_images: int | None = None
    e2e_repeats: int | None = None
    num_workers: int | None = None
    threads: int | None = None


@dataclass
class CellResult:
    """Images/s of a cell; `naive_ips` is the naive cell's (fp32, eager, contiguous, same batch) timed interleaved
    with it, `*_first_s` the first warm-up iteration (compilation included), `timing` `warm-up+repeats x iters`."""

    cell: Cell
    encoder_ips: float
    reference_ips: float
    e2e_ips: float | None = None
    naive_ips: float | None = None
    encoder_first_s: float = 0.0
    reference_first_s: float = 0.0
    encoder_repeats: list[float] = field(default_factory=list)
    e2e_repeats: list[float] = field(default_factory=list)
    timing: str = ""
    e2e_images: int = 0


@dataclass
class Report:
    settings: Settings
    machine: dict
    flops_per_image: dict[str, int]
    resolution: int
    model: str
    reference: str
    results: list[CellResult]
    skipped: list[tuple[Cell, str]]
    seconds: float
    command: str = ""



def plan_cells(settings: Settings, device: torch.device) -> tuple[list[Cell], list[tuple[Cell, str]]]:
    """The cells to measure, in order, and the skipped cells of the full grid with the reason."""
    full = [Cell(batch, dtype, mode == "compile", channels_last)
            for batch, dtype, mode, channels_last in itertools.product(
                settings.batch_sizes, settings.dtypes, settings.modes, settings.channels_last)]
    grid = settings.grid if settings.grid != "auto" else ("cpu" if device.type == "cpu" else "full")
    cells, skipped = [], []
    for cell in full:
        reason = None
        if settings.quick and (cell.compiled or cell.channels_last):
            reason = "--quick measures eager, contiguous cells only"
        elif grid == "cpu":
            reason = _cpu_skip_reason(cell, settings)
        if reason is None:
            cells.append(_cpu_budget(cell) if grid == "cpu" and not settings.quick else cell)
        else:
            skipped.append((cell, reason))
    return cells, skipped


def _cpu_skip_reason(cell: Cell, settings: Settings) -> str | None:
    small = [batch for batch in settings.batch_sizes if batch <= 8]
    compile_batch = max(small) if small else min(settings.batch_sizes)
    compile_dtype = "bf16" if "bf16" in settings.dtypes else settings.dtypes[0]
    if cell.compiled:
        wanted = (compile_batch, compile_dtype, False)
        return None if (cell.batch, cell.dtype, cell.channels_last) == wanted else CPU_COMPILE_NOTE
    if cell.batch > 8 and cell.key != cell.naive_key and (cell.dtype, cell.channels_last) != ("bf16", True):
        return CPU_BIG_BATCH_NOTE
    return None


def _cpu_budget(cell: Cell) -> Cell:
    """Fewer iterations for the expensive CPU cells (and no fp32 end-to-end run above batch 8, `CPU_E2E_NOTE`)."""
    if cell.batch > 8:
        fp32 = cell.dtype == "fp32"
        return replace(cell, warmup=1, repeats=1 if fp32 else 2, e2e=not fp32)
    return replace(cell, warmup=1) if cell.batch > 1 else cell



def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timer:
    """Times one callable: warm-up iterations, then repeats of `iterations` timed iterations each."""

    function: Callable[[], object]
    device: torch.device
    iterations: int = 1
    first: float = 0.0
    """Seconds of the first warm-up iteration (compilation included for a compiled function)."""
    times: list[float] = field(default_factory=list)
    """Seconds per iteration of every repeat."""

    def _run(self, iterations: int) -> float:
        start = time.perf_counter()
        for _ in range(iterations):
            self.function()
        synchronize(self.device)
        return (time.perf_counter() - start) / iterations

    def warm_up(self, warmup: int, min_time: float, max_iters: int) -> None:
        """Run `warmup` iterations and choose the iterations per repeat (so that a repeat lasts >= `min_time`)."""
        last = 0.0
        for index in range(warmup):
            last = self._run(1)
            self.first = last if index == 0 else self.first
        self.iterations = max(1, min(max_iters, math.ceil(min_time / last))) if last > 0 else 1

    def repeat(self) -> None:
        self.times.append(self._run(self.iterations))

    def images_per_second(self, batch: int) -> float:
        return batch / statistics.median(self.times)


def count_flops(function: Callable[[torch.Tensor], object], inputs: torch.Tensor) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        function(inputs)
    return int(counter.get_total_flops())


def make_image_folder(directory: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """`count` JPEG (even) / PNG (odd) files of `size` px: random square crops, flips of scikit-image's photos."""
    import skimage.data

    photos = []
    for name in PHOTOS:
        if len(photos) == count:
            break
        with contextlib.suppress(Exception):  # a photo that would need a download is left out
            photos.append(np.asarray(getattr(skimage.data, name)()))
    if not photos:
        raise RuntimeError("no scikit-image photo available.")
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(min(photo.shape[:2]) * rng.uniform(0.6, 1.0))
        top, left = (int(rng.integers(0, photo.shape[axis] - side + 1)) for axis in (0, 1))
        image = PIL.Image.fromarray(photo[top:top + side, left:left + side])
        if rng.random() < 0.5:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        image = image.resize((size, size), PIL.Image.Resampling.BICUBIC)
        path = directory / f"img_{index:05d}.{'jpg' if index % 2 == 0 else 'png'}"
        image.save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
        paths.append(path)
    return paths


def _e2e_count(batch: int, images: int) -> int:
    return batch * max(1, math.ceil(images / batch))


def run_benchmark(settings: Settings, ghfeat_config: GHFeatConfig | None = None, reference: str = "resnet50",
                  log: Callable[[str], None] | None = None) -> Report:
    """Measure every planned cell; `ghfeat_config` defaults to the official 256 px depth-50 model."""
    import timm

    log = log or (lambda message: None)
    began, load_before = time.perf_counter(), _load_average()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    on_cpu = device.type == "cpu"
    e2e_images = 1 if settings.quick else settings.e2e_images or (16 if on_cpu else 2048)
    e2e_repeats = settings.e2e_repeats or (1 if on_cpu or settings.quick else 3)
    num_workers = settings.num_workers if settings.num_workers is not None else min(4, os.cpu_count() or 1)
    cells, skipped = plan_cells(settings, device)

    torch.manual_seed(0)
    model = GHFeatModel(ghfeat_config or GHFeatConfig()).eval().to(device)
    size = model.config.image_size
    processor = GHFeatImageProcessor(size={"height": size, "width": size})
    resnet = timm.create_model(reference, pretrained=False).eval().to(device)
    one = torch.rand(1, 3, size, size, device=device) * 2 - 1
    flops = {"ghfeat": count_flops(lambda x: model(pixel_values=x), one), reference: count_flops(resnet, one)}
    log(f"FLOPs per image at {size} px: " + ", ".join(f"{name} {value / 1e9:.2f} G" for name, value in flops.items()))

    variants = ModelVariants(model, resnet)
    results = []
    with tempfile.TemporaryDirectory(prefix="ghfeat-bench-") as workdir:
        workdir = Path(workdir)
        count = max((_e2e_count(cell.batch, e2e_images) for cell in cells if cell.e2e), default=1)
        paths = make_image_folder(workdir / "images", count, size)
        decode_image(paths[0], processor)  # warm the decode path (imports, PIL plugins)
        for group in group_cells(cells):
            measured = _measure_group(group, settings, variants, processor, device, paths, workdir, e2e_images,
                                      e2e_repeats, num_workers)
            variants.drop_compiled()
            for result in measured:
                e2e = f", end to end {result.e2e_ips:.2f} img/s" if result.e2e_ips else ""
                log(f"[{time.perf_counter() - began:6.0f} s] {result.cell.label()}: encoder "
                    f"{result.encoder_ips:.2f} img/s (naive {result.naive_ips:.2f}), {reference} "
                    f"{result.reference_ips:.2f} img/s{e2e}")
            results += measured
    description = (f"`GHFeatModel({'GHFeatConfig()' if ghfeat_config is None else 'custom config'})` ({size} px, "
                   f"depth {model.config.depth}, {sum(p.numel() for p in model.encoder.parameters()) / 1e6:.1f} M "
                   "encoder parameters)")
    machine = describe_machine(device)
    machine["num_workers"] = num_workers
    machine["load_average"] = (load_before, _load_average())
    return Report(settings, machine, flops, size, description, reference, results, skipped,
                  time.perf_counter() - began)


class ModelVariants:
    """The two models in every (channels_last, compiled) variant, made on first use: channels_last copies are
    kept, compiled ones (`torch.compile` of GH-Feat's encoder forward and of the reference's) dropped after
    their group."""

    def __init__(self, model: GHFeatModel, reference: torch.nn.Module):
        self._variants = {(False, False): (model, reference)}

    def get(self, channels_last: bool, compiled: bool) -> tuple[GHFeatModel, torch.nn.Module]:
        key = (channels_last, compiled)
        if key not in self._variants:
            base = self.get(channels_last, False) if compiled else self._variants[False, False]
            model, reference = (copy.deepcopy(module) for module in base)
            if compiled:
                model.encoder.forward = torch.compile(model.encoder.forward)
                reference.forward = torch.compile(reference.forward)
            else:
                model.to(memory_format=torch.channels_last)
                reference.to(memory_format=torch.channels_last)
            self._variants[key] = model, reference
        return self._variants[key]

    def drop_compiled(self) -> None:
        if any(compiled for _, compiled in self._variants):
            self._variants = {key: value for key, value in self._variants.items() if not key[1]}
            torch._dynamo.reset()


def group_cells(cells: Sequence[Cell]) -> list[list[Cell]]:
    """Cells timed together (interleaved): the eager cells of a batch size, each compiled cell on its own."""
    groups: list[list[Cell]] = []
    eager: dict[int, list[Cell]] = {}
    for cell in cells:
        if cell.compiled:
            groups.append([cell])
        elif cell.batch in eager:
            eager[cell.batch].append(cell)
        else:
            eager[cell.batch] = [cell]
            groups.append(eager[cell.batch])
    return groups


def _measure_group(group: list[Cell], settings: Settings, variants: ModelVariants, processor, device: torch.device,
                   paths: list[Path], workdir: Path, e2e_images: int, e2e_repeats: int,
                   num_workers: int) -> list[CellResult]:
    """Warm every cell of the group up (and the naive cell of its batch, measured along as the baseline), then
    interleave the repeats: every cell's resnet50 and GH-Feat repeat, then every cell's end-to-end run, and again;
    a drift of the machine's load so touches all the cells compared alike."""
    naive = next((cell for cell in group if cell.key == cell.naive_key), None)
    members = group if naive is not None else [
        replace(group[0], dtype="fp32", compiled=False, channels_last=False, e2e=False), *group]
    naive = naive or members[0]
    size = variants.get(False, False)[0].config.image_size
    inputs = torch.rand(group[0].batch, 3, size, size, device=device) * 2 - 1
    timers, plans = {}, {}
    for cell in members:
        warmup = 1 if settings.quick else (cell.warmup if cell.warmup is not None else settings.warmup)
        repeats = 1 if settings.quick else (cell.repeats if cell.repeats is not None else settings.repeats)
        model, reference = variants.get(cell.channels_last, cell.compiled)
        dtype = resolve_dtype(cell.dtype)
        timers[cell] = (Timer(_forward(reference, inputs, device, dtype), device),
                        Timer(_forward(lambda x, model=model: model(pixel_values=x), inputs, device, dtype), device))
        plans[cell] = warmup, repeats
        for timer in timers[cell]:
            timer.warm_up(warmup, 0.0 if settings.quick else settings.min_time, settings.max_iters)
    source = FileSource(paths[:_e2e_count(group[0].batch, e2e_images)])
    e2e: dict[Cell, list[float]] = {cell: [] for cell in members}
    for index in range(max([repeats for _, repeats in plans.values()] + [e2e_repeats])):
        for cell in members:
            if index < plans[cell][1]:
                for timer in timers[cell]:
                    timer.repeat()
        for cell in members:
            if cell.e2e and index < e2e_repeats:
                model = variants.get(cell.channels_last, cell.compiled)[0]
                e2e[cell].append(_time_extract(model, processor, source, workdir / "features.parquet", cell,
                                               device, num_workers))
    batch = group[0].batch
    results = []
    for cell in group:
        reference, encoder = timers[cell]
        warmup, repeats = plans[cell]
        results.append(CellResult(
            cell, encoder.images_per_second(batch), reference.images_per_second(batch),
            statistics.median(e2e[cell]) if e2e[cell] else None, timers[naive][1].images_per_second(batch),
            encoder.first, reference.first, [batch / seconds for seconds in encoder.times], e2e[cell],
            f"{warmup}+{repeats}x{encoder.iterations}", len(source.paths) if e2e[cell] else 0,
        ))
    return results


def _forward(function: Callable[[torch.Tensor], object], inputs: torch.Tensor, device: torch.device,
             dtype: torch.dtype) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode(), autocast_context(device, dtype):
            function(inputs)

    return run


def _time_extract(model, processor, source: FileSource, output: Path, cell: Cell, device: torch.device,
                  num_workers: int) -> float:
    """Images/s of one `extract_features` run (decode + preprocess + encode + write) over `source`."""
    synchronize(device)
    start = time.perf_counter()
    result = extract_features(model, processor, source, output, batch_size=cell.batch, device=device,
                              dtype=cell.dtype, num_workers=num_workers, progress=False, overwrite=True)
    synchronize(device)
    elapsed = time.perf_counter() - start
    if result.num_rows != len(source.paths) or result.skipped:
        raise RuntimeError(f"end-to-end run wrote {result.num_rows} of {len(source.paths)} rows.")
    return len(source.paths) / elapsed



def describe_machine(device: torch.device) -> dict:
    import timm

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
                break
    machine = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
               "platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine


def _load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _ratio(value: float | None, baseline: float | None) -> str:
    return f"{value / baseline:.2f}" if value and baseline else "-"


def render_markdown(report: Report) -> str:
    machine, flops, settings, reference = report.machine, report.flops_per_image, report.settings, report.reference
    load = machine.get("load_average")
    lines = [
        "# `ghfeat extract` throughput",
        "",
        f"Generated by `{report.command or 'benchmarks/extract.py'}` on {datetime.date.today().isoformat()} "
        f"in {report.seconds / 60:.1f} min.",
        "",
        f"- Machine: {machine['cpu']}, {machine['cpu_count']} CPUs (torch threads {machine['torch_threads']})"
        + (f", GPU {machine['gpu']}" if "gpu" in machine else "") + f"; device `{machine['device']}`"
        + (f"; 1-min load average {load[0]:.1f} before, {load[1]:.1f} after the run" if load and None not in load else "") + ".",
        f"- Software: torch {machine['torch']}, timm {machine['timm']}, Python {machine['python']}, "
        f"{machine['platform']}.",
        f"- Models (random init, eval): GH-Feat {report.model}, {flops['ghfeat'] / 1e9:.2f} GFLOP/image; timm "
        f"`{reference}`, {flops[reference] / 1e9:.2f} GFLOP/image at the same resolution (FlopCounterMode, counted "
        "once per model: 2 x multiply-adds of convolutions and matmuls, linear in the batch).",
        f"- Baselines, measured in this run: `x naive` divides by the fp32 eager contiguous cell at the same batch, "
        "timed interleaved with the cell; "
        f"`FLOP/s vs {reference}` divides GH-Feat's achieved FLOP/s by `{reference}`'s in the same cell (goal >= 1); "
        "`e2e/enc` divides the real `extract_features` throughput (decode in workers + preprocess + encode + "
        "Parquet write) by the encoder-only one (goal >= 0.9 on a GPU).",
        "",
        f"| batch | dtype | mode | channels_last | enc img/s | x naive | e2e img/s | e2e/enc | GH-Feat TFLOP/s "
        f"| {reference} img/s | {reference} TFLOP/s | FLOP/s vs {reference} | timing | e2e images | compile s |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for result in report.results:
        cell = result.cell
        enc_flops = result.encoder_ips * flops["ghfeat"]
        ref_flops = result.reference_ips * flops[reference]
        lines.append(
            f"| {cell.batch} | {cell.dtype} | {'compile' if cell.compiled else 'eager'} | "
            f"{'on' if cell.channels_last else 'off'} | {result.encoder_ips:.2f} | "
            f"{_ratio(result.encoder_ips, result.naive_ips)} | "
            f"{f'{result.e2e_ips:.2f}' if result.e2e_ips else '-'} | {_ratio(result.e2e_ips, result.encoder_ips)} | "
            f"{enc_flops / 1e12:.3f} | {result.reference_ips:.2f} | {ref_flops / 1e12:.3f} | "
            f"{_ratio(enc_flops, ref_flops)} | {result.timing} | {result.e2e_images} | "
            f"{f'{result.encoder_first_s:.0f}' if cell.compiled else '-'} |"
        )
    lines += summarize(report)
    no_e2e = [result.cell.label() for result in report.results if not result.cell.e2e]
    if report.skipped or no_e2e:
        lines += ["", "Skipped cells of the full grid:", ""]
        by_reason: dict[str, list[str]] = {}
        for cell, reason in report.skipped:
            by_reason.setdefault(reason, []).append(cell.label())
        for reason, labels in by_reason.items():
            lines.append(f"- {reason}: {'; '.join(labels)}.")
        if no_e2e:
            lines.append(f"- {CPU_E2E_NOTE}: {'; '.join(no_e2e)}.")
    lines += [
        "",
        f"Method: `timing` = warm-up + repeats x iterations per repeat (`time.perf_counter`, device synchronised, "
        f"a repeat lasts >= {settings.min_time} s); img/s = median over the repeats. The eager cells of a batch "
        "are timed round-robin (every cell's resnet50 and GH-Feat repeat, then every cell's end-to-end run, and "
        "again), each compiled cell with the naive cell of its batch, so a drift of the load touches the numbers "
        "compared alike. Encoder: device-resident random inputs, `torch.inference_mode()` (+ autocast for bf16). "
        "channels_last converts the weights (the extract path feeds NCHW batches; the convolutions then run "
        f"channels_last). compile = `torch.compile` of the encoder's forward (and of `{reference}`'s), reused by "
        f"the extract path with full batches only. End to end: {report.machine.get('num_workers', '?')} decoding "
        "workers, 256 px JPEG/PNG crops of scikit-image's photos, median of the runs. `compile s` = first call "
        "of the compiled encoder (shorter when inductor's on-disk cache holds the graphs of an earlier run).",
        "",
    ]
    return "\n".join(lines)


def summarize(report: Report) -> list[str]:
    """Per batch: the fastest encoder cell and its ratios; then how many cells meet the two goals."""
    results, flops = report.results, report.flops_per_image
    flop_ratio = {id(result): result.encoder_ips * flops["ghfeat"] / (result.reference_ips * flops[report.reference])
                  for result in results}
    lines = ["", "Summary (computed from the table):", ""]
    for batch in sorted({result.cell.batch for result in results}):
        rows = [result for result in results if result.cell.batch == batch]
        best = max(rows, key=lambda result: result.encoder_ips)
        ratios = [flop_ratio[id(result)] for result in rows]
        e2e = f", e2e/enc {best.e2e_ips / best.encoder_ips:.2f}" if best.e2e_ips else ""
        lines.append(f"- batch {batch}: fastest encoder cell {best.cell.label()}, "
                     f"{best.encoder_ips / best.naive_ips:.2f}x naive{e2e}; GH-Feat FLOP/s / {report.reference}'s "
                     f"{min(ratios):.2f}-{max(ratios):.2f} over the {len(rows)} cells.")
    with_e2e = [result for result in results if result.e2e_ips]
    lines.append(f"- Goals: e2e/enc >= 0.9 in {sum(r.e2e_ips >= 0.9 * r.encoder_ips for r in with_e2e)} of "
                 f"{len(with_e2e)} cells; GH-Feat FLOP/s >= {report.reference}'s in "
                 f"{sum(ratio >= 1 for ratio in flop_ratio.values())} of {len(results)} cells.")
    load, cpus = report.machine.get("load_average") or (None, None), report.machine.get("cpu_count") or 0
    if max((value for value in load if value is not None), default=0) > cpus > 0:
        lines.append(f"- The machine was shared during the run (load average above its {cpus} CPUs): absolute "
                     "numbers are low and noisy; the ratios come from interleaved timing, but single cells can "
                     "still be off by tens of percent.")
    return lines


def report_json(report: Report) -> str:
    data = asdict(report)
    data["skipped"] = [{"cell": asdict(cell), "reason": reason} for cell, reason in report.skipped]
    return json.dumps(data, indent=1, default=str)



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: cpu)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    parser.add_argument("--channels-last", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--grid", default="auto", choices=["auto", "full", "cpu"],
                        help="full: every cell; cpu: the reduced CPU grid; auto: cpu on a CPU (default)")
    parser.add_argument("--quick", action="store_true",
                        help="eager contiguous cells only, 1 warm-up, 1 repeat, one batch end to end")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per timed repeat, at least")
    parser.add_argument("--e2e-images", type=int, help="images per end-to-end run (default 16 CPU, 2048 GPU)")
    parser.add_argument("--e2e-repeats", type=int, help="end-to-end runs per cell (default 1 CPU, 3 GPU)")
    parser.add_argument("--num-workers", type=int, help="decoding workers end to end (default min(4, CPUs))")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/RESULTS_extract.md", help="markdown report")
    parser.add_argument("--json", help="also write the raw results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings(
        device=args.device, batch_sizes=tuple(args.batch_sizes), dtypes=tuple(args.dtypes), modes=tuple(args.modes),
        channels_last=tuple(value == "on" for value in args.channels_last), grid=args.grid, quick=args.quick,
        warmup=args.warmup, repeats=args.repeats, min_time=args.min_time, e2e_images=args.e2e_images,
        e2e_repeats=args.e2e_repeats, num_workers=args.num_workers, threads=args.threads,
    )
    report = run_benchmark(settings, log=lambda message: print(message, file=sys.stderr, flush=True))
    report.command = "python benchmarks/extract.py " + " ".join(shlex.quote(arg) for arg in (argv or sys.argv[1:]))
    markdown = render_markdown(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(markdown, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(report_json(report), encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    run_script(main)
