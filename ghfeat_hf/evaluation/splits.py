"""Evaluation data: one split of a `datasets` source, seeded subsets, label columns, and what a report says about
the data."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..data import FASHION_MNIST_NAMES, load_fashion_mnist, load_image_dataset
from ..errors import UsageError
from .features import dataset_fingerprint, numpy_columns


def load_split(source: str | os.PathLike, split: str, *, image_column: str = "image", config_name: str | None = None):
    """One split as a map-style `datasets.Dataset`.

    `source` is `"fashion-mnist"` (the local Debian package, 32x32, splits `train` / `test`), a Hub dataset id, an
    `imagefolder` directory or a `save_to_disk` directory (see [`load_image_dataset`]); `config_name` is the Hub
    configuration. Raises [`UsageError`] when the data, the split or the image column cannot be found.
    """
    try:
        if str(source).lower() in FASHION_MNIST_NAMES:
            splits = load_fashion_mnist(pad_to=32)
            if split not in splits:
                raise UsageError(f"fashion-mnist has the splits {list(splits)}, not {split!r}.")
            return splits[split]
        kwargs = {"name": config_name} if config_name else {}
        return load_image_dataset(source, split=split, image_column=image_column, **kwargs)
    except UsageError:
        raise
    except (OSError, ValueError, KeyError, ConnectionError) as error:
        raise UsageError(f"could not load split {split!r} of the dataset {str(source)!r}: {error}") from error


def subsample(dataset, max_samples: int | None, seed: int = 0):
    """At most `max_samples` rows, drawn at random without replacement (seeded) and kept in dataset order;
    the dataset itself when it is not larger."""
    if max_samples is None or len(dataset) <= max_samples:
        return dataset
    if max_samples < 1:
        raise UsageError(f"the number of samples must be positive, got {max_samples}.")
    rows = np.sort(np.random.default_rng(seed).choice(len(dataset), size=max_samples, replace=False))
    return dataset.select(rows)


def require_columns(dataset, *columns: str, role: str = "column") -> None:
    """Raise [`UsageError`] unless every column exists."""
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise UsageError(f"the dataset has no {role} {', '.join(map(repr, missing))}; its columns are "
                         f"{dataset.column_names}.")
    if len(dataset) == 0:
        raise UsageError("the dataset is empty.")


def column_values(dataset, column: str) -> np.ndarray:
    """A column as a NumPy array of its stored dtype (`[N]`, or `[N, L]` for lists of a fixed total length)."""
    return numpy_columns(dataset, [column])[column]


def class_names(dataset, column: str) -> list[str] | None:
    """The `ClassLabel` names of `column` (every name it defines), if it has them."""
    feature = dataset.features.get(column)
    return list(feature.names) if hasattr(feature, "names") else None


def label_values(dataset, column: str, role: str) -> np.ndarray:
    """The labels `[N]` of `column`. Raises [`UsageError`] when some are missing: null, or -1 in a `ClassLabel`
    column (how the Hub marks the hidden labels of test splits); `role` names the split in the message."""
    nulls = dataset.select_columns([column]).with_format("arrow")[:].column(column).null_count
    values = column_values(dataset, column)
    hidden = int(np.sum(values == -1)) if class_names(dataset, column) is not None else 0
    if nulls or hidden:
        raise UsageError(f"the {role} split has {nulls + hidden} of {len(values)} rows without a label in "
                         f"{column!r} ({nulls} null, {hidden} -1: a hidden ClassLabel); evaluate on labelled data.")
    return values


def encode_labels(splits: dict[str, Any], column: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The labels of `column` in every split (role -> `datasets.Dataset`, read with [`label_values`]) mapped jointly
    to `0..C-1`; returns `({role: [N] int64}, classes [C])`, the classes sorted by their stored value."""
    raw = {role: label_values(dataset, column, role) for role, dataset in splits.items()}
    classes, inverse = np.unique(np.concatenate(list(raw.values())), return_inverse=True)
    bounds = np.cumsum([0, *(len(labels) for labels in raw.values())])
    return {role: inverse[start:stop] for role, start, stop in zip(raw, bounds[:-1], bounds[1:])}, classes


def describe_data(name: str | None, splits: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """What a report records about the data: its name (default: the first split's `datasets` name), for every role
    (`"train"`, `"test"`, ...) the split name, row count and fingerprint, and `fields` (columns, classes...)."""
    if not name:
        info = next(iter(splits.values())).info
        name = info.dataset_name or info.builder_name or "dataset"
    described = {
        role: {"split": str(dataset.split) if dataset.split is not None else None, "num_rows": len(dataset),
               "fingerprint": dataset_fingerprint(dataset)}
        for role, dataset in splits.items()
    }
    return {"name": str(name), "splits": described, **fields}


__all__ = ["class_names", "column_values", "describe_data", "encode_labels", "label_values", "load_split",
           "require_columns", "subsample"]
