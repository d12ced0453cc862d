"""Few-shot semantic segmentation with spatial features: spatial GH-Feat against its baselines.

Protocol (recorded in the report): for every shot count K and each of several seeded draws, K annotated training
images per class (or K images in all when the data has no class column) are drawn; every method fits the same
kind of head ([`ghfeat_hf.segmentation.head`]) on sampled pixels of those images and labels every test image at
the features' resolution; mIoU (mean over the labels present in the truth or the predictions), per-label IoU and
pixel accuracy come from the confusion matrix over the whole test split. The report gives each method's mean over
the draws with a 95% Student-t interval. The test features are extracted once per feature extractor and shared by
every head that reads them (the encoder pyramid baseline and spatial GH-Feat read the same forward pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from ..evaluation_report import OURS, EvaluationReport, MetricColumn, ProtocolItem
from ..segmentation.data import SegmentationData
from ..segmentation.features import SpatialFeatures
from ..segmentation.head import FitSettings, SegmentationHead, fit_head
from ..segmentation.labels import LabelSet, colorize
from ..segmentation.metrics import confusion_matrix, mean_iou, per_class_iou, pixel_accuracy
from ..segmentation.segmenter import annotated_rows, head_config, rows_of_sources, select_sources
from ..visualization import make_grid


@dataclass
class SegmentationMethod:
    """One row group of the report: a `name`, the spatial features it reads (`extractor`, shared between methods
    that use the same one) and which of their `sources` (indices; `None` for all)."""

    name: str
    extractor: SpatialFeatures
    sources: list[int] | None = None
    description: str = ""
    heads: dict[tuple[int, int], SegmentationHead] = field(default_factory=dict)
    confusions: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)


def student_interval(values: Sequence[float]) -> tuple[float, list[float], float]:
    """`(mean, [low, high], std)` of fractions `values`: the 95% Student-t interval of their mean, clipped to
    `[0, 1]` (a point for one value)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, [mean, mean], 0.0
    from scipy.stats import t

    std = float(values.std(ddof=1))
    half = float(t.ppf(0.975, len(values) - 1)) * std / np.sqrt(len(values))
    return mean, [max(mean - half, 0.0), min(mean + half, 1.0)], std


def draw_shots(data: SegmentationData, shots: int, seed: int) -> np.ndarray:
    """Sorted indices of `shots` images per class (all images when there are no classes), drawn without
    replacement (seeded)."""
    rng = np.random.default_rng(seed)
    if data.classes is None:
        if shots > len(data.images):
            raise UsageError(f"{shots} shots but only {len(data.images)} training images.")
        return np.sort(rng.choice(len(data.images), size=shots, replace=False))
    chosen = []
    for label in np.unique(data.classes):
        members = np.flatnonzero(data.classes == label)
        if shots > len(members):
            raise UsageError(f"{shots} shots but class {label} has only {len(members)} training images.")
        chosen.append(rng.choice(members, size=shots, replace=False))
    return np.sort(np.concatenate(chosen))


def _fit_heads(methods, train: SegmentationData, labels: LabelSet, draws_by_key, *, hidden, members,
               pixels_per_image, settings, batch_size, progress) -> None:
    """Every method's head for every (K, draw), on rows sampled once per image and shared by all draws."""
    used = np.unique(np.concatenate(list(draws_by_key.values())))
    position = {int(index): order for order, index in enumerate(used)}
    for extractor in {id(method.extractor): method.extractor for method in methods}.values():
        rows, targets = annotated_rows(extractor, [train.images[i] for i in used], [train.masks[i] for i in used],
                                       pixels_per_image=pixels_per_image, seed=settings.seed, batch_size=batch_size)
        bounds = np.concatenate([[0], np.cumsum([len(part) for part in rows])])
        users = [method for method in methods if method.extractor is extractor]
        for (shots, draw), chosen in tqdm(draws_by_key.items(), desc=f"fitting heads on {extractor.name}",
                                          disable=not progress):
            picked = [position[int(index)] for index in chosen]
            x = torch.cat([rows[order] for order in picked])
            y = torch.cat([targets[bounds[order]:bounds[order + 1]] for order in picked])
            for method in users:
                config = head_config(extractor, labels, hidden=hidden, members=members, sources=method.sources)
                method.heads[shots, draw] = fit_head(config, rows_of_sources(x, extractor.channels, method.sources), y,
                                                     FitSettings(**{**vars(settings), "seed": settings.seed + draw}))


def _predict_test(methods, test: SegmentationData, num_labels: int, figure_indices, *, batch_size, progress) -> dict:
    """Fill every method's confusion matrices over the test split; returns the predictions of `figure_indices`
    (`{(method name, K, draw): {index: mask}}`)."""
    kept: dict = {}
    wanted = set(int(index) for index in figure_indices)
    for extractor in {id(method.extractor): method.extractor for method in methods}.values():
        users = [method for method in methods if method.extractor is extractor]
        for start in tqdm(range(0, len(test.images), batch_size), desc=f"segmenting the test split ({extractor.name})",
                          disable=not progress):
            maps = extractor(test.images[start:start + batch_size])
            truth = torch.as_tensor(test.masks[start:start + batch_size]).long()
            for method in users:
                selected = select_sources(maps, method.sources)
                for key, head in method.heads.items():
                    predicted = head.predict(selected)
                    counts = confusion_matrix(predicted, truth, num_labels)
                    method.confusions[key] = method.confusions.get(key, 0) + counts
                    for index in wanted & set(range(start, start + len(truth))):
                        kept.setdefault((method.name, *key), {})[index] = predicted[index - start].numpy()
    return kept


def segmentation_figure(test: SegmentationData, labels: LabelSet, predictions: dict, method: str,
                        shots: Sequence[int], indices: Sequence[int], cell: int = 96) -> PIL.Image.Image:
    """A grid, one row per test image: the input, the ground truth and `method`'s prediction at each K (draw 0,
    columns labelled `K = k`)."""
    rows = []
    for index in indices:
        row = [test.images[index], colorize(test.masks[index], labels.palette)]
        row += [colorize(predictions[method, k, 0][index], labels.palette) for k in shots]
        rows.append(row)
    columns = ["input", "ground truth", *(f"K = {k}" for k in shots)]
    return make_grid(rows, columns, cell_size=cell, resample=PIL.Image.Resampling.NEAREST)


def evaluate_segmentation(
    methods: Sequence[SegmentationMethod],
    train: SegmentationData,
    test: SegmentationData,
    labels: LabelSet,
    *,
    shots: Sequence[int] = (1, 5, 10),
    draws: int = 5,
    hidden: int = 0,
    members: int = 1,
    pixels_per_image: int = 128,
    settings: FitSettings | None = None,
    batch_size: int = 100,
    progress: bool = True,
    figure_path: str | Path | None = None,
    figure_count: int = 6,
    data_info: dict | None = None,
) -> EvaluationReport:
    """mIoU, per-label IoU and pixel accuracy of every method at every shot count, mean and 95% interval over
    `draws` draws of the training images (see the module docstring). The first method is the evaluated one; the
    figure (`figure_path`) shows its predictions at the smallest and the largest K for `figure_count` test images
    (one per class when there are classes)."""
    settings = settings or FitSettings()
    if draws < 1 or not shots or min(shots) < 1:
        raise UsageError(f"segmentation needs at least one draw and shot counts >= 1, got draws={draws}, "
                         f"shots={list(shots)}.")
    draws_by_key = {(k, draw): draw_shots(train, k, settings.seed + 1000 * draw + k) for k in shots
                    for draw in range(draws)}
    _fit_heads(methods, train, labels, draws_by_key, hidden=hidden, members=members,
               pixels_per_image=pixels_per_image, settings=settings, batch_size=batch_size, progress=progress)
    if test.classes is not None:
        first = [int(np.flatnonzero(test.classes == label)[0]) for label in np.unique(test.classes)]
        figure_indices = first[:figure_count]
    else:
        figure_indices = list(range(min(figure_count, len(test.images))))
    predictions = _predict_test(methods, test, len(labels.names), figure_indices if figure_path else [],
                                batch_size=batch_size, progress=progress)
    rows = []
    for method in methods:
        for k in shots:
            confusions = [method.confusions[k, draw] for draw in range(draws)]
            miou, miou_ci, miou_std = student_interval([mean_iou(c) for c in confusions])
            accuracy, accuracy_ci, _ = student_interval([pixel_accuracy(c) for c in confusions])
            ious = np.nanmean(np.stack([per_class_iou(c) for c in confusions]), axis=0)
            rows.append({"features": method.name, "layers": method.description, "dim": sum(
                select_sources(method.extractor.channels, method.sources)), "shots": k, "miou": miou,
                "miou_ci95": miou_ci, "miou_std": miou_std, "pixel_accuracy": accuracy,
                "pixel_accuracy_ci95": accuracy_ci, "per_class_iou": dict(zip(labels.names, ious.tolist()))})
    rows.sort(key=lambda row: row["shots"])
    artifacts = {}
    if figure_path:
        figure = segmentation_figure(test, labels, predictions, methods[0].name, sorted({min(shots), max(shots)}),
                                     figure_indices)
        Path(figure_path).parent.mkdir(parents=True, exist_ok=True)
        figure.save(figure_path)
        artifacts["segmentation_grid"] = str(figure_path)
    per_class = "per class" if train.classes is not None else "in all"
    head = "linear" if not hidden else f"MLP (one hidden layer of {hidden}, ReLU)"
    protocol = [
        ProtocolItem("task", "few-shot semantic segmentation from frozen spatial features; the journal GH-Feat "
                     "reports the capability, its method details were not available, so this protocol and the "
                     "spatial expansion are this project's design", OURS),
        ProtocolItem("training images", f"K = {', '.join(map(str, shots))} annotated images {per_class}, {draws} "
                     f"seeded draws per K, the same draws for every method", OURS),
        ProtocolItem("head", f"{head} per pixel over the standardised hypercolumn (every source upsampled "
                     f"bilinearly to {methods[0].extractor.size} px){'' if members == 1 else f', {members} members'}; "
                     f"class-balanced cross-entropy, full-batch AdamW (lr {settings.learning_rate}, weight decay "
                     f"{settings.weight_decay}, {settings.steps} steps) on {pixels_per_image} pixels per image, "
                     "sampled inversely to their label's frequency in the image", OURS),
        ProtocolItem("metrics", "mIoU over the labels present in the truth or the prediction, and pixel accuracy, "
                     "from the confusion matrix of the whole test split", OURS),
        ProtocolItem("interval", f"95% Student-t interval of the mean over the {draws} draws", OURS),
    ]
    columns = [MetricColumn("shots", "K", "int"), MetricColumn("miou", "mIoU (%) [95% CI]", "pct_ci"),
               MetricColumn("pixel_accuracy", "pixel acc. (%) [95% CI]", "pct_ci")]
    extractors = [{**method.extractor.describe(), "method": method.name, "sources": method.sources}
                  for method in methods]
    return EvaluationReport(task="segmentation", model=extractors[0], data={**(data_info or {}),
                            "labels": labels.names}, protocol=protocol, columns=columns, rows=rows,
                            extractors=extractors, artifacts=artifacts)


__all__ = ["SegmentationMethod", "draw_shots", "evaluate_segmentation", "segmentation_figure",
           "student_interval"]
