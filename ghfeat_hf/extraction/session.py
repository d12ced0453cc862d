"""One process's extraction session: the batch loop over a partial run (decode -> encode -> commit), its resume
logic (changed inputs, pending items), reconstruction PNG names, and the result types of `ghfeat extract`."""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..encoding import encode_batch
from ..errors import UsageError
from ..image_processing_ghfeat import GHFeatImageProcessor
from ..modeling_ghfeat import GHFeatModel
from ..modeling_stylegan import tile_style_codes
from .sources import (
    FileSource,
    ImageSource,
    SourceItem,
    decoded_chunks,
    fingerprint_file,
    image_extensions,
)
from .storage import (
    FINGERPRINT_COLUMN,
    POSITION_COLUMN,
    PartialRun,
    SkippedImage,
    atomic_write_bytes,
    check_settings,
    fixed_list,
    partial_path,
    read_extraction_metadata,
)

CHANGED_INPUT_POLICIES = ("reencode", "error")
"""What `--resume` does with inputs whose fingerprint changed since the interrupted run read them."""


@dataclass
class ExtractionResult:
    """What [`extract_features`] wrote."""

    output: Path
    num_rows: int
    skipped: list[SkippedImage] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    num_resumed: int = 0
    """Rows that came from an earlier, interrupted session."""
    num_changed: int = 0
    """Inputs of the interrupted session that changed since it read them, extracted again."""
    processes: list[dict] = field(default_factory=list)
    """Under several processes, one entry per process: `process`, `rows` (encoded in this session), `items`
    (rows and skipped items of its share, all sessions), `seconds`, `images_per_second`, `peak_rss_mib`."""


@dataclass(frozen=True)
class BatchProgress:
    """Passed to the `on_batch` callback after every committed batch."""

    batches: int
    rows: int
    processed: int
    skipped: int


def _safe_relative(item_id: str) -> PurePosixPath:
    parts = [part for part in PurePosixPath(item_id.replace("\\", "/")).parts if part not in ("/", "", ".")]
    parts = ["__" if part == ".." else part.replace(":", "_") for part in parts]
    return PurePosixPath(*parts) if parts else PurePosixPath("_")


def reconstruction_names(ids: Sequence[str], taken: Collection[str] = ()) -> dict[str, str]:
    """PNG paths (relative to the reconstructions folder) for distinct ids, distinct from each other and from
    `taken`: the id with its image extension replaced by `.png`; `.png` appended when that would collide or the id
    has no image extension; `-2`, `-3`, ... before that `.png` in the rare case that still collides."""
    extensions = image_extensions()
    paths = {item_id: _safe_relative(item_id) for item_id in ids}
    short = {item_id: (path.with_suffix(".png") if path.suffix.lower() in extensions else
                       path.with_name(path.name + ".png")).as_posix() for item_id, path in paths.items()}
    counts = Counter(short.values())
    used = set(taken)
    names = {}
    for item_id, path in paths.items():
        name = short[item_id]
        if counts[name] > 1 or name in used:
            name = path.with_name(path.name + ".png").as_posix()
        copy = 2
        while name in used:
            name = path.with_name(f"{path.name}-{copy}.png").as_posix()
            copy += 1
        used.add(name)
        names[item_id] = name
    return names


@dataclass
class _BatchEncoder:
    """Encodes a batch of decoded images into a record batch of the partial run's schema (and, when asked, saves
    the reconstructions as PNGs)."""

    options: Session
    """The model, dtype, kept layers and columns, reconstruction folder."""
    schema: pa.Schema
    recon_names: dict[str, str] | None = None
    """Names of every id of a finite source; `None` for a streaming source, named batch by batch."""
    taken_names: set[str] = field(default_factory=set)
    """The names a streaming source's batches (this session's and the interrupted one's) already use."""

    def __call__(self, good: Sequence[tuple[SourceItem, torch.Tensor]]) -> pa.RecordBatch:
        pixel_values = torch.stack([pixels for _, pixels in good])
        options = self.options
        style_codes, decoded = encode_batch(options.model, pixel_values, dtype=options.dtype,
                                            decode=options.recon_dir is not None)
        codes = [style_codes[layer].cpu().numpy() for layer in self.options.layers]
        columns: dict[str, Any] = {
            "id": pa.array([item.id for item, _ in good], pa.string()),
            "ghfeat": fixed_list(np.concatenate(codes, axis=1)),
        }
        if self.options.keep_codes:
            for layer, code in zip(self.options.layers, codes):
                columns[f"style_code_{layer:02d}"] = fixed_list(code)
        if self.options.keep_tiled:
            columns["tiled_codes"] = fixed_list(tile_style_codes(style_codes)[:, self.options.layers].cpu().numpy())
        if decoded is not None:
            columns["reconstruction"] = pa.array(self._save_reconstructions(good, decoded), pa.string())
        columns[POSITION_COLUMN] = pa.array([item.position for item, _ in good], pa.int64())
        columns[FINGERPRINT_COLUMN] = pa.array([item.fingerprint for item, _ in good], pa.string())
        return pa.RecordBatch.from_arrays(list(columns.values()), schema=self.schema)

    def _names(self, ids: list[str]) -> list[str]:
        """PNG names for a batch's ids, unique across the run."""
        names = self.recon_names
        if names is None:
            names = reconstruction_names(ids, self.taken_names)
            self.taken_names.update(names.values())
        return [names[item_id] for item_id in ids]

    def _save_reconstructions(self, good, decoded: torch.Tensor) -> list[str]:
        names = self._names([item.id for item, _ in good])
        for name, image in zip(names, self.options.processor.postprocess(decoded.float())):
            target = self.options.recon_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic_write_bytes(target, buffer.getvalue(), sync=False)
        return names


@dataclass
class Session:
    """One process's extraction loop over a partial run: what to encode with, how, and what to report."""

    model: GHFeatModel
    processor: GHFeatImageProcessor
    dtype: torch.dtype
    layers: list[int]
    keep_codes: bool
    keep_tiled: bool
    recon_dir: Path | None
    batch_size: int
    num_workers: int
    fingerprint_mode: str | None
    on_changed_input: str
    progress: bool
    on_batch: Callable[[BatchProgress], None] | None
    label: str

    def run(self, run: PartialRun, source: ImageSource) -> tuple[dict[str, int] | None, int, int]:
        """Extract the items of `source` that `run` has not committed yet, committing batch by batch (the run is
        closed at the end). Returns `({id: position}` of a finite source or `None`, rows resumed, inputs changed)."""
        try:
            committed = run.committed_table()
            changed = (_changed_inputs(source, committed, run.state["skipped"], self.fingerprint_mode)
                       if self.fingerprint_mode is not None else [])
            if changed:
                _drop_changed(run, changed, self.on_changed_input)
                committed = run.committed_table()
            skipped_records = list(run.state["skipped"])
            done_rows = dict(zip(committed.column("id").to_pylist(), committed.column(POSITION_COLUMN).to_pylist()))
            done_ids = set(done_rows) | {record["id"] for record in skipped_records}
            positions, pending, total = _pending(source, done_rows, skipped_records, done_ids)
            encode = _BatchEncoder(self, run.schema)
            if self.recon_dir is not None and positions is not None:
                encode.recon_names = reconstruction_names(list(positions))
            elif self.recon_dir is not None:  # streaming: named batch by batch, after the interrupted session's names
                encode.taken_names = set(committed.column("reconstruction").to_pylist())
            del committed

            bar = _progress_bar(total, len(done_ids), self.progress, self.label)
            rows, skipped_count, batches, processed = run.num_rows, len(skipped_records), 0, len(done_ids)
            chunks = decoded_chunks(source, pending, self.processor, self.batch_size, self.num_workers,
                                    self.fingerprint_mode)
            try:
                for chunk in chunks:
                    good = [(item, pixels) for item, pixels, error in chunk if error is None]
                    bad = [{"id": item.id, "position": item.position, "error": error,
                            "fingerprint": item.fingerprint} for item, _, error in chunk if error is not None]
                    run.commit(encode(good) if good else None, bad)
                    batches += 1
                    rows += len(good)
                    skipped_count += len(bad)
                    bar.update(len(chunk))
                    if bad:
                        bar.set_postfix(skipped=skipped_count, refresh=False)
                    processed += len(chunk)
                    if self.on_batch is not None:
                        self.on_batch(BatchProgress(batches, rows, processed, skipped_count))
            finally:
                chunks.close()
                bar.close()
            return positions, len(done_rows), len(changed)
        finally:
            run.close()


def refuse_existing(output: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse to start over an interrupted run (without `resume` or `overwrite`) or a finished output (without
    `overwrite`); `True` when `resume` finds the output finished, to be returned as it is."""
    partial_dir = partial_path(output)
    if partial_dir.exists() and not (resume or overwrite):
        raise UsageError(f"found an interrupted run in {os.fspath(partial_dir)!r}: pass --resume to continue "
                         "it or --overwrite to start over.")
    if output.exists() and not partial_dir.exists():
        if resume:
            return True
        if not overwrite:
            raise UsageError(f"{os.fspath(output)!r} already exists: pass --overwrite to replace it.")
    return False


def finished_result(output: Path, settings: dict, layers: list[int]) -> ExtractionResult:
    """`--resume` of a finished run: its output, once read back whole and found written with `settings`."""
    try:
        meta = read_extraction_metadata(output, verify=True)
    except UsageError as error:
        raise UsageError(f"cannot resume: {error} Pass --overwrite to extract it again.") from error
    check_settings(meta.get("settings", {}), settings, f"the finished run that wrote {os.fspath(output)!r}")
    return ExtractionResult(output, meta["num_rows"], [SkippedImage(**s) for s in meta.get("skipped", [])],
                            layers, meta["num_rows"])


def _changed_inputs(source: FileSource, committed: pa.Table, skipped: list[dict], mode: str) -> list[str]:
    """Ids of the items done by an interrupted run (rows and skip records) whose file no longer has the
    fingerprint it was read with, in source order."""
    if not (committed.num_rows or skipped):
        return []
    recorded = dict(zip(committed.column("id").to_pylist(), committed.column(FINGERPRINT_COLUMN).to_pylist()))
    recorded.update((record["id"], record["fingerprint"]) for record in skipped)
    return [item_id for item_id, path in zip(source.ids, source.paths)
            if item_id in recorded and fingerprint_file(path, mode) != recorded[item_id]]


def _drop_changed(run: PartialRun, changed: list[str], policy: str) -> None:
    """Apply `--on-changed-input` to the inputs that changed since the interrupted run read them."""
    summary = f"{len(changed)} input(s) changed since the interrupted run read them (e.g. {changed[0]!r})"
    if policy == "error":
        raise UsageError(f"cannot resume: {summary}. Drop --on-changed-input error to extract them again, or pass "
                         "--overwrite to start over.")
    warnings.warn(f"{summary}: their rows are dropped and they are extracted again.", stacklevel=3)
    run.drop(set(changed))


def _pending(source: ImageSource, done_rows: dict[str, int], skipped_records: list[dict], done_ids: set[str]):
    """`(positions, pending, total)`: `{id: position}` of a finite source (`None` for a streaming one), the items
    still to extract and the source size (`None` when unknown)."""
    if not source.finite:
        done_positions = set(done_rows.values()) | {record["position"] for record in skipped_records}
        if done_positions == set(range(len(done_positions))):
            pending = source.items(start=len(done_positions))
        else:
            pending = (item for item in source.items() if item.id not in done_ids)
        return None, pending, source.num_items()
    items = list(source.items())
    positions: dict[str, int] = {}
    for item in items:
        if item.id in positions:
            raise UsageError(f"duplicate id {item.id!r} in the source; ids must be unique.")
        positions[item.id] = item.position
    missing = [item_id for item_id in done_ids if item_id not in positions]
    if missing:
        raise UsageError(f"cannot resume: {len(missing)} items of the interrupted run (e.g. {missing[0]!r}) "
                         "are no longer in the source; pass --overwrite to start over.")
    return positions, [item for item in items if item.id not in done_ids], len(items)


def _progress_bar(total: int | None, initial: int, enabled: bool, label: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=f"ghfeat extract -> {label}",
                disable=not enabled, dynamic_ncols=True, smoothing=0.1)


__all__ = [
    "CHANGED_INPUT_POLICIES",
    "BatchProgress",
    "ExtractionResult",
    "Session",
    "finished_result",
    "reconstruction_names",
    "refuse_existing",
]
