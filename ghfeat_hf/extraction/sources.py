"""Extraction sources (files, folders, globs, text lists, `datasets` datasets) and their decoding in workers.

Finite sources are decoded in DataLoader worker processes, streaming datasets in threads; an unreadable item
becomes an error string next to its [`SourceItem`], never an exception. Images are opened by
[`ghfeat_hf.image_io`]: files are `stat`ed before they are opened and opened non-blocking, so a FIFO, socket, device
or folder named like an image is a skip record, never opened, and nothing can block. Decoding a file records its fingerprint (size and mtime, or a sha256 of its content) in the
item, so that `--resume` can tell which inputs changed since.
"""

from __future__ import annotations

import copy
import dataclasses
import glob as globlib
import hashlib
import io
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import PIL.Image
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from ..errors import UsageError
from ..files import open_regular_file
from ..image_io import DecodedImage, open_image, read_image, unwrap_image_record
from ..image_processing_ghfeat import GHFeatImageProcessor

LIST_FILE_SUFFIXES = (".txt", ".lst", ".list")
FINGERPRINT_MODES = ("stat", "content")
"""How decoding fingerprints an input file: `stat` (size and mtime_ns) or `content` (sha256 of its bytes)."""

DecodedItem = tuple["SourceItem", "torch.Tensor | None", "str | None"]
_Decoded = tuple["torch.Tensor | None", "str | None", "str | None"]
"""Pixels, error and the fingerprint of the file read."""


# ----------------------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class SourceItem:
    """One image of a source: its position in the source order, its id (the output's `id`), a payload that
    [`ImageSource.load`] turns into something [`open_image`] reads and, once decoded from a file, the
    fingerprint of what was read (see [`fingerprint_file`])."""

    position: int
    id: str
    payload: Any
    fingerprint: str | None = None


class ImageSource:
    """Base class of extraction sources. `finite` sources enumerate cheaply up front and support `load` in
    DataLoader worker processes; streaming sources are iterated once, in order."""

    description: str = ""
    finite: bool = True

    def items(self, start: int = 0) -> Iterator[SourceItem]:
        raise NotImplementedError

    def load(self, payload: Any) -> Any:
        return payload

    def num_items(self) -> int | None:
        return None

    def identity(self) -> dict[str, Any]:
        """What a resumed run must find unchanged: the description (and, for datasets, the data fingerprint)."""
        return {"description": self.description}

    def shard(self, index: int, count: int) -> ImageSource:
        """Process `index`'s share of the source when `count` processes extract it: a finite source gives every
        process one contiguous block of positions (the first `len % count` blocks one item longer, as
        `datasets.distributed.split_dataset_by_node` cuts a `Dataset`); item positions are then block-local."""
        raise UsageError(f"{type(self).__name__} cannot be split between processes.")

    split_mode: str = "blocks"
    """How [`shard`] cut the source: `"blocks"` (contiguous blocks, in process order), or for streaming datasets
    `"examples"` (process `i` of `n` takes the items at positions `i, i + n, ...`)."""


def block_bounds(length: int, index: int, count: int) -> tuple[int, int]:
    """`[start, stop)` of block `index` of `count` over `length` items (the first `length % count` one longer)."""
    size, extra = divmod(length, count)
    start = size * index + min(index, extra)
    return start, start + size + (1 if index < extra else 0)


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with the dot) PIL can open."""
    PIL.Image.init()
    return frozenset(extension.lower() for extension in PIL.Image.registered_extensions())


class FileSource(ImageSource):
    """Image files: `paths[i]` is read, `ids[i]` is its id."""

    def __init__(self, paths: Sequence[str | os.PathLike], ids: Sequence[str] | None = None, description: str = ""):
        self.paths = [os.fspath(path) for path in paths]
        self.ids = [str(i) for i in ids] if ids is not None else [Path(p).as_posix() for p in self.paths]
        if len(self.ids) != len(self.paths):
            raise ValueError("paths and ids must have the same length.")
        self.description = description or f"{len(self.paths)} files"

    def items(self, start: int = 0) -> Iterator[SourceItem]:
        for position in range(start, len(self.paths)):
            yield SourceItem(position, self.ids[position], self.paths[position])

    def num_items(self) -> int:
        return len(self.paths)

    def shard(self, index: int, count: int) -> FileSource:
        start, stop = block_bounds(len(self.paths), index, count)
        return FileSource(self.paths[start:stop], self.ids[start:stop], self.description)


def folder_source(root: str | os.PathLike, id_prefix: str = "") -> FileSource:
    """All image files under `root`, recursively (hidden files and folders excluded), sorted by relative path.
    Ids are the POSIX paths relative to `root`, prefixed by `id_prefix`."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{os.fspath(root)!r} is not a directory.")
    extensions = image_extensions()
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                found.append((Path(directory, name).relative_to(root).as_posix(), os.path.join(directory, name)))
    if not found:
        raise UsageError(f"no images found in {os.fspath(root)!r} (looked recursively for files PIL can open).")
    found.sort()
    return FileSource([path for _, path in found], [id_prefix + rel for rel, _ in found], f"folder {os.fspath(root)}")


def glob_source(pattern: str) -> FileSource:
    """Files matching a glob pattern (`**` recurses), sorted. Ids are the matched paths as written."""
    matches = sorted(path for path in globlib.glob(os.path.expanduser(pattern), recursive=True)
                     if not os.path.isdir(path))
    if not matches:
        raise UsageError(f"no files match {pattern!r}.")
    return FileSource(matches, [Path(path).as_posix() for path in matches], f"glob {pattern}")


def list_file_source(list_file: str | os.PathLike) -> FileSource:
    """A text file with one image path per line (blank lines and `#` comments ignored), kept in file order.
    Relative paths are relative to the list file's folder; ids are the lines as written. A binary or non-UTF-8
    file, or anything but a regular file, is a [`UsageError`]."""
    list_file = Path(list_file)
    name = os.fspath(list_file)
    try:
        with open_regular_file(list_file) as (handle, _):
            data = handle.read()
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the list file {name!r}: {error}") from error
    if b"\0" in data:
        raise UsageError(f"the list file {name!r} is binary, not a text list of image paths (one per line).")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise UsageError(f"the list file {name!r} is not UTF-8 text (byte {error.start}: {error.reason}).") from error
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise UsageError(f"the list file {os.fspath(list_file)!r} names no images.")
    paths = [entry if os.path.isabs(entry) else os.fspath(list_file.parent / entry) for entry in entries]
    return FileSource(paths, entries, f"list {os.fspath(list_file)}")


def file_sources(inputs: Sequence[str | os.PathLike]) -> FileSource:
    """Resolve command-line inputs: folders (recursive), globs, text lists (`.txt`, `.lst`, `.list`) and image
    files. A single folder gives ids relative to it; otherwise folder ids keep the folder as written. A FIFO,
    socket or device among them (or in a folder) becomes a skip record when decoded, never opened."""
    inputs = [os.fspath(item) for item in inputs]
    if not inputs:
        raise UsageError("no inputs: pass image files, folders, glob patterns or a text list (or --dataset).")
    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        return folder_source(inputs[0])
    parts: list[FileSource] = []
    for item in inputs:
        if os.path.isdir(item):
            parts.append(folder_source(item, id_prefix=Path(item).as_posix().rstrip("/") + "/"))
        elif os.path.exists(item) and item.lower().endswith(LIST_FILE_SUFFIXES):
            parts.append(list_file_source(item))
        elif os.path.exists(item):
            parts.append(FileSource([item], [Path(item).as_posix()]))
        elif globlib.has_magic(item):
            parts.append(glob_source(item))
        else:
            raise UsageError(f"{item!r}: no such file, folder or glob match.")
    if len(parts) == 1:
        return parts[0]
    return FileSource([path for part in parts for path in part.paths], [i for part in parts for i in part.ids],
                      ", ".join(part.description for part in parts))


class DatasetSource(ImageSource):
    """Rows of a `datasets.Dataset` (map-style, decoded in DataLoader workers) or `datasets.IterableDataset`
    (streaming: read in order in the main process, decoded in `num_workers` threads). Ids come from `id_column`,
    else the row position. `datasets.Image` columns are read undecoded, so a corrupt image is a skip record.
    `fingerprint` identifies the data for `--resume` (default: the dataset's own `datasets` fingerprint)."""

    def __init__(self, dataset, image_column: str = "image", id_column: str | None = None, description: str = "",
                 fingerprint: str | None = None):
        import datasets

        self.image_column, self.id_column = image_column, id_column
        self.fingerprint = fingerprint or getattr(dataset, "_fingerprint", None)
        self.finite = isinstance(dataset, datasets.Dataset)
        if not self.finite and not isinstance(dataset, datasets.IterableDataset):
            raise TypeError(f"expected a datasets.Dataset or IterableDataset, got {type(dataset).__name__}.")
        columns = dataset.column_names
        if columns is not None:
            for role, name in (("image", image_column), ("id", id_column)):
                if name is not None and name not in columns:
                    raise UsageError(f"the dataset has no {role} column {name!r}; its columns are {columns}.")
            dataset = dataset.select_columns([c for c in dict.fromkeys((image_column, id_column)) if c is not None])
        features = dataset.features
        if features is not None and isinstance(features.get(image_column), datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.dataset = dataset
        self._ids = None
        if self.finite:
            if id_column is None:
                self._ids = [str(index) for index in range(len(dataset))]
            else:
                self._ids = [str(value) for value in dataset.select_columns([id_column])[:][id_column]]
        self.description = description or ("dataset" if self.finite else "streaming dataset")

    def items(self, start: int = 0) -> Iterator[SourceItem]:
        if self.finite:
            for position in range(start, len(self._ids)):
                yield SourceItem(position, self._ids[position], position)
            return
        for position, row in enumerate(self._rows(start), start=start):
            if self.image_column not in row:
                raise UsageError(f"the dataset has no image column {self.image_column!r}; its columns are {list(row)}.")
            item_id = str(row[self.id_column]) if self.id_column is not None else str(position)
            yield SourceItem(position, item_id, row[self.image_column])

    def _rows(self, start: int):
        """The streamed rows from position `start` on."""
        return self.dataset.skip(start) if start else self.dataset

    def load(self, payload: Any) -> Any:
        return self.dataset[int(payload)][self.image_column] if self.finite else payload

    def shard(self, index: int, count: int) -> DatasetSource:
        """A `Dataset`: the block `split_dataset_by_node` gives process `index` (ids stay those of the whole
        dataset). A streaming dataset with at least `count` shards: `IterableDataset.shard(count, index,
        contiguous=True)`, so that every process reads only its own files and the blocks concatenate in order;
        with fewer shards, every process reads the stream and keeps one example out of `count`
        (`split_dataset_by_node(strategy="examples")`). Streamed ids are block-local positions until merged."""
        from datasets.distributed import split_dataset_by_node

        part = copy.copy(self)
        if self.finite:
            start, stop = block_bounds(len(self._ids), index, count)
            part.dataset = split_dataset_by_node(self.dataset, rank=index, world_size=count)
            part._ids = self._ids[start:stop]
            if len(part.dataset) != len(part._ids):
                raise RuntimeError("split_dataset_by_node cut the dataset into other blocks than expected.")
        elif self.dataset.num_shards >= count:
            part.dataset = self.dataset.shard(num_shards=count, index=index, contiguous=True)
        else:
            part.split_mode = "examples"
            whole = self.dataset

            def rows(start: int):  # skip before splitting: a split dataset's skip() counts the whole stream's rows
                return split_dataset_by_node(whole.skip(start * count) if start else whole, rank=index,
                                             world_size=count, strategy="examples")

            part._rows = rows
        return part

    def num_items(self) -> int | None:
        return len(self._ids) if self.finite else None

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "fingerprint": self.fingerprint, "image_column": self.image_column,
                "id_column": self.id_column}


def dataset_source(
    name_or_path: str,
    split: str = "train",
    image_column: str = "image",
    id_column: str | None = None,
    streaming: bool = False,
    config_name: str | None = None,
) -> DatasetSource:
    """A [`DatasetSource`] from what the trainers' `--dataset` accepts ([`ghfeat_hf.data.load_training_images`]):
    `"fashion-mnist"` (the local package, never the Hub), a `save_to_disk` folder, an image folder or a Hub name;
    `streaming=True` iterates without downloading it all (local data keeps its `datasets` fingerprint)."""
    from ..data import FASHION_MNIST_NAMES, load_training_images

    fingerprint = None
    kwargs = {"name": config_name} if config_name else {}
    try:
        if str(name_or_path).lower() in FASHION_MNIST_NAMES or os.path.isdir(name_or_path):
            dataset = load_training_images(name_or_path, split=split, image_column=image_column, **kwargs)
            if streaming:
                fingerprint = dataset._fingerprint  # an IterableDataset has none
                dataset = dataset.to_iterable_dataset()
        else:
            dataset = load_training_images(name_or_path, split=split, image_column=image_column, streaming=streaming,
                                           **kwargs)
    except UsageError:
        raise
    except (OSError, ValueError, KeyError) as error:
        raise UsageError(f"could not load the dataset {name_or_path!r} (split {split!r}): {error}") from error
    kind = "streaming dataset" if streaming else "dataset"
    name = f"{name_or_path} ({config_name})" if config_name else name_or_path
    return DatasetSource(dataset, image_column, id_column, f"{kind} {name} [{split}]", fingerprint)


def resolve_source(source) -> ImageSource:
    """An [`ImageSource`] from a source object, a `datasets` dataset, a path/glob/list file, or a list of those."""
    if isinstance(source, ImageSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        return file_sources([source])
    if isinstance(source, (list, tuple)):
        return file_sources(source)
    import datasets

    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        return DatasetSource(source)
    raise TypeError(f"unsupported source type {type(source).__name__}.")


# ----------------------------------------------------------------------------------------------------------------
# Decoding


def _fingerprinted(handle: BinaryIO, status: os.stat_result, mode: str | None) -> tuple[BinaryIO, str | None]:
    """The stream to decode and the file's fingerprint: `stat:<size>:<mtime_ns>`, or `sha256:<hex>` of the bytes
    read (`content`, which then decodes them from memory), or `None` without a mode."""
    if mode == "content":
        data = handle.read()
        return io.BytesIO(data), "sha256:" + hashlib.sha256(data).hexdigest()
    return handle, f"stat:{status.st_size}:{status.st_mtime_ns}" if mode == "stat" else None


def fingerprint_file(path: str | os.PathLike, mode: str) -> str | None:
    """A file's fingerprint as decoding records it (`mode` in [`FINGERPRINT_MODES`]); `None` when it is not a
    readable regular file."""
    try:
        with open_regular_file(path) as (handle, status):
            return _fingerprinted(handle, status, mode)[1]
    except (OSError, ValueError):
        return None


def _open(raw: Any, mode: str | None) -> tuple[DecodedImage, str | None]:
    """[`open_image`], with the fingerprint (`mode`) of the file read when `raw` names one."""
    raw = unwrap_image_record(raw)
    if mode is None or not isinstance(raw, (str, os.PathLike)):
        return open_image(raw), None
    with open_regular_file(raw) as (handle, status):
        stream, fingerprint = _fingerprinted(handle, status, mode)
        return read_image(stream), fingerprint


def _decode(raw: Any, processor: GHFeatImageProcessor, mode: str | None) -> _Decoded:
    """[`decode_image`] plus the fingerprint (`mode`) of the file read, also when it could not be decoded."""
    try:
        image, fingerprint = _open(raw, mode)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"][0]
        return pixel_values.float().contiguous(), None, fingerprint
    except Exception as error:  # noqa: BLE001 - any failure of one image is a skip record
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        fingerprint = fingerprint_file(raw, mode) if mode and isinstance(raw, (str, os.PathLike)) else None
        return None, f"{type(error).__name__}: {message}" if message else type(error).__name__, fingerprint


def decode_image(raw: Any, processor: GHFeatImageProcessor) -> tuple[torch.Tensor | None, str | None]:
    """`(pixel_values [3, H, W], None)` or `(None, "ErrorType: message")`: never raises for a bad image."""
    return _decode(raw, processor, None)[:2]


class _DecodeDataset(TorchDataset):
    """Map-style torch dataset over pending items: `(index, pixel_values | None, error | None, fingerprint)`."""

    def __init__(self, source: ImageSource, items: Sequence[SourceItem], processor: GHFeatImageProcessor,
                 fingerprint_mode: str | None):
        self.source, self.items, self.processor, self.fingerprint_mode = source, items, processor, fingerprint_mode

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        try:
            raw = self.source.load(self.items[index].payload)
        except Exception as error:  # noqa: BLE001
            return index, None, f"{type(error).__name__}: {error}", None
        return (index, *_decode(raw, self.processor, self.fingerprint_mode))


def _collate_records(records):
    return records


def _batched(iterable: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` elements (the last one may be shorter)."""
    chunk: list = []
    for element in iterable:
        chunk.append(element)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _threaded_map(function: Callable, iterable: Iterable, num_workers: int, window: int) -> Iterator:
    """`map(function, iterable)` in order, computed by `num_workers` threads with at most `window` in flight."""
    executor = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="ghfeat-decode")
    futures: deque = deque()
    try:
        for element in iterable:
            futures.append(executor.submit(function, element))
            if len(futures) >= window:
                yield futures.popleft().result()
        while futures:
            yield futures.popleft().result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def decoded_chunks(
    source: ImageSource, pending: Iterable[SourceItem], processor, batch_size: int, num_workers: int,
    fingerprint_mode: str | None = None,
) -> Iterator[list[DecodedItem]]:
    """Yield consecutive chunks of `batch_size` pending items with their decoded pixels or error, in order; with
    a `fingerprint_mode`, each item carries the fingerprint of the file it was decoded from."""
    if source.finite:
        items = list(pending)
        loader = DataLoader(
            _DecodeDataset(source, items, processor, fingerprint_mode), batch_size=batch_size, shuffle=False,
            num_workers=num_workers, collate_fn=_collate_records,
            prefetch_factor=2 if num_workers > 0 else None,
        )
        iterator = iter(loader)
        try:
            for records in iterator:
                yield [(dataclasses.replace(items[index], fingerprint=fingerprint), pixels, error)
                       for index, pixels, error, fingerprint in records]
        finally:
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        return

    def decode(item: SourceItem) -> DecodedItem:
        pixels, error, fingerprint = _decode(item.payload, processor, fingerprint_mode)
        return dataclasses.replace(item, fingerprint=fingerprint), pixels, error

    if num_workers <= 0:
        decoded: Iterator[DecodedItem] = map(decode, pending)
    else:
        decoded = _threaded_map(decode, pending, num_workers, window=max(2 * batch_size, 4 * num_workers))
    try:
        yield from _batched(decoded, batch_size)
    finally:
        close = getattr(decoded, "close", None)
        if close is not None:
            close()


__all__ = [
    "FINGERPRINT_MODES",
    "LIST_FILE_SUFFIXES",
    "DatasetSource",
    "FileSource",
    "ImageSource",
    "SourceItem",
    "block_bounds",
    "dataset_source",
    "decode_image",
    "decoded_chunks",
    "file_sources",
    "fingerprint_file",
    "folder_source",
    "glob_source",
    "image_extensions",
    "list_file_source",
    "resolve_source",
]
