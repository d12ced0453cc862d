"""[`extract_features`]: the batch loop of `ghfeat extract` (decode -> encode -> commit), its resume logic and the
final merge into one output file."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..image_processing_ghfeat import GHFeatImageProcessor
from ..modeling_ghfeat import GHFeatModel
from .errors import UsageError
from .runtime import autocast_context, model_fingerprint, parse_layers, processor_size, resolve_device, resolve_dtype
from .sources import ImageSource, SourceItem, decoded_chunks, resolve_source
from .storage import (
    POSITION_COLUMN,
    PartialRun,
    SkippedImage,
    atomic_write_bytes,
    check_settings,
    fixed_list,
    output_format,
    partial_path,
    read_extraction_metadata,
    reconstruction_names,
    row_schema,
    write_output,
)


@dataclass
class ExtractionResult:
    """What [`extract_features`] wrote."""

    output: Path
    num_rows: int
    skipped: list[SkippedImage] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    num_resumed: int = 0
    """Rows that came from an earlier, interrupted session."""


@dataclass(frozen=True)
class BatchProgress:
    """Passed to the `on_batch` callback after every committed batch."""

    batches: int
    rows: int
    processed: int
    skipped: int


@dataclass
class _BatchEncoder:
    """Encodes a batch of decoded images into a record batch of the partial run's schema (and, when asked, saves
    the reconstructions as PNGs)."""

    model: GHFeatModel
    processor: GHFeatImageProcessor
    device: torch.device
    dtype: torch.dtype
    layers: list[int]
    keep_codes: bool
    keep_tiled: bool
    schema: pa.Schema
    recon_dir: Path | None = None
    recon_names: dict[str, str] | None = None
    """Names of every id of a finite source; `None` for a streaming source, named batch by batch."""
    taken_names: set[str] = field(default_factory=set)
    """The names a streaming source's batches (this session's and the interrupted one's) already use."""

    def __call__(self, good: Sequence[tuple[SourceItem, torch.Tensor]]) -> pa.RecordBatch:
        model = self.model
        pixel_values = torch.stack([pixels for _, pixels in good]).to(self.device)
        with torch.inference_mode(), autocast_context(self.device, self.dtype):
            output = model(pixel_values=pixel_values)
            decoded = model.decode(output.style_codes) if self.recon_dir is not None else None
        codes = [output.style_codes[layer].float().cpu().numpy() for layer in self.layers]
        columns: dict[str, Any] = {
            "id": pa.array([item.id for item, _ in good], pa.string()),
            "ghfeat": fixed_list(np.concatenate(codes, axis=1)),
        }
        if self.keep_codes:
            for layer, code in zip(self.layers, codes):
                columns[f"style_code_{layer:02d}"] = fixed_list(code)
        if self.keep_tiled:
            columns["tiled_codes"] = fixed_list(output.last_hidden_state[:, self.layers].float().cpu().numpy())
        if decoded is not None:
            columns["reconstruction"] = pa.array(self._save_reconstructions(good, decoded), pa.string())
        columns[POSITION_COLUMN] = pa.array([item.position for item, _ in good], pa.int64())
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
        for name, image in zip(names, self.processor.postprocess(decoded.float())):
            target = self.recon_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic_write_bytes(target, buffer.getvalue(), sync=False)
        return names


def extract_features(
    model: GHFeatModel,
    processor: GHFeatImageProcessor,
    source,
    output: str | os.PathLike,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "fp32",
    num_workers: int = 0,
    layers: str | Sequence[int] | None = None,
    keep_codes: bool = False,
    keep_tiled: bool = False,
    reconstructions_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_batch: Callable[[BatchProgress], None] | None = None,
) -> ExtractionResult:
    """Extract GH-Feat vectors for every image of `source` into `output` (format chosen by extension).

    Args:
        model, processor: a [`GHFeatModel`] and its [`GHFeatImageProcessor`] (see [`load_model`]).
        source: an [`ImageSource`], a `datasets.Dataset`/`IterableDataset`, a folder (recursive), a glob, a text
            list, an image path, or a list of those. Rows follow the source order (folders and globs sorted).
        output: `.parquet`, `.arrow`, `.npy` or `.safetensors`; written atomically when the run finishes.
        batch_size: images per model batch (and per commit).
        device: where the model runs (`"auto"`, `"cuda"`, ...); `None` keeps the model where it is.
        dtype: compute dtype, `"fp32"`, `"bf16"` or `"fp16"` (autocast; outputs are stored as float32).
        num_workers: decoding processes (DataLoader workers) for files and map-style datasets, decoding threads for
            streaming datasets; 0 decodes in the main process.
        layers: keep only these layers' codes (see [`parse_layers`]); stored in the metadata.
        keep_codes: add one `style_code_XX` column per kept layer.
        keep_tiled: add the official tiled `[L_kept, max(style_dims)]` array as `tiled_codes`.
        reconstructions_dir: also decode the codes (all layers) and save every reconstruction as a PNG there.
        resume: continue an interrupted run of the same command from `<output>.partial/` (same settings, batch
            size and source, else a [`UsageError`]); with a finished `output` written with the same settings,
            return it as it is.
        overwrite: replace an existing output or discard an interrupted run.
        progress: show a tqdm bar (images/s, skipped count).
        on_batch: called with a [`BatchProgress`] after every committed batch.

    Unreadable items never stop the run: they are listed in [`ExtractionResult.skipped`] and in the output's
    metadata. On an exception or Ctrl-C the committed rows stay in `<output>.partial/` and no output is written.
    """
    output = Path(output)
    fmt = output_format(output)
    if fmt == "npy" and (keep_codes or keep_tiled):
        raise UsageError("a .npy output holds only the compact matrix; use .parquet, .arrow or .safetensors to keep "
                         "per-layer codes or the tiled array.")
    if batch_size < 1:
        raise UsageError(f"batch size must be positive, got {batch_size}.")
    config = model.config
    layer_list = parse_layers(layers, config)
    style_dims = list(config.style_dims)
    kept_dims = [style_dims[layer] for layer in layer_list]
    height, width = processor_size(processor)
    if (height, width) != (config.image_size, config.image_size) and height is not None:
        raise UsageError(f"the processor resizes to {height}x{width} but the model expects {config.image_size} px.")
    compute_dtype = resolve_dtype(dtype)
    device = next(model.parameters()).device if device is None else resolve_device(device)
    model.eval().to(device)
    source = resolve_source(source)
    recon_dir = Path(reconstructions_dir) if reconstructions_dir is not None else None

    settings = {
        "model": model_fingerprint(model), "source": source.identity(), "batch_size": batch_size,
        "layers": layer_list, "keep_codes": keep_codes, "keep_tiled": keep_tiled, "format": fmt,
        "dtype": str(compute_dtype).removeprefix("torch."),
        "reconstructions": os.fspath(recon_dir.resolve()) if recon_dir is not None else None,
    }
    partial_dir = partial_path(output)
    if partial_dir.exists() and not (resume or overwrite):
        raise UsageError(f"found an interrupted run in {os.fspath(partial_dir)!r}: pass --resume to continue it or "
                         "--overwrite to start over.")
    if output.exists() and not partial_dir.exists():
        if resume:
            meta = read_extraction_metadata(output)
            check_settings(meta.get("settings", {}), settings, f"the finished run that wrote {os.fspath(output)!r}")
            return ExtractionResult(output, meta["num_rows"], [SkippedImage(**s) for s in meta.get("skipped", [])],
                                    layer_list, meta["num_rows"])
        if not overwrite:
            raise UsageError(f"{os.fspath(output)!r} already exists: pass --overwrite to replace it.")
    output.parent.mkdir(parents=True, exist_ok=True)

    schema = row_schema(kept_dims, layer_list, keep_codes, keep_tiled, max(style_dims), recon_dir is not None)
    open_run = PartialRun.reopen if resume and partial_dir.exists() else PartialRun.start
    run = open_run(partial_dir, schema, settings)

    try:
        done_rows, skipped_records = run.done()
        done_ids = set(done_rows) | {record["id"] for record in skipped_records}
        positions, pending, total = _pending(source, done_rows, skipped_records, done_ids)
        encode = _BatchEncoder(model, processor, device, compute_dtype, layer_list, keep_codes, keep_tiled,
                               run.schema, recon_dir)
        if recon_dir is not None and positions is not None:
            encode.recon_names = reconstruction_names(list(positions))
        elif recon_dir is not None:  # streaming: named batch by batch, after the interrupted session's names
            encode.taken_names = set(run.committed_table().column("reconstruction").to_pylist())

        bar = _progress_bar(total, len(done_ids), progress, output)
        rows, skipped_count, batches, processed = run.num_rows, len(skipped_records), 0, len(done_ids)
        chunks = decoded_chunks(source, pending, processor, batch_size, num_workers)
        try:
            for chunk in chunks:
                good = [(item, pixels) for item, pixels, error in chunk if error is None]
                bad = [{"id": item.id, "position": item.position, "error": error}
                       for item, _, error in chunk if error is not None]
                run.commit(encode(good) if good else None, bad)
                batches += 1
                rows += len(good)
                skipped_count += len(bad)
                bar.update(len(chunk))
                if bad:
                    bar.set_postfix(skipped=skipped_count, refresh=False)
                processed += len(chunk)
                if on_batch is not None:
                    on_batch(BatchProgress(batches, rows, processed, skipped_count))
        finally:
            chunks.close()
            bar.close()
            run.close()

        # Merge the committed parts into the final file, in source order.
        table = run.committed_table()
        if positions is not None:
            keys = np.array([positions[item_id] for item_id in table.column("id").to_pylist()], dtype=np.int64)
            skipped_records = sorted(run.state["skipped"], key=lambda record: positions[record["id"]])
        else:
            keys = table.column(POSITION_COLUMN).to_numpy()
            skipped_records = sorted(run.state["skipped"], key=lambda record: record["position"])
        order = np.argsort(keys, kind="stable") if keys.size and np.any(np.diff(keys) < 0) else None
        table = table.drop_columns([POSITION_COLUMN])
        skipped = [SkippedImage(record["id"], record["error"]) for record in skipped_records]
        write_output(fmt, output, table, order, schema,
                     _output_metadata(model, source, layer_list, kept_dims, skipped, settings))
        run.close()
        shutil.rmtree(partial_dir, ignore_errors=True)
        return ExtractionResult(output, table.num_rows, skipped, layer_list, len(done_rows))
    finally:
        run.close()


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


def _output_metadata(model, source: ImageSource, layers: list[int], kept_dims: list[int],
                     skipped: list[SkippedImage], settings: dict[str, Any]) -> dict[str, Any]:
    from .. import __version__

    return {
        "skipped": [{"id": record.id, "error": record.error} for record in skipped],
        "layers": layers,
        "style_dims": kept_dims,
        "model": str(getattr(model.config, "name_or_path", "") or ""),
        "source": source.description,
        "settings": settings,
        "version": __version__,
    }


def _progress_bar(total: int | None, initial: int, enabled: bool, output: Path):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=f"ghfeat extract -> {output.name}",
                disable=not enabled, dynamic_ncols=True, smoothing=0.1)


__all__ = ["BatchProgress", "ExtractionResult", "extract_features"]
