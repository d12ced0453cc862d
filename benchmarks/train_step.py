#!/usr/bin/env python
"""Throughput and peak memory of one GH-Feat encoder or StyleGAN training step, naive vs optimised, in one run.

``--step encoder`` times exactly what ``training/train_encoder.py`` runs per iteration (``EncoderTrainer.step``):
the E update (E forward/backward, frozen-G forward/backward, VGG16 conv4_3 on reals and reconstructions, D forward
for the adversarial term) then the D update (the second E forward, G forward, D on fakes and mirrored reals, R1
double backward), Adam steps for E and D. ``--step stylegan`` times ``StyleGANTrainer.step`` of
``training/train_stylegan.py`` (D update with lazy R1, G update with style mixing, w_avg and G EMA updates): one timed
iteration is ``--r1_interval`` consecutive steps, so that exactly one of them carries R1 and images/s amortise it.
Weights are random (speed does not depend on them; the VGG here is random too, which the trainer itself would
refuse), images are random and already on the device (data loading is not timed).

Presets (``--preset``; ``--resolution``, ``--depth`` and ``--batch_size`` override them):

* ``official256``: ResNet-50 encoder, StyleGAN v1 at fmap_base 8192 / fmap_max 512 (512-d latents, 8 mapping layers),
  3 channels, R1 every step as StyleGAN v1; batch 2 (the official per-GPU batch is 12).
* ``fmnist32``: the embedded ``ghfeat-fmnist32`` model (``training/recipes/ghfeat-fmnist32.md``) in grayscale (the
  shipped model reads 3 equal channels; only the first and last layers differ): 1 channel, 32 px,
  StyleGAN fmap_base 512 / fmap_max 64, 128-d latents, 4 mapping layers, lazy R1 every 4 steps; ResNet-18 encoder at
  base width 32, extra stage 256, FPN 128, stem stride 1, no stem pool; batch 32.

The perceptual VGG16 runs at the trainer's ``--perceptual_size`` (default 256: 32 px images are upsampled to 256 px,
as ``train_encoder.py`` does unless told otherwise).

Configurations (each in its own subprocess, so the peak memory and torch.compile caches are per configuration):

* ``naive``: fp32, eager, contiguous (NCHW) tensors: the reference every ratio is relative to;
* ``bf16``: bf16 autocast; ``fp32_cl`` / ``bf16_cl``: channels_last memory format;
* ``*_compile``: the same under ``torch.compile`` as the trainers apply it (encoder step: E, G, VGG, and D in the E
  step; StyleGAN step: the generator; D stays eager for R1's double backward). Compilation is slow on the CPU:
  ``--skip_compile`` leaves these out.

``--threads 1,2`` runs every configuration at each intra-op thread count; the reference of every ratio is naive at
the first thread count, so the thread sweep is measured against the same reference as the rest.

Examples::

    python benchmarks/train_step.py --device cpu --batch_size 2 --iters 3
    python benchmarks/train_step.py --preset fmnist32 --step stylegan --device cpu --threads 1,2 --skip_compile
    python benchmarks/train_step.py --device cuda --batch_size 12 --iters 10 --json results.json

Timing: every process builds its configuration and runs the warm-up once, then stays alive. The naive process (at
the first thread count) is the reference of all the others: for each configuration, ``--iters`` rounds each time one
naive iteration and then one iteration of the configuration, back to back, so both see the same machine load (two
configurations are in memory at a time). "vs naive" is the median over those rounds of (naive seconds /
configuration seconds); s/iteration and images/s are each process's own median.

Peak memory: ``torch.cuda.max_memory_allocated`` on GPUs; on the CPU the peak resident set size of the
configuration's process (models, optimizer states and activations; the Python/torch baseline is also reported).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
TRAINING = REPO / "training"  # the trainers' modules, importable in the workers (see Worker)

CONFIGS = {
    "naive": dict(mixed_precision="no", channels_last=False, compile=False),
    "bf16": dict(mixed_precision="bf16", channels_last=False, compile=False),
    "fp32_cl": dict(mixed_precision="no", channels_last=True, compile=False),
    "bf16_cl": dict(mixed_precision="bf16", channels_last=True, compile=False),
    "fp32_compile": dict(mixed_precision="no", channels_last=False, compile=True),
    "bf16_compile": dict(mixed_precision="bf16", channels_last=False, compile=True),
    "fp32_cl_compile": dict(mixed_precision="no", channels_last=True, compile=True),
    "bf16_cl_compile": dict(mixed_precision="bf16", channels_last=True, compile=True),
}


@dataclass(frozen=True)
class Preset:
    """Networks and recipe of a benchmark, as the flags the training scripts take."""

    stylegan_flags: tuple[str, ...]  # train_stylegan.py: the GAN's architecture and recipe (also the encoder's G and D)
    encoder_flags: tuple[str, ...]  # train_encoder.py: the encoder architecture
    batch_size: int


PRESETS = {
    "official256": Preset(
        stylegan_flags=("--resolution", "256", "--num_channels", "3", "--fmap_base", "8192", "--fmap_max", "512",
                        "--latent_size", "512", "--mapping_layers", "8", "--r1_interval", "1"),
        encoder_flags=("--depth", "50"),
        batch_size=2,
    ),
    "fmnist32": Preset(
        stylegan_flags=("--resolution", "32", "--num_channels", "1", "--fmap_base", "512", "--fmap_max", "64",
                        "--latent_size", "128", "--mapping_layers", "4", "--r1_interval", "4"),
        encoder_flags=("--depth", "18", "--base_width", "32", "--extra_stage_channels", "256", "--pyramid_channels",
                       "128", "--stem_stride", "1", "--no-stem_pool"),
        batch_size=32,
    ),
}
STEPS = ("encoder", "stylegan")


@dataclass
class TimedStep:
    """What a worker times: ``run(index)`` performs timed iteration ``index`` and returns a loss (read to sync)."""

    run: Callable[[int], torch.Tensor]
    images_per_iteration: int
    info: dict  # result fields (networks, parameter counts); read when the result is written


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _training_flags(args: argparse.Namespace, output_dir: str) -> list[str]:
    """The run flags both training scripts share: run directory, batch, precision, channels_last, compile."""
    config = CONFIGS[args.single]
    flags = ["--output_dir", output_dir, "--batch_size", str(args.batch_size), "--mixed_precision",
             config["mixed_precision"], "--report_to", "none"]
    return flags + (["--channels_last"] if config["channels_last"] else []) + (["--compile"] if config["compile"] else [])


def _stylegan_args(args: argparse.Namespace, output_dir: str) -> argparse.Namespace:
    import train_stylegan

    resolution = ["--resolution", str(args.resolution)] if args.resolution else []
    return train_stylegan.parse_args(["--dataset", "-", *_training_flags(args, output_dir),
                                      *PRESETS[args.preset].stylegan_flags, *resolution])


def _random_batches(count: int, batch_size: int, channels: int, resolution: int) -> list:
    import torch

    generator = torch.Generator().manual_seed(1)
    return [torch.rand(batch_size, channels, resolution, resolution, generator=generator) * 2 - 1
            for _ in range(count)]


def _parameters(**modules) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}


def build_encoder_step(accelerator, args: argparse.Namespace, output_dir: str) -> TimedStep:
    """``EncoderTrainer.step`` on the preset's networks, built as ``train_encoder.py`` builds them."""
    import encoder_setup
    import encoder_trainer
    import stylegan_trainer
    import train_encoder
    from ghfeat_hf.perceptual import TORCHVISION_INPUT, VGG16, PerceptualLoss

    gan_args = _stylegan_args(args, output_dir)
    depth = ["--depth", str(args.depth)] if args.depth else []
    encoder_args = train_encoder.parse_args(["--generator", "-", "--dataset", "-", *_training_flags(args, output_dir),
                                             *PRESETS[args.preset].encoder_flags, *depth])
    generator, discriminator = stylegan_trainer.build_networks(gan_args)
    model = encoder_setup.build_ghfeat_model(encoder_args, generator)
    # As encoder_setup.load_perceptual builds it, at the trainer's --perceptual_size; random weights: timing only.
    perceptual = PerceptualLoss(VGG16("conv4_3", TORCHVISION_INPUT), size=encoder_args.perceptual_size or None)
    trainer, _, e_sched, d_sched, _ = encoder_trainer.build_trainer(accelerator, encoder_args, model, discriminator,
                                                                    perceptual)
    batches = _random_batches(4, args.batch_size, gan_args.num_channels, gan_args.resolution)

    def run(index: int) -> torch.Tensor:
        metrics = trainer.step([batches[index % len(batches)].to(accelerator.device)], index)
        e_sched.step()
        d_sched.step()
        return metrics["loss_E"]

    info = {"resolution": gan_args.resolution, "num_channels": gan_args.num_channels, "depth": encoder_args.depth,
            "perceptual_size": perceptual.size, "steps_per_iteration": 1,
            "params": _parameters(E=trainer.e_module, G=trainer.synthesis_module, D=trainer.d_module, VGG=perceptual),
            "skipped_nonfinite": trainer.skipped}  # the trainer's own counter dict, updated in place
    return TimedStep(run, args.batch_size, info)


def build_stylegan_step(accelerator, args: argparse.Namespace, output_dir: str) -> TimedStep:
    """``r1_interval`` consecutive ``StyleGANTrainer.step`` calls (one of them with R1), built as
    ``train_stylegan.py`` builds them."""
    import stylegan_trainer

    gan_args = _stylegan_args(args, output_dir)
    trainer, _ = stylegan_trainer.build_trainer(accelerator, gan_args)
    steps = gan_args.r1_interval
    batches = _random_batches(4, args.batch_size, gan_args.num_channels, gan_args.resolution)

    def run(index: int) -> torch.Tensor:
        for step in range(index * steps, (index + 1) * steps):  # R1 on the first (step % r1_interval == 0)
            metrics = trainer.step([batches[step % len(batches)].to(accelerator.device)], step)
        return metrics["loss_G"]

    info = {"resolution": gan_args.resolution, "num_channels": gan_args.num_channels, "steps_per_iteration": steps,
            "r1_interval": gan_args.r1_interval, "style_mixing_prob": gan_args.style_mixing_prob,
            "params": _parameters(G=trainer.g_module.generator, D=trainer.discriminator)}
    return TimedStep(run, steps * args.batch_size, info)


STEP_BUILDERS = {"encoder": build_encoder_step, "stylegan": build_stylegan_step}


def serve_config(args: argparse.Namespace, warmup: int) -> None:
    """Worker: build configuration ``args.single`` of ``args.step`` and run ``warmup`` iterations, print ``READY``;
    then for every line ``N`` on stdin time N iterations (``TIMES [seconds, ...]``); at the end of stdin print
    ``RESULT {json}``."""
    import torch
    from accelerate import Accelerator

    config = CONFIGS[args.single]
    baseline_rss = _rss_mb()
    with tempfile.TemporaryDirectory() as output_dir:
        accelerator = Accelerator(mixed_precision=config["mixed_precision"], cpu=args.device == "cpu")
        torch.manual_seed(0)
        step = STEP_BUILDERS[args.step](accelerator, args, output_dir)
        cuda = accelerator.device.type == "cuda"
        indices = itertools.count()

        def one() -> float:
            index = next(indices)
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            float(step.run(index))  # sync
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - start

        warmup_times = [one() for _ in range(warmup)]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        print("READY", flush=True)
        times = []
        for line in sys.stdin:
            timed = [one() for _ in range(int(line))]
            times += timed
            print("TIMES " + json.dumps(timed), flush=True)
        seconds = statistics.median(times)
        result = {
            "config": args.single, **config, "preset": args.preset, "step": args.step, "device": str(accelerator.device),
            "batch_size": args.batch_size, "images_per_iteration": step.images_per_iteration, **step.info,
            "iters": len(times), "warmup": warmup, "warmup_seconds": warmup_times, "iteration_seconds": times,
            "median_seconds": seconds, "images_per_second": step.images_per_iteration / seconds,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
        }
        if cuda:
            result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
            result["gpu"] = torch.cuda.get_device_name()
        else:
            result["peak_memory_mb"] = _rss_mb()
            result["baseline_rss_mb"] = baseline_rss
        accelerator.free_memory()
    print("RESULT " + json.dumps(result), flush=True)


class WorkerError(RuntimeError):
    """A configuration's process failed (its last stderr line) or did not answer in time."""


class Worker:
    """The process of one configuration at one thread count (see :func:`serve_config`), driven over its
    stdin/stdout."""

    def __init__(self, name: str, threads: int | None, args: argparse.Namespace):
        self.timeout, self.started = args.timeout, time.perf_counter()
        command = [sys.executable, __file__, "--single", name, "--preset", args.preset, "--step", args.step,
                   "--device", args.device, "--batch_size", str(args.batch_size), "--warmup", str(args.warmup)]
        command += ["--resolution", str(args.resolution)] if args.resolution else []
        command += ["--depth", str(args.depth)] if args.depth else []
        command += ["--threads", str(threads)] if threads else []
        self.stderr = tempfile.TemporaryFile(mode="w+")
        # The worker imports the trainers as train_encoder.py does: training/ first on its module search path.
        pythonpath = os.pathsep.join(filter(None, [str(TRAINING), os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                        text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": pythonpath})
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _expect(self, tag: str) -> str:
        """The rest of the next stdout line that starts with ``tag``."""
        deadline = time.perf_counter() + self.timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.perf_counter(), 0.0))
            except queue.Empty:
                raise WorkerError(f"timeout after {self.timeout} s") from None
            if line is None:  # the process ended: the exception's last line (e.g. "ValueError: ...") says why
                self.process.wait()
                self.stderr.seek(0)
                error = self.stderr.read().strip().splitlines()
                raise WorkerError(error[-1] if error else f"exit code {self.process.returncode}")
            head, _, rest = line.rstrip("\n").partition(" ")
            if head == tag:
                return rest

    def ready(self) -> None:
        self._expect("READY")

    def timed_iteration(self) -> float:
        """Seconds of one timed iteration."""
        try:
            self.process.stdin.write("1\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the process died: _expect reports why
        return json.loads(self._expect("TIMES"))[0]

    def finish(self) -> dict:
        """The configuration's result (its timed iterations, medians, peak memory); ends the process."""
        self.process.stdin.close()
        result = json.loads(self._expect("RESULT"))
        self.process.wait()
        return result

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stderr.close()

    @property
    def wall_seconds(self) -> float:
        return time.perf_counter() - self.started


def measure(cells: list[tuple[str, int | None]], args: argparse.Namespace) -> list[dict]:
    """Results of the reference (naive at the first thread count, always run) and of every other ``(configuration,
    threads)`` cell, each timed in rounds alternating with the reference (see the module docstring); failures become
    ``{"config", "threads", "error"}``."""
    def report(result: dict, worker: Worker) -> dict:
        result["wall_seconds"] = worker.wall_seconds
        print(json.dumps({k: v for k, v in result.items() if k != "params"}), flush=True)
        return result

    reference_cell = ("naive", args.threads[0])
    naive, naive_error = Worker(*reference_cell, args), None
    try:
        naive.ready()
    except WorkerError as error:
        naive_error = str(error)
    results = []
    for name, threads in [cell for cell in cells if cell != reference_cell]:
        worker = Worker(name, threads, args)
        try:
            worker.ready()
            rounds = []
            for _ in range(args.iters):
                reference = None
                if naive_error is None:
                    try:
                        reference = naive.timed_iteration()
                    except WorkerError as error:
                        naive_error = str(error)
                rounds.append((reference, worker.timed_iteration()))
            result = worker.finish()
            paired = [(reference, seconds) for reference, seconds in rounds if reference is not None]
            if paired:
                result["naive_seconds"] = [reference for reference, _ in paired]
                result["vs_naive"] = statistics.median([reference / seconds for reference, seconds in paired])
        except WorkerError as error:
            result = {"config": name, "threads": threads, "error": str(error)}
        finally:
            worker.close()
        results.append(report(result, worker))
    try:
        if naive_error is not None:
            raise WorkerError(naive_error)
        if not results:  # naive alone
            for _ in range(args.iters):
                naive.timed_iteration()
        naive_result = {**naive.finish(), "vs_naive": 1.0}
    except WorkerError as error:
        naive_result = {"config": "naive", "threads": reference_cell[1], "error": str(error)}
    finally:
        naive.close()
    return [report(naive_result, naive), *results]


def machine_description(device: str) -> str:
    """CPU model, its bf16 matrix features, logical CPUs, torch version (and the GPU)."""
    import platform

    import torch

    cpu, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and not cpu:
                cpu = value
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    bf16 = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    text = f"{cpu} ({', '.join(bf16) if bf16 else 'no avx512_bf16 / amx_bf16'}), {os.cpu_count()} logical CPUs, " \
           f"torch {torch.__version__}"
    if device == "cuda" and torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def markdown(results: list[dict], machine: str, load: dict[str, list[float]]) -> str:
    loads = "; ".join(f"{when} {' / '.join(f'{v:.2f}' for v in values)}" for when, values in load.items())
    lines = [f"Machine: {machine}; load average (1/5/15 min) {loads}", "",
             "| config | threads | precision | channels_last | compile | s/iteration (median) | images/s | vs naive "
             "| peak memory (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['threads']} | | | | failed: {r['error'][:160]} | | | |")
            continue
        ratio = f"{r['vs_naive']:.2f}x" if "vs_naive" in r else "n/a"
        precision = r["mixed_precision"] if r["mixed_precision"] != "no" else "fp32"
        lines.append(f"| {r['config']} | {r['threads']} | {precision} | {r['channels_last']} | {r['compile']} | "
                     f"{r['median_seconds']:.3f} | {r['images_per_second']:.3f} | {ratio} | {r['peak_memory_mb']:.0f} |")
    return "\n".join(lines)


def _thread_counts(text: str) -> list[int]:
    counts = [int(value) for value in text.split(",") if value]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("expected positive integers separated by commas")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="official256", help="Networks and recipe.")
    parser.add_argument("--step", choices=STEPS, default="encoder",
                        help="encoder: one train_encoder.py iteration; stylegan: --r1_interval train_stylegan.py steps.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if _cuda_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=None, help="Images per step; None: the preset's (official256: 2, the official per-GPU batch is 12; "
                             "fmnist32: 32).")
    parser.add_argument("--resolution", type=int, default=None, help="Resolution; None: the preset's.")
    parser.add_argument("--depth", type=int, default=None, help="Encoder ResNet depth; None: the preset's.")
    parser.add_argument("--iters", type=int, default=3,
                        help="Timed rounds per configuration (one naive and one configuration iteration each; medians "
                             "reported).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed iterations (compiled configs use at least 2).")
    parser.add_argument("--configs", type=str, default=",".join(CONFIGS),
                        help="Comma-separated configurations (naive, the reference of the ratios, always runs).")
    parser.add_argument("--skip_compile", action="store_true", help="Leave out the torch.compile configurations.")
    parser.add_argument("--threads", type=_thread_counts, default=[None],
                        help="torch intra-op thread count(s), comma-separated: every configuration runs at each; "
                             "ratios are against naive at the first ([None]: torch's own choice).")
    parser.add_argument("--timeout", type=int, default=3600,
                        help="Seconds allowed per configuration for building and warming up, and per timed round.")
    parser.add_argument("--json", type=str, default=None, help="Write the results here.")
    parser.add_argument("--single", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [n for n in args.configs.split(",") if n and n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if args.iters < 1:
        parser.error("--iters must be >= 1")
    args.batch_size = args.batch_size or PRESETS[args.preset].batch_size

    if args.single:  # worker: one configuration at one thread count, driven over stdin/stdout
        import torch

        if len(args.threads) > 1:
            parser.error("a worker runs at one thread count")
        if args.threads[0]:
            torch.set_num_threads(args.threads[0])
        serve_config(args, max(args.warmup, 2) if CONFIGS[args.single]["compile"] else args.warmup)
        return 0

    names = [n for n in args.configs.split(",") if n and not (args.skip_compile and CONFIGS[n]["compile"])]
    load = {"before": list(os.getloadavg())}
    results = measure([(name, threads) for threads in args.threads for name in names], args)
    load["after"] = list(os.getloadavg())
    machine = machine_description(args.device)
    print()
    print(f"Preset {args.preset}, {args.step} step, batch {args.batch_size}")
    print(markdown(results, machine, load))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "preset": args.preset, "step": args.step,
                                               "batch_size": args.batch_size, "load_average": load,
                                               "results": results}, indent=2))
    return 0


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if __name__ == "__main__":
    from ghfeat_hf.error_reporting import run_script  # here: the parent process imports no torch before it runs

    run_script(main)
