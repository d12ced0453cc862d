"""The writers of the final output of `ghfeat extract`: Parquet (one file, or a folder of files of bounded row
count, see [`split_output`]), Arrow stream, `.npy` with its JSON sidecar, safetensors; each fed by a pass over the
merged rows in source order (see [`merge`]) and moved into place only once complete."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .split_output import remove_output, write_split_parquet
from .storage import _array_shapes, _encode_metadata, _npy_sidecar, _replacing, _to_numpy, atomic_write_bytes

_TARGET_CHUNK_BYTES = 64 << 20
"""About how many bytes of rows the final writers handle at a time (one Parquet row group each)."""


def _write_table_file(fmt: str, output: Path, chunks: Iterator[pa.Table], schema: pa.Schema, chunk_rows: int) -> None:
    with _replacing(output) as tmp:
        if fmt == "parquet":
            with pq.ParquetWriter(tmp, schema, write_page_checksum=True) as writer:
                for chunk in chunks:
                    writer.write_table(chunk.replace_schema_metadata(schema.metadata), row_group_size=chunk_rows)
        else:
            with open(tmp, "wb") as handle, pa.ipc.new_stream(handle, schema) as writer:
                for chunk in chunks:
                    writer.write_table(chunk.replace_schema_metadata(schema.metadata))


def _write_npy(output: Path, table_chunks: Iterator[pa.Table], num_rows: int, width: int, meta: dict) -> None:
    """The `[num_rows, width]` matrix first, then the sidecar (`meta`, with `num_rows`): a failed write never leaves
    new metadata next to an old matrix."""
    with _replacing(output) as tmp:
        if num_rows == 0:
            with open(tmp, "wb") as handle:
                np.save(handle, np.zeros((0, width), np.float32))
        else:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(num_rows, width))
            row = 0
            for chunk in table_chunks:
                values = _to_numpy(chunk.column("ghfeat"), (width,))
                matrix[row:row + len(values)] = values
                row += len(values)
            matrix.flush()
            del matrix
    atomic_write_bytes(_npy_sidecar(output), json.dumps(meta, indent=1).encode("utf-8"))


def _write_safetensors(output: Path, rows: RowSource, num_rows: int, chunk_rows: int,
                       shapes: dict[str, tuple[int, ...]], meta: dict[str, str]) -> None:
    """Stream tensors into the safetensors layout (u64 header size, JSON header, raw little-endian data), one
    pass over the rows per tensor."""
    header: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for name, shape in shapes.items():
        size = num_rows * int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": [num_rows, *shape], "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with _replacing(output) as tmp, open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name, shape in shapes.items():
            for chunk in rows([name], chunk_rows):
                handle.write(_to_numpy(chunk.column(name), shape).astype("<f4", copy=False).tobytes())


RowSource = Callable[[list[str], int], Iterator[pa.Table]]
"""`rows(columns, chunk_rows)`: a fresh pass over the output rows (those columns) in order, tables of at most
`chunk_rows` rows."""


def write_output(fmt: str, output: Path, rows: RowSource, num_rows: int, schema: pa.Schema, meta: dict[str, Any],
                 max_rows_per_file: int | None = None) -> None:
    """Write the final output from `rows` (`num_rows` in all) with the run's metadata `meta` and the row count
    (`num_rows`, checked when read): one file, or with `max_rows_per_file` a folder of Parquet files (see
    [`split_output`]). Parquet and Arrow are written in one pass, one row group of about 64 MiB at a time; `.npy`
    and `.safetensors` outputs list every id in their metadata, read in a first pass."""
    meta = {**meta, "num_rows": num_rows}
    shapes = _array_shapes(schema)
    row_bytes = sum(int(np.prod(shape)) * 4 for shape in shapes.values()) + 64
    chunk_rows = max(1, _TARGET_CHUNK_BYTES // row_bytes)
    if fmt in ("parquet", "arrow"):
        final_schema = schema.with_metadata({f"ghfeat_{key}": value for key, value in _encode_metadata(meta).items()})
        chunks = rows(schema.names, chunk_rows)
        if max_rows_per_file is not None:
            write_split_parquet(output, chunks, num_rows, final_schema, max_rows_per_file, chunk_rows)
            return
        if output.is_dir():
            remove_output(output)
        _write_table_file(fmt, output, chunks, final_schema, chunk_rows)
        return
    listed = ["id", "reconstruction"] if "reconstruction" in schema.names else ["id"]
    values: dict[str, list] = {name: [] for name in listed}
    for chunk in rows(listed, chunk_rows):
        for name in listed:
            values[name] += chunk.column(name).to_pylist()
    meta = {**meta, "ids": values["id"]}
    if "reconstruction" in values:
        meta["reconstructions"] = values["reconstruction"]
    if output.is_dir():
        remove_output(output)
    if fmt == "npy":
        _write_npy(output, rows(["ghfeat"], chunk_rows), num_rows, shapes["ghfeat"][0], meta)
    else:
        _write_safetensors(output, rows, num_rows, chunk_rows, shapes, _encode_metadata(meta))


__all__ = ["RowSource", "write_output"]
