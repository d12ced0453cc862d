"""Extraction storage: the row schema, the partial-run state that makes `--resume` possible, the final
Parquet / Arrow / npy / safetensors writers and the metadata reader.

Partial run directory (`<output>.partial/`):
    `progress.json`     the commit record, rewritten atomically after every batch: settings, committed batch count
                        of every part file, skipped items;
    `part-NNNNN.arrows` one Arrow IPC stream per session (fsync'ed after every record batch). A killed session may
                        leave a torn message at the end of its part; readers stop at the committed batch count.
Every final file is written to a temporary sibling and moved into place with `os.replace`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UsageError
from .sources import image_extensions

OUTPUT_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".npy": "npy", ".safetensors": "safetensors"}
POSITION_COLUMN = "_position"
"""Source position of a row, kept in the partial parts only (dropped from the final file)."""
_PROGRESS_FILE = "progress.json"
_PROGRESS_FORMAT = "ghfeat-extract-partial"
_TARGET_CHUNK_BYTES = 64 << 20
"""About how many bytes of rows the final writers handle at a time (one Parquet row group each)."""


@dataclass(frozen=True)
class SkippedImage:
    """An item that could not be read, with the reason."""

    id: str
    error: str


def output_format(output: str | os.PathLike) -> str:
    """`"parquet"`, `"arrow"`, `"npy"` or `"safetensors"` from the output's extension."""
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UsageError(
            f"unknown output extension {suffix or '(none)'!r} for {os.fspath(output)!r}: "
            f"use one of {', '.join(OUTPUT_FORMATS)}."
        )
    return OUTPUT_FORMATS[suffix]


def partial_path(output: str | os.PathLike) -> Path:
    """The directory holding an unfinished run's state: `<output>.partial`."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


# ----------------------------------------------------------------------------------------------------------------
# Rows


def row_schema(kept_dims: Sequence[int], layers: Sequence[int], keep_codes: bool, keep_tiled: bool,
               tiled_width: int, reconstructions: bool) -> pa.Schema:
    """The output columns: `id`, `ghfeat` and the optional `style_code_XX`, `tiled_codes`, `reconstruction`."""
    fields = [pa.field("id", pa.string()), pa.field("ghfeat", pa.list_(pa.float32(), sum(kept_dims)))]
    if keep_codes:
        fields += [pa.field(f"style_code_{layer:02d}", pa.list_(pa.float32(), dim)) for layer, dim in zip(layers, kept_dims)]
    if keep_tiled:
        fields.append(pa.field("tiled_codes", pa.list_(pa.list_(pa.float32(), tiled_width), len(layers))))
    if reconstructions:
        fields.append(pa.field("reconstruction", pa.string()))
    return pa.schema(fields)


def fixed_list(values: np.ndarray) -> pa.Array:
    """`[N, *shape]` float32 -> nested fixed-size lists."""
    array: pa.Array = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), type=pa.float32())
    for width in reversed(values.shape[1:]):
        array = pa.FixedSizeListArray.from_arrays(array, width)
    return array


def _to_numpy(array: pa.Array | pa.ChunkedArray, shape: Sequence[int]) -> np.ndarray:
    """Nested fixed-size lists -> `[N, *shape]` float32."""
    if isinstance(array, pa.ChunkedArray):
        chunks = [_to_numpy(chunk, shape) for chunk in array.chunks]
        return np.concatenate(chunks) if chunks else np.zeros((0, *shape), np.float32)
    length = len(array)
    for _ in shape:
        array = array.flatten()
    return array.to_numpy(zero_copy_only=False).reshape(length, *shape)


def _array_shapes(schema: pa.Schema) -> dict[str, tuple[int, ...]]:
    """Per-row shapes of the float columns of a row schema."""
    shapes = {}
    for schema_field in schema:
        shape, dtype = [], schema_field.type
        while pa.types.is_fixed_size_list(dtype):
            shape.append(dtype.list_size)
            dtype = dtype.value_type
        if shape:
            shapes[schema_field.name] = tuple(shape)
    return shapes


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


# ----------------------------------------------------------------------------------------------------------------
# Atomic files


@contextlib.contextmanager
def _replacing(path: Path, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; on success it is fsync'ed (`sync`) and moved onto `path`
    with `os.replace`, on failure removed."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes, sync: bool = True) -> None:
    """Write `data` to `path` through a temporary sibling and `os.replace`."""
    with _replacing(path, sync) as tmp:
        tmp.write_bytes(data)


def _encode_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """Metadata values as strings: strings as they are, anything else as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in meta.items()}


# ----------------------------------------------------------------------------------------------------------------
# Partial run state


def _read_state(directory: Path) -> dict:
    """The progress record of a partial run directory; `OSError`/`ValueError` when missing or unreadable."""
    return json.loads((directory / _PROGRESS_FILE).read_text(encoding="utf-8"))


def _committed_rows(state: dict) -> int:
    return sum(part["rows"] for part in state.get("parts", []))


def check_settings(previous: dict, settings: dict, run: str) -> None:
    """Raise a [`UsageError`] naming every setting of `run` (`previous`) that differs from `settings`."""
    changed = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
    if changed:
        details = "; ".join(f"{key}: {previous.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
        raise UsageError(f"cannot resume: {run} used other settings ({details}). Use the same options, or pass "
                         "--overwrite to start over.")


class PartialRun:
    """The `<output>.partial/` directory: committed Arrow stream parts and the progress record."""

    def __init__(self, directory: Path, schema: pa.Schema, state: dict):
        self.directory, self.state = directory, state
        self.schema = schema.append(pa.field(POSITION_COLUMN, pa.int64()))
        self._handle = self._writer = None
        self._maps: list = []

    @classmethod
    def start(cls, directory: Path, schema: pa.Schema, settings: dict) -> PartialRun:
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        run = cls(directory, schema, {"format": _PROGRESS_FORMAT, "version": 1, "settings": settings,
                                      "parts": [], "skipped": []})
        run._save()
        return run

    @classmethod
    def reopen(cls, directory: Path, schema: pa.Schema, settings: dict) -> PartialRun:
        try:
            state = _read_state(directory)
        except (OSError, ValueError) as error:
            raise UsageError(
                f"cannot resume: {os.fspath(directory)!r} has no readable progress record ({error}); "
                "pass --overwrite to start over."
            ) from error
        if state.get("format") != _PROGRESS_FORMAT:
            raise UsageError(f"cannot resume: {os.fspath(directory)!r} is not a ghfeat extraction state.")
        check_settings(state.get("settings", {}), settings, "the interrupted run")
        return cls(directory, schema, state)

    def _save(self) -> None:
        atomic_write_bytes(self.directory / _PROGRESS_FILE, json.dumps(self.state, indent=1).encode("utf-8"))

    def committed_table(self) -> pa.Table:
        """The committed rows of every part (memory-mapped until [`close`])."""
        batches = []
        for part in self.state["parts"]:
            source = pa.memory_map(os.fspath(self.directory / part["file"]), "r")
            self._maps.append(source)
            try:
                reader = pa.ipc.open_stream(source)
                if not reader.schema.equals(self.schema):
                    raise UsageError(f"cannot resume: {part['file']} has another schema; pass --overwrite.")
                batches += [reader.read_next_batch() for _ in range(part["batches"])]
            except (pa.ArrowInvalid, StopIteration, OSError) as error:
                raise UsageError(f"cannot resume: {part['file']} is damaged ({error}); pass --overwrite.") from error
        return pa.Table.from_batches(batches, schema=self.schema)

    def done(self) -> tuple[dict[str, int], list[dict]]:
        """`({id: position} of committed rows, skipped records)`."""
        table = self.committed_table()
        done = dict(zip(table.column("id").to_pylist(), table.column(POSITION_COLUMN).to_pylist()))
        return done, list(self.state["skipped"])

    def commit(self, batch: pa.RecordBatch | None, skipped: list[dict]) -> None:
        """Append a batch of rows (durably) and skip records, then rewrite the progress record."""
        has_rows = batch is not None and batch.num_rows > 0
        if has_rows:
            if self._writer is None:
                name = f"part-{len(self.state['parts']):05d}.arrows"
                self._handle = open(self.directory / name, "wb")  # noqa: SIM115 - closed in close()
                self._writer = pa.ipc.new_stream(self._handle, self.schema)
                self.state["parts"].append({"file": name, "batches": 0, "rows": 0})
            self._writer.write_batch(batch)
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self.state["parts"][-1]["batches"] += 1
            self.state["parts"][-1]["rows"] += batch.num_rows
        self.state["skipped"].extend(skipped)
        if has_rows or skipped:
            self._save()

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._handle.close()
            self._writer = self._handle = None
        for source in self._maps:
            with contextlib.suppress(Exception):
                source.close()
        self._maps = []

    @property
    def num_rows(self) -> int:
        return _committed_rows(self.state)


def read_partial_progress(output: str | os.PathLike) -> dict | None:
    """The progress record of an interrupted run writing `output` (`rows`, `skipped`, ...), or `None`."""
    directory = partial_path(output)
    try:
        state = _read_state(directory)
    except (OSError, ValueError):
        return None
    return {"rows": _committed_rows(state), "skipped": state.get("skipped", []),
            "settings": state.get("settings", {}), "directory": os.fspath(directory)}


# ----------------------------------------------------------------------------------------------------------------
# Final files


def _ordered_chunks(table: pa.Table, order: np.ndarray | None, chunk_rows: int) -> Iterator[pa.Table]:
    for start in range(0, table.num_rows, chunk_rows):
        if order is None:
            yield table.slice(start, chunk_rows)
        else:
            yield table.take(pa.array(order[start:start + chunk_rows]))


def _reordered(values: list, order: np.ndarray | None) -> list:
    return values if order is None else [values[index] for index in order]


def _write_table_file(fmt: str, output: Path, chunks: Iterator[pa.Table], schema: pa.Schema, chunk_rows: int) -> None:
    with _replacing(output) as tmp:
        if fmt == "parquet":
            with pq.ParquetWriter(tmp, schema) as writer:
                for chunk in chunks:
                    writer.write_table(chunk.replace_schema_metadata(schema.metadata), row_group_size=chunk_rows)
        else:
            with open(tmp, "wb") as handle, pa.ipc.new_stream(handle, schema) as writer:
                for chunk in chunks:
                    writer.write_table(chunk.replace_schema_metadata(schema.metadata))


def _npy_sidecar(output: Path) -> Path:
    return Path(os.fspath(output) + ".json")


def _write_npy(output: Path, table_chunks: Iterator[pa.Table], num_rows: int, width: int, meta: dict) -> None:
    """The `[num_rows, width]` matrix first, then the sidecar (with `num_rows`, checked when read): a failed write
    never leaves new metadata next to an old matrix."""
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
    atomic_write_bytes(_npy_sidecar(output), json.dumps({**meta, "num_rows": num_rows}, indent=1).encode("utf-8"))


def _write_safetensors(output: Path, table: pa.Table, order: np.ndarray | None, chunk_rows: int,
                       shapes: dict[str, tuple[int, ...]], meta: dict[str, str]) -> None:
    """Stream tensors into the safetensors layout (u64 header size, JSON header, raw little-endian data)."""
    header: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for name, shape in shapes.items():
        size = table.num_rows * int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": [table.num_rows, *shape], "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with _replacing(output) as tmp, open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name, shape in shapes.items():
            for chunk in _ordered_chunks(table.select([name]), order, chunk_rows):
                handle.write(_to_numpy(chunk.column(name), shape).astype("<f4", copy=False).tobytes())


def write_output(fmt: str, output: Path, table: pa.Table, order: np.ndarray | None, schema: pa.Schema,
                 meta: dict[str, Any]) -> None:
    """Write the final file: `table`'s rows (taken in `order` when given) with the run's metadata `meta`."""
    shapes = _array_shapes(schema)
    row_bytes = sum(int(np.prod(shape)) * 4 for shape in shapes.values()) + 64
    chunk_rows = max(1, _TARGET_CHUNK_BYTES // row_bytes)
    if fmt in ("parquet", "arrow"):
        final_schema = schema.with_metadata({f"ghfeat_{key}": value for key, value in _encode_metadata(meta).items()})
        _write_table_file(fmt, output, _ordered_chunks(table, order, chunk_rows), final_schema, chunk_rows)
        return
    meta = {**meta, "ids": _reordered(table.column("id").to_pylist(), order)}
    if "reconstruction" in table.column_names:
        meta["reconstructions"] = _reordered(table.column("reconstruction").to_pylist(), order)
    if fmt == "npy":
        _write_npy(output, _ordered_chunks(table.select(["ghfeat"]), order, chunk_rows), table.num_rows,
                   shapes["ghfeat"][0], meta)
    else:
        _write_safetensors(output, table, order, chunk_rows, shapes, _encode_metadata(meta))


def read_extraction_metadata(output: str | os.PathLike) -> dict:
    """Metadata of a finished output: `num_rows`, `skipped` (list of `{"id", "error"}`), `layers`, `style_dims`,
    `model`, `source`, `settings` (what `--resume` compares), and `ids` for `.npy`/`.safetensors` outputs. A
    [`UsageError`] when a `.npy` sidecar does not match its matrix's row count."""
    output = Path(output)
    fmt = output_format(output)
    num_rows = None
    if fmt in ("parquet", "arrow"):
        if fmt == "parquet":
            schema, num_rows = pq.read_schema(output), pq.read_metadata(output).num_rows
        else:
            with pa.memory_map(os.fspath(output), "r") as source:
                reader = pa.ipc.open_stream(source)
                schema, num_rows = reader.schema, sum(batch.num_rows for batch in reader)
        meta = {key.decode()[len("ghfeat_"):]: value.decode() for key, value in (schema.metadata or {}).items()
                if key.startswith(b"ghfeat_")}
    elif fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(os.fspath(output), "np") as handle:
            meta = dict(handle.metadata() or {})
    else:
        meta = _encode_metadata(json.loads(_npy_sidecar(output).read_text(encoding="utf-8")))
        num_rows = np.load(output, mmap_mode="r").shape[0]
    decoded: dict[str, Any] = {}
    for key, value in meta.items():
        try:
            decoded[key] = json.loads(value)
        except ValueError:
            decoded[key] = value
    if fmt == "npy" and decoded.get("num_rows") != num_rows:
        raise UsageError(f"{os.fspath(_npy_sidecar(output))!r} describes {decoded.get('num_rows')} rows but "
                         f"{os.fspath(output)!r} holds {num_rows}: they come from different runs.")
    decoded["num_rows"] = num_rows if num_rows is not None else len(decoded.get("ids", []))
    return decoded


__all__ = [
    "OUTPUT_FORMATS",
    "POSITION_COLUMN",
    "PartialRun",
    "SkippedImage",
    "atomic_write_bytes",
    "check_settings",
    "fixed_list",
    "output_format",
    "partial_path",
    "read_extraction_metadata",
    "read_partial_progress",
    "reconstruction_names",
    "row_schema",
    "write_output",
]
