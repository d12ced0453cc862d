"""Cached feature extraction over `datasets` datasets, layer groups, and the per-task bookkeeping.

[`cached_feature_table`] runs a [`FeatureExtractor`] over a dataset column with `datasets.Dataset.map(batched=True)`,
writing an Arrow cache file named by a fingerprint of the extractor (model weights, layers, dtype, preprocessing),
the dataset fingerprint and the column: the second run over the same model and data loads the file instead of
running the model. Under `accelerate launch` with several processes, every process extracts one contiguous shard
and all of them then read the shards back from the cache.

Layer groups ([`ghfeat_hf.runtime.parse_layer_groups`]) select columns of GH-Feat features; [`feature_views`]
lists the (extractor, group) pairs a task evaluates, [`FeatureStore`] extracts what a task needs once and records
the cache hits for its report.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..errors import UsageError
from ..evaluation_report import OURS, EvaluationReport, ProtocolItem
from ..image_io import to_pil_image
from ..runtime import ALL_LAYERS, launched_process_state, parse_layer_groups
from .extractors import FeatureExtractor, stable_hash

CACHE_VERSION = 1
"""Bumped whenever the layout of the cached tables changes (it is part of every fingerprint)."""


# ----------------------------------------------------------------------------------------------------------------
# Feature views


@dataclass(frozen=True)
class FeatureView:
    """One row of a report: an extractor and the columns of its features a layer group selects."""

    extractor: FeatureExtractor
    group: str
    columns: np.ndarray | None
    """`None`: every column."""

    def select(self, features: np.ndarray) -> np.ndarray:
        return features if self.columns is None else features[:, self.columns]

    def row(self, features: np.ndarray, **metrics: Any) -> dict[str, Any]:
        """A report row for metrics computed on `features` (this view's selection)."""
        return {"features": self.extractor.name, "layers": self.group, "dim": int(features.shape[1]), **metrics}


def feature_views(
    extractors: Sequence[FeatureExtractor], layer_groups: Sequence[str] | None = None
) -> list[FeatureView]:
    """Every (extractor, layer group) pair to evaluate. The groups (see [`parse_layer_groups`]; default `["all"]`)
    apply to GH-Feat extractors, resolved with each one's configuration; other extractors get one view of all
    their features (group `"all"`). Raises [`UsageError`] for an unknown group."""
    views = []
    for extractor in extractors:
        if extractor.layered:
            views += [FeatureView(extractor, group.name, extractor.columns(group.layers))
                      for group in parse_layer_groups(layer_groups, extractor.config)]
        else:
            views.append(FeatureView(extractor, ALL_LAYERS, None))
    return views


# ----------------------------------------------------------------------------------------------------------------
# Cached extraction over datasets


@dataclass
class ExtractionOptions:
    """How [`cached_feature_table`] runs: `batch_size` images per `map` batch; cache files in `cache_dir` (default
    `<HF datasets cache>/ghfeat_evaluation`) unless `use_cache=False`; a progress bar unless `progress=False`.
    `process_state` is an `accelerate.PartialState` (or an object with `num_processes`, `process_index`,
    `is_main_process` and `wait_for_everyone()`); by default one is created when launched with several processes."""

    batch_size: int = 64
    cache_dir: str | os.PathLike | None = None
    use_cache: bool = True
    progress: bool = True
    process_state: Any = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise UsageError(f"batch size must be positive, got {self.batch_size}.")
        if self.process_state is None:
            self.process_state = launched_process_state()

    @property
    def num_processes(self) -> int:
        return 1 if self.process_state is None else self.process_state.num_processes

    @property
    def is_main_process(self) -> bool:
        return self.process_state is None or self.process_state.is_main_process

    def cache_path(self, prefix: str, fingerprint: str) -> Path | None:
        if not self.use_cache:
            return None
        import datasets

        root = Path(self.cache_dir or Path(datasets.config.HF_DATASETS_CACHE) / "ghfeat_evaluation")
        root.mkdir(parents=True, exist_ok=True)
        return root / f"{prefix}-{fingerprint}.arrow"


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    if not enabled and was_enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and was_enabled:
            datasets.enable_progress_bars()


def dataset_fingerprint(dataset) -> str:
    """The fingerprint `datasets` keeps for a dataset (stable across runs for data on disk and for `from_dict`)."""
    return dataset._fingerprint


def cached_image_map(
    dataset,
    image_column: str,
    function: Callable[[list[PIL.Image.Image]], dict[str, np.ndarray]],
    key: dict[str, Any],
    options: ExtractionOptions,
    *,
    prefix: str = "features",
    desc: str | None = None,
):
    """`dataset.map(batched=True)` of `function` (PIL images -> columns of arrays) over `image_column`, cached.

    Returns `(mapped, cache_hit)`: a dataset with `function`'s columns plus `image_size` (`[width, height]` of each
    stored image), row for row, and whether every cache file existed before the call and this process ran
    `function` on no row (everything was loaded). Cache files are loaded even when `datasets.disable_caching()` is
    in effect. The cache fingerprint is a hash of `key` (what defines `function`), the dataset fingerprint and the
    column.
    """
    import datasets

    if image_column not in dataset.column_names:
        raise UsageError(f"the dataset has no image column {image_column!r}; its columns are {dataset.column_names}.")
    fingerprint = stable_hash({"version": CACHE_VERSION, "dataset": dataset_fingerprint(dataset),
                               "column": image_column, **key})
    source = dataset.select_columns([image_column])
    if isinstance(source.features[image_column], datasets.Image):
        source = source.cast_column(image_column, datasets.Image(decode=False))

    computed = 0  # rows `function` ran on in this process

    def run(part, part_fingerprint: str, offset: int):
        def encode(raws: list, indices: list[int]) -> dict[str, np.ndarray]:
            nonlocal computed
            computed += len(raws)
            images = []
            for raw, index in zip(raws, indices):
                try:
                    images.append(to_pil_image(raw))
                except Exception as error:  # noqa: BLE001 - any unreadable image is a usage error with its row
                    raise UsageError(
                        f"cannot read the image of row {offset + index} ({image_column!r}): {error}") from error
            return {**function(images), "image_size": np.array([image.size for image in images], dtype=np.int32)}

        path = options.cache_path(prefix, part_fingerprint)
        with _progress_bars(options.progress):
            return part.map(encode, batched=True, batch_size=options.batch_size, input_columns=[image_column],
                            with_indices=True, remove_columns=[image_column], new_fingerprint=part_fingerprint,
                            cache_file_name=None if path is None else os.fspath(path), keep_in_memory=path is None,
                            load_from_cache_file=path is not None, desc=desc)

    count = options.num_processes
    if count == 1:
        path = options.cache_path(prefix, fingerprint)
        existed = path is not None and path.exists()
        mapped = run(source, fingerprint, 0)
        return mapped, existed and not computed
    if not options.use_cache:
        raise UsageError("with several processes the features are shared through cache files; keep the cache on.")
    bounds = np.linspace(0, len(source), count + 1).astype(int)
    shards = [(source.select(range(bounds[i], bounds[i + 1])), f"{fingerprint}-{i}of{count}", int(bounds[i]))
              for i in range(count)]
    existed = all(options.cache_path(prefix, shard_fingerprint).exists() for _, shard_fingerprint, _ in shards)
    run(*shards[options.process_state.process_index])
    options.process_state.wait_for_everyone()
    mapped = datasets.concatenate_datasets([run(*shard) for shard in shards])
    return mapped, existed and not computed


def numpy_columns(dataset, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Columns as NumPy arrays of their stored dtype (`datasets`' NumPy format would turn float64 into float32):
    `[N]` for scalars, `[N, L]` for (nested) lists of a fixed total length `L`. Raises [`UsageError`] when the
    lists of a column (at any depth) differ in length or are missing."""
    import pyarrow as pa
    import pyarrow.compute as pc

    selected = dataset.select_columns(list(columns)) if columns is not None else dataset
    table = selected.with_format("arrow")[:]
    arrays = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        while pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or \
                pa.types.is_fixed_size_list(column.type):
            lengths = pc.list_value_length(column)
            if lengths.null_count or pc.count_distinct(lengths).as_py() > 1:
                low, high = pc.min_max(lengths).values()
                nulls = f" and {lengths.null_count} missing (null) lists" if lengths.null_count else ""
                raise UsageError(f"column {name!r} must hold lists of one length in every row; found lengths {low} "
                                 f"to {high}{nulls}.")
            column = column.flatten()
        values = column.to_numpy(zero_copy_only=False)
        arrays[name] = values.reshape(len(table), -1) if len(values) != len(table) else values
    return arrays


@dataclass
class FeatureTable:
    """The features of one dataset column: `features [N, D]` float32, `image_sizes [N, 2]` (width, height of the
    stored images) and whether they came from the cache."""

    features: np.ndarray
    image_sizes: np.ndarray
    cache_hit: bool


def cached_feature_table(
    dataset,
    extractor: FeatureExtractor,
    *,
    image_column: str = "image",
    options: ExtractionOptions | None = None,
) -> FeatureTable:
    """Run `extractor` over `dataset[image_column]` (cached, see [`cached_image_map`]); rows follow the dataset."""
    options = options or ExtractionOptions()
    mapped, hit = cached_image_map(
        dataset, image_column, lambda images: {"features": extractor(images)},
        {"extractor": extractor.fingerprint()}, options, desc=f"features: {extractor.name} [{image_column}]",
    )
    columns = numpy_columns(mapped)
    return FeatureTable(columns["features"].astype(np.float32, copy=False).reshape(len(mapped), -1),
                        columns["image_size"].reshape(len(mapped), 2), hit)


# ----------------------------------------------------------------------------------------------------------------
# Per-task bookkeeping


class FeatureStore:
    """The features a task needs, extracted once per (extractor, dataset, column) and recorded for the report."""

    def __init__(self, extractors: Sequence[FeatureExtractor], options: ExtractionOptions | None = None):
        if not extractors:
            raise UsageError("no feature extractor to evaluate.")
        names = [extractor.name for extractor in extractors]
        if len(set(names)) != len(names):
            raise UsageError(f"feature extractors need distinct names, got {names}.")
        self.extractors = list(extractors)
        self.options = options or ExtractionOptions()
        self._records = {extractor.name: {**extractor.describe(), "cache_hits": {}} for extractor in extractors}
        self._tables: dict[tuple[str, str], FeatureTable] = {}
        self._started = time.perf_counter()

    def get(self, extractor: FeatureExtractor, dataset, role: str, image_column: str = "image") -> FeatureTable:
        """The features of `dataset[image_column]`; `role` names the data in the report (`"train"`, ...)."""
        key = (extractor.name, f"{role}:{image_column}")
        if key not in self._tables:
            table = cached_feature_table(dataset, extractor, image_column=image_column, options=self.options)
            self.record_cache_hit(extractor, key[1], table.cache_hit)
            self._tables[key] = table
        return self._tables[key]

    def record_cache_hit(self, extractor: FeatureExtractor, role: str, hit: bool) -> None:
        """Record, for the report, whether other cached per-row results of `extractor` (`role`) were cache hits."""
        self._records[extractor.name]["cache_hits"][role] = hit

    def extract_all(self, datasets_by_role: dict[str, Any], image_columns: Sequence[str] = ("image",)) -> None:
        """Extract every extractor's features of every dataset column up front (all processes take part)."""
        for extractor in self.extractors:
            for role, dataset in datasets_by_role.items():
                for column in image_columns:
                    self.get(extractor, dataset, role, column)

    def records(self) -> list[dict[str, Any]]:
        """The extractor descriptions with, per data role, whether the features were cache hits."""
        return list(self._records.values())

    def progress(self, views: Sequence[FeatureView], task: str) -> Iterator[FeatureView]:
        """`views` with a progress bar (unless the options turn it off) naming the one being evaluated."""
        from tqdm.auto import tqdm

        bar = tqdm(views, desc=task, unit="view", disable=not self.options.progress, dynamic_ncols=True)
        for view in bar:
            bar.set_postfix_str(f"{view.extractor.name} [{view.group}]")
            yield view

    def report(self, task: str, *, protocol: list[ProtocolItem], **fields: Any) -> EvaluationReport:
        """An [`EvaluationReport`] of `task` on this store's extractors (the first is the evaluated model), timed
        from the store's creation; the baselines are added to the `protocol`; `fields` are the report's other
        fields (`data`, `columns`, `rows`...)."""
        baselines = "; ".join(f"{extractor.name}: {extractor.description}" for extractor in self.extractors[1:])
        if baselines:
            protocol = [*protocol, ProtocolItem("baselines", baselines, OURS)]
        return EvaluationReport(task=task, model=self.extractors[0].describe(), extractors=self.records(),
                                protocol=protocol, seconds=time.perf_counter() - self._started, **fields)


def standardize(reference: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """Z-score `reference` and `arrays` with the mean and standard deviation of `reference` (constant columns are
    only centred); float32."""
    mean = reference.mean(axis=0, dtype=np.float64)
    std = reference.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    return [(np.asarray(array, dtype=np.float32) - mean) / std for array in (reference, *arrays)]


__all__ = [
    "CACHE_VERSION",
    "ExtractionOptions",
    "FeatureStore",
    "FeatureTable",
    "FeatureView",
    "cached_image_map",
    "dataset_fingerprint",
    "cached_feature_table",
    "feature_views",
    "numpy_columns",
    "standardize",
]
