"""Estimators fitted on frozen feature matrices: the logistic-regression probe, ridge regression and k-NN.

The two linear models choose their regularisation the same way ([`fit_with_validation`]): fit the candidates, in
increasing order of model capacity with warm starts where the solver has them, on a training part, until the
validation score has not improved for `patience` candidates; keep the best; refit on the whole training data when
the validation part was taken from it.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError

# Up to C = 100 (almost unregularised): features that separate the classes well pick the largest C, and a grid
# ending at 1 would cut their probe short; the patience stops the search once larger C stop helping.
DEFAULT_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
DEFAULT_PATIENCE = 2
DEFAULT_ALPHA_GRID = (1e4, 1e3, 1e2, 1e1, 1.0, 1e-1, 1e-2)


def validation_split(
    num_rows: int, fraction: float, seed: int, stratify: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`(fit_rows, validation_rows)`: a seeded random split holding out `ceil(fraction * num_rows)` rows, stratified
    by `stratify` (labels in `0..C-1`) when every class has two rows or more and both parts can hold every class.
    Raises [`UsageError`] when no row is left to fit on."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise UsageError(f"the validation fraction must be in (0, 1), got {fraction}.")
    fit_count = num_rows - math.ceil(fraction * num_rows)  # as scikit-learn counts
    if fit_count < 1:
        raise UsageError(f"holding out {fraction:.0%} of {num_rows} training rows for validation leaves none to fit "
                         "on: use more training rows or a smaller validation fraction.")
    if stratify is not None:
        counts = np.bincount(stratify)
        counts = counts[counts > 0]
        if counts.min() < 2 or round(fraction * num_rows) < len(counts) or fit_count < len(counts):
            stratify = None
    return train_test_split(np.arange(num_rows), test_size=fraction, random_state=seed, stratify=stratify)


def fit_with_validation(
    estimator,
    parameter: str,
    grid: Sequence[float],
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray] | None,
    score: Callable[[Any, np.ndarray, np.ndarray, np.ndarray | None], float],
    *,
    validation_fraction: float = 0.1,
    stratify: bool = False,
    patience: int | None = DEFAULT_PATIENCE,
    seed: int = 0,
):
    """Choose `parameter` of a scikit-learn `estimator` from `grid` (tried in the given order, stopping once
    `patience` values in a row did not beat the best; `None`: try all) by `score(fitted, x, y, rows)` (higher is
    better; ties keep the earlier value) on `validation` (`rows` is `None`), or on a seeded `validation_fraction` of
    `train` (stratified by the labels if `stratify`; `rows` are their indices in `train`) after which the chosen
    model is refit on all of `train`.

    Returns `(fitted estimator, chosen value, its validation score)`.
    """
    from sklearn.exceptions import ConvergenceWarning

    train_x, train_y = train
    if validation is None:
        fit_rows, val_rows = validation_split(len(train_x), validation_fraction, seed, train_y if stratify else None)
        (fit_x, fit_y), validation = (train_x[fit_rows], train_y[fit_rows]), (train_x[val_rows], train_y[val_rows])
        refit = True
    else:
        fit_x, fit_y, refit, val_rows = train_x, train_y, False, None
    best: tuple[float, float, Any] | None = None
    without_gain = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for value in grid:
            estimator.set_params(**{parameter: value}).fit(fit_x, fit_y)
            value_score = float(score(estimator, *validation, val_rows))
            if best is None or value_score > best[1]:
                best, without_gain = (value, value_score, copy.deepcopy(estimator)), 0
            else:
                without_gain += 1
                if patience is not None and without_gain >= patience:
                    break
        chosen = best[2]
        if refit:
            chosen.fit(train_x, train_y)
    return chosen, best[0], best[1]


def require_probe_classes(train_labels: np.ndarray, validation_fraction: float | None, seed: int = 0) -> None:
    """Raise [`UsageError`] unless [`linear_probe`] can be fitted on `train_labels` (`[N]` in `0..C-1`): two classes
    or more among them and, when `validation_fraction` of them is held out to choose `C` (`None`: a separate
    validation split), two classes or more in the rows the candidates are fitted on (see [`validation_split`])."""
    if len(np.unique(train_labels)) < 2:
        raise UsageError(f"the training split's {len(train_labels)} row(s) are all of one class; the linear probe "
                         "needs two classes or more.")
    if validation_fraction is not None:
        fit_rows, _ = validation_split(len(train_labels), validation_fraction, seed, train_labels)
        if len(np.unique(train_labels[fit_rows])) < 2:
            raise UsageError(f"after holding out {validation_fraction:.0%} of the training split to choose C, the "
                             f"{len(fit_rows)} rows left to fit on are all of one class: use more training rows, a "
                             "smaller validation fraction or a separate validation split.")


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    *,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    validation_fraction: float = 0.1,
    max_iter: int = 1000,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Logistic regression (L2, lbfgs; multinomial, or binary for two classes) with `C` chosen on a validation split.

    Args:
        train_features, train_labels: `[N, D]` (already standardised) and `[N]` in `0..C-1`, two classes or more
            (see [`require_probe_classes`]).
        test_features: `[M, D]`.
        c_grid: candidate inverse regularisation strengths, tried in increasing order with warm starts.
        validation: `(features, labels)` of a separate validation split: `C` is chosen there and the probe is the
            one fitted on the training split. Without it, a stratified, seeded `validation_fraction` of the training
            split is held out to choose `C`, and the probe is then refit on the whole training split.
        max_iter: lbfgs iterations per fit.

    Returns:
        `(predictions [M], info)` with `info = {"C", "validation_accuracy", "converged"}`.
    """
    from sklearn.linear_model import LogisticRegression

    probe, c, accuracy = fit_with_validation(
        LogisticRegression(max_iter=max_iter, warm_start=True), "C", sorted(c_grid), (train_features, train_labels),
        validation, lambda fitted, x, y, _rows: np.mean(fitted.predict(x) == y),
        validation_fraction=validation_fraction, stratify=True, seed=seed,
    )
    converged = bool(np.all(probe.n_iter_ < max_iter))
    return probe.predict(test_features), {"C": c, "validation_accuracy": accuracy, "converged": converged}


def ridge_regression(
    train_features: np.ndarray,
    train_targets: np.ndarray,
    test_features: np.ndarray,
    score: Callable[[np.ndarray, np.ndarray, np.ndarray], float],
    *,
    alpha_grid: Sequence[float] = DEFAULT_ALPHA_GRID,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Ridge regression `[N, D] -> [N, T]` with `alpha` chosen on a seeded `validation_fraction` of the training
    rows by `score(predictions, targets, rows)` (higher is better; `rows`: their indices in the training data), then
    refit on all of them.

    Returns `(test predictions [M, T], {"alpha", "validation_score"})`.
    """
    from sklearn.linear_model import Ridge

    model, alpha, value = fit_with_validation(
        Ridge(), "alpha", sorted(alpha_grid, reverse=True), (train_features, train_targets), None,
        lambda fitted, x, y, rows: score(fitted.predict(x), y, rows), validation_fraction=validation_fraction,
        seed=seed,
    )
    return model.predict(test_features), {"alpha": alpha, "validation_score": value}


def knn_predict(
    train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, k: int = 10,
    chunk_size: int = 1024,
) -> np.ndarray:
    """k-NN predictions `[M]` for `test_features [M, D]` from `train_features [N, D]` with labels `[N]` in
    `0..C-1`: the k most cosine-similar training rows vote with equal weight; ties go to the smallest label."""
    if k < 1:
        raise UsageError(f"k must be positive, got {k}.")
    train = F.normalize(torch.from_numpy(np.ascontiguousarray(train_features, dtype=np.float32)), dim=1)
    labels = torch.from_numpy(np.array(train_labels, dtype=np.int64))  # a writable copy
    num_classes, k = int(labels.max()) + 1, min(k, len(train))
    predictions = []
    for start in range(0, len(test_features), chunk_size):
        chunk = torch.from_numpy(np.ascontiguousarray(test_features[start:start + chunk_size], dtype=np.float32))
        neighbours = (F.normalize(chunk, dim=1) @ train.T).topk(k, dim=1).indices
        votes = torch.zeros(len(chunk), num_classes).scatter_add_(1, labels[neighbours], torch.ones(neighbours.shape))
        predictions.append(votes.argmax(dim=1))  # the first maximum: the smallest label among ties
    return torch.cat(predictions).numpy()


__all__ = [
    "DEFAULT_ALPHA_GRID",
    "DEFAULT_C_GRID",
    "DEFAULT_PATIENCE",
    "fit_with_validation",
    "knn_predict",
    "linear_probe",
    "require_probe_classes",
    "ridge_regression",
    "validation_split",
]
