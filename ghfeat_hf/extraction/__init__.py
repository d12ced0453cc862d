"""Batch GH-Feat feature extraction over image collections (the library behind ``ghfeat extract``).

Data path: source items (files or `datasets` rows) -> decoding in DataLoader workers (PIL; unreadable items become
skip records, never errors) -> [`GHFeatImageProcessor`] -> batched [`GHFeatModel`] under `torch.inference_mode()`
(autocast for bf16/fp16) -> rows committed batch by batch to a partial run directory (`<output>.partial/`) -> one
output file, written to a temporary name and moved into place with `os.replace`.

`resume=True` reads the committed rows, skips the ids already done (rows and skipped items) and continues in a
new part file; the final file is a merge of all parts, ordered by source position. It refuses a run whose settings
differ: the model, the source (its description and `datasets` fingerprint), the layers, the columns, the dtype, the
batch size and the fingerprint mode. With BatchNorm in eval mode a row does not depend on its batch mathematically,
but the kernels round differently for another batch shape (differences of about 1e-6); with the same batch size, a
resumed session restarts at a batch boundary, sees the same batches of an unchanged source and gives identical rows.

A resume trusts nothing in `<output>.partial/` unchecked: the progress record carries a sha256 checksum and the size
and sha256 of every part, parts are read only from that directory, an item committed twice is refused, and input
files whose fingerprint (size + mtime, or content sha256) changed since they were read are extracted again (or
refused, `on_changed_input="error"`). A lock file next to the output keeps a second run off it; temporary files of
killed runs are removed; a finished output is read back whole before a resume returns it. FIFOs, sockets and devices
are skip records, never opened.

Output layouts (by extension):
    `.parquet` / `.arrow` (Arrow IPC stream, `datasets`' own cache format): columns `id` (string), `ghfeat`
        (fixed-size list, the compact vector of the kept layers), optionally `style_code_XX` (one per kept layer),
        `tiled_codes` (`[L_kept, max_style_dim]`, the official layout) and `reconstruction` (PNG path relative to
        the reconstructions directory). Schema metadata: `ghfeat_skipped` (JSON list of `{"id", "error"}`),
        `ghfeat_layers`, `ghfeat_style_dims`, `ghfeat_model`, `ghfeat_source`, `ghfeat_settings` (what `resume`
        compares), `ghfeat_version`.
        Both load with `datasets.load_dataset("parquet"|"arrow", data_files=...)`.
        With `max_rows_per_file`, a `.parquet` output is a folder of `<stem>-00000-of-000NN.parquet`, ... (rows
        in source order across the files in name order; `read_extraction_metadata` lists them as `files`).
    `.safetensors`: tensors `ghfeat` `[N, D]` (+ `style_code_XX`, `tiled_codes`); `__metadata__` holds `ids`,
        `skipped`, `layers`, ... as JSON strings.
    `.npy`: the compact matrix `[N, D]`; everything else, with `num_rows`, goes to the sidecar `<output>.json`
        (written after the matrix).
All vectors are stored as float32 whatever the compute dtype.

Under `accelerate launch` (or `ghfeat extract --num-processes N`) every process extracts one share of the source
into `<output>.partial/rank-NNNNN/` and the main process merges them into the same single output, rows in source
order ([`sharded`]); a resume needs the same process count.

Models, devices, dtypes and layer selection come from [`ghfeat_hf.runtime`]. Modules: [`sources`] (inputs, decoding
and per-process shares), [`storage`] (partial state, metadata reader), [`extract`] (the loop), [`destination`]
(the output lock and path checks), [`sharded`] (the split between processes), [`merge`] (the partial runs -> rows
in source order, as a stream), [`writers`] (the output files), [`split_output`] (`--max-rows-per-file` folders).
Everything public is re-exported here.
"""

from .extract import CHANGED_INPUT_POLICIES, BatchProgress, ExtractionResult, extract_features, reconstruction_names
from .sources import (
    FINGERPRINT_MODES,
    LIST_FILE_SUFFIXES,
    DatasetSource,
    FileSource,
    ImageSource,
    SourceItem,
    dataset_source,
    decode_image,
    file_sources,
    fingerprint_file,
    folder_source,
    glob_source,
    image_extensions,
    list_file_source,
    resolve_source,
)
from .storage import (
    OUTPUT_FORMATS,
    SkippedImage,
    output_format,
    partial_path,
    read_extraction_metadata,
    read_partial_progress,
)

__all__ = [
    "CHANGED_INPUT_POLICIES",
    "FINGERPRINT_MODES",
    "LIST_FILE_SUFFIXES",
    "OUTPUT_FORMATS",
    "BatchProgress",
    "DatasetSource",
    "ExtractionResult",
    "FileSource",
    "ImageSource",
    "SkippedImage",
    "SourceItem",
    "dataset_source",
    "decode_image",
    "extract_features",
    "file_sources",
    "fingerprint_file",
    "folder_source",
    "glob_source",
    "image_extensions",
    "list_file_source",
    "output_format",
    "partial_path",
    "read_extraction_metadata",
    "read_partial_progress",
    "reconstruction_names",
    "resolve_source",
]
