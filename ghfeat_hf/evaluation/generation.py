"""Sample quality of StyleGAN generators: a Fréchet distance in a domain classifier's feature space.

FID compares Inception-v3 features of generated and real images; Inception weights cannot be installed offline and
say little about 32x32 grayscale garments. The same statistic in the penultimate features of a
[`DomainClassifier`] trained on the real images (``FD-FMNIST`` for Fashion-MNIST) ranks generators of one domain;
its values are not comparable with FID. The report also gives the number of effective classes among the samples
(the exponential of the entropy of the classifier's predicted-class histogram: 10 for an even spread over ten
classes, 1 for a collapse onto one), and real training images as the floor ("real images" rows).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..errors import UsageError
from ..evaluation_report import OURS, STANDARD, EvaluationReport, MetricColumn, ProtocolItem
from ..image_io import to_pil_image
from ..modeling_stylegan import StyleGANGenerator
from ..runtime import autocast_context
from .domain_classifier import DomainClassifier
from .reconstruction_quality import quantize
from .splits import describe_data, require_columns


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to `features_a [N, D]` and `features_b [M, D]`:
    `|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`, in float64; `tr((S_a S_b)^(1/2))` is the sum of
    the square roots of the eigenvalues of the symmetric `S_a^(1/2) S_b S_a^(1/2)` (no complex round-off)."""
    a, b = (torch.as_tensor(np.asarray(features), dtype=torch.float64) for features in (features_a, features_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two [N >= 2, D] feature arrays of equal D, got {tuple(a.shape)} and {tuple(b.shape)}.")
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    distance = (a.mean(0) - b.mean(0)).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return float(distance.clamp(min=0))


def effective_classes(predicted: np.ndarray, num_classes: int) -> float:
    """`exp(entropy)` of the predicted-class histogram: between 1 (one class) and `num_classes` (uniform)."""
    shares = np.bincount(np.asarray(predicted), minlength=num_classes) / len(predicted)
    shares = shares[shares > 0]
    return float(np.exp(-np.sum(shares * np.log(shares))))


@torch.inference_mode()
def sample_images(generator: StyleGANGenerator, num_images: int, *, batch_size: int = 256, seed: int = 0,
                  truncation_psi: float = 1.0, noise_mode: str = "random", dtype: torch.dtype = torch.float32,
                  ) -> torch.Tensor:
    """`num_images` samples `[N, C, R, R]` on the 8-bit grid, scaled to [-1, 1] (as real images reach a model),
    float32 on the CPU; latents and noise are seeded (the global RNG is left untouched)."""
    device = next(generator.parameters()).device
    generator.eval()
    latents = torch.randn(num_images, generator.config.latent_size,
                          generator=torch.Generator().manual_seed(seed))
    images = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed + 1)
        for start in range(0, num_images, batch_size):
            with autocast_context(device, dtype):
                batch = generator(latents[start:start + batch_size].to(device), truncation_psi=truncation_psi,
                                  noise_mode=noise_mode)
            images.append((quantize(batch.float().cpu()) * 2 - 1).float())
    return torch.cat(images)


def _real_pixels(dataset, processor, image_column: str, num_images: int, seed: int,
                 batch_size: int = 1024) -> torch.Tensor:
    rows = np.random.default_rng(seed).permutation(len(dataset))[:num_images].tolist()
    subset = dataset.select(rows)
    return torch.cat([processor(images=[to_pil_image(raw) for raw in subset[start:start + batch_size][image_column]],
                                return_tensors="pt")["pixel_values"] for start in range(0, len(subset), batch_size)])


def evaluate_generation(
    generators: Mapping[str, StyleGANGenerator],
    reference,
    classifier: DomainClassifier,
    processor,
    *,
    real_baselines: Mapping[str, object] | None = None,
    image_column: str = "image",
    num_images: int = 10000,
    truncation_psi: float = 1.0,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    dataset_name: str | None = None,
) -> EvaluationReport:
    """FD in `classifier`'s feature space between `num_images` samples of each generator and the `reference` images.

    Args:
        generators: name -> generator (the evaluated one first); each samples from the same seeded latents.
        reference: the real images (a `datasets.Dataset`, typically the test split), all of them.
        processor: the GH-Feat image processor that turns real images into model inputs (size, channels).
        real_baselines: name -> other real images (e.g. the training split), `num_images` of them drawn at random:
            the FD real images of the domain reach.

    Returns:
        An [`EvaluationReport`] of task `generation`: one row per generator (`layers` "generated") and real
        baseline (`layers` "real") with `images`, `fd` and `effective_classes`; `dim` is the feature width.
    """
    if not generators:
        raise UsageError("no generator to evaluate.")
    require_columns(reference, image_column)
    device = next(classifier.parameters()).device
    reference_pixels = _real_pixels(reference, processor, image_column, len(reference), seed)
    _, reference_features = classifier.predict(reference_pixels.to(device))
    samples = {name: sample_images(generator.to(device), num_images, batch_size=batch_size, seed=seed,
                                   truncation_psi=truncation_psi, dtype=dtype)
               for name, generator in generators.items()}
    for name, dataset in (real_baselines or {}).items():
        samples[name] = _real_pixels(dataset, processor, image_column, num_images, seed)
    rows = []
    for name, images in samples.items():
        predicted, features = classifier.predict(images.to(device))
        kind = "real" if name in (real_baselines or {}) else "generated"
        rows.append({"features": name, "layers": kind, "dim": features.shape[1], "images": len(images),
                     "fd": frechet_distance(features.numpy(), reference_features.numpy()),
                     "effective_classes": effective_classes(predicted.numpy(), classifier.num_classes)})
    protocol = [
        ProtocolItem("statistic", "Fréchet distance between Gaussians fitted to penultimate classifier features",
                     STANDARD, "the FID formula (Heusel et al. 2017) in another feature space: not comparable with FID"),
        ProtocolItem("features", f"{type(classifier).__name__} trained on the real training images, "
                     f"{classifier.embedding[0].out_features}-d", OURS),
        ProtocolItem("samples", f"{num_images} per generator from seeded latents (seed {seed}), truncation psi "
                     f"{truncation_psi}, random noise, rounded to 8 bits like real images", OURS),
        ProtocolItem("reference", f"all {len(reference)} images of the reference split", OURS),
        ProtocolItem("effective classes", "exp(entropy) of the predicted-class histogram", OURS),
    ]
    columns = [MetricColumn("images", "images", "int"), MetricColumn("fd", "FD (classifier features)", "f3"),
               MetricColumn("effective_classes", f"effective classes (of {classifier.num_classes})", "f2")]
    first = next(iter(generators))
    model = {"model": first, "fingerprint": ""}
    splits = {"reference": reference, **(real_baselines or {})}
    return EvaluationReport(task="generation", model=model, protocol=protocol, columns=columns, rows=rows,
                            data=describe_data(dataset_name, splits, image_column=image_column))


__all__ = ["effective_classes", "evaluate_generation", "frechet_distance", "sample_images"]
