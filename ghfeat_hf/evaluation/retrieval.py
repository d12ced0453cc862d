"""Image retrieval with frozen features: mAP and recall@k under cosine similarity.

Queries and gallery come from one labelled split (per class, a seeded `query_fraction` of the images become
queries, the others the gallery) or from two splits, which must not be the same data (every query would find
itself; see [`same_split`]). A gallery image is relevant to a query when their labels are equal. Features are
z-scored with the gallery's statistics before the cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import UsageError
from ..evaluation_report import OURS, PAPER, STANDARD, EvaluationReport, MetricColumn, ProtocolItem
from .extractors import FeatureExtractor
from .features import ExtractionOptions, FeatureStore, dataset_fingerprint, feature_views, standardize
from .metrics import retrieval_metrics
from .splits import describe_data, encode_labels, require_columns


def query_gallery_split(
    labels: np.ndarray, query_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`(query_rows, gallery_rows)`, sorted: in every class of two images or more, `round(query_fraction * n)`
    images (at least 1, at most `n - 1`), drawn with `seed`, are queries; the rest, and every single-image class,
    form the gallery."""
    if not 0 < query_fraction < 1:
        raise UsageError(f"the query fraction must be in (0, 1), got {query_fraction}.")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    queries = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) >= 2:
            count = int(np.clip(round(query_fraction * len(rows)), 1, len(rows) - 1))
            queries.append(rng.choice(rows, size=count, replace=False))
    query_rows = np.sort(np.concatenate(queries)) if queries else np.array([], dtype=int)
    if not len(query_rows):
        raise UsageError("no class has two images or more: there is nothing to retrieve.")
    return query_rows, np.setdiff1d(np.arange(len(labels)), query_rows)


def same_split(queries, gallery) -> bool:
    """Whether two `datasets.Dataset`s are the same data: equal fingerprints, or the same named split of the same
    named dataset and configuration (such as a subset of a split and the whole split)."""
    if dataset_fingerprint(queries) == dataset_fingerprint(gallery):
        return True
    names = [(data.info.dataset_name, data.info.config_name, data.split) for data in (queries, gallery)]
    return names[0] == names[1] and None not in (names[0][0], names[0][2])


def evaluate_retrieval(
    extractors: Sequence[FeatureExtractor],
    dataset,
    *,
    gallery=None,
    image_column: str = "image",
    label_column: str = "label",
    layer_groups: Sequence[str] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    query_fraction: float = 0.2,
    seed: int = 0,
    options: ExtractionOptions | None = None,
    dataset_name: str | None = None,
) -> EvaluationReport | None:
    """mAP and recall@k of every extractor (and layer group).

    Args:
        extractors: the evaluated model first, then the baselines.
        dataset: a labelled `datasets.Dataset`; split into queries and gallery by label (see
            [`query_gallery_split`]) unless `gallery` is given, in which case every row of `dataset` is a query.
        gallery: an optional gallery split with the same columns; other data than `dataset` (see [`same_split`]).
        ks: the k of recall@k.

    Returns:
        The [`EvaluationReport`] (rows with `map`, `recall@k`, `num_queries`); `None` on non-main processes.
    """
    if gallery is not None and same_split(dataset, gallery):
        raise UsageError("the gallery is the query split itself, so every query would retrieve its own image; pass "
                         "another split as the gallery, or none to split the queries' split by label.")
    splits = {"queries": dataset, **({"gallery": gallery} if gallery is not None else {})}
    for split in splits.values():
        require_columns(split, image_column, label_column, role="column")
    labels, _ = encode_labels(splits, label_column)
    if gallery is None:
        query_rows, gallery_rows = query_gallery_split(labels["queries"], query_fraction, seed)
        gallery_labels, query_labels = labels["queries"][gallery_rows], labels["queries"][query_rows]
    else:
        query_rows, gallery_rows, query_labels, gallery_labels = None, None, labels["queries"], labels["gallery"]
    views = feature_views(extractors, layer_groups)
    store = FeatureStore(extractors, options)
    store.extract_all(splits, [image_column])
    if not store.options.is_main_process:
        return None

    rows = []
    for view in store.progress(views, "retrieval"):
        features = view.select(store.get(view.extractor, dataset, "queries", image_column).features)
        if gallery is None:
            query_x, gallery_x = features[query_rows], features[gallery_rows]
        else:
            gallery_features = store.get(view.extractor, gallery, "gallery", image_column).features
            query_x, gallery_x = features, view.select(gallery_features)
        gallery_x, query_x = standardize(gallery_x, query_x)
        metrics = retrieval_metrics(torch.from_numpy(query_x), torch.from_numpy(gallery_x), query_labels,
                                    gallery_labels, ks)
        rows.append(view.row(query_x, **metrics))

    split_text = ("queries from one split, gallery from another" if gallery is not None else
                  f"per class, a {query_fraction:.0%} share of the images (at least one, seed {seed}) are queries and "
                  "the rest the gallery")
    protocol = [
        ProtocolItem("task", "image retrieval with frozen features", PAPER, "listed in the TPAMI version"),
        ProtocolItem("query / gallery", split_text, OURS),
        ProtocolItem("similarity", "cosine similarity of features z-scored with the gallery's statistics", OURS),
        ProtocolItem("relevance", "a gallery image is relevant when its label equals the query's", STANDARD),
        ProtocolItem("mAP", "mean over queries of the average precision over the full gallery ranking", STANDARD),
        ProtocolItem("recall@k", f"k in {list(ks)}: fraction of queries with a relevant image among the top k",
                     STANDARD, "the metric-learning definition (hit rate)"),
    ]
    columns = [MetricColumn("map", "mAP (%)", "pct"), *(MetricColumn(f"recall@{k}", f"R@{k} (%)", "pct") for k in ks),
               MetricColumn("num_queries", "queries", "int")]
    data = describe_data(dataset_name, splits, image_column=image_column, label_column=label_column,
                         num_queries=len(query_labels), gallery_size=len(gallery_labels))
    return store.report("retrieval", data=data, protocol=protocol, columns=columns, rows=rows)


__all__ = ["evaluate_retrieval", "query_gallery_split", "same_split"]
