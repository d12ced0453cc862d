"""Landmark (keypoint) regression with frozen features and its normalised mean error.

Keypoints are read either from `<name>_x` / `<name>_y` column pairs (the CelebA / MAFL layout, which also names
the points) or from one column of `[K, 2]` (or flat `[2K]`) values with names given separately; coordinates are
pixels of the stored image. The test split is read with the training split's point names. A ridge regression maps
z-scored features to the coordinates relative to the image size; the NME (of the test split, and of the held-out
rows that choose the ridge penalty) divides the mean point error in pixels by the inter-ocular distance when a
left and a right eye point are named, else by the diagonal of the ground-truth points' bounding box.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ..errors import UsageError
from ..evaluation_report import OURS, PAPER, PAPER_UNVERIFIED, EvaluationReport, MetricColumn, ProtocolItem
from .extractors import FeatureExtractor
from .features import ExtractionOptions, FeatureStore, feature_views, standardize
from .metrics import bbox_diagonal, interocular_distance, normalised_mean_error
from .probes import DEFAULT_ALPHA_GRID, DEFAULT_PATIENCE, ridge_regression
from .splits import column_values, describe_data, require_columns


def keypoint_columns(column_names: Sequence[str]) -> list[str]:
    """Names `n` with both `n_x` and `n_y` columns, in column order."""
    names = [column[:-2] for column in column_names if column.endswith("_x")]
    return [name for name in names if f"{name}_y" in column_names]


def read_keypoints(
    dataset, keypoints_column: str | None = None, keypoint_names: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """`(keypoints [N, K, 2] float64, names)` from `keypoints_column` (`[K, 2]` or `[2K]` per row; names from
    `keypoint_names`, else `p0, p1, ...`) or, without it, from the `<name>_x` / `<name>_y` column pairs of
    `keypoint_names` (default: every such pair, in column order)."""
    if keypoints_column is None:
        names = list(keypoint_names or keypoint_columns(dataset.column_names))
        if not names:
            raise UsageError("no keypoints: pass keypoints_column (--keypoints-column) or provide <name>_x / <name>_y "
                             f"columns; the dataset has {dataset.column_names}.")
        require_columns(dataset, *(f"{name}_{axis}" for name in names for axis in "xy"), role="keypoint column")
        points = np.stack([np.stack([column_values(dataset, f"{name}_{axis}") for axis in "xy"], axis=-1)
                           for name in names], axis=1)
        return points.astype(np.float64), names
    require_columns(dataset, keypoints_column, role="keypoints column")
    values = np.asarray(column_values(dataset, keypoints_column), dtype=np.float64)
    if values.ndim == 2 and values.shape[1] % 2 == 0:
        values = values.reshape(len(values), -1, 2)
    if values.ndim != 3 or values.shape[2] != 2:
        raise UsageError(f"column {keypoints_column!r} must hold [K, 2] or [2K] coordinates per row, "
                         f"got {values.shape[1:]}.")
    names = list(keypoint_names) if keypoint_names else [f"p{index}" for index in range(values.shape[1])]
    if len(names) != values.shape[1]:
        raise UsageError(f"{len(names)} keypoint names for {values.shape[1]} keypoints.")
    return values, names


def eye_points(names: Sequence[str]) -> tuple[int, int] | None:
    """Indices of the left and right eye points (names such as `left_eye`, `lefteye`, `right_eye_center`), or
    `None` unless exactly one of each is named."""
    normalised = [re.sub(r"[^a-z]", "", name.lower()) for name in names]
    left = [i for i, name in enumerate(normalised) if "left" in name and "eye" in name]
    right = [i for i, name in enumerate(normalised) if "right" in name and "eye" in name]
    return (left[0], right[0]) if len(left) == 1 and len(right) == 1 else None


def evaluate_landmarks(
    extractors: Sequence[FeatureExtractor],
    train,
    test,
    *,
    image_column: str = "image",
    keypoints_column: str | None = None,
    keypoint_names: Sequence[str] | None = None,
    layer_groups: Sequence[str] | None = None,
    alpha_grid: Sequence[float] = DEFAULT_ALPHA_GRID,
    validation_fraction: float = 0.1,
    seed: int = 0,
    options: ExtractionOptions | None = None,
    dataset_name: str | None = None,
) -> EvaluationReport | None:
    """NME of a linear keypoint regressor on every extractor (and layer group).

    Args:
        extractors: the evaluated model first, then the baselines.
        train, test: `datasets.Dataset` splits with images and keypoints (see [`read_keypoints`]); the test split
            is read with the training split's point names (`keypoint_names`, or its `<name>_x` / `<name>_y` pairs).
        alpha_grid, validation_fraction, seed: the ridge penalty is chosen by NME (in pixels, as reported) on a
            seeded held-out part of the training split, then the regressor is refit on all of it.

    Returns:
        The [`EvaluationReport`] (rows with `nme`, `ridge_alpha` and its held-out `ridge_validation_nme`); `None`
        on non-main processes.
    """
    splits = {"train": train, "test": test}
    keypoints, names = {}, keypoint_names
    for role, dataset in splits.items():  # the test split with the training split's names
        require_columns(dataset, image_column, role="image column")
        try:
            keypoints[role], names = read_keypoints(dataset, keypoints_column, names)
        except UsageError as error:
            raise UsageError(f"{role} split: {error}") from error
    eyes = eye_points(names)

    views = feature_views(extractors, layer_groups)
    store = FeatureStore(extractors, options)
    store.extract_all(splits, [image_column])
    if not store.options.is_main_process:
        return None

    # the regressor predicts relative coordinates, so images of any size share it; errors are measured in pixels
    sizes = {role: store.get(extractors[0], dataset, role, image_column).image_sizes[:, None, :].astype(np.float64)
             for role, dataset in splits.items()}

    def pixel_nme(relative: np.ndarray, role: str, rows: np.ndarray | slice = slice(None)) -> float:
        """The mean NME of relative predictions `[n, 2K]` of the keypoints of `role`'s rows `rows`."""
        target = keypoints[role][rows]
        predicted = relative.reshape(len(target), -1, 2) * sizes[role][rows]
        normaliser = interocular_distance(target, *eyes) if eyes else bbox_diagonal(target)
        return float(np.mean(normalised_mean_error(predicted, target, normaliser)))

    rows = []
    for view in store.progress(views, "landmarks"):
        tables = {role: store.get(view.extractor, dataset, role, image_column) for role, dataset in splits.items()}
        train_x, test_x = standardize(view.select(tables["train"].features), view.select(tables["test"].features))
        relative = (keypoints["train"] / sizes["train"]).reshape(len(train_x), -1)
        predicted, info = ridge_regression(
            train_x, relative, test_x, lambda predictions, _targets, held: -pixel_nme(predictions, "train", held),
            alpha_grid=alpha_grid, validation_fraction=validation_fraction, seed=seed)
        rows.append(view.row(train_x, nme=pixel_nme(predicted, "test"), ridge_alpha=info["alpha"],
                             ridge_validation_nme=-info["validation_score"]))

    normaliser_text = (f"inter-ocular distance (points {names[eyes[0]]!r} and {names[eyes[1]]!r})" if eyes else
                       "diagonal of the ground-truth keypoints' bounding box (no left / right eye points named)")
    protocol = [
        ProtocolItem("task", "landmark detection with frozen features", PAPER),
        ProtocolItem("regressor", "a linear regressor from features to keypoints (MAFL)", PAPER_UNVERIFIED,
                     "the paper's exact protocol could not be checked"),
        ProtocolItem("ridge regression", f"on z-scored features (training statistics) to x / width, y / height; "
                     f"alpha from {sorted(alpha_grid, reverse=True)}, tried downwards until {DEFAULT_PATIENCE} in a "
                     f"row do not improve, chosen by NME on a {validation_fraction:.0%} held-out part of the training "
                     f"split (seed {seed}; NME in pixels, as below), then refit on all of it", OURS),
        ProtocolItem("NME normaliser", normaliser_text, PAPER_UNVERIFIED if eyes else OURS),
        ProtocolItem("NME", "mean over images of the mean point-to-point error (stored-image pixels) divided by the "
                     "normaliser, in %", PAPER_UNVERIFIED if eyes else OURS),
    ]
    columns = [MetricColumn("nme", "NME (%)", "pct"), MetricColumn("ridge_alpha", "ridge alpha", "g")]
    data = describe_data(dataset_name, splits, image_column=image_column, keypoints=names,
                         keypoints_column=keypoints_column)
    return store.report("landmarks", data=data, protocol=protocol, columns=columns, rows=rows)


__all__ = ["eye_points", "evaluate_landmarks", "keypoint_columns", "read_keypoints"]
