"""Extraction storage: the row schema, the partial-run state that makes `--resume` possible and the metadata
reader of finished outputs (their writers are in [`writers`]).

Partial run directory (`<output>.partial/`):
    `progress.json`     the commit record, rewritten atomically after every batch: settings, the committed batch
                        count, byte size and sha256 of every part file (and the rows dropped from it), the skipped
                        items, and a sha256 `checksum` of the record itself (canonical JSON, the field left out);
    `part-NNNNN.arrows` one Arrow IPC stream per session (fsync'ed after every record batch); each row keeps its
                        source position and the fingerprint of the input it was computed from. A killed session may
                        leave a torn message at the end of its part; readers stop at the committed byte size.
A resume refuses a record that fails its checksum, is malformed, names a part twice or outside its own directory,
whose parts do not hash to the recorded sha256, or that commits an item twice.
Every final file is written to a temporary sibling and moved into place with `os.replace`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
from collections import Counter
from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import SafetensorError

from ..errors import UsageError
from .split_output import read_split_parquet

OUTPUT_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".npy": "npy", ".safetensors": "safetensors"}
POSITION_COLUMN = "_position"
"""Source position of a row, kept in the partial parts only (dropped from the final file)."""
FINGERPRINT_COLUMN = "_fingerprint"
"""Fingerprint of the input file a row was computed from (`None` for datasets), kept in the partial parts only."""
_PROGRESS_FILE = "progress.json"
_PROGRESS_FORMAT = "ghfeat-extract-partial"
_PROGRESS_VERSION = 2
_PART_NAME = re.compile(r"part-\d{5}\.arrows")
_SKIP_KEYS = {"id": "id", POSITION_COLUMN: "position"}
"""The skip record field matching each row column a partial run can be keyed by."""
_READ_ERRORS = (OSError, ValueError, LookupError, TypeError, pa.ArrowException, SafetensorError)
"""What reading a damaged or truncated output file raises."""


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


# ----------------------------------------------------------------------------------------------------------------
# Atomic files


TEMPORARY_NAME = re.compile(r"\.(.+)\.tmp-(\d+)")
"""The temporary siblings `.<name>.tmp-<PID>` of files being written (a killed writer leaves its own behind)."""


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


def record_checksum(state: dict) -> str:
    """`sha256:<hex>` of a progress record's canonical JSON (sorted keys, compact), its `checksum` left out."""
    body = {key: value for key, value in state.items() if key != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _read_state(directory: Path) -> dict:
    """The progress record of a partial run directory; `OSError`/`ValueError` when missing or unreadable."""
    return json.loads((directory / _PROGRESS_FILE).read_text(encoding="utf-8"))


def _committed_rows(state: dict) -> int:
    return sum(part["rows"] - len(part.get("dropped", [])) for part in state.get("parts", []))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _valid_part(part: Any) -> bool:
    return (isinstance(part, dict) and isinstance(part.get("file"), str) and isinstance(part.get("sha256"), str)
            and all(_is_count(part.get(key)) for key in ("batches", "rows", "bytes"))
            and isinstance(part.get("dropped"), list) and len(set(part["dropped"])) == len(part["dropped"])
            and all(_is_count(index) and index < part["rows"] for index in part["dropped"]))


def _valid_skip(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("id"), str) and _is_count(record.get("position"))
            and isinstance(record.get("error"), str) and isinstance(record.get("fingerprint"), (str, type(None))))


def _check_record(state: Any, directory: Path) -> None:
    """A [`UsageError`] for a progress record this module did not write as it is: another format or version, a
    failed checksum, malformed entries, or parts listed twice or found anywhere but in `directory` itself."""

    def refuse(problem: str) -> None:
        raise UsageError(f"cannot resume: {os.fspath(directory / _PROGRESS_FILE)!r} {problem}; pass --overwrite "
                         "to start over.")

    if not isinstance(state, dict) or state.get("format") != _PROGRESS_FORMAT:
        refuse("is not a ghfeat extraction progress record")
    if state.get("version") != _PROGRESS_VERSION:
        refuse(f"has version {state.get('version')!r}; this ghfeat resumes version {_PROGRESS_VERSION} only")
    if state.get("checksum") != record_checksum(state):
        refuse("fails its checksum (it was edited or damaged)")
    parts, skipped = state.get("parts"), state.get("skipped")
    if not isinstance(state.get("settings"), dict) or not isinstance(parts, list) or not isinstance(skipped, list):
        refuse("is malformed")
    if not all(_valid_part(part) for part in parts) or not all(_valid_skip(record) for record in skipped):
        refuse("holds a malformed part or skip record")
    names = Counter(part["file"] for part in parts)
    repeated = next((name for name, count in names.items() if count > 1), None)
    if repeated is not None:
        refuse(f"lists the part {repeated!r} twice")
    root = directory.resolve()
    for name in names:
        path = directory / name
        if not _PART_NAME.fullmatch(name) or path.resolve().parent != root:
            refuse(f"names a part outside its own directory: {name!r}")
        try:
            regular = stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            regular = False
        if not regular:
            refuse(f"names a part that is missing or not a regular file: {name!r}")


def check_settings(previous: dict, settings: dict, run: str) -> None:
    """Raise a [`UsageError`] naming every setting of `run` (`previous`) that differs from `settings`."""
    changed = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
    if changed:
        details = "; ".join(f"{key}: {previous.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
        raise UsageError(f"cannot resume: {run} used other settings ({details}). Use the same options, or pass "
                         "--overwrite to start over.")


class _HashingFile:
    """A binary file for pyarrow's stream writer that keeps the size and sha256 of everything written to it."""

    def __init__(self, path: Path):
        self._file = open(path, "wb")  # noqa: SIM115 - closed by the stream writer
        self.size, self.sha256 = 0, hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.size += view.nbytes
        return self._file.write(view)

    def flush(self) -> None:
        self._file.flush()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed


class PartialRun:
    """The `<output>.partial/` directory: committed Arrow stream parts and the progress record. `key` is the row
    column that names an item once (`"id"`, or `POSITION_COLUMN` for streaming sources whose ids may repeat)."""

    def __init__(self, directory: Path, schema: pa.Schema, state: dict, key: str = "id"):
        self.directory, self.state, self.key = directory, state, key
        self.schema = schema.append(pa.field(POSITION_COLUMN, pa.int64())).append(
            pa.field(FINGERPRINT_COLUMN, pa.string()))
        self._sink: _HashingFile | None = None
        self._writer = None
        self._maps: list = []

    @classmethod
    def start(cls, directory: Path, schema: pa.Schema, settings: dict, key: str = "id") -> PartialRun:
        if directory.is_dir() and not directory.is_symlink():
            shutil.rmtree(directory)
        elif os.path.lexists(directory):
            directory.unlink()
        directory.mkdir(parents=True)
        run = cls(directory, schema, {"format": _PROGRESS_FORMAT, "version": _PROGRESS_VERSION,
                                      "settings": settings, "parts": [], "skipped": []}, key)
        run._save()
        return run

    @classmethod
    def reopen(cls, directory: Path, schema: pa.Schema, settings: dict, key: str = "id") -> PartialRun:
        try:
            state = _read_state(directory)
        except (OSError, ValueError, RecursionError) as error:
            raise UsageError(
                f"cannot resume: {os.fspath(directory)!r} has no readable progress record ({error}); "
                "pass --overwrite to start over."
            ) from error
        _check_record(state, directory)
        check_settings(state["settings"], settings, "the interrupted run")
        return cls(directory, schema, state, key)

    def _save(self) -> None:
        self.state["checksum"] = record_checksum(self.state)
        atomic_write_bytes(self.directory / _PROGRESS_FILE, json.dumps(self.state, indent=1).encode("utf-8"))

    def _read_part(self, part: dict) -> pa.Table:
        """The committed rows of one part (dropped ones included), after checking its size and sha256."""
        name = part["file"]
        try:
            source = pa.memory_map(os.fspath(self.directory / name), "r")
            self._maps.append(source)
            data = source.read_buffer(part["bytes"])
            if data.size != part["bytes"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
                raise UsageError(f"cannot resume: {name} is not the part its progress record committed (truncated, "
                                 "modified or replaced); pass --overwrite.")
            reader = pa.ipc.open_stream(data)
            batches = list(reader)
        except (pa.ArrowInvalid, OSError) as error:
            raise UsageError(f"cannot resume: {name} is damaged ({error}); pass --overwrite.") from error
        if not reader.schema.equals(self.schema):
            raise UsageError(f"cannot resume: {name} has another schema; pass --overwrite.")
        if len(batches) != part["batches"] or sum(batch.num_rows for batch in batches) != part["rows"]:
            raise UsageError(f"cannot resume: {name} does not hold the batches its progress record lists; "
                             "pass --overwrite.")
        return pa.Table.from_batches(batches, schema=self.schema)

    def committed_table(self) -> pa.Table:
        """The committed rows of every part less the dropped ones (memory-mapped until [`close`]); a
        [`UsageError`] when an item (by `key`) is committed twice, as rows or skip records."""
        tables = []
        for part in self.state["parts"]:
            table = self._read_part(part)
            if part["dropped"]:
                keep = np.ones(table.num_rows, dtype=bool)
                keep[part["dropped"]] = False
                table = table.filter(pa.array(keep))
            tables.append(table)
        table = pa.concat_tables(tables) if tables else self.schema.empty_table()
        keys = table.column(self.key).to_pylist() + [record[_SKIP_KEYS[self.key]] for record in self.state["skipped"]]
        repeated = next((key for key, count in Counter(keys).items() if count > 1), None)
        if repeated is not None:
            raise UsageError(f"cannot resume: {os.fspath(self.directory)!r} commits the item {repeated!r} more than "
                             "once (a repeated or overlapping part); pass --overwrite to start over.")
        return table

    def schema_of(self, columns: Sequence[str]) -> pa.Schema:
        """The partial run's schema restricted to `columns`, in that order."""
        return pa.schema([self.schema.field(name) for name in columns])

    def committed_batches(self, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
        """The committed rows (`columns` only) batch by batch in commit order, less the dropped ones, each part
        checked against its record first (memory-mapped until [`close`]; one batch in memory at a time)."""
        for part in self.state["parts"]:
            table = self._read_part(part).select(list(columns))
            dropped, start = np.asarray(part["dropped"], np.int64), 0
            for batch in table.to_batches():
                rows = batch.num_rows
                hits = dropped[(dropped >= start) & (dropped < start + rows)] - start
                if hits.size:
                    keep = np.ones(rows, dtype=bool)
                    keep[hits] = False
                    batch = batch.filter(pa.array(keep))
                start += rows
                yield batch

    def drop(self, ids: Set[str]) -> None:
        """Durably forget the committed rows and skip records of `ids` (inputs to extract again)."""
        for part in self.state["parts"]:
            hits = [index for index, item_id in enumerate(self._read_part(part).column("id").to_pylist())
                    if item_id in ids]
            part["dropped"] = sorted(set(part["dropped"]).union(hits))
        self.state["skipped"] = [record for record in self.state["skipped"] if record["id"] not in ids]
        self._save()

    def commit(self, batch: pa.RecordBatch | None, skipped: list[dict]) -> None:
        """Append a batch of rows (durably) and skip records, then rewrite the progress record."""
        has_rows = batch is not None and batch.num_rows > 0
        if has_rows:
            if self._writer is None:
                taken = {part["file"] for part in self.state["parts"]}
                index = len(self.state["parts"])
                while f"part-{index:05d}.arrows" in taken:
                    index += 1
                name = f"part-{index:05d}.arrows"
                self._sink = _HashingFile(self.directory / name)
                self._writer = pa.ipc.new_stream(self._sink, self.schema)
                self.state["parts"].append({"file": name, "batches": 0, "rows": 0, "bytes": 0, "sha256": "",
                                            "dropped": []})
            self._writer.write_batch(batch)
            self._sink.sync()
            part = self.state["parts"][-1]
            part.update(batches=part["batches"] + 1, rows=part["rows"] + batch.num_rows, bytes=self._sink.size,
                        sha256=self._sink.sha256.hexdigest())
        self.state["skipped"].extend(skipped)
        if has_rows or skipped:
            self._save()

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._sink.close()
            self._writer = self._sink = None
        for source in self._maps:
            with contextlib.suppress(Exception):
                source.close()
        self._maps = []

    @property
    def num_rows(self) -> int:
        return _committed_rows(self.state)


def read_partial_progress(output: str | os.PathLike) -> dict | None:
    """The progress record of an interrupted run writing `output` (`rows`, `skipped`, ...), or `None`; for a run
    of several processes, the rows and skipped items of all of them (`settings`: the first process's)."""
    directory = partial_path(output)
    states, rows = [], 0
    for folder in [directory, *sorted(directory.glob("rank-[0-9]*"))]:
        try:
            state = _read_state(folder)
            count = _committed_rows(state)
        except (OSError, ValueError, TypeError, KeyError):
            continue
        states.append(state)
        rows += count
    if not states:
        return None
    return {"rows": rows, "skipped": [record for state in states for record in state.get("skipped", [])],
            "settings": states[0].get("settings", {}), "directory": os.fspath(directory)}


# ----------------------------------------------------------------------------------------------------------------
# Final files


def _npy_sidecar(output: Path) -> Path:
    return Path(os.fspath(output) + ".json")


def _read_output(output: Path, fmt: str, verify: bool) -> tuple[dict[str, str], int]:
    """The raw metadata strings and the row count of a finished file; `verify` also reads every row (and checks
    the Parquet page checksums)."""
    if fmt == "parquet" and output.is_dir():
        return read_split_parquet(output, verify)
    if fmt == "parquet":
        parquet = pq.ParquetFile(output, page_checksum_verification=verify)
        for index in range(parquet.num_row_groups if verify else 0):
            parquet.read_row_group(index)
        schema, num_rows = parquet.schema_arrow, parquet.metadata.num_rows
    elif fmt == "arrow":
        with pa.memory_map(os.fspath(output), "r") as source:
            reader = pa.ipc.open_stream(source)
            schema, num_rows = reader.schema, 0
            for batch in reader:
                if verify:
                    batch.validate(full=True)
                num_rows += batch.num_rows
    elif fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(os.fspath(output), "np") as handle:
            num_rows = handle.get_slice("ghfeat").get_shape()[0]
            for name in handle.keys() if verify else ():
                handle.get_tensor(name)
            return dict(handle.metadata() or {}), num_rows
    else:
        meta = json.loads(_npy_sidecar(output).read_text(encoding="utf-8"))
        return _encode_metadata(meta), np.load(output, mmap_mode="r").shape[0]
    return {key.decode()[len("ghfeat_"):]: value.decode() for key, value in (schema.metadata or {}).items()
            if key.startswith(b"ghfeat_")}, num_rows


def read_extraction_metadata(output: str | os.PathLike, verify: bool = False) -> dict:
    """Metadata of a finished output: `num_rows`, `skipped` (list of `{"id", "error"}`), `layers`, `style_dims`,
    `model`, `source`, `settings` (what `--resume` compares), `ids` for `.npy`/`.safetensors` outputs, and `files`
    (paths in row order) and `num_files` for a Parquet output split into a folder.
    `verify=True` also reads every row. A [`UsageError`] for a file that cannot be read, or whose rows are not
    the ones its metadata (a `.npy` sidecar) describes: truncated, damaged or from another run."""
    output = Path(output)
    fmt = output_format(output)
    try:
        meta, num_rows = _read_output(output, fmt, verify)
    except _READ_ERRORS as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot read {os.fspath(output)!r}: it is damaged or truncated ({reason}).") from error
    decoded: dict[str, Any] = {}
    for key, value in meta.items():
        try:
            decoded[key] = json.loads(value)
        except ValueError:
            decoded[key] = value
    described = decoded.get("num_rows", num_rows)
    if fmt == "npy" and described != num_rows:
        raise UsageError(f"{os.fspath(_npy_sidecar(output))!r} describes {described} rows but "
                         f"{os.fspath(output)!r} holds {num_rows}: they come from different runs.")
    if described != num_rows or ("ids" in decoded and len(decoded["ids"]) != num_rows):
        raise UsageError(f"{os.fspath(output)!r} is truncated or damaged: its metadata describes {described} rows, "
                         f"it holds {num_rows}.")
    decoded["num_rows"] = num_rows
    return decoded


__all__ = [
    "FINGERPRINT_COLUMN",
    "OUTPUT_FORMATS",
    "POSITION_COLUMN",
    "TEMPORARY_NAME",
    "PartialRun",
    "SkippedImage",
    "atomic_write_bytes",
    "check_settings",
    "fixed_list",
    "output_format",
    "partial_path",
    "read_extraction_metadata",
    "read_partial_progress",
    "record_checksum",
    "row_schema",
    ]
