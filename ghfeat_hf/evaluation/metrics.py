"""Metrics of the evaluation tasks, each a small pure function checked against an independent implementation.

* Images: [`ssim`] (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, no sample-covariance correction,
  averaged over the valid region and the channels); PSNR is [`ghfeat_hf.image_metrics.psnr`].
* Classification: [`wilson_interval`] and [`accuracy_with_ci`] (95% Wilson score interval).
* Retrieval: [`cosine_similarity`], [`average_precision`], [`retrieval_metrics`] (mAP and recall@k).
* Verification: [`best_threshold`] and [`kfold_verification`] (the LFW "unrestricted" 10-fold protocol).
* Landmarks: [`normalised_mean_error`] with [`interocular_distance`] or [`bbox_diagonal`] normalisers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


# ----------------------------------------------------------------------------------------------------------------
# Images


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A normalised 2-D Gaussian window `[size, size]` (sum 1)."""
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean structural similarity of each image pair.

    Args:
        x, y: images `[N, C, H, W]` with values in `[0, data_range]`; `H` and `W` at least `window_size`.

    Returns:
        `[N]` float64: the SSIM map (Gaussian-weighted local statistics) averaged over the positions where the
        window fits entirely (no padding) and over the channels. Equals scikit-image's `structural_similarity(...,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=...)`.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two [N, C, H, W] tensors of the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}.")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"images of {tuple(x.shape[-2:])} pixels are smaller than the {window_size}x{window_size} "
                         "window.")
    x, y = x.double(), y.double()
    channels = x.shape[1]
    window = gaussian_window(window_size, sigma).to(x.device).expand(channels, 1, window_size, window_size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


# ----------------------------------------------------------------------------------------------------------------
# Classification


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); `(0, 1)` for `total == 0`. The interval
    always contains `successes / total` (exactly 1 or 0 at the ends, where float round-off could exclude them)."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denominator
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def accuracy_with_ci(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float | list[float]]:
    """`{"accuracy", "ci95": [low, high]}`: the fraction of `predictions == labels` (both `[N]`) with its 95%
    Wilson score interval."""
    correct = int(np.sum(np.asarray(predictions) == np.asarray(labels)))
    return {"accuracy": correct / len(labels), "ci95": list(wilson_interval(correct, len(labels)))}


# ----------------------------------------------------------------------------------------------------------------
# Retrieval


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`[Na, Nb]` cosine similarities of the rows of `a [Na, D]` and `b [Nb, D]` (zero rows give 0)."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def average_precision(relevant_in_rank_order: np.ndarray) -> float:
    """AP of one ranked list: the mean, over the relevant items, of the precision at their rank. `NaN` when no item
    is relevant."""
    relevant = np.asarray(relevant_in_rank_order, dtype=bool)
    if not relevant.any():
        return math.nan
    hits_so_far = np.cumsum(relevant)[relevant]
    return float(np.mean(hits_so_far / (np.flatnonzero(relevant) + 1)))


def retrieval_metrics(
    query: torch.Tensor,
    gallery: torch.Tensor,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float | int]:
    """mAP and recall@k of cosine-similarity retrieval.

    Args:
        query, gallery: features `[Q, D]` and `[G, D]`. query_labels, gallery_labels: `[Q]`, `[G]`; a gallery item
            is relevant to a query when their labels are equal.

    Returns:
        `{"map", "recall@k" for each k, "num_queries"}`. The gallery is ranked by decreasing similarity (ties in
        gallery order). AP is taken over the full ranking; recall@k is the fraction of queries with at least one
        relevant item among the first k. Queries with no relevant gallery item are left out (`num_queries` counts
        the others).
    """
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    aps: list[float] = []
    hits_at = {k: 0 for k in ks}
    for start in range(0, len(query), chunk_size):
        similarity = cosine_similarity(query[start:start + chunk_size], gallery)
        order = torch.sort(similarity, dim=1, descending=True, stable=True).indices.cpu().numpy()
        relevant = gallery_labels[order] == query_labels[start:start + chunk_size, None]
        for row in relevant:
            if not row.any():
                continue
            aps.append(average_precision(row))
            first = int(np.argmax(row))
            for k in ks:
                hits_at[k] += first < k
    count = len(aps)
    result: dict[str, float | int] = {"map": float(np.mean(aps)) if count else math.nan}
    result.update({f"recall@{k}": hits_at[k] / count if count else math.nan for k in ks})
    result["num_queries"] = count
    return result


# ----------------------------------------------------------------------------------------------------------------
# Verification


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """`(threshold, accuracy)` maximising the accuracy of `scores > threshold` as a "same" decision.

    The candidates are the midpoints between consecutive distinct scores plus one below the lowest and one above
    the highest score, so the optimum over all thresholds is found exactly; ties go to the lowest threshold.
    """
    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    # accuracy(t) = (#same with score > t + #different with score <= t) / n, for every candidate at once
    order = np.sort(scores[same]), np.sort(scores[~same])
    same_above = len(order[0]) - np.searchsorted(order[0], candidates, side="right")
    different_below = np.searchsorted(order[1], candidates, side="right")
    accuracy = (same_above + different_below) / len(scores)
    best = int(np.argmax(accuracy))
    return float(candidates[best]), float(accuracy[best])


def kfold_verification(fold_scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """K-fold verification accuracy with the threshold chosen on the other folds (the LFW protocol).

    Args:
        fold_scores: `[K, P]`: row `k` holds the similarity of every pair as computed when fold `k` is the test
            fold (for instance with features normalised on the other folds); identical rows are fine.
        same: `[P]` booleans, the pair shows the same identity / object.
        folds: `[P]` fold index in `0..K-1`.

    Returns:
        `{"accuracy": mean over folds, "std": sample standard deviation over folds, "stderr": std / sqrt(K),
        "fold_accuracies", "thresholds"}`.
    """
    same, folds = np.asarray(same, dtype=bool), np.asarray(folds)
    num_folds = len(fold_scores)
    accuracies, thresholds = [], []
    for fold in range(num_folds):
        test = folds == fold
        if not test.any() or test.all():
            raise ValueError(f"fold {fold} must hold some pairs but not all of them.")
        threshold, _ = best_threshold(fold_scores[fold][~test], same[~test])
        accuracies.append(float(np.mean((fold_scores[fold][test] > threshold) == same[test])))
        thresholds.append(threshold)
    std = float(np.std(accuracies, ddof=1)) if num_folds > 1 else 0.0
    return {"accuracy": float(np.mean(accuracies)), "std": std, "stderr": std / math.sqrt(num_folds),
            "fold_accuracies": accuracies, "thresholds": thresholds}


# ----------------------------------------------------------------------------------------------------------------
# Landmarks


def interocular_distance(keypoints: np.ndarray, left_eye: int, right_eye: int) -> np.ndarray:
    """`[N]` distances between the points `left_eye` and `right_eye` of `keypoints [N, K, 2]`."""
    return np.linalg.norm(keypoints[:, left_eye] - keypoints[:, right_eye], axis=-1)


def bbox_diagonal(keypoints: np.ndarray) -> np.ndarray:
    """`[N]` diagonals of the bounding boxes of `keypoints [N, K, 2]`."""
    return np.linalg.norm(keypoints.max(axis=1) - keypoints.min(axis=1), axis=-1)


def normalised_mean_error(predicted: np.ndarray, target: np.ndarray, normaliser: np.ndarray) -> np.ndarray:
    """`[N]` NME: the mean point-to-point Euclidean error of `predicted` vs `target` (`[N, K, 2]`) divided by
    `normaliser [N]` (for instance the inter-ocular distance)."""
    errors = np.linalg.norm(np.asarray(predicted, np.float64) - np.asarray(target, np.float64), axis=-1)
    return errors.mean(axis=1) / np.asarray(normaliser, np.float64)


__all__ = [
    "Z_95",
    "accuracy_with_ci",
    "average_precision",
    "bbox_diagonal",
    "best_threshold",
    "cosine_similarity",
    "gaussian_window",
    "interocular_distance",
    "kfold_verification",
    "normalised_mean_error",
    "retrieval_metrics",
    "ssim",
    "wilson_interval",
]
