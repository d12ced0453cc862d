"""Shared accelerate scaffolding for the GH-Feat trainers (StyleGAN and encoder).

Plain functions and small classes around `accelerate.Accelerator`; no home-made DDP. A trainer does::

    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_engine_args(parser)                        # --output_dir, --seed, --mixed_precision, --max_steps, ...
    args = parser.parse_args(argv)
    accelerator = build_accelerator(args)          # seeded, seedable sampler, trackers not started yet
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    state = TrainState()
    accelerator.register_for_checkpointing(state)  # + any other object with state_dict/load_state_dict
    checkpoints = CheckpointManager(accelerator, args.output_dir, args.checkpoints_total_limit)
    checkpoints.resume(args.resume_from_checkpoint, state)   # "latest", a path, or None
    init_trackers(accelerator, "my_project", args)
    batches = iterate_batches(accelerator, dataloader, state)  # endless; resumes mid-epoch exactly
    progress = Progress(accelerator, args.max_steps, state, images_per_step=global_batch)
    while state.step < args.max_steps:
        batch = next(batches)                       # fetch data BEFORE seeding the step
        seed_step(args.seed, state.step, accelerator.process_index)
        ... forward / accelerator.backward / optimizer.step ...
        state.step += 1
        progress.update(state, loss=...)
        if state.step % args.log_every == 0: log_scalars(accelerator, {...}, state.step)
        if state.step % args.checkpointing_steps == 0:
            with progress.excluded(): checkpoints.save(state)   # left out of the reported throughput
    checkpoints.save(state); accelerator.end_training()

Exact resume: data order comes from accelerate's seedable sampler + ``set_epoch`` + ``skip_first_batches``
(:func:`iterate_batches`); per-sample augmentation from :func:`ghfeat_hf.data.flip_decision`; all other
randomness of a step from :func:`seed_step`, which reseeds the global RNGs from ``(seed, step, rank)``, so a
resumed run does not depend on how much RNG state was consumed before (dataloader iterator creation, model
init, ...). Checkpoints are ``<output_dir>/checkpoints/checkpoint_<step>``; they are written to a hidden
temporary directory and renamed when complete, so a kill during a save never leaves a checkpoint that loads wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, send_to_device, set_seed

from ghfeat_hf.arguments import int_at_least
from ghfeat_hf.files import restore_default_file_mode

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint_"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
TRAINER_STATE_NAME = "trainer_state.json"


# ----------------------------------------------------------------------------------------------------------------
# Arguments and accelerator


def add_engine_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags every trainer shares (use ``ArgumentDefaultsHelpFormatter`` to show the defaults).

    Trainers change defaults with ``parser.set_defaults(...)``. ``--batch_size`` and ``--gradient_accumulation_steps``
    must be >= 1 (a default of None is left for the trainer to fill in).
    """
    group = parser.add_argument_group("run, checkpointing and logging (shared engine)")
    group.add_argument("--output_dir", type=str, required=True, help="Run directory: checkpoints/, logs/, samples/, exports.")
    group.add_argument("--logging_dir", type=str, default=None, help="Tracker directory (default: <output_dir>/logs).")
    group.add_argument("--seed", type=int, default=0, help="Seed of model init, data order, augmentation and every step.")
    group.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no",
                       help="Autocast precision (bf16 works on the CPU).")
    group.add_argument("--gradient_accumulation_steps", type=int_at_least(1), default=1,
                       help="Micro-batches per optimizer update (the global batch is batch_size x processes x this).")
    group.add_argument("--report_to", type=str, default="tensorboard",
                       help="accelerate tracker(s): tensorboard, wandb, ..., all, or none.")
    group.add_argument("--max_steps", type=int, default=1000, help="Total optimizer updates of the run (resumes included).")
    group.add_argument("--batch_size", type=int_at_least(1), default=32, help="Batch size per process.")
    group.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes (decoding happens there).")
    group.add_argument("--checkpointing_steps", type=int, default=500,
                       help="Save a resumable checkpoint every N steps (0: only at the end).")
    group.add_argument("--checkpoints_total_limit", type=int, default=3,
                       help="Keep at most this many checkpoints (oldest deleted first; 0 or negative: keep all).")
    group.add_argument("--resume_from_checkpoint", type=str, default=None,
                       help="'latest' (newest complete checkpoint in <output_dir>/checkpoints, or start fresh) or a "
                            "checkpoint directory.")
    group.add_argument("--log_every", type=int, default=10, help="Log scalars every N steps.")
    group.add_argument("--sample_every", type=int, default=500, help="Save and log a sample image grid every N steps (0: only at the end).")
    group.add_argument("--compile", action="store_true", help="torch.compile the main network(s).")
    group.add_argument("--channels_last", action="store_true", help="Use the channels_last memory format for conv nets.")
    return parser


def build_accelerator(args: argparse.Namespace, **accelerator_kwargs: Any) -> Accelerator:
    """An ``Accelerator`` configured from the engine flags, then ``set_seed(args.seed)`` (same seed on every rank).

    Uses accelerate's seedable sampler (``data_seed=args.seed``) so shuffles depend only on ``(seed, epoch)``,
    and explicit checkpoint names (``automatic_checkpoint_naming=False``; see :class:`CheckpointManager`).
    """
    output_dir = Path(args.output_dir)
    logging_dir = Path(args.logging_dir) if args.logging_dir else output_dir / "logs"
    report_to = None if str(args.report_to).lower() in ("", "none") else args.report_to
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(logging_dir), automatic_checkpoint_naming=False
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        **accelerator_kwargs,
    )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)
    return accelerator


def flat_hparams(args: argparse.Namespace | dict) -> dict[str, int | float | str | bool]:
    """Hyper-parameters as TensorBoard's ``add_hparams`` accepts them (None and containers become strings)."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}


def init_trackers(accelerator: Accelerator, project_name: str, args: argparse.Namespace | dict | None = None) -> None:
    """Start the trackers (TensorBoard events land in ``<logging_dir>/<project_name>/``)."""
    if accelerator.log_with:
        accelerator.init_trackers(project_name, config=flat_hparams(args) if args is not None else None)


def _mix(*values: int) -> int:
    x = 0x243F6A8885A308D3
    for value in values:
        x = (x ^ (int(value) & 0xFFFFFFFFFFFFFFFF)) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


def seed_step(seed: int, step: int, rank: int = 0) -> int:
    """Reseed python, numpy and torch (all devices) from ``(seed, step, rank)``; returns the seed used.

    Call it once per optimizer step, after fetching that step's batches: the step's randomness (latents,
    noise, dropout, ...) is then a pure function of the step, which makes resumed runs bit-identical.
    """
    value = _mix(seed, step, rank)
    import random

    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return value


# ----------------------------------------------------------------------------------------------------------------
# State and checkpoints


@dataclass
class TrainState:
    """Counters saved with every checkpoint (register with ``accelerator.register_for_checkpointing``).

    ``batches_in_epoch`` counts the batches *this process* consumed in ``epoch``; ``images_seen`` and
    ``skipped_samples`` are summed over processes. ``extra`` holds trainer-specific JSON-able values.
    """

    step: int = 0
    images_seen: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    skipped_samples: int = 0
    extra: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step of a checkpoint directory (from its ``trainer_state.json``, else its ``checkpoint_<step>`` name)."""
    path = Path(path)
    state_file = path / TRAINER_STATE_NAME
    if state_file.is_file():
        return int(json.loads(state_file.read_text())["step"])
    match = _CHECKPOINT_RE.match(path.name)
    if not match:
        raise ValueError(f"{path} is not a checkpoint_<step> directory.")
    return int(match.group(1))


class CheckpointManager:
    """Atomic, step-named checkpoints under ``<output_dir>/checkpoints`` with retention and safe resume.

    * :meth:`save` writes ``accelerator.save_state`` (models, optimizers, schedulers, registered objects, RNG
      states of every rank, GradScaler) into ``.tmp-checkpoint_<step>``, adds ``trainer_state.json``, then
      renames it to ``checkpoint_<step>`` (atomic on one filesystem). An interrupted save leaves only the hidden
      temporary directory, which is ignored and removed at the next start.
    * Retention keeps the newest ``total_limit`` checkpoints (by step, never the one just written).
    * :meth:`resume` accepts ``"latest"`` or a directory; it refuses a checkpoint older than the newest one of
      this run (resuming there would mix two histories and the next save or retention would clobber the newer
      ones), and sets ``accelerator.project_configuration.iteration`` (which ``load_state`` does not restore).
    """

    def __init__(self, accelerator: Accelerator, output_dir: str | os.PathLike, total_limit: int | None = None,
                 subdir: str = "checkpoints"):
        self.accelerator = accelerator
        self.directory = Path(output_dir) / subdir
        self.total_limit = total_limit if total_limit and total_limit > 0 else None
        if accelerator.is_main_process:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob(f".tmp-{CHECKPOINT_PREFIX}*"):
                logger.warning(f"Removing the incomplete checkpoint {stale} (interrupted save).")
                shutil.rmtree(stale, ignore_errors=True)
        accelerator.wait_for_everyone()

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def path_for(self, step: int) -> Path:
        return self.directory / f"{CHECKPOINT_PREFIX}{step}"

    def save(self, state: TrainState, on_saved: Callable[[Path], None] | None = None) -> Path:
        """Save a checkpoint of ``state.step`` on every process (call it on all ranks); returns its path."""
        accelerator = self.accelerator
        final = self.path_for(state.step)
        if final.is_dir():  # e.g. the end-of-run save right after a periodic one
            return final
        temporary = self.directory / f".tmp-{final.name}"
        if accelerator.is_main_process and temporary.exists():
            shutil.rmtree(temporary)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            restore_default_file_mode(temporary)
            payload = {**state.state_dict(), "time": time.time(), "num_processes": accelerator.num_processes}
            (temporary / TRAINER_STATE_NAME).write_text(json.dumps(payload, indent=2, default=str))
            os.replace(temporary, final)
            self._apply_retention(keep=final)
        accelerator.project_configuration.iteration = state.step + 1
        accelerator.wait_for_everyone()
        if on_saved is not None:
            on_saved(final)
        return final

    def _apply_retention(self, keep: Path) -> None:
        if self.total_limit is None:
            return
        found = [p for p in self.checkpoints() if p != keep]
        for old in found[: max(0, len(found) + 1 - self.total_limit)]:
            logger.info(f"Deleting old checkpoint {old} (checkpoints_total_limit={self.total_limit}).")
            shutil.rmtree(old, ignore_errors=True)

    def resolve(self, resume_from_checkpoint: str | os.PathLike | None) -> Path | None:
        """The checkpoint to resume from, or None to start fresh ("latest" with no checkpoint yet)."""
        if resume_from_checkpoint is None or str(resume_from_checkpoint) == "":
            if self.checkpoints():
                raise ValueError(
                    f"{self.directory} already holds checkpoints ({self.latest().name}); pass "
                    "--resume_from_checkpoint latest to continue that run, or use a new --output_dir."
                )
            return None
        if str(resume_from_checkpoint) == "latest":
            latest = self.latest()
            if latest is None:
                logger.info(f"No checkpoint in {self.directory}: starting a new run.", main_process_only=True)
            return latest
        path = Path(resume_from_checkpoint)
        if not path.is_dir() or not (path / TRAINER_STATE_NAME).is_file():
            raise ValueError(f"{path} is not a complete checkpoint directory (no {TRAINER_STATE_NAME}).")
        step = checkpoint_step(path)
        newer = [p for p in self.checkpoints() if checkpoint_step(p) > step or
                 (checkpoint_step(p) == step and p.resolve() != path.resolve())]
        if newer:
            raise ValueError(
                f"Refusing to resume from {path} (step {step}): {self.directory} already holds "
                f"{', '.join(p.name for p in newer)}. Resuming from an older state would mix two training histories "
                "and later saves/retention would overwrite or delete the newer checkpoints. Resume from the newest "
                "one ('latest'), delete the newer checkpoints yourself, or resume into a fresh --output_dir."
            )
        return path

    def resume(self, resume_from_checkpoint: str | os.PathLike | None, state: TrainState) -> Path | None:
        """Resolve and load a checkpoint (all ranks); returns its path or None when starting fresh."""
        path = self.resolve(resume_from_checkpoint)
        if path is None:
            return None
        saved = json.loads((path / TRAINER_STATE_NAME).read_text()).get("num_processes")
        if saved is not None and saved != self.accelerator.num_processes:
            raise ValueError(
                f"{path} was written by {saved} processes, this run has {self.accelerator.num_processes}. The data "
                "position (batches consumed in the epoch, counted per process), the per-rank RNG states and the global "
                f"batch all depend on the process count, so the run cannot continue exactly: resume with {saved} "
                "processes (accelerate launch --num_processes ...), or start a new run in a fresh --output_dir."
            )
        self.accelerator.load_state(str(path))
        expected = checkpoint_step(path)
        if state.step != expected:
            raise RuntimeError(f"{path} restored step {state.step}, expected {expected}: was TrainState registered?")
        self.accelerator.project_configuration.iteration = state.step + 1
        logger.info(f"Resumed from {path} at step {state.step} (epoch {state.epoch}, batch {state.batches_in_epoch}).",
                    main_process_only=True)
        return path


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _remove_stale_siblings(path: Path) -> None:
    """Delete what :func:`atomic_directory` calls of processes that no longer run left next to ``path``: their
    ``.tmp-<name>-<pid>`` directories and, while ``path`` exists, their ``.old-<name>-<pid>`` ones."""
    prefixes = (f".tmp-{path.name}-",) + ((f".old-{path.name}-",) if path.exists() else ())
    for sibling in path.parent.iterdir():
        for prefix in prefixes:
            pid = sibling.name.removeprefix(prefix)
            if sibling.name.startswith(prefix) and pid.isdigit() and not _process_alive(int(pid)):
                shutil.rmtree(sibling, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Write a directory atomically: yields a temporary sibling, which replaces ``path`` on success.

    The previous ``path`` is kept until the new one is complete (renamed aside, then deleted). Temporary siblings
    left by crashed processes are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(path)
    temporary = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    old = path.with_name(f".old-{path.name}-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(temporary, path)
    shutil.rmtree(old, ignore_errors=True)


def export_pretrained(accelerator: Accelerator, model: torch.nn.Module, path: str | os.PathLike, **kwargs: Any) -> None:
    """``save_pretrained`` of the unwrapped model into ``path`` atomically, on the main process only."""
    if accelerator.is_main_process:
        with atomic_directory(path) as temporary:
            accelerator.unwrap_model(model).save_pretrained(str(temporary), **kwargs)
            restore_default_file_mode(temporary)
    accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------------------------
# Data


def shard_iterable_dataset(dataset, accelerator: Accelerator):
    """Give each process its own part of a streaming ``datasets.IterableDataset`` (``split_dataset_by_node``).

    Shuffle with a fixed seed *before* sharding. Do not pass the resulting DataLoader to ``accelerator.prepare``
    (it would shard again); :func:`iterate_batches` moves its batches to the device.
    """
    if accelerator.num_processes == 1:
        return dataset
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(dataset, rank=accelerator.process_index, world_size=accelerator.num_processes)


def _batch_size_of(batch: Any) -> int:
    if isinstance(batch, dict):
        values = [batch["pixel_values"]] if "pixel_values" in batch else list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        values = [batch]
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


def iterate_batches(
    accelerator: Accelerator, dataloader: Iterable, state: TrainState, *, prepared: bool | None = None
) -> Iterator[Any]:
    """Endless batches, epoch after epoch, keeping ``state`` (epoch, position, images, skipped) up to date.

    Calls ``set_epoch(state.epoch)`` on the loader and on its dataset at each epoch start and, on the first epoch
    after a resume, skips the ``state.batches_in_epoch`` batches already consumed (``accelerator.skip_first_batches``
    for prepared loaders; reading and dropping them otherwise). Batches with zero images (every sample
    unreadable) are consumed but not yielded. ``images_seen`` and ``skipped_samples`` (``batch["num_skipped"]``)
    are summed over processes, so every rank must pull batches in lockstep.
    """
    if prepared is None:
        prepared = dataloader in getattr(accelerator, "_dataloaders", [])
    dataset = getattr(dataloader, "dataset", None)
    while True:
        if hasattr(dataloader, "set_epoch"):
            # with several processes a prepared loader forwards the epoch to its sampler only
            dataloader.set_epoch(state.epoch)
        if hasattr(dataset, "set_epoch"):  # e.g. ImageRows: the epoch of the per-sample mirror flips
            dataset.set_epoch(state.epoch)
        skip = state.batches_in_epoch
        if skip and prepared:
            loader = accelerator.skip_first_batches(dataloader, skip)
        else:
            loader = iter(dataloader)
            for _ in range(skip):
                next(loader)
        produced = skip
        for batch in loader:
            produced += 1
            state.batches_in_epoch += 1
            if not prepared:
                batch = send_to_device(batch, accelerator.device)
            images = _batch_size_of(batch)
            skipped = int(torch.as_tensor(batch.get("num_skipped", 0)).sum()) if isinstance(batch, dict) else 0
            counts = torch.tensor([images, skipped], dtype=torch.long, device=accelerator.device)
            if accelerator.num_processes > 1:
                counts = accelerator.reduce(counts, reduction="sum")
            state.images_seen += int(counts[0])
            state.skipped_samples += int(counts[1])
            if images:
                yield batch
        if produced == 0:
            raise ValueError("The dataloader produced no batch in a whole epoch (dataset smaller than one batch?).")
        state.epoch += 1
        state.batches_in_epoch = 0


# ----------------------------------------------------------------------------------------------------------------
# Models


def maybe_channels_last(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``module.to(memory_format=torch.channels_last)`` when enabled (feed it channels_last inputs too)."""
    return module.to(memory_format=torch.channels_last) if enabled else module


def maybe_compile(module: torch.nn.Module, enabled: bool, **compile_kwargs: Any) -> torch.nn.Module:
    """``torch.compile(module)`` when enabled. Compiled modules do not support double backward (e.g. R1)."""
    return torch.compile(module, **compile_kwargs) if enabled else module


def maybe_no_sync(accelerator: Accelerator, model: torch.nn.Module, last: bool) -> AbstractContextManager:
    """``accelerator.no_sync(model)`` except on the ``last`` micro-batch of an accumulated step (gradients all-reduce
    once per step)."""
    return nullcontext() if last else accelerator.no_sync(model)


def convert_sync_batchnorm(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """``SyncBatchNorm`` for multi-process runs on accelerators (the encoder's BN statistics then span all ranks).

    Returns ``model`` unchanged on one process, or on the CPU, where PyTorch's SyncBatchNorm cannot run (each
    rank then normalises with its own batch statistics; a warning says so). Call before ``accelerator.prepare``.
    """
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if accelerator.num_processes <= 1 or not has_bn:
        return model
    if accelerator.device.type == "cpu":
        warnings.warn("SyncBatchNorm is not supported on the CPU: keeping per-process BatchNorm statistics.", stacklevel=2)
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """Global L2 norm of the gradients (0.0 when there are none)."""
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def loss_scale(accelerator: Accelerator) -> float | None:
    """The GradScaler's current loss scale under fp16, None otherwise (pass it to ``losses.r1_penalty``)."""
    return accelerator.scaler.get_scale() if accelerator.scaler is not None else None


def memory_stats(accelerator: Accelerator) -> dict[str, float]:
    """Peak memory in MiB: the device's allocator peak on accelerators, the process peak RSS on the CPU."""
    stats = {"memory/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    device = accelerator.device
    if device.type == "cuda":
        stats["memory/peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return stats


# ----------------------------------------------------------------------------------------------------------------
# Logging, progress, images


def log_scalars(accelerator: Accelerator, values: dict[str, Any], step: int) -> dict[str, float]:
    """``accelerator.log`` of the numeric scalar values (tensors become floats; NaN and inf are logged too, so a
    diverging run shows in TensorBoard); returns what was logged."""
    scalars = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().float().item()
        if isinstance(value, (int, float, np.floating, np.integer)):
            scalars[key] = float(value)
    if accelerator.log_with:
        accelerator.log(scalars, step=step)
    return scalars


class Progress:
    """tqdm progress bar over optimizer steps with images/s (sliding window; shown on the main process only) and the
    training throughput of this invocation (:attr:`training_images_per_second`).

    Call :meth:`update` at the end of every step and run validation, sample grids and checkpoint saves inside
    :meth:`excluded`.
    """

    def __init__(self, accelerator: Accelerator, total_steps: int, state: TrainState, images_per_step: int,
                 window: int = 20, desc: str = "train"):
        from tqdm.auto import tqdm

        self.images_per_step = images_per_step
        self.times: deque[tuple[float, int]] = deque([(time.perf_counter(), state.step)], maxlen=window + 1)
        self.last_step_end: float | None = None  # None until the first (warm-up) step, which is not measured
        self.measured_steps, self.measured_seconds = 0, 0.0
        self.pending_excluded = 0.0  # excluded seconds since the last update
        self.bar = tqdm(total=total_steps, initial=state.step, desc=desc, unit="step", dynamic_ncols=True,
                        disable=not accelerator.is_local_main_process)

    @contextmanager
    def excluded(self) -> Iterator[None]:
        """Leave the time spent inside out of :attr:`training_images_per_second` (validation, grids, checkpoints)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.pending_excluded += time.perf_counter() - start

    def update(self, state: TrainState, **postfix: Any) -> None:
        """Mark the end of a step (``state.step`` just advanced) and refresh the bar with ``postfix`` values."""
        now = time.perf_counter()
        if self.last_step_end is not None:
            self.measured_steps += 1
            self.measured_seconds += now - self.last_step_end - self.pending_excluded
        self.last_step_end, self.pending_excluded = now, 0.0
        self.times.append((now, state.step))
        self.bar.update(state.step - self.bar.n)
        shown = {"img/s": f"{self.images_per_second:.1f}"}
        shown.update({k: f"{v:.3g}" if isinstance(v, float) else v for k, v in postfix.items()})
        self.bar.set_postfix(shown, refresh=False)

    @property
    def images_per_second(self) -> float:
        (t0, s0), (t1, s1) = self.times[0], self.times[-1]
        return (s1 - s0) * self.images_per_step / (t1 - t0) if t1 > t0 else 0.0

    @property
    def training_images_per_second(self) -> float:
        """Images/s of the steps of this invocation after the first (warm-up) one, the time spent in :meth:`excluded`
        blocks between them left out; NaN before two steps."""
        seconds = self.measured_seconds
        return self.measured_steps * self.images_per_step / seconds if self.measured_steps and seconds > 0 else float("nan")

    def close(self) -> None:
        self.bar.close()


def tensor_to_pil(images: torch.Tensor) -> list:
    """``[N, C, H, W]`` images in [-1, 1] (C = 1 or 3) to PIL images with the official rounding
    ``uint8(clip((x + 1) * 127.5 + 0.5, 0, 255))``."""
    import PIL.Image

    array = ((images.detach().float().cpu() + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
    array = array.permute(0, 2, 3, 1).numpy()
    return [PIL.Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]


def save_image_grid(
    accelerator: Accelerator,
    rows: list[list],
    path: str | os.PathLike,
    step: int,
    tag: str = "samples",
    column_labels: list[str] | None = None,
    row_labels: list[str] | None = None,
    cell_size: int | None = None,
):
    """Save ``rows`` of PIL images as a PNG grid (``ghfeat_hf.visualization.make_grid``) and log it to TensorBoard
    under ``tag``; main process only (returns the grid there, None elsewhere)."""
    if not accelerator.is_main_process:
        return None
    from ghfeat_hf.visualization import make_grid

    grid = make_grid(rows, column_labels=column_labels, row_labels=row_labels, cell_size=cell_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{path.name}")
    grid.save(temporary, format="PNG")
    os.replace(temporary, path)
    if accelerator.log_with:
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image(tag, np.asarray(grid.convert("RGB")), global_step=step, dataformats="HWC")
                tracker.writer.flush()
            elif hasattr(tracker, "log_images"):
                try:
                    tracker.log_images({tag: [grid]}, step=step)
                except Exception as error:  # a tracker with another image convention
                    logger.warning(f"Could not log the image grid to {tracker.name}: {error}")
    return grid


__all__ = [
    "CheckpointManager", "Progress", "TrainState", "add_engine_args", "atomic_directory", "build_accelerator",
    "checkpoint_step", "convert_sync_batchnorm", "export_pretrained", "flat_hparams", "grad_norm", "init_trackers",
    "iterate_batches", "log_scalars", "loss_scale", "maybe_channels_last", "maybe_compile", "maybe_no_sync",
    "memory_stats", "save_image_grid", "seed_step", "shard_iterable_dataset", "tensor_to_pil",
]
