"""Extraction split between the processes of `accelerate launch` (or `torchrun`): one share of the source per
process, one partial run per process, one output merged by the main process.

Every process takes its share with [`ImageSource.shard`] (contiguous blocks of a file list or `Dataset`, the
files of a streaming dataset, or one example out of N of a stream with fewer files than processes), encodes it on
its own device and commits its rows to its own partial run, `<output>.partial/rank-NNNNN/` (the single-process
layout: progress record with checksums, Arrow stream parts). When all are done, the main process reads the parts
of every process and writes the one output file, rows in source order. The main process holds the output's lock
for the whole run and decides, before any process starts, whether the run starts over, resumes or was finished;
its decision (or its error) is broadcast to the others.

`<output>.partial/processes.json` records the process count: a resume with another count is refused (the rows
are committed per process), so is a single-process resume of a multi-process run and the other way round.
A resume on another machine works as long as the output folder (shared by all nodes) and the inputs are the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import DestinationError, UsageError
from . import storage
from .destination import claimed, remove_stale_temporaries
from .merge import RankRows, write_merged
from .session import ExtractionResult, Session, finished_result, refuse_existing
from .sources import DatasetSource, ImageSource
from .storage import PartialRun, partial_path

PROCESSES_FILE = "processes.json"
_PROCESSES_FORMAT = "ghfeat-extract-processes"


def rank_directory(partial_dir: Path, index: int) -> Path:
    """The partial run directory of process `index`."""
    return partial_dir / f"rank-{index:05d}"


def recorded_process_count(partial_dir: Path) -> int | None:
    """How many processes the interrupted run in `partial_dir` had: 1 for a single-process run, the count of
    `processes.json` for a multi-process one, `None` when neither record is there."""
    if (partial_dir / "progress.json").is_file():
        return 1
    try:
        record = json.loads((partial_dir / PROCESSES_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot resume: {os.fspath(partial_dir / PROCESSES_FILE)!r} is unreadable ({error}); pass "
                         "--overwrite to start over.") from error
    count = record.get("num_processes") if isinstance(record, dict) else None
    if record.get("format") != _PROCESSES_FORMAT or not isinstance(count, int) or count < 2:
        raise UsageError(f"cannot resume: {os.fspath(partial_dir / PROCESSES_FILE)!r} is not a ghfeat process "
                         "record; pass --overwrite to start over.")
    return count


def _launch_hint(count: int) -> str:
    if count == 1:
        return "run it in one process (`ghfeat extract ...` without --num-processes)"
    return (f"relaunch it with {count} processes (`ghfeat extract --num-processes {count} ...` or "
            f"`accelerate launch --num_processes {count} -m ghfeat_hf.cli extract ...`)")


def check_process_count(partial_dir: Path, count: int) -> None:
    """A [`UsageError`] when the interrupted run in `partial_dir` had another number of processes than `count`."""
    recorded = recorded_process_count(partial_dir)
    if recorded is not None and recorded != count:
        raise UsageError(f"cannot resume: the interrupted run in {os.fspath(partial_dir)!r} was split between "
                         f"{recorded} process(es) and this one has {count}; its rows are committed per process, so "
                         f"{_launch_hint(recorded)}, or pass --overwrite to start over.")


def _peak_rss_mib() -> float:
    """This process's peak resident set size, MiB (`ru_maxrss` is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


@dataclass
class ShardedRun:
    """One `extract_features` call in every process of a launched job (see the module docstring)."""

    state: Any
    """The `accelerate.PartialState` (`num_processes`, `process_index`, `is_main_process`)."""
    session: Session
    source: ImageSource
    output: Path
    schema: pa.Schema
    settings: dict
    resume: bool
    overwrite: bool
    metadata: dict
    """The output metadata, less the skipped items (added by the merge)."""
    max_rows_per_file: int | None = None

    def __post_init__(self):
        self.count, self.index = self.state.num_processes, self.state.process_index
        self.partial_dir = partial_path(self.output)
        self.key = "id" if self.source.finite else storage.POSITION_COLUMN

    def _settings(self, index: int) -> dict:
        return {**self.settings, "process": [index, self.count]}

    def run(self) -> ExtractionResult:
        from accelerate.utils import gather_object

        if self.session.recon_dir is not None and not self.source.finite:
            raise UsageError("--reconstructions with a streaming dataset needs one process (its PNGs are named "
                             "batch by batch); drop one of them.")
        with contextlib.ExitStack() as stack:

            def prepare() -> tuple:
                stack.enter_context(claimed(self.output))
                return self._prepare()

            kind, *payload = self._on_main_process(prepare)
            if kind == "finished":
                return payload[0]
            every = gather_object([self._extract_share()])
            return self._on_main_process(lambda: self._merge(every))

    def _on_main_process(self, work: Callable[[], Any]) -> Any:
        """``work()`` on the main process, its value on every process; its [`UsageError`] or
        [`DestinationError`] is raised on every process (the main one raises the original)."""
        from accelerate.utils import broadcast_object_list

        outcome: list = [None]
        failure = None
        if self.state.is_main_process:
            try:
                outcome[0] = ("done", work())
            except (UsageError, DestinationError) as error:
                outcome[0], failure = ("error", isinstance(error, DestinationError), str(error)), error
        broadcast_object_list(outcome)
        kind, *payload = outcome[0]
        if kind == "error":
            raise failure or (DestinationError if payload[0] else UsageError)(payload[1])
        return payload[0]

    def _prepare(self) -> tuple:
        """Main process, holding the output lock: `("finished", result)`, or `("go",)` once `<output>.partial/`
        holds an interrupted run of the same settings and process count or a fresh one."""
        if self.partial_dir.exists() and self.resume:
            check_process_count(self.partial_dir, self.count)
        if refuse_existing(self.output, self.resume, self.overwrite):
            return ("finished", finished_result(self.output, self.settings, self.session.layers))
        record = self.partial_dir / PROCESSES_FILE
        if self.resume and record.is_file():
            previous = json.loads(record.read_text(encoding="utf-8"))
            storage.check_settings(previous.get("settings", {}), self.settings, "the interrupted run")
        else:
            if os.path.lexists(self.partial_dir):
                if self.partial_dir.is_dir() and not self.partial_dir.is_symlink():
                    shutil.rmtree(self.partial_dir)
                else:
                    self.partial_dir.unlink()
            self.partial_dir.mkdir(parents=True)
            storage.atomic_write_bytes(record, json.dumps({"format": _PROCESSES_FORMAT, "num_processes": self.count,
                                                   "settings": self.settings}, indent=1).encode("utf-8"))
        if self.session.recon_dir is not None:
            remove_stale_temporaries(self.session.recon_dir, recursive=True)
        return ("go",)

    def _extract_share(self) -> dict:
        """Extract this process's share into its own partial run; its statistics."""
        share = self.source.shard(self.index, self.count)
        directory = rank_directory(self.partial_dir, self.index)
        reopen = self.resume and (directory / "progress.json").is_file()
        run = (PartialRun.reopen if reopen else PartialRun.start)(directory, self.schema, self._settings(self.index),
                                                                  self.key)
        session = self.session
        session.label = f"{self.output.name} [process {self.index}/{self.count}]"
        session.progress = session.progress and self.state.is_main_process
        started = time.perf_counter()
        _, resumed, changed = session.run(run, share)
        seconds = time.perf_counter() - started
        rows = run.num_rows - resumed
        return {"process": self.index, "rows": rows, "items": run.num_rows + len(run.state["skipped"]),
                "resumed": resumed, "changed": changed, "seconds": round(seconds, 3),
                "images_per_second": round(rows / seconds, 2) if seconds > 0 else None,
                "peak_rss_mib": round(_peak_rss_mib(), 1)}

    def _ranks(self) -> list[RankRows]:
        """Every process's partial run with the map of its positions to source positions: by id for a finite
        source; for a stream, its block's offset (the items of the processes before it) or `i + n * position`
        for one example out of n."""
        positions = {item.id: item.position for item in self.source.items()} if self.source.finite else None
        ranks, offset = [], 0
        for index in range(self.count):
            run = PartialRun.reopen(rank_directory(self.partial_dir, index), self.schema, self._settings(index),
                                    self.key)
            to_global = _block(offset) if self._in_blocks(index) else _examples(index, self.count)
            ranks.append(RankRows(run, to_global, positions))
            offset += run.num_rows + len(run.state["skipped"])
        return ranks

    def _in_blocks(self, index: int) -> bool:
        return self.source.finite or self.source.shard(index, self.count).split_mode == "blocks"

    def _merge(self, every: list[dict]) -> ExtractionResult:
        """Main process: every process's committed rows -> the output, in source order (one batch per process in
        memory at a time, see [`merge`])."""
        positional = (isinstance(self.source, DatasetSource) and not self.source.finite
                      and self.source.id_column is None)  # streamed ids: block-local positions until now
        ranks = []
        try:
            ranks = self._ranks()
            num_rows, records = write_merged(ranks, self.output, self.schema,
                                             {**self.metadata, "num_processes": self.count}, self.max_rows_per_file,
                                             positional)
        finally:
            for rank in ranks:
                rank.run.close()
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        return ExtractionResult(self.output, num_rows, records, list(self.session.layers),
                                sum(stats["resumed"] for stats in every), sum(stats["changed"] for stats in every),
                                sorted(every, key=lambda stats: stats["process"]))


def _block(offset: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda positions: positions + offset


def _examples(index: int, count: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda positions: positions * count + index


__all__ = ["PROCESSES_FILE", "ShardedRun", "check_process_count", "rank_directory", "recorded_process_count"]
