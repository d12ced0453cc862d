"""Image classification with frozen features: a linear probe and a k-NN classifier.

Protocol (each detail is recorded in the report): features of the chosen layer groups, z-scored with the training
split's statistics; a logistic-regression probe (multinomial, or binary for two classes; L2, lbfgs) whose inverse
regularisation `C` is chosen by accuracy on a validation split (a stratified, seeded 10% of the training split
unless one is given; candidates tried upwards until two in a row do not improve), then refit on the whole
training split; a k-NN classifier (k = 10, cosine similarity, majority vote) over the training split; test
accuracies with 95% Wilson score intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..evaluation_report import OURS, PAPER, PAPER_UNVERIFIED, EvaluationReport, MetricColumn, ProtocolItem
from .extractors import FeatureExtractor
from .features import ExtractionOptions, FeatureStore, feature_views, standardize
from .metrics import accuracy_with_ci
from .probes import DEFAULT_C_GRID, DEFAULT_PATIENCE, knn_predict, linear_probe, require_probe_classes
from .splits import class_names, describe_data, encode_labels, require_columns


def evaluate_classification(
    extractors: Sequence[FeatureExtractor],
    train,
    test,
    *,
    validation=None,
    image_column: str = "image",
    label_column: str = "label",
    layer_groups: Sequence[str] | None = None,
    k: int = 10,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    validation_fraction: float = 0.1,
    max_iter: int = 1000,
    seed: int = 0,
    options: ExtractionOptions | None = None,
    dataset_name: str | None = None,
) -> EvaluationReport | None:
    """Linear-probe and k-NN accuracy of every extractor (and layer group) on a labelled image dataset.

    Args:
        extractors: the evaluated model first (a [`GHFeatExtractor`]), then the baselines.
        train, test: `datasets.Dataset` splits with `image_column` and `label_column` (any hashable labels; no
            nulls, no -1 in a `ClassLabel` column, two classes or more in `train`).
        validation: an optional validation split for the probe's `C` (else `validation_fraction` of `train`).
        layer_groups: `["all"]` by default; GH-Feat extractors are evaluated per group (see
            [`ghfeat_hf.runtime.parse_layer_groups`]), the other extractors once on all their features.
        k: neighbours of the k-NN classifier. c_grid, max_iter, seed: see [`linear_probe`].
        options: extraction options (batch size, cache); dataset_name: the data's name in the report.

    Returns:
        The [`EvaluationReport`] (rows with `linear_probe`, `knn` and their `_ci95`, `probe_C`; its data records
        `num_classes`, the classes present in the splits, and their `class_names` when the column is a
        `ClassLabel`); `None` on the non-main processes of a multi-process run (they only extract features).

    Raises:
        [`UsageError`] before any extraction for missing labels (see [`label_values`]) or when the probe cannot be
        fitted (see [`require_probe_classes`]).
    """
    splits = {"train": train, "test": test, **({"validation": validation} if validation is not None else {})}
    for dataset in splits.values():
        require_columns(dataset, image_column, role="image column")
        require_columns(dataset, label_column, role="label column")
    labels, classes = encode_labels(splits, label_column)
    require_probe_classes(labels["train"], None if validation is not None else validation_fraction, seed)
    views = feature_views(extractors, layer_groups)
    store = FeatureStore(extractors, options)
    store.extract_all(splits, [image_column])
    if not store.options.is_main_process:
        return None

    rows, notes = [], []
    for view in store.progress(views, "classification"):
        features = {role: view.select(store.get(view.extractor, dataset, role, image_column).features)
                    for role, dataset in splits.items()}
        extra = [features["validation"]] if validation is not None else []
        train_x, test_x, *val_x = standardize(features["train"], features["test"], *extra)
        validation_pair = (val_x[0], labels["validation"]) if validation is not None else None
        predictions, info = linear_probe(train_x, labels["train"], test_x, c_grid=c_grid, validation=validation_pair,
                                         validation_fraction=validation_fraction, max_iter=max_iter, seed=seed)
        if not info["converged"]:
            notes.append(f"{view.extractor.name} [{view.group}]: the probe did not converge in {max_iter} iterations.")
        probe = accuracy_with_ci(predictions, labels["test"])
        knn = accuracy_with_ci(knn_predict(train_x, labels["train"], test_x, k), labels["test"])
        rows.append(view.row(train_x, linear_probe=probe["accuracy"], linear_probe_ci95=probe["ci95"],
                             knn=knn["accuracy"], knn_ci95=knn["ci95"], probe_C=info["C"],
                             probe_validation_accuracy=info["validation_accuracy"]))

    probe_kind = "multinomial" if len(np.unique(labels["train"])) > 2 else "binary"  # what scikit-learn fits
    validation_text = ("the given validation split" if validation is not None else
                       f"a stratified {validation_fraction:.0%} of the training split (seed {seed}), then refit on the "
                       "whole training split")
    protocol = [
        ProtocolItem("features", "GH-Feat style codes of the layer group, concatenated (all layers: the compact "
                     "vector); baselines: their own features", PAPER),
        ProtocolItem("classifiers", "linear probe and k-NN on frozen features", PAPER_UNVERIFIED,
                     "the paper's exact protocol could not be checked"),
        ProtocolItem("standardisation", "z-score with the training split's mean and standard deviation", OURS),
        ProtocolItem("linear probe", f"{probe_kind} logistic regression, L2, lbfgs (max_iter {max_iter}); C from "
                     f"{sorted(c_grid)}, tried upwards with warm starts until {DEFAULT_PATIENCE} in a row do not "
                     f"improve, chosen by accuracy on {validation_text}", OURS),
        ProtocolItem("k-NN", f"k = {k}, cosine similarity, majority vote (ties: smallest label), the training split "
                     "as memory", OURS),
        ProtocolItem("confidence interval", "95% Wilson score interval of the test accuracy", OURS),
    ]
    columns = [MetricColumn("linear_probe", "linear probe acc. (%) [95% CI]", "pct_ci"),
               MetricColumn("knn", f"{k}-NN acc. (%) [95% CI]", "pct_ci"), MetricColumn("probe_C", "probe C", "g")]
    names = class_names(train, label_column)  # every name the ClassLabel defines; the report lists those present
    data = describe_data(dataset_name, splits, image_column=image_column, label_column=label_column,
                         num_classes=len(classes),
                         class_names=None if names is None else [names[label] for label in classes])
    return store.report("classification", data=data, protocol=protocol, columns=columns, rows=rows, notes=notes)


__all__ = ["evaluate_classification"]
