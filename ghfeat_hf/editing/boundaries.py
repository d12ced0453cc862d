"""Attribute boundaries in GH-Feat space: learn, save, load, check, condition and apply them.

A boundary is the unit normal ``n`` of a linear classifier (linear SVM or logistic regression) separating the
codes of images with and without a binary attribute, over the concatenated codes of chosen layers (the
[`flatten_codes`] layout, ``D = sum_{l in layers} 2C_l``); it points towards the attribute. Moving codes along it,
``codes + strength * std * n``, adds (``strength > 0``) or removes the attribute; ``std`` is the standard
deviation of the training codes along ``n``, so strengths are in units of the data's own spread.

Conditioning on other boundaries ([`condition_boundary`]) projects their normals out of ``n``, giving ``n'``.
``n'`` is no classifier's normal, so it has no ``offset`` (``distance`` refuses) and no spread of its own: it keeps
the primary's ``std`` as the step unit. A strength thus moves the codes as far as unconditioned (``strength * std``)
and changes the primary's signed distance by ``strength * std * cos(n, n')``.

Files are safetensors with one tensor ``normal`` ``[D]`` and string metadata: ``attribute``, ``layers``,
``style_dims``, ``accuracy`` / ``balanced_accuracy`` (held-out), ``offset`` (``null`` once conditioned), ``std``,
``method``, ``num_train``, ``num_test``, ``model_fingerprint``, ``conditioned_on``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from tqdm.auto import tqdm

from ..errors import UsageError
from ..files import restore_default_file_mode
from ..modeling_stylegan import StyleCodes
from ..runtime import model_fingerprint
from ..version import __version__
from .codes import concat_codes, encode_images, flatten_codes, shift_codes

BOUNDARY_FORMAT = "ghfeat-boundary"
BOUNDARY_METHODS = ("svm", "logistic")


@dataclass(frozen=True)
class Boundary:
    """An attribute direction over the codes of ``layers`` (see the module docstring).

    ``normal`` ``[D]`` (unit length, float32); ``style_dims`` the widths ``2C_l`` of ``layers``; ``offset`` makes
    ``codes . normal + offset`` the signed distance to the classifier's decision boundary; ``std`` is the unit of
    strengths; ``accuracy`` / ``balanced_accuracy`` were measured on held-out codes (``None`` without any).
    A conditioned boundary (``conditioned_on``) has ``offset = None`` and keeps the primary classifier's ``std``
    (the step unit) and accuracies.
    """

    normal: torch.Tensor
    layers: tuple[int, ...]
    style_dims: tuple[int, ...]
    attribute: str = "attribute"
    offset: float | None = 0.0
    std: float = 1.0
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    method: str = "svm"
    num_train: int = 0
    num_test: int = 0
    model_fingerprint: str | None = None
    conditioned_on: tuple[str, ...] = field(default_factory=tuple)

    def distance(self, codes: StyleCodes) -> torch.Tensor:
        """Signed distance ``[N]`` of codes to the decision boundary (positive on the attribute's side); a
        ``UsageError`` for a boundary without ``offset`` (a conditioned one)."""
        if self.offset is None:
            conditions = f" (conditioned on {', '.join(self.conditioned_on)})" if self.conditioned_on else ""
            raise UsageError(f"the boundary {self.attribute!r}{conditions} has no decision offset: its normal is not "
                             "the classifier's, so it measures no distance; use the unconditioned boundary.")
        flat = flatten_codes(codes, self.layers).float()
        return flat @ self.normal.to(flat.device) + self.offset


def binary_labels(values: Sequence[Any], positive: Sequence[Any] | None = None,
                  names: Sequence[str] | None = None) -> np.ndarray:
    """``[N]`` bool labels from an attribute column: with ``positive``, whether each value is one of them (class
    names are matched through ``names``, a ``ClassLabel``'s names); without, the values must be booleans or 0/1."""
    values = list(values)
    if positive is None:
        distinct = set(values)
        if not distinct <= {0, 1}:  # True == 1, False == 0
            shown = ", ".join(sorted(map(str, distinct))[:8])
            raise UsageError(f"the attribute column holds values such as {shown}; give the positive values "
                             "(e.g. --positive 5,7,9) or use a boolean or 0/1 column.")
        return np.asarray(values, dtype=bool)
    wanted = {str(value).strip() for value in positive}
    if names is not None:  # a ClassLabel column stores indices: accept class names and indices
        unknown = sorted(wanted - set(names) - {str(index) for index in range(len(names))})
        if unknown:
            raise UsageError(f"unknown positive values {unknown}; the classes are {', '.join(names)} "
                             f"(or their indices 0-{len(names) - 1}).")
        wanted = {str(names.index(value)) if value in names else value for value in wanted}
    return np.asarray([str(value) in wanted for value in values], dtype=bool)


def _fit(features: np.ndarray, labels: np.ndarray, method: str, regularization: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if method == "svm":
        classifier = LinearSVC(C=regularization, class_weight="balanced", max_iter=20000, random_state=seed)
    else:
        classifier = LogisticRegression(C=regularization, class_weight="balanced", max_iter=5000)
    return classifier.fit(features, labels)


def _check_split(counts: np.ndarray, test_fraction: float) -> None:
    """A ``UsageError`` unless a stratified split holding out ``test_fraction`` of codes with class ``counts``
    ``[2]`` is sure to leave both classes on both sides (each class's share of each side must be >= 1 code)."""
    total = int(counts.sum())
    held_out = math.ceil(test_fraction * total)  # scikit-learn's rounding
    smallest_side = min(held_out, total - held_out)
    if counts.min() * smallest_side >= total:
        return
    need = f"at least {math.ceil(total / smallest_side)} codes of each class" if smallest_side else "more codes"
    raise UsageError(f"{total} codes ({counts[1]} with and {counts[0]} without the attribute) are too few to hold "
                     f"out {test_fraction:g} of them: the {held_out} held-out and {total - held_out} training codes "
                     f"must each include both classes, which needs {need}. Use more images or another held-out "
                     "fraction.")


def learn_boundary(
    codes: StyleCodes,
    labels: Sequence[bool] | np.ndarray | torch.Tensor,
    layers: Sequence[int] | None = None,
    *,
    attribute: str = "attribute",
    method: str = "svm",
    test_fraction: float = 0.2,
    regularization: float = 1.0,
    seed: int = 0,
    model=None,
) -> Boundary:
    """Learn a [`Boundary`] from codes (tuple of ``[N, 2C_l]``) and binary ``labels`` ``[N]``.

    A stratified ``test_fraction`` of the codes is held out to measure the accuracy (a ``UsageError`` when there
    are too few codes of a class for both sides to hold both classes); the classifier (``method``
    ``"svm"`` or ``"logistic"``, balanced class weights, inverse regularization ``regularization``) is fitted on
    the rest, over the codes of ``layers`` (default: all). ``model`` (a [`GHFeatModel`]) stores its fingerprint
    so that the boundary is later applied only with it.
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split

    if method not in BOUNDARY_METHODS:
        raise UsageError(f"unknown boundary method {method!r}; use one of {', '.join(BOUNDARY_METHODS)}.")
    if not 0 <= test_fraction < 1:
        raise UsageError(f"the held-out fraction must be in [0, 1), got {test_fraction}.")
    layers = sorted(range(len(codes)) if layers is None else set(layers))
    features = flatten_codes(codes, layers).detach().double().cpu().numpy()
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(bool).reshape(-1)
    if len(labels) != len(features):
        raise UsageError(f"{len(labels)} labels for {len(features)} codes.")
    counts = np.bincount(labels.astype(int), minlength=2)
    if counts.min() < 2:
        raise UsageError(f"a boundary needs at least 2 codes of each class, got {counts[1]} with and {counts[0]} "
                         "without the attribute.")
    if test_fraction > 0:
        _check_split(counts, test_fraction)
        train_x, test_x, train_y, test_y = train_test_split(features, labels, test_size=test_fraction,
                                                            random_state=seed, stratify=labels)
    else:
        train_x, test_x, train_y, test_y = features, features[:0], labels, labels[:0]
    classifier = _fit(train_x, train_y, method, regularization, seed)
    weights = classifier.coef_.reshape(-1)
    norm = float(np.linalg.norm(weights))
    if norm == 0:
        raise UsageError("the classifier found no direction (all weights are zero); check the labels.")
    normal = weights / norm
    accuracy = balanced = None
    if len(test_y):
        predicted = classifier.predict(test_x)
        accuracy = float(np.mean(predicted == test_y))
        balanced = float(balanced_accuracy_score(test_y, predicted))
    return Boundary(
        normal=torch.from_numpy(normal).float(), layers=tuple(layers),
        style_dims=tuple(codes[layer].shape[1] for layer in layers), attribute=attribute,
        offset=float(classifier.intercept_.reshape(-1)[0]) / norm, std=float(np.std(train_x @ normal)) or 1.0,
        accuracy=accuracy, balanced_accuracy=balanced, method=method, num_train=len(train_y), num_test=len(test_y),
        model_fingerprint=model_fingerprint(model) if model is not None else None,
    )


def labelled_codes(
    model,
    processor,
    dataset,
    attribute_column: str,
    positive: Sequence[Any] | None = None,
    *,
    image_column: str = "image",
    max_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[StyleCodes, np.ndarray]:
    """Encode the images of a ``datasets.Dataset`` and derive binary labels from ``attribute_column`` (see
    [`binary_labels`]); with ``max_samples``, a random subset (``seed``). Returns ``(codes, labels [N] bool)``."""
    for column in (image_column, attribute_column):
        if column not in dataset.column_names:
            raise UsageError(f"no column {column!r} in the dataset; columns: {', '.join(dataset.column_names)}.")
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(max_samples))
    feature = dataset.features[attribute_column]
    labels = binary_labels(dataset[attribute_column], positive, getattr(feature, "names", None))
    batches = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="encoding", disable=not progress):
        images = dataset[start:start + batch_size][image_column]
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        batches.append(encode_images(model, pixel_values, batch_size))
    return concat_codes(batches), labels


def save_boundary(boundary: Boundary, path: str | os.PathLike) -> None:
    """Write a [`Boundary`] as safetensors (the module docstring lists the metadata)."""
    metadata = {
        "format": BOUNDARY_FORMAT, "ghfeat_version": __version__, "attribute": boundary.attribute,
        "layers": json.dumps(list(boundary.layers)), "style_dims": json.dumps(list(boundary.style_dims)),
        "offset": json.dumps(boundary.offset), "std": repr(boundary.std), "accuracy": json.dumps(boundary.accuracy),
        "balanced_accuracy": json.dumps(boundary.balanced_accuracy), "method": boundary.method,
        "num_train": str(boundary.num_train), "num_test": str(boundary.num_test),
        "model_fingerprint": boundary.model_fingerprint or "", "conditioned_on": json.dumps(boundary.conditioned_on),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({"normal": boundary.normal.detach().float().cpu().contiguous()}, os.fspath(path), metadata=metadata)
    restore_default_file_mode(path)


def load_boundary(path: str | os.PathLike) -> Boundary:
    """Read a boundary written by [`save_boundary`]; a ``UsageError`` for anything else."""
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        normal = load_file(os.fspath(path))["normal"]
    except (OSError, SafetensorError, KeyError) as error:
        raise UsageError(f"cannot read a boundary from {os.fspath(path)!r}: {error}") from None
    if metadata.get("format") != BOUNDARY_FORMAT:
        raise UsageError(f"{os.fspath(path)!r} is not a GH-Feat boundary file (no format={BOUNDARY_FORMAT}).")
    try:
        boundary = Boundary(
            normal=normal.float(), layers=tuple(json.loads(metadata["layers"])),
            style_dims=tuple(json.loads(metadata["style_dims"])), attribute=metadata["attribute"],
            offset=json.loads(metadata["offset"]), std=float(metadata["std"]),
            accuracy=json.loads(metadata["accuracy"]), balanced_accuracy=json.loads(metadata["balanced_accuracy"]),
            method=metadata["method"], num_train=int(metadata["num_train"]), num_test=int(metadata["num_test"]),
            model_fingerprint=metadata["model_fingerprint"] or None,
            conditioned_on=tuple(json.loads(metadata["conditioned_on"])),
        )
    except KeyError as error:
        raise UsageError(f"the boundary file {os.fspath(path)!r} lacks the metadata {error}.") from None
    except (TypeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise UsageError(f"the boundary file {os.fspath(path)!r} has malformed metadata: {error}") from None
    if boundary.normal.ndim != 1 or len(boundary.normal) != sum(boundary.style_dims) or \
            len(boundary.layers) != len(boundary.style_dims):
        raise UsageError(f"the boundary file {os.fspath(path)!r} is inconsistent: a normal of shape "
                         f"{tuple(boundary.normal.shape)} for layers {list(boundary.layers)} of widths "
                         f"{list(boundary.style_dims)} (sum {sum(boundary.style_dims)}).")
    return boundary


def check_boundary(boundary: Boundary, model, allow_other_model: bool = False) -> None:
    """A ``UsageError`` unless ``boundary`` fits ``model``: its layers and widths must be the model's, and (unless
    ``allow_other_model``) it must have been learned with this very model."""
    style_dims = model.config.style_dims
    if any(not 0 <= layer < len(style_dims) for layer in boundary.layers) or \
            tuple(style_dims[layer] for layer in boundary.layers) != tuple(boundary.style_dims):
        raise UsageError(f"the boundary {boundary.attribute!r} covers layers {list(boundary.layers)} of widths "
                         f"{list(boundary.style_dims)}, which this model ({len(style_dims)} layers) does not have.")
    if not allow_other_model and boundary.model_fingerprint and boundary.model_fingerprint != model_fingerprint(model):
        raise UsageError(f"the boundary {boundary.attribute!r} was learned with another model (fingerprint "
                         f"{boundary.model_fingerprint}); learn it again with this model, or allow other models "
                         "(--allow-other-model) if it has the same generator and encoder.")


def condition_boundary(primary: Boundary, conditions: Sequence[Boundary]) -> Boundary:
    """``primary`` with the directions of ``conditions`` projected out (InterFaceGAN's conditional manipulation):
    moving along the result changes the primary attribute and leaves the conditioning ones (to first order).
    Linearly dependent conditions count once. The result has no ``offset`` and keeps ``primary.std`` as the step
    unit (see the module docstring)."""
    if not conditions:
        return primary
    for condition in conditions:
        if condition.layers != primary.layers:
            raise UsageError(f"the boundaries {primary.attribute!r} (layers {list(primary.layers)}) and "
                             f"{condition.attribute!r} (layers {list(condition.layers)}) cover different layers.")
    directions = torch.stack([condition.normal.double() for condition in conditions], dim=1)  # [D, K]
    vectors, singular_values, _ = torch.linalg.svd(directions, full_matrices=False)
    basis = vectors[:, singular_values > 1e-6 * singular_values[0]]  # drop linearly dependent directions
    normal = primary.normal.double() - basis @ (basis.T @ primary.normal.double())
    norm = float(normal.norm())
    if norm < 1e-6:
        raise UsageError(f"the direction of {primary.attribute!r} lies within the conditioning directions.")
    return replace(primary, normal=(normal / norm).float(), offset=None,
                   conditioned_on=primary.conditioned_on + tuple(condition.attribute for condition in conditions))


def manipulate_codes(
    codes: StyleCodes, boundary: Boundary, strengths: Sequence[float], layers: Sequence[int] | None = None
) -> list[StyleCodes]:
    """``codes`` moved by ``strength * boundary.std`` along the boundary normal, one result per strength.

    With ``layers`` (a subset of the boundary's), only those layers move, by their part of the same shift.
    """
    moving = set(boundary.layers if layers is None else layers)
    if not moving <= set(boundary.layers):
        raise UsageError(f"layers {sorted(moving - set(boundary.layers))} are not covered by the boundary "
                         f"{boundary.attribute!r} (layers {list(boundary.layers)}).")
    parts = torch.split(boundary.normal, list(boundary.style_dims))
    direction = torch.cat([part if layer in moving else torch.zeros_like(part)
                           for layer, part in zip(boundary.layers, parts)])
    return [shift_codes(codes, boundary.layers, float(strength) * boundary.std * direction) for strength in strengths]


__all__ = [
    "BOUNDARY_FORMAT",
    "BOUNDARY_METHODS",
    "Boundary",
    "binary_labels",
    "check_boundary",
    "condition_boundary",
    "labelled_codes",
    "learn_boundary",
    "load_boundary",
    "manipulate_codes",
    "save_boundary",
]
