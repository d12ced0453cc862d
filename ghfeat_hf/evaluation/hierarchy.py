"""Is the hierarchy real? Class transfer under style mixing, judged by a domain classifier.

For pairs of test images A and B of different classes, A's style codes get one layer group (coarse, middle or fine)
from B and are decoded; a [`DomainClassifier`] trained on the real images says which class the result shows. If
coarse layers carry shape, "A with B's coarse layers" shows B's class; if fine layers carry appearance only, "A with
B's fine layers" keeps A's class. Reference rows: the classifier on the inputs themselves (its accuracy) and on the
plain reconstructions of A. Given the model's StyleGAN generator, the same groups are also mixed between pairs of the
generator's own samples (w of two latents, classes as judged on the samples): what the generator does with mixed
codes, with no encoder involved, so a low rate can be told apart from an encoder that misplaces shape.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from ..configuration_ghfeat import GHFeatConfig
from ..editing.codes import decode_codes, describe_layers, encode_images, mix_style_codes
from ..errors import UsageError
from ..evaluation_report import OURS, EvaluationReport, MetricColumn, ProtocolItem
from ..image_io import to_pil_image
from ..modeling_stylegan import StyleGANGenerator
from ..runtime import autocast_context, parse_layer_groups
from ..visualization import enlarged_cell_size, make_grid
from .domain_classifier import DomainClassifier
from .extractors import GHFeatExtractor
from .metrics import wilson_interval
from .splits import class_names, describe_data, label_values, require_columns

DEFAULT_GROUPS = ("coarse", "middle", "fine")


def sample_pairs(labels: np.ndarray, num_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`(a [P], b [P])` row indices: `a` drawn without replacement (with replacement once every row is used), each
    `b` drawn uniformly among the rows whose label differs from `a`'s. Seeded, so every model sees the same pairs."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise UsageError("style-mixing transfer needs images of at least two classes.")
    rng = np.random.default_rng(seed)
    a = rng.choice(len(labels), num_pairs, replace=num_pairs > len(labels))
    b = np.empty_like(a)
    for index, row in enumerate(a):
        candidates = np.flatnonzero(labels != labels[row])
        b[index] = candidates[rng.integers(len(candidates))]
    return a, b


def _rates(predicted: np.ndarray, labels_a: np.ndarray, labels_b: np.ndarray) -> dict[str, float | list[float]]:
    total = len(predicted)
    takes_b, keeps_a = int(np.sum(predicted == labels_b)), int(np.sum(predicted == labels_a))
    return {"takes_b": takes_b / total, "takes_b_ci95": list(wilson_interval(takes_b, total)),
            "keeps_a": keeps_a / total, "keeps_a_ci95": list(wilson_interval(keeps_a, total)),
            "neither": (total - takes_b - keeps_a) / total}


def evaluate_style_mixing(
    extractor: GHFeatExtractor,
    dataset,
    classifier: DomainClassifier,
    *,
    image_column: str = "image",
    label_column: str = "label",
    num_pairs: int = 1000,
    layer_groups: Sequence[str] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    grid_path: str | os.PathLike | None = None,
    grid_pairs: int = 6,
    dataset_name: str | None = None,
    generator: StyleGANGenerator | None = None,
) -> EvaluationReport:
    """Class-transfer rates of style mixing over `num_pairs` seeded pairs of different-class images.

    Args:
        extractor: the GH-Feat model (with its processor, device and dtype).
        dataset: a labelled `datasets.Dataset` (`image_column`, `label_column`).
        classifier: the judge; its class indices must be the dataset's label values.
        layer_groups: selections taken from B (head names, ranges such as `"0-3"`); default coarse, middle, fine.
        grid_path: where to save a picture of the first `grid_pairs` pairs (PNG); `None`: no picture.
        generator: the model's StyleGAN generator (with its mapping network): adds one row per layer group mixing
            `num_pairs` pairs of its own samples ([`generator_mixing_rows`]).

    Returns:
        An [`EvaluationReport`] of task `style_mixing`, one row per layer group plus the two reference rows (and the
        generator's rows), with `takes_b` / `keeps_a` (fractions with 95% Wilson intervals) and `neither`.
    """
    require_columns(dataset, image_column, label_column)
    model, config = extractor.model, extractor.model.config
    labels = label_values(dataset, label_column, role="evaluation")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= classifier.num_classes:
        raise UsageError(f"the classifier knows {classifier.num_classes} classes; the {label_column!r} column must "
                         f"hold class indices 0..{classifier.num_classes - 1}.")
    names = class_names(dataset, label_column)
    if names is not None and names != classifier.label_names:
        raise UsageError(f"the classifier's classes {classifier.label_names} differ from the dataset's {names}.")
    groups = [(group.name, group.layers) for group in parse_layer_groups(layer_groups or DEFAULT_GROUPS, config)]
    a, b = sample_pairs(labels, num_pairs, seed)
    rows_needed = np.unique(np.concatenate([a, b]))
    position = {int(row): index for index, row in enumerate(rows_needed)}
    images = [to_pil_image(raw) for raw in dataset.select(rows_needed.tolist())[image_column]]
    pixel_values = extractor.processor(images=images, return_tensors="pt")["pixel_values"]
    model.to(extractor.device).eval()
    classifier.to(extractor.device)
    with autocast_context(extractor.device, extractor.dtype):
        codes = encode_images(model, pixel_values, batch_size)
        codes_a = tuple(code[[position[int(row)] for row in a]] for code in codes)
        codes_b = tuple(code[[position[int(row)] for row in b]] for code in codes)
        outputs = {"input images": pixel_values[[position[int(row)] for row in a]],
                   "reconstruction": decode_codes(model, codes_a, batch_size)}
        for spec, layers in groups:
            outputs[spec] = decode_codes(model, mix_style_codes(codes_a, codes_b, layers), batch_size)
    labels_a, labels_b = labels[a], labels[b]
    rows = []
    for name, decoded in outputs.items():
        predicted = classifier.predict(decoded, batch_size)[0].numpy()
        layers = next((describe_layers(layers, config) for spec, layers in groups if spec == name), "none")
        rows.append({"features": name if name in ("input images", "reconstruction") else f"A + B's {name}",
                     "layers": layers, "dim": len(predicted), **_rates(predicted, labels_a, labels_b)})
    if generator is not None:
        with autocast_context(extractor.device, extractor.dtype):
            rows += generator_mixing_rows(generator.to(extractor.device), classifier, groups, config, num_pairs,
                                          batch_size=batch_size, seed=seed)
    artifacts = {}
    if grid_path is not None:
        count = min(grid_pairs, num_pairs)
        post, label_names = extractor.processor.postprocess, classifier.label_names
        images_b = pixel_values[[position[int(row)] for row in b[:count]]]
        figure = _pairs_figure(post(outputs["input images"][:count]), post(images_b),
                               {spec: post(outputs[spec][:count]) for spec, _ in groups},
                               [label_names[i] for i in labels_a[:count]], [label_names[i] for i in labels_b[:count]])
        os.makedirs(os.path.dirname(os.path.abspath(grid_path)), exist_ok=True)
        figure.save(grid_path)
        artifacts["grid"] = os.fspath(grid_path)
    protocol = [
        ProtocolItem("pairs", f"{num_pairs} (A, B) pairs of different classes: A uniform without replacement, B "
                     f"uniform among the other classes' images (seed {seed})", OURS),
        ProtocolItem("mixing", "A's style codes with one layer group replaced by B's, decoded by the frozen "
                     "generator (constant noise)", OURS),
        ProtocolItem("judge", f"{type(classifier).__name__} trained on the real training images "
                     f"({sum(p.numel() for p in classifier.parameters()):,} parameters); its accuracy on the inputs "
                     "is the 'input images' row", OURS),
        ProtocolItem("intervals", "95% Wilson score intervals over the pairs", OURS),
    ]
    if generator is not None:
        protocol.insert(2, ProtocolItem(
            "generator rows", f"up to {num_pairs} pairs (the rows' count) of the generator's own samples (w of two "
            "seeded latents, truncation 1, constant noise) whose judged classes differ; A's w with one layer group "
            "replaced by B's; A's and B's classes are the judge's on the two samples", OURS))
    columns = [MetricColumn("takes_b", "B's class (%)", "pct_ci"), MetricColumn("keeps_a", "A's class (%)", "pct_ci"),
               MetricColumn("neither", "other class (%)", "pct")]
    return EvaluationReport(
        task="style_mixing", model=extractor.describe(), protocol=protocol, columns=columns, rows=rows,
        data=describe_data(dataset_name, {"pairs": dataset}, image_column=image_column, label_column=label_column),
        artifacts=artifacts)


@torch.no_grad()
def generator_mixing_rows(generator: StyleGANGenerator, classifier: DomainClassifier,
                          groups: Sequence[tuple[str, Sequence[int]]], config: GHFeatConfig, num_pairs: int, *,
                          batch_size: int = 64, seed: int = 0) -> list[dict]:
    """Style mixing of the generator's own samples: `num_pairs` pairs of seeded latents whose samples the classifier
    puts in different classes (fewer when 20 x `num_pairs` latent pairs do not give them; none and a warning when
    all samples fall in one class); for each `(name, layers)` group, A's w with those layers from B's w, synthesised
    with the constant noise and judged. One report row per group (`features` "generator: A + B's <name>", `dim`:
    the pairs)."""
    device = next(generator.parameters()).device
    latents = torch.Generator().manual_seed(seed)
    w_a, w_b, labels_a, labels_b = [], [], [], []
    found = 0
    for _ in range(max(20 * num_pairs // batch_size, 1)):
        pair = [generator.mapping(torch.randn(batch_size, generator.config.latent_size, generator=latents).to(device))
                for _ in range(2)]
        judged = [classifier.predict(generator.synthesis(w, noise_mode="const").float(), batch_size)[0]
                  for w in pair]
        differ = (judged[0] != judged[1]).nonzero().flatten()[:num_pairs - found]
        for store, values in zip((w_a, w_b, labels_a, labels_b), (*pair, *judged)):
            store.append(values[differ.to(values.device)].cpu())
        found += len(differ)
        if found == num_pairs:
            break
    if found == 0:
        warnings.warn("no generator rows: the judge puts all the generator's samples in one class.", stacklevel=2)
        return []
    w_a, w_b = torch.cat(w_a), torch.cat(w_b)
    labels_a, labels_b = torch.cat(labels_a).numpy(), torch.cat(labels_b).numpy()
    rows = []
    for name, layers in groups:
        mixed = w_a.clone()
        mixed[:, list(layers)] = w_b[:, list(layers)]
        images = torch.cat([generator.synthesis(batch.to(device), noise_mode="const").float().cpu()
                            for batch in mixed.split(batch_size)])
        predicted = classifier.predict(images, batch_size)[0].numpy()
        rows.append({"features": f"generator: A + B's {name}", "layers": describe_layers(layers, config),
                     "dim": found, **_rates(predicted, labels_a, labels_b)})
    return rows


def _pairs_figure(images_a, images_b, mixed, names_a: Sequence[str], names_b: Sequence[str]) -> PIL.Image.Image:
    """One row per pair: A, B, then A with each layer group of B (`mixed[group][pair]`)."""
    rows = [[image_a, image_b, *(mixed[spec][index] for spec in mixed)]
            for index, (image_a, image_b) in enumerate(zip(images_a, images_b))]
    labels = [f"A: {name_a}\nB: {name_b}" for name_a, name_b in zip(names_a, names_b)]
    size = enlarged_cell_size(max(images_a[0].size), 96)
    return make_grid(rows, ["A", "B", *(f"A + B's {spec}" for spec in mixed)], labels, cell_size=size)


__all__ = ["DEFAULT_GROUPS", "evaluate_style_mixing", "generator_mixing_rows", "sample_pairs"]
