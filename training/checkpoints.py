"""Resumable, atomic checkpoints of a training run and atomic model exports.

Checkpoints are ``<output_dir>/checkpoints/checkpoint_<step>`` (``accelerator.save_state`` plus
``trainer_state.json``); they are written to a hidden temporary directory and renamed when complete, so a kill during
a save never leaves a checkpoint that loads wrong. :class:`TrainState` holds the counters a resume restores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from ghfeat_hf.files import restore_default_file_mode

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint_"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
TRAINER_STATE_NAME = "trainer_state.json"


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
