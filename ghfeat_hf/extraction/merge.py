"""The merge of committed partial runs into the rows of the output, in source order, with bounded memory.

Each partial run (the one of a single-process run, or one per process) maps its block-local positions to source
positions ([`RankRows.to_global`]): a block of the source starts at an offset, a share of "one example out of N"
interleaves. The merge reads the runs' committed batches (memory-mapped) and emits tables of about `chunk_rows`
rows, taking rows from the run whose next source position is the smallest: the blocks of contiguous shares come
out whole and in order, interleaved shares row by row. Its state is one batch per run plus the last emitted
position, so the check "every item once, in source order" is O(1): emitted positions must strictly increase (an
item committed twice, by one run or two, is refused), and no row may sit where a skip record does.

A run whose rows are not in increasing positions (inputs that changed were extracted again at the end of a resume)
is read in sorted order instead, which holds its positions (8 bytes a row) in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import UsageError
from .storage import POSITION_COLUMN, PartialRun, SkippedImage, output_format, partial_path
from .writers import write_output


@dataclass
class RankRows:
    """One partial run to merge and the map from its positions to source positions."""

    run: PartialRun
    to_global: Callable[[np.ndarray], np.ndarray]
    """Block-local positions `[n]` int64 -> source positions `[n]` int64, increasing with the local ones."""
    positions: dict[str, int] | None = None
    """`{id: source position}` of a finite source, which wins over the recorded positions (files added since an
    interrupted run move the ones after them)."""

    def keys(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """The source positions `[n]` int64 of rows with the `id` and position columns."""
        if self.positions is not None:
            return np.array([self.positions[item_id] for item_id in table.column("id").to_pylist()], np.int64)
        return self.to_global(table.column(POSITION_COLUMN).to_numpy())

    def skipped(self) -> list[tuple[int, dict]]:
        """`(source position, skip record)` of the run's skipped items."""
        records = self.run.state["skipped"]
        if self.positions is not None:
            return [(self.positions[record["id"]], record) for record in records]
        keys = self.to_global(np.array([record["position"] for record in records], np.int64))
        return list(zip(keys.tolist(), records))


_KEY_COLUMNS = [POSITION_COLUMN, "id"]


def _duplicate(run: PartialRun, key: int) -> UsageError:
    return UsageError(f"cannot merge {os.fspath(run.directory)!r}: the item at source position {key} is committed "
                      "more than once; pass --overwrite to start over.")


def _increasing(rank: RankRows, skipped: np.ndarray) -> bool:
    """Whether the run's rows are in strictly increasing positions (one batch at a time); a [`UsageError`] for a
    row at a skip record's position."""
    last = -1
    ordered = True
    for batch in rank.run.committed_batches(_KEY_COLUMNS):
        keys = rank.keys(batch)
        hits = np.isin(keys, skipped)
        if hits.any():
            raise _duplicate(rank.run, int(keys[hits][0]))
        if keys.size and (keys[0] <= last or np.any(np.diff(keys) <= 0)):
            ordered = False
        last = int(keys[-1]) if keys.size else last
    return ordered


def _rank_stream(rank: RankRows, columns: list[str], chunk_rows: int,
                 skipped: np.ndarray) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """`(source positions, rows)` of one run in increasing positions."""
    read = list(dict.fromkeys([*_KEY_COLUMNS, *columns]))
    if _increasing(rank, skipped):
        for batch in rank.run.committed_batches(read):
            yield rank.keys(batch), pa.Table.from_batches([batch]).select(columns)
        return
    table = pa.Table.from_batches(list(rank.run.committed_batches(read)), schema=rank.run.schema_of(read))
    keys = rank.keys(table)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    repeated = np.flatnonzero(np.diff(keys) == 0)
    if repeated.size:
        raise _duplicate(rank.run, int(keys[repeated[0]]))
    table = table.select(columns)
    for start in range(0, len(order), chunk_rows):
        yield keys[start:start + chunk_rows], table.take(pa.array(order[start:start + chunk_rows]))


def merged_rows(ranks: Sequence[RankRows], columns: Sequence[str], chunk_rows: int,
                positional_ids: bool = False) -> Iterator[pa.Table]:
    """The committed rows of `ranks` (output `columns` only) in source order, as tables of at most `chunk_rows`
    rows; `positional_ids` replaces the `id` column with the source positions (streamed rows without an id column,
    whose ids are block-local positions until now). A [`UsageError`] when an item is committed twice."""
    skipped = np.array(sorted(key for rank in ranks for key, _ in rank.skipped()), np.int64)
    columns = list(columns)
    streams = [_rank_stream(rank, columns, chunk_rows, skipped) for rank in ranks]
    heads: list[list | None] = [None] * len(streams)

    def advance(index: int) -> None:
        head = next(streams[index], None)
        while head is not None and head[0].size == 0:
            head = next(streams[index], None)
        heads[index] = None if head is None else [head[0], head[1], 0]

    for index in range(len(streams)):
        advance(index)
    pending: list[pa.Table] = []
    pending_rows, last = 0, -1
    while any(head is not None for head in heads):
        live = [index for index, head in enumerate(heads) if head is not None]
        index = min(live, key=lambda i: heads[i][0][heads[i][2]])
        keys, table, cursor = heads[index]
        if keys[cursor] <= last:
            raise _duplicate(ranks[index].run, int(keys[cursor]))
        others = [heads[i][0][heads[i][2]] for i in live if i != index]
        end = len(keys) if not others else max(cursor + 1, int(np.searchsorted(keys, min(others))))
        end = min(end, cursor + chunk_rows - pending_rows)
        piece = table.slice(cursor, end - cursor)
        if positional_ids:
            piece = piece.set_column(piece.schema.get_field_index("id"), "id",
                                     pa.array([str(key) for key in keys[cursor:end].tolist()], pa.string()))
        pending.append(piece)
        pending_rows += end - cursor
        last = int(keys[end - 1])
        heads[index][2] = end
        if end == len(keys):
            advance(index)
        if pending_rows >= chunk_rows:
            yield pa.concat_tables(pending)
            pending, pending_rows = [], 0
    if pending:
        yield pa.concat_tables(pending)


def merged_skipped(ranks: Sequence[RankRows], positional_ids: bool = False) -> list[dict]:
    """The skip records of `ranks` in source order (`id` replaced by the source position with `positional_ids`)."""
    pairs = sorted((pair for rank in ranks for pair in rank.skipped()), key=lambda pair: pair[0])
    return [{**record, "id": str(key)} if positional_ids else record for key, record in pairs]


def write_merged(ranks: Sequence[RankRows], output: Path, schema: pa.Schema, metadata: dict,
                 max_rows_per_file: int | None = None, positional_ids: bool = False) -> tuple[int, list[SkippedImage]]:
    """Write the output of `ranks` (see [`write_output`]) with `metadata` and the skip records; its row count and
    skipped items."""
    skipped = [SkippedImage(record["id"], record["error"]) for record in merged_skipped(ranks, positional_ids)]
    num_rows = sum(rank.run.num_rows for rank in ranks)

    def rows(columns: list[str], chunk_rows: int) -> Iterator[pa.Table]:
        emitted = 0
        for table in merged_rows(ranks, columns, chunk_rows, positional_ids):
            emitted += table.num_rows
            yield table
        if emitted != num_rows:
            raise UsageError(f"cannot merge {os.fspath(partial_path(output))!r}: it commits {num_rows} rows but "
                             f"holds {emitted}; pass --overwrite to start over.")

    metadata = {**metadata, "skipped": [{"id": record.id, "error": record.error} for record in skipped]}
    write_output(output_format(output), output, rows, num_rows, schema, metadata, max_rows_per_file)
    return num_rows, skipped


__all__ = ["RankRows", "merged_rows", "merged_skipped", "write_merged"]
