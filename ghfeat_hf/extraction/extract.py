"""[`extract_features`]: `ghfeat extract` from a model and a source to one output file, in one process (a
[`Session`] over `<output>.partial/`, then the merge in source order) or split between the processes of a launch
([`sharded`]); the destination checks and lock are in [`destination`]."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..image_processing_ghfeat import GHFeatImageProcessor
from ..modeling_ghfeat import GHFeatModel
from ..runtime import (
    launched_process_state,
    model_fingerprint,
    parse_layers,
    processor_size,
    resolve_device,
    resolve_dtype,
)
from .destination import check_destination, claimed, output_lock, remove_stale_temporaries
from .merge import RankRows, write_merged
from .session import (
    CHANGED_INPUT_POLICIES,
    BatchProgress,
    ExtractionResult,
    Session,
    finished_result,
    reconstruction_names,
    refuse_existing,
)
from .sharded import ShardedRun, check_process_count
from .sources import (
    FINGERPRINT_MODES,
    FileSource,
    ImageSource,
    resolve_source,
)
from .storage import (
    POSITION_COLUMN,
    PartialRun,
    output_format,
    partial_path,
    row_schema,
)

BARRIER_TIMEOUT_MINUTES = 24 * 60
"""How long a process of a multi-process run waits for the others (which may have more images to encode)."""


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
    fingerprint: str = "stat",
    on_changed_input: str = "reencode",
    progress: bool = True,
    on_batch: Callable[[BatchProgress], None] | None = None,
    process_state: Any = None,
    max_rows_per_file: int | None = None,
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
            check that it reads back whole and return it as it is.
        overwrite: replace an existing output or discard an interrupted run.
        fingerprint: how each input file is fingerprinted when read, for `resume` to find the files that changed
            since: `"stat"` (size and mtime_ns, free) or `"content"` (sha256 of the bytes; a resume reads every
            file already done again). Datasets are identified by their `datasets` fingerprint instead.
        on_changed_input: what `resume` does with files whose fingerprint changed: `"reencode"` drops their rows
            and extracts them again (with a warning), `"error"` refuses to resume.
        progress: show a tqdm bar (images/s, skipped count).
        on_batch: called with a [`BatchProgress`] after every committed batch.
        process_state: an `accelerate.PartialState` of several processes (default: the launched one, if any):
            each process extracts its share of `source` on its own device and the main process writes `output`
            (see [`sharded`]); every process returns the same result, with per-process statistics.
        max_rows_per_file: split a `.parquet` output into files of at most this many rows: `output` becomes a
            folder of `<stem>-00000-of-000NN.parquet`, ... in source order (see [`split_output`]).

    Unreadable items never stop the run: they are listed in [`ExtractionResult.skipped`] and in the output's
    metadata; so are FIFOs, sockets and devices, which are never opened. On an exception or Ctrl-C the committed
    rows stay in `<output>.partial/` and no output is written. A second run on the same output is refused while
    this one holds its lock (`.<output name>.lock`); an error writing the output (read-only or full file system)
    is a [`DestinationError`].
    """
    output = Path(output)
    fmt = output_format(output)
    if fmt == "npy" and (keep_codes or keep_tiled):
        raise UsageError("a .npy output holds only the compact matrix; use .parquet, .arrow or .safetensors to keep "
                         "per-layer codes or the tiled array.")
    if batch_size < 1:
        raise UsageError(f"batch size must be positive, got {batch_size}.")
    if max_rows_per_file is not None and fmt != "parquet":
        raise UsageError(f"--max-rows-per-file splits Parquet outputs only; a .{fmt} output is one file (use a "
                         ".parquet output, or drop --max-rows-per-file).")
    if max_rows_per_file is not None and max_rows_per_file < 1:
        raise UsageError(f"--max-rows-per-file must be positive, got {max_rows_per_file}.")
    for name, value, choices in (("fingerprint", fingerprint, FINGERPRINT_MODES),
                                 ("on_changed_input", on_changed_input, CHANGED_INPUT_POLICIES)):
        if value not in choices:
            raise UsageError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")
    config = model.config
    layer_list = parse_layers(layers, config)
    style_dims = list(config.style_dims)
    kept_dims = [style_dims[layer] for layer in layer_list]
    height, width = processor_size(processor)
    if (height, width) != (config.image_size, config.image_size) and height is not None:
        raise UsageError(f"the processor resizes to {height}x{width} but the model expects {config.image_size} px.")
    compute_dtype = resolve_dtype(dtype)
    device = next(model.parameters()).device if device is None else resolve_device(device)
    if process_state is None:
        process_state = launched_process_state(BARRIER_TIMEOUT_MINUTES)
    processes = 1 if process_state is None else process_state.num_processes
    if processes > 1 and device.type == process_state.device.type:
        device = process_state.device  # each process on its own accelerator
    model.eval().to(device)
    source = resolve_source(source)
    recon_dir = Path(reconstructions_dir) if reconstructions_dir is not None else None
    fingerprint_mode = fingerprint if isinstance(source, FileSource) else None

    settings = {
        "model": model_fingerprint(model), "source": source.identity(), "batch_size": batch_size,
        "layers": layer_list, "keep_codes": keep_codes, "keep_tiled": keep_tiled, "format": fmt,
        "dtype": str(compute_dtype).removeprefix("torch."),
        "reconstructions": os.fspath(recon_dir.resolve()) if recon_dir is not None else None,
        "fingerprint": fingerprint_mode,
    }
    if max_rows_per_file is not None:
        settings["max_rows_per_file"] = max_rows_per_file
    schema = row_schema(kept_dims, layer_list, keep_codes, keep_tiled, max(style_dims), recon_dir is not None)
    session = Session(model, processor, compute_dtype, layer_list, keep_codes, keep_tiled, recon_dir, batch_size,
                      num_workers, fingerprint_mode, on_changed_input, progress, on_batch, output.name)
    if processes > 1:
        job = ShardedRun(process_state, session, source, output, schema, settings, resume, overwrite,
                         output_metadata(model, source, layer_list, kept_dims, settings), max_rows_per_file)
        return job.run()
    partial_dir = partial_path(output)
    with claimed(output):
        if partial_dir.exists() and resume:
            check_process_count(partial_dir, 1)
        if refuse_existing(output, resume, overwrite):
            return finished_result(output, settings, layer_list)
        if recon_dir is not None:
            remove_stale_temporaries(recon_dir, recursive=True)

        open_run = PartialRun.reopen if resume and partial_dir.exists() else PartialRun.start
        run = open_run(partial_dir, schema, settings, "id" if source.finite else POSITION_COLUMN)
        try:
            positions, num_resumed, num_changed = session.run(run, source)
            num_rows, skipped = write_merged([RankRows(run, lambda local: local, positions)], output, schema,
                                             output_metadata(model, source, layer_list, kept_dims, settings),
                                             max_rows_per_file)
            run.close()
            shutil.rmtree(partial_dir, ignore_errors=True)
            return ExtractionResult(output, num_rows, skipped, layer_list, num_resumed, num_changed)
        finally:
            run.close()


def output_metadata(model, source: ImageSource, layers: list[int], kept_dims: list[int],
                    settings: dict[str, Any]) -> dict[str, Any]:
    """The output's metadata, less the skipped items (added by the merge)."""
    from ..version import __version__

    return {
        "layers": layers,
        "style_dims": kept_dims,
        "model": str(getattr(model.config, "name_or_path", "") or ""),
        "source": source.description,
        "settings": settings,
        "version": __version__,
    }


__all__ = [
    "CHANGED_INPUT_POLICIES",
    "BatchProgress",
    "ExtractionResult",
    "check_destination",
    "extract_features",
    "output_lock",
    "reconstruction_names",
    "remove_stale_temporaries",
]
