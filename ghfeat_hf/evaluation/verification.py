"""Pair verification (LFW style): is `(image_a, image_b)` the same identity / object?

For every fold, features are z-scored with the statistics of the images of the other folds, pairs are scored by
cosine similarity, the threshold that maximises the accuracy on the other folds is applied to the fold; the report
gives the mean accuracy over folds with its standard deviation and standard error, per layer group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import UsageError
from ..evaluation_report import OURS, PAPER, PAPER_UNVERIFIED, STANDARD, EvaluationReport, MetricColumn, ProtocolItem
from .extractors import FeatureExtractor
from .features import ExtractionOptions, FeatureStore, feature_views, standardize
from .metrics import kfold_verification
from .splits import column_values, describe_data, require_columns

DEFAULT_LAYER_GROUPS = ("all", "coarse", "middle", "fine")


def assign_folds(same: np.ndarray, num_folds: int = 10) -> np.ndarray:
    """`[P]` fold indices: the positive pairs, in dataset order, are cut into `num_folds` contiguous near-equal
    parts, and so are the negative pairs (LFW's `pairs.txt` order then gives its official folds)."""
    same = np.asarray(same, dtype=bool)
    folds = np.empty(len(same), dtype=np.int64)
    for value in (True, False):
        rows = np.flatnonzero(same == value)
        folds[rows] = np.arange(len(rows)) * num_folds // max(len(rows), 1)
    return folds


def same_values(pairs, column: str) -> np.ndarray:
    """`[P]` bool: the pairs' `column`, which must hold only booleans or 0 / 1; anything else (strings such as
    "False", -1, nulls) raises [`UsageError`] naming the values found."""
    values = column_values(pairs, column)
    found = set(values.tolist())
    if not found <= {0, 1}:  # True == 1 and False == 0
        shown = ", ".join(sorted(map(repr, found))[:10])
        raise UsageError(f"column {column!r} must hold booleans or 0 / 1 (same or different pair); found {shown}.")
    return values.astype(bool)


def fold_scores(features_a: np.ndarray, features_b: np.ndarray, folds: np.ndarray, num_folds: int) -> np.ndarray:
    """`[K, P]` cosine similarities of the pairs; row `k` uses features z-scored with the images of the pairs
    outside fold `k`."""
    scores = np.empty((num_folds, len(folds)), dtype=np.float64)
    for fold in range(num_folds):
        train = folds != fold
        _, a, b = standardize(np.concatenate([features_a[train], features_b[train]]), features_a, features_b)
        a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        scores[fold] = np.sum(a * b, axis=1)
    return scores


def evaluate_verification(
    extractors: Sequence[FeatureExtractor],
    pairs,
    *,
    image_columns: tuple[str, str] = ("image_a", "image_b"),
    same_column: str = "same",
    fold_column: str | None = None,
    num_folds: int = 10,
    layer_groups: Sequence[str] | None = DEFAULT_LAYER_GROUPS,
    options: ExtractionOptions | None = None,
    dataset_name: str | None = None,
) -> EvaluationReport | None:
    """K-fold verification accuracy of every extractor and layer group.

    Args:
        extractors: the evaluated model first, then the baselines.
        pairs: a `datasets.Dataset` with two image columns and a `same_column` of booleans (or 0/1, see
            [`same_values`]).
        fold_column: a column of fold ids (any `num_folds` distinct values); by default folds come from
            [`assign_folds`].
        layer_groups: by default all layers and each head's layers (coarse, middle, fine).

    Returns:
        The [`EvaluationReport`] (rows with `accuracy`, `accuracy_std`, `stderr`); `None` on non-main processes.
    """
    if len(set(image_columns)) != 2:
        raise UsageError(f"verification needs two different image columns, got {list(image_columns)}.")
    require_columns(pairs, *image_columns, same_column, *([fold_column] if fold_column else []), role="column")
    same = same_values(pairs, same_column)
    if same.all() or not same.any():
        raise UsageError(f"column {same_column!r} must hold both same and different pairs.")
    if fold_column:
        _, folds = np.unique(column_values(pairs, fold_column), return_inverse=True)
        num_folds = int(folds.max()) + 1
    else:
        folds = assign_folds(same, num_folds)
    if num_folds < 2 or np.bincount(folds, minlength=num_folds).min() == 0:
        raise UsageError(f"{num_folds} folds for {len(same)} pairs: there must be two folds or more, each with "
                         "pairs.")
    views = feature_views(extractors, layer_groups)
    store = FeatureStore(extractors, options)
    store.extract_all({"pairs": pairs}, image_columns)
    if not store.options.is_main_process:
        return None

    rows = []
    for view in store.progress(views, "verification"):
        features_a, features_b = (view.select(store.get(view.extractor, pairs, "pairs", column).features)
                                  for column in image_columns)
        result = kfold_verification(fold_scores(features_a, features_b, folds, num_folds), same, folds)
        rows.append(view.row(features_a, accuracy=result["accuracy"], accuracy_std=result["std"],
                             stderr=result["stderr"], fold_accuracies=result["fold_accuracies"]))

    protocol = [
        ProtocolItem("task", "face verification with frozen features", PAPER),
        ProtocolItem("benchmark", "LFW pairs", PAPER_UNVERIFIED, "not checked against the paper's text; any pairs "
                     "dataset works"),
        ProtocolItem("folds", f"from column {fold_column!r}" if fold_column else
                     f"{num_folds} folds: positive and negative pairs each cut into contiguous parts in dataset order",
                     STANDARD if fold_column else OURS),
        ProtocolItem("accuracy", f"mean over the {num_folds} folds of the accuracy with the threshold that maximises "
                     "the accuracy on the other folds; standard error = sample std / sqrt(folds)", STANDARD),
        ProtocolItem("similarity", "cosine similarity of features z-scored with the images of the other folds", OURS),
        ProtocolItem("threshold", "exact optimum over the midpoints of the training scores (ties: the lowest)", OURS),
    ]
    columns = [MetricColumn("accuracy", f"{num_folds}-fold acc. (%) ± std", "pct_std"),
               MetricColumn("stderr", "std. error (%)", "pct")]
    data = describe_data(dataset_name, {"pairs": pairs}, image_columns=list(image_columns), same_column=same_column,
                         num_folds=num_folds, num_same=int(same.sum()), num_different=int((~same).sum()))
    return store.report("verification", data=data, protocol=protocol, columns=columns, rows=rows)


__all__ = ["DEFAULT_LAYER_GROUPS", "assign_folds", "evaluate_verification", "fold_scores", "same_values"]
