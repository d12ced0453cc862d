#!/usr/bin/env python
"""Throughput and peak memory of one GH-Feat encoder training iteration, naive vs optimised, in one run.

One iteration is exactly what ``training/train_encoder.py`` runs per step (``EncoderTrainer.iteration``): the E
update (E forward/backward, frozen-G forward/backward, VGG16 conv4_3 on reals and reconstructions, D forward for the
adversarial term) then the D update (the second E forward, G forward, D on fakes and mirrored reals, R1 double
backward), Adam steps for E and D. Official 256 px configuration: ResNet-50 encoder, StyleGAN v1 synthesis and
D_basic at fmap_base 8192 / fmap_max 512, VGG16 at 256 px, all official loss weights. Weights are random (speed does
not depend on them; the VGG here is random too, which the trainer itself would refuse).

Configurations (each in its own subprocess, so the peak memory and torch.compile caches are per configuration):

* ``naive``: fp32, eager, contiguous (NCHW) tensors: the reference every ratio is relative to;
* ``bf16``: bf16 autocast; ``fp32_cl`` / ``bf16_cl``: channels_last memory format;
* ``*_compile``: the same under ``torch.compile`` (E, G, VGG, and D in the E step; D's own step stays eager for
  R1's double backward). Compilation is slow on the CPU: ``--skip_compile`` leaves these out.

Examples::

    python benchmarks/train_step.py --device cpu --batch_size 2 --iters 3
    python benchmarks/train_step.py --device cuda --batch_size 12 --iters 10 --json results.json

Timing: every process builds its configuration and runs the warm-up once, then stays alive. The naive process is
the reference of all the others: for each configuration, ``--iters`` rounds each time one naive iteration and then
one iteration of the configuration, back to back, so both see the same machine load (two configurations are in
memory at a time). "vs naive" is the median over those rounds of (naive seconds / configuration seconds);
s/iteration and images/s are each process's own median.

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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

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


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve_config(name: str, device: str, batch_size: int, resolution: int, warmup: int, depth: int) -> None:
    """Worker: build the official networks of one configuration and run ``warmup`` iterations, print ``READY``; then
    for every line ``N`` on stdin time N iterations (``TIMES [seconds, ...]``); at the end of stdin print ``RESULT``."""
    import torch
    from accelerate import Accelerator

    from ghfeat_hf import (
        GHFeatConfig,
        GHFeatModel,
        StyleGANDiscriminator,
        StyleGANDiscriminatorConfig,
        StyleGANGeneratorConfig,
    )
    from ghfeat_hf.perceptual import TORCHVISION_INPUT, VGG16, PerceptualLoss
    from training import train_encoder
    from training.encoder_trainer import build_trainer
    from training.engine import seed_step

    config = CONFIGS[name]
    baseline_rss = _rss_mb()
    with tempfile.TemporaryDirectory() as output_dir:
        argv = ["--generator", "-", "--dataset", "-", "--output_dir", output_dir, "--batch_size", str(batch_size),
                "--mixed_precision", config["mixed_precision"], "--depth", str(depth), "--report_to", "none"]
        argv += ["--channels_last"] if config["channels_last"] else []
        argv += ["--compile"] if config["compile"] else []
        args = train_encoder.parse_args(argv)
        accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=device == "cpu")
        torch.manual_seed(0)
        g_config = StyleGANGeneratorConfig(resolution=resolution)
        model = GHFeatModel(GHFeatConfig(depth=depth, image_size=resolution, generator_config=g_config.to_dict()))
        discriminator = StyleGANDiscriminator(StyleGANDiscriminatorConfig(resolution=resolution))
        perceptual = PerceptualLoss(VGG16("conv4_3", TORCHVISION_INPUT), size=256)  # random weights: timing only
        trainer, _, e_sched, d_sched, _ = build_trainer(accelerator, args, model, discriminator, perceptual)
        params = {"E": sum(p.numel() for p in trainer.e_module.parameters()),
                  "G": sum(p.numel() for p in trainer.synthesis_module.parameters()),
                  "D": sum(p.numel() for p in trainer.d_module.parameters()),
                  "VGG": sum(p.numel() for p in perceptual.parameters())}
        generator = torch.Generator().manual_seed(1)
        batches = [(torch.rand(batch_size, 3, resolution, resolution, generator=generator) * 2 - 1)
                   for _ in range(4)]
        cuda = accelerator.device.type == "cuda"
        steps = itertools.count()

        def one() -> float:
            step = next(steps)
            x = batches[step % len(batches)].to(accelerator.device)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            seed_step(0, step)
            metrics = trainer.iteration([x])
            e_sched.step()
            d_sched.step()
            float(metrics["loss_E"])  # sync
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
            "config": name, **config, "device": str(accelerator.device), "batch_size": batch_size,
            "resolution": resolution, "depth": depth, "iters": len(times), "warmup": warmup,
            "warmup_seconds": warmup_times, "iteration_seconds": times, "median_seconds": seconds,
            "images_per_second": batch_size / seconds, "params": params,
            "skipped_nonfinite": dict(trainer.skipped),
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
    """The process of one configuration (see :func:`serve_config`), driven over its stdin/stdout."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.timeout, self.started = args.timeout, time.perf_counter()
        command = [sys.executable, __file__, "--single", name, "--device", args.device, "--batch_size",
                   str(args.batch_size), "--resolution", str(args.resolution), "--depth", str(args.depth),
                   "--warmup", str(args.warmup)] + (["--threads", str(args.threads)] if args.threads else [])
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                        text=True, cwd=REPO)
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


def measure(names: list[str], args: argparse.Namespace) -> list[dict]:
    """Results of naive (always run: the reference) and of every other configuration in ``names``, the other
    configurations timed in rounds alternating with naive (see the module docstring); failures become
    ``{"config", "error"}``."""
    def report(result: dict, worker: Worker) -> dict:
        result["wall_seconds"] = worker.wall_seconds
        print(json.dumps({k: v for k, v in result.items() if k != "params"}), flush=True)
        return result

    naive, naive_error = Worker("naive", args), None
    try:
        naive.ready()
    except WorkerError as error:
        naive_error = str(error)
    results = []
    for name in [n for n in names if n != "naive"]:
        worker = Worker(name, args)
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
            result = {"config": name, "error": str(error)}
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
        naive_result = {"config": "naive", "error": str(error)}
    finally:
        naive.close()
    return [report(naive_result, naive), *results]


def machine_description(device: str) -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"
    if device == "cuda" and torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def markdown(results: list[dict], machine: str) -> str:
    lines = [f"Machine: {machine}", "",
             "| config | precision | channels_last | compile | s/iteration (median) | images/s | vs naive | peak memory (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['config']} | | | | failed: {r['error'][:160]} | | | |")
            continue
        ratio = f"{r['vs_naive']:.2f}x" if "vs_naive" in r else "n/a"
        lines.append(f"| {r['config']} | {r['mixed_precision'] if r['mixed_precision'] != 'no' else 'fp32'} | "
                     f"{r['channels_last']} | {r['compile']} | {r['median_seconds']:.3f} | {r['images_per_second']:.3f} | "
                     f"{ratio} | {r['peak_memory_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if _cuda_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=2, help="Images per iteration (official: 12 per GPU).")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--depth", type=int, default=50, help="Encoder ResNet depth (official 50).")
    parser.add_argument("--iters", type=int, default=3,
                        help="Timed rounds per configuration (one naive and one configuration iteration each; medians "
                             "reported).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed iterations (compiled configs use at least 2).")
    parser.add_argument("--configs", type=str, default=",".join(CONFIGS),
                        help="Comma-separated configurations (naive, the reference of the ratios, always runs).")
    parser.add_argument("--skip_compile", action="store_true", help="Leave out the torch.compile configurations.")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU).")
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

    if args.single:  # worker: one configuration, driven over stdin/stdout
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        warmup = max(args.warmup, 2) if CONFIGS[args.single]["compile"] else args.warmup
        serve_config(args.single, args.device, args.batch_size, args.resolution, warmup, args.depth)
        return 0

    names = [n for n in args.configs.split(",") if n and not (args.skip_compile and CONFIGS[n]["compile"])]
    results = measure(names, args)
    machine = machine_description(args.device)
    print()
    print(markdown(results, machine))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    return 0


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
