"""Parquet output split into files of at most `--max-rows-per-file` rows.

Layout: the output path becomes a folder holding `<stem>-00000-of-000NN.parquet`, ... (`features.parquet/` holds
`features-00000-of-00003.parquet` to `features-00002-of-00003.parquet`); the files in name order hold the rows in
source order, so `datasets.load_dataset("parquet", data_files="features.parquet/*.parquet")` loads them in order.
Every file carries the run's metadata (`ghfeat_*` schema keys) with the total `num_rows`, plus its own
`file_rows`, `file_index` and `num_files`. The folder is written as a temporary sibling `.<name>.tmp-<PID>` and
renamed into place once every file is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UsageError

_SPLIT_NAME = re.compile(r"(.+)-(\d{5})-of-(\d{5})\.parquet")


def split_file_name(output: Path, index: int, count: int) -> str:
    """The name of file `index` of `count` of the split output `output`."""
    return f"{output.stem}-{index:05d}-of-{count:05d}.parquet"


def is_split_folder(path: Path) -> bool:
    """Whether `path` is a non-empty folder holding only split output files of its own name (what `--overwrite`
    may replace)."""
    if not path.is_dir() or path.is_symlink():
        return False
    names = os.listdir(path)
    return bool(names) and all((match := _SPLIT_NAME.fullmatch(name)) and match[1] == path.stem for name in names)


def remove_output(path: Path) -> None:
    """Remove a finished output, a file or a split folder."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_split_parquet(output: Path, chunks: Iterator[pa.Table], num_rows: int, schema: pa.Schema,
                        max_rows: int, row_group_rows: int) -> None:
    """Write the rows of `chunks` (in order, `num_rows` in all) as `ceil(num_rows / max_rows)` files (one empty
    file for no rows) into the folder `output`, replacing what is there; `schema` carries the run's metadata."""
    count = max(1, -(-num_rows // max_rows))
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    remove_output(tmp)
    tmp.mkdir()
    try:
        writer, index, in_file = None, -1, max_rows
        for chunk in chunks:
            while chunk.num_rows:
                if in_file == max_rows:
                    if writer is not None:
                        writer.close()
                    index, in_file = index + 1, 0
                    writer = _file_writer(tmp, output, index, count, num_rows, max_rows, schema)
                piece = chunk.slice(0, max_rows - in_file)
                writer.write_table(piece.replace_schema_metadata(writer.schema.metadata),
                                   row_group_size=min(row_group_rows, max_rows))
                in_file += piece.num_rows
                chunk = chunk.slice(piece.num_rows)
        if writer is None:
            index, writer = 0, _file_writer(tmp, output, 0, count, num_rows, max_rows, schema)
        writer.close()
        if index != count - 1:
            raise RuntimeError(f"wrote {index + 1} of {count} files: the merge gave fewer rows than committed.")
        for name in os.listdir(tmp):
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        remove_output(output)
        os.replace(tmp, output)
    finally:
        remove_output(tmp)


def _file_writer(folder: Path, output: Path, index: int, count: int, num_rows: int, max_rows: int,
                 schema: pa.Schema) -> pq.ParquetWriter:
    rows = min(max_rows, num_rows - index * max_rows) if num_rows else 0
    extra = {"file_rows": rows, "file_index": index, "num_files": count}
    metadata = {**(schema.metadata or {}), **{f"ghfeat_{key}".encode(): json.dumps(value).encode()
                                              for key, value in extra.items()}}
    return pq.ParquetWriter(folder / split_file_name(output, index, count), schema.with_metadata(metadata),
                            write_page_checksum=True)


def read_split_parquet(output: Path, verify: bool) -> tuple[dict[str, str], int]:
    """The metadata strings (with `files`: the paths in order) and the total row count of the split output
    `output`; `verify` also reads every row. A [`UsageError`] when files are missing, foreign or not the ones the
    metadata describes."""
    names = sorted(os.listdir(output))
    matches = [_SPLIT_NAME.fullmatch(name) for name in names]
    counts = {int(match[3]) for match in matches if match}
    if not names or not all(match and match[1] == output.stem for match in matches) or len(counts) != 1:
        raise UsageError(f"{os.fspath(output)!r} is not a split ghfeat output (files "
                         f"{output.stem}-NNNNN-of-MMMMM.parquet of one run).")
    count = counts.pop()
    expected = [split_file_name(output, index, count) for index in range(count)]
    if names != expected:
        missing = sorted(set(expected) - set(names))
        raise UsageError(f"{os.fspath(output)!r} is incomplete: it holds {len(names)} of its {count} files "
                         f"(missing e.g. {missing[0] if missing else names[-1]!r}).")
    first, total = None, 0
    for index, name in enumerate(names):
        parquet = pq.ParquetFile(output / name, page_checksum_verification=verify)
        for group in range(parquet.num_row_groups if verify else 0):
            parquet.read_row_group(group)
        meta = {key.decode()[len("ghfeat_"):]: value.decode()
                for key, value in (parquet.schema_arrow.metadata or {}).items() if key.startswith(b"ghfeat_")}
        held = parquet.metadata.num_rows
        if meta.get("file_rows") != str(held) or meta.get("file_index") != str(index):
            raise UsageError(f"{os.fspath(output / name)!r} is truncated or damaged: its metadata describes "
                             f"{meta.get('file_rows')} rows, it holds {held}.")
        first = first or meta
        total += held
    first = {key: value for key, value in first.items() if key not in ("file_rows", "file_index")}
    first["files"] = json.dumps([os.fspath(output / name) for name in names])
    return first, total


__all__ = ["is_split_folder", "read_split_parquet", "remove_output", "split_file_name", "write_split_parquet"]
