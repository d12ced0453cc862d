"""Image data for GH-Feat training and extraction: `datasets` loading, a robust torch collate path, Fashion-MNIST.

* :func:`load_image_dataset` opens a Hub dataset id, an ``imagefolder`` directory or a ``save_to_disk``
  directory as one `datasets` split (map-style or streaming).
* :class:`ImageRows` + :class:`ImageCollator` (or simply :func:`make_image_dataloader`) turn rows into
  ``pixel_values`` exactly as :class:`~ghfeat_hf.GHFeatImageProcessor` does. Images are opened
  (:mod:`ghfeat_hf.image_io`) in the DataLoader workers; unreadable samples are skipped, counted
  (``batch["num_skipped"]``) and replaced by readable ones of the same batch, so batch shapes stay constant and a
  long run never crashes on a bad file.
  The optional random horizontal flip (p = 0.5, the official augmentation) is a pure function of
  ``(seed, epoch, sample index)`` for map-style data, so an exactly resumed run flips the same images.
* :func:`load_fashion_mnist` builds Fashion-MNIST (zero-padded to 32x32) from the Debian package
  ``dataset-fashion-mnist`` and caches it under the HF datasets cache.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from .image_io import open_image
from .image_processing_ghfeat import GHFeatImageProcessor

# ----------------------------------------------------------------------------------------------------------------
# Loading


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _select_split(dataset, split: str | None, source: str):
    import datasets

    if not isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        # a single split (a saved `Dataset`): it is the data, whatever split name is asked for, unless it is
        # known to be another split
        named = str(dataset.split) if dataset.split is not None else None
        if split is not None and named is not None and named != split:
            raise ValueError(f"{source!r} holds only the split {named!r}, not {split!r}; pass split={named!r} (or "
                             "no split).")
        return dataset
    names = list(dataset.keys())
    if split is None:
        if "train" in dataset:
            return dataset["train"]
        if len(names) == 1:
            return dataset[names[0]]
        raise ValueError(f"{source!r} has the splits {names}; choose one with split=...")
    if split not in dataset:
        raise ValueError(f"Split {split!r} not found in {source!r}; available splits: {names}.")
    return dataset[split]


def load_image_dataset(
    source: str | os.PathLike,
    split: str | None = None,
    image_column: str = "image",
    streaming: bool = False,
    **load_kwargs: Any,
):
    """Open an image dataset as one `datasets` split.

    Args:
        source: a Hub dataset id (``"user/name"``, loaded with ``datasets.load_dataset``), a directory of image
            files (loaded with the ``imagefolder`` builder: class sub-directories become a ``label`` column,
            ``train/`` / ``test/`` sub-directories become splits), or a directory written by ``save_to_disk``.
            A ``Dataset`` / ``IterableDataset`` / ``DatasetDict`` object is accepted as is.
        split: the split to return. ``None`` picks ``"train"`` when present, else the only split.
        image_column: the column holding images; a column of file paths (strings) is cast to ``datasets.Image``.
        streaming: return an ``IterableDataset`` (``save_to_disk`` data is converted with ``to_iterable_dataset``).
        **load_kwargs: passed to ``datasets.load_dataset`` (``revision=``, ``data_files=`` ...).

    Returns:
        ``datasets.Dataset`` (or ``datasets.IterableDataset`` when ``streaming``).
    """
    import datasets

    name = str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset, datasets.DatasetDict, datasets.IterableDatasetDict)):
        dataset = source
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            if _is_saved_dataset(path):
                dataset = datasets.load_from_disk(str(path))
            else:
                dataset = datasets.load_dataset("imagefolder", data_dir=str(path), streaming=streaming, **load_kwargs)
        elif path.exists():
            raise ValueError(f"{str(source)!r} is a file; pass a dataset directory, an image folder or a Hub id.")
        else:
            dataset = datasets.load_dataset(str(source), streaming=streaming, **load_kwargs)
    dataset = _select_split(dataset, split, name)
    if streaming and isinstance(dataset, datasets.Dataset):
        dataset = dataset.to_iterable_dataset()
    features = dataset.features
    if features is not None:
        if image_column not in features:
            raise ValueError(f"Column {image_column!r} not found in {name!r}; columns: {list(features)}.")
        feature = features[image_column]
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            dataset = dataset.cast_column(image_column, datasets.Image())
    return dataset


FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist")


def load_training_images(
    source: str | os.PathLike,
    split: str | None = None,
    image_column: str = "image",
    streaming: bool = False,
    max_samples: int | None = None,
    **load_kwargs: Any,
):
    """What the trainers' and ``ghfeat extract``'s ``--dataset`` accepts: ``"fashion-mnist"`` (the local Debian
    package through :func:`load_fashion_mnist`, 32x32, never the Hub) or anything :func:`load_image_dataset` opens
    (``load_kwargs`` such as ``name=`` go to it); optionally only the first ``max_samples`` rows."""
    if str(source).lower() in FASHION_MNIST_NAMES:
        splits = load_fashion_mnist(pad_to=32)
        if (split or "train") not in splits:
            raise ValueError(f"fashion-mnist has the splits {list(splits)}, not {split!r}.")
        dataset = splits[split or "train"]
        if streaming:
            dataset = dataset.to_iterable_dataset()
    else:
        dataset = load_image_dataset(source, split=split, image_column=image_column, streaming=streaming,
                                     **load_kwargs)
    if max_samples is not None:
        dataset = dataset.take(max_samples) if streaming else dataset.select(range(min(max_samples, len(dataset))))
    return dataset


# ----------------------------------------------------------------------------------------------------------------
# Decoding, collation, DataLoader


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-mixed, platform-independent integer hash."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """Whether sample ``index`` is mirrored in ``epoch`` (p = 0.5), deterministic in ``(seed, epoch, index)``."""
    return bool(_mix64(_mix64(_mix64(seed) ^ epoch) ^ index) >> 63)


class ImageRows(torch.utils.data.Dataset):
    """Map-style torch view of a `datasets.Dataset` whose image column is left undecoded.

    Items are the dataset rows plus ``"__index__"`` (the row number) and ``"__epoch__"`` (set by
    :meth:`set_epoch`, which accelerate's prepared DataLoader calls). Decoding happens in
    :class:`ImageCollator`, inside the DataLoader workers, where a bad file can be skipped.
    """

    def __init__(self, dataset, image_column: str = "image", columns: Sequence[str] | None = None):
        import datasets

        feature = dataset.features.get(image_column) if dataset.features is not None else None
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        if columns is not None:
            dataset = dataset.select_columns([image_column, *[c for c in columns if c != image_column]])
        self.dataset = dataset
        self.image_column = image_column
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[int(index)], "__index__": int(index), "__epoch__": self.epoch}

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        indices = [int(i) for i in indices]
        columns = self.dataset[indices]
        return [
            {**{key: values[k] for key, values in columns.items()}, "__index__": index, "__epoch__": self.epoch}
            for k, index in enumerate(indices)
        ]


class ImageCollator:
    """``collate_fn`` turning rows into ``{"pixel_values", "num_skipped", "indices", <extra columns>}``.

    * ``pixel_values``: ``[N, num_channels, resolution, resolution]`` float32 in ``[-1, 1]``, produced by
      :class:`GHFeatImageProcessor` (images of any mode/size, arrays and tensors; grayscale replicated to RGB).
      ``num_channels=1`` keeps the luminance, through the processor's ``num_channels=1`` (PIL's ``L`` for 8-bit
      images, the same ITU-R 601 weights otherwise), exactly as the exported model's processor reads images.
    * unreadable samples (decode or processor errors) are dropped and counted in ``num_skipped``; with
      ``fill_skipped`` (default) they are replaced by readable samples of the same batch (or of the previous
      batch of this worker when the whole batch failed), so ``N`` stays the batch size. Only when nothing
      readable was ever seen is an empty batch (``N = 0``) returned.
    * ``random_flip``: horizontal mirror with p = 0.5, decided by :func:`flip_decision` ``(seed, epoch, index)``
      for rows that carry ``__index__`` (:class:`ImageRows`: the row number, reproducible across resumes and
      worker counts; streams from :func:`make_image_dataloader`: the position in the stream), by torch's RNG
      otherwise.
    * ``indices`` (``LongTensor``, ``-1`` when unknown) and the ``extra_columns`` (tensors when numeric) follow
      the same order as ``pixel_values``.
    """

    def __init__(
        self,
        processor: GHFeatImageProcessor | None = None,
        resolution: int | None = None,
        num_channels: int = 3,
        image_column: str = "image",
        random_flip: bool = False,
        seed: int = 0,
        fill_skipped: bool = True,
        extra_columns: Sequence[str] = (),
    ):
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}.")
        if processor is None:
            size = resolution or 256
            processor = GHFeatImageProcessor(size={"height": size, "width": size}, num_channels=num_channels)
        elif processor.num_channels != num_channels:
            raise ValueError(f"The processor outputs {processor.num_channels}-channel images, num_channels is "
                             f"{num_channels}.")
        elif resolution is not None:
            processor = GHFeatImageProcessor(**{**processor.to_dict(), "size": {"height": resolution, "width": resolution}})
        self.processor = processor
        self.num_channels = num_channels
        self.image_column = image_column
        self.random_flip = random_flip
        self.seed = int(seed)
        self.fill_skipped = fill_skipped
        self.extra_columns = tuple(extra_columns)
        self._last_good: list[tuple[torch.Tensor, dict]] = []

    @property
    def resolution(self) -> tuple[int, int]:
        size = self.processor.size
        return size["height"], size["width"]

    def _process(self, images: list[PIL.Image.Image | np.ndarray | torch.Tensor]) -> list[torch.Tensor | None]:
        try:
            return list(self.processor(images, return_tensors="pt")["pixel_values"])
        except Exception:  # find the culprit(s): one by one
            out = []
            for image in images:
                try:
                    out.append(self.processor(image, return_tensors="pt")["pixel_values"][0])
                except Exception:
                    out.append(None)
            return out

    def __call__(self, rows: Sequence[dict]) -> dict[str, Any]:
        decoded, kept_rows = [], []
        for row in rows:
            try:
                decoded.append(open_image(row[self.image_column]))
                kept_rows.append(row)
            except Exception:
                continue
        tensors = self._process(decoded) if decoded else []
        good = [(t, r) for t, r in zip(tensors, kept_rows) if t is not None]
        num_skipped = len(rows) - len(good)
        if self.fill_skipped and num_skipped:
            pool = good or self._last_good
            good = good + [pool[k % len(pool)] for k in range(num_skipped)] if pool else good
        if good and self.fill_skipped:
            self._last_good = good[: max(1, len(rows))]
        height, width = self.resolution
        if good:
            pixel_values = torch.stack([t for t, _ in good])
        else:
            pixel_values = torch.zeros(0, self.num_channels, height, width)
        indices = torch.tensor([int(r.get("__index__", -1)) for _, r in good], dtype=torch.long)
        if self.random_flip and good:
            if all("__index__" in r for _, r in good):
                flips = [flip_decision(self.seed, int(r.get("__epoch__", 0)), int(r["__index__"])) for _, r in good]
                mask = torch.tensor(flips, dtype=torch.bool)
            else:
                mask = torch.rand(len(good)) < 0.5
            pixel_values = torch.where(mask.view(-1, 1, 1, 1), pixel_values.flip(-1), pixel_values)
        batch: dict[str, Any] = {
            "pixel_values": pixel_values.contiguous(),
            "num_skipped": torch.tensor(num_skipped, dtype=torch.long),
            "indices": indices,
        }
        for column in self.extra_columns:
            values = [r[column] for _, r in good]
            try:
                batch[column] = torch.as_tensor(values)
            except (TypeError, ValueError, RuntimeError):
                batch[column] = values
        return batch


def _stream_position(row: dict, index: int) -> dict:
    return {"__index__": index}


def make_image_dataloader(
    dataset,
    batch_size: int,
    resolution: int,
    *,
    num_channels: int = 3,
    image_column: str = "image",
    random_flip: bool = False,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    extra_columns: Sequence[str] = (),
    processor: GHFeatImageProcessor | None = None,
    **dataloader_kwargs: Any,
) -> torch.utils.data.DataLoader:
    """A torch ``DataLoader`` of ``{"pixel_values", "num_skipped", "indices", ...}`` batches (see :class:`ImageCollator`).

    Map-style datasets are wrapped in :class:`ImageRows` (shuffled with ``shuffle``); an ``IterableDataset`` is
    iterated as is (shuffle it yourself with ``dataset.shuffle(seed=..., buffer_size=...)`` and shard it across
    processes with ``shard_iterable_dataset`` of ``training/data_loop.py``). Put the result through ``accelerator.prepare``
    for map-style data (seedable sampler, per-process sharding, ``skip_first_batches``).
    """
    import datasets

    collator = ImageCollator(
        processor=processor,
        resolution=resolution,
        num_channels=num_channels,
        image_column=image_column,
        random_flip=random_flip,
        seed=seed,
        extra_columns=extra_columns,
    )
    if isinstance(dataset, datasets.IterableDataset):
        feature = dataset.features.get(image_column) if dataset.features is not None else None
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        # stream positions as sample indices: flips are then reproducible when a resumed run replays the stream
        dataset = dataset.map(_stream_position, with_indices=True)
        shuffle = False
        torch_dataset = dataset
    else:
        torch_dataset = dataset if isinstance(dataset, ImageRows) else ImageRows(dataset, image_column)
    return torch.utils.data.DataLoader(
        torch_dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collator,
        persistent_workers=False,
        **dataloader_kwargs,
    )


# ----------------------------------------------------------------------------------------------------------------
# Fashion-MNIST from the Debian package `dataset-fashion-mnist`

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
#: Directories searched, in order, after ``$GHFEAT_FASHION_MNIST_DIR`` (the Debian package installs the first).
FASHION_MNIST_DIRS: list[str] = [
    "/usr/share/datasets/fashion-mnist",
    "/usr/share/datasets/fashion_mnist",
    "/usr/share/fashion-mnist",
    "/usr/local/share/datasets/fashion-mnist",
]
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
_FASHION_MNIST_CACHE_VERSION = 1
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
               0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw): magic ``00 00 <dtype> <ndim>``, big-endian int32 dims, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic {raw[:4].hex()}).")
    ndim = raw[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"{path}: expected a {expected_ndim}-D IDX file, got magic {raw[:4].hex()} ({ndim}-D).")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path}: {len(raw) - offset} data bytes do not match the shape {shape}.")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the four Fashion-MNIST ``*.gz`` IDX files, or a ``FileNotFoundError`` telling how to
    install them."""
    candidates = [data_dir] if data_dir is not None else [os.environ.get("GHFEAT_FASHION_MNIST_DIR"), *FASHION_MNIST_DIRS]
    names = [name for images, labels, _ in FASHION_MNIST_FILES.values() for name in (images, labels)]
    for candidate in candidates:
        if candidate and all((Path(candidate) / name).is_file() for name in names):
            return Path(candidate)
    searched = ", ".join(str(c) for c in candidates if c)
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found (searched: {searched}). Install them with `{FASHION_MNIST_INSTALL}` "
        "(Debian/Ubuntu package), or point $GHFEAT_FASHION_MNIST_DIR at a directory holding "
        f"{', '.join(names)}."
    )


def pad_images(images: np.ndarray, pad_to: int | None) -> np.ndarray:
    """Zero-pad ``[N, H, W]`` images to ``pad_to x pad_to``, centred (extra odd pixel at the bottom/right)."""
    n, height, width = images.shape
    if pad_to is None or (pad_to == height and pad_to == width):
        return images
    if pad_to < max(height, width):
        raise ValueError(f"pad_to ({pad_to}) must be >= the image size ({height}x{width}).")
    top, left = (pad_to - height) // 2, (pad_to - width) // 2
    return np.pad(images, ((0, 0), (top, pad_to - height - top), (left, pad_to - width - left)))


def fashion_mnist_arrays(split: str = "train", pad_to: int | None = 32, data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, pad_to, pad_to], labels int64 [N])`` of a Fashion-MNIST split, read from the IDX files."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be one of {list(FASHION_MNIST_FILES)}, got {split!r}.")
    root = find_fashion_mnist(data_dir)
    image_file, label_file, count = FASHION_MNIST_FILES[split]
    images = read_idx(root / image_file, expected_ndim=3)
    labels = read_idx(root / label_file, expected_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8 or len(images) != len(labels):
        raise ValueError(f"Unexpected Fashion-MNIST {split} files: {images.shape} {images.dtype}, {labels.shape}.")
    if len(images) != count:
        raise ValueError(f"Fashion-MNIST {split} has {len(images)} images, expected {count}.")
    return pad_images(images, pad_to), labels.astype(np.int64)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_gray_pngs(images: np.ndarray, level: int = 6) -> list[bytes]:
    """8-bit grayscale PNG files of ``[N, H, W]`` uint8 images (one zlib call per image, no PIL round trip)."""
    n, height, width = images.shape
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    tail = _png_chunk(b"IEND", b"")
    scanlines = np.concatenate([np.zeros((n, height, 1), np.uint8), images], axis=2).reshape(n, -1)  # filter 0
    return [head + _png_chunk(b"IDAT", zlib.compress(row.tobytes(), level)) + tail for row in scanlines]


def _fashion_mnist_fingerprint(root: Path, pad_to: int | None) -> str:
    digest = hashlib.sha256(f"v{_FASHION_MNIST_CACHE_VERSION}-pad{pad_to}".encode())
    for image_file, label_file, _ in FASHION_MNIST_FILES.values():
        for name in (image_file, label_file):
            stat = (root / name).stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_fashion_mnist(
    pad_to: int | None = 32,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
):
    """Fashion-MNIST as a ``DatasetDict`` with ``train`` (60,000) and ``test`` (10,000) splits.

    Columns: ``image`` (``datasets.Image``, grayscale ``L`` PIL images zero-padded from 28x28 to
    ``pad_to x pad_to``, centred; ``pad_to=None`` keeps 28x28) and ``label`` (``ClassLabel`` with the 10 class
    names). Read from the Debian package ``dataset-fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``)
    or ``data_dir``. The built dataset is saved under ``<HF datasets cache>/ghfeat_fashion_mnist/<fingerprint>``
    (fingerprint of the source files and ``pad_to``), so later calls only memory-map it.
    """
    import datasets

    root = find_fashion_mnist(data_dir)
    cache_root = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE)
    target = cache_root / "ghfeat_fashion_mnist" / f"pad{pad_to}-{_fashion_mnist_fingerprint(root, pad_to)}"
    if use_cache and (target / "dataset_dict.json").is_file():
        try:
            return datasets.load_from_disk(str(target))
        except Exception:  # a damaged cache: rebuild it
            shutil.rmtree(target, ignore_errors=True)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES)}
    )
    splits = {}
    for split in FASHION_MNIST_FILES:
        images, labels = fashion_mnist_arrays(split, pad_to, root)
        records = [{"bytes": png, "path": None} for png in encode_gray_pngs(images)]
        splits[split] = datasets.Dataset.from_dict({"image": records, "label": labels.tolist()}, features=features)
    dataset = datasets.DatasetDict(splits)
    if not use_cache:
        return dataset
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        dataset.save_to_disk(str(temporary))
        try:
            os.replace(temporary, target)
        except OSError:  # another process won the race
            if not (target / "dataset_dict.json").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return datasets.load_from_disk(str(target))


__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIRS",
    "FASHION_MNIST_INSTALL",
    "ImageCollator",
    "ImageRows",
    "encode_gray_pngs",
    "fashion_mnist_arrays",
    "find_fashion_mnist",
    "flip_decision",
    "load_fashion_mnist",
    "load_image_dataset",
    "load_training_images",
    "make_image_dataloader",
    "pad_images",
    "read_idx",
]
