"""Segmentation metrics from a confusion matrix: per-class IoU, mean IoU and pixel accuracy.

`confusion[t, p]` counts the pixels of true label `t` predicted as `p`. The IoU of label `c` is
`confusion[c, c] / (row_c + column_c - confusion[c, c])`; labels absent from both the truth and the prediction
have no IoU (NaN) and are left out of the mean; pixel accuracy is the trace over the total.
"""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, num_labels: int) -> np.ndarray:
    """`[L, L]` int64 counts of (true, predicted) label pairs over label maps of the same shape (any shape)."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} label maps differ.")
    pairs = target.reshape(-1).long() * num_labels + predicted.reshape(-1).long()
    return torch.bincount(pairs, minlength=num_labels * num_labels).reshape(num_labels, num_labels).cpu().numpy()


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """`[L]` float64 IoU of every label; NaN where the label is neither true nor predicted anywhere."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """The mean of [`per_class_iou`] over the labels that have one."""
    ious = per_class_iou(confusion)
    return float(np.nanmean(ious)) if np.any(~np.isnan(ious)) else float("nan")


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Correct pixels over all pixels."""
    confusion = np.asarray(confusion)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


__all__ = ["confusion_matrix", "mean_iou", "per_class_iou", "pixel_accuracy"]
