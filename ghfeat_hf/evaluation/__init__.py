"""Evaluation of GH-Feat models against baselines on `datasets` data (the library behind ``ghfeat evaluate``).

Tasks, one module each, all with the same shape: a list of feature extractors (the evaluated model first, then
the baselines), the data as `datasets.Dataset` splits, task options; the result is an [`EvaluationReport`]
(JSON + Markdown, protocol details marked as the paper's, a standard protocol or our choice):

* [`evaluate_reconstruction`]: MSE, PSNR, SSIM and, when its wheels are installed, LPIPS (HED-VGG backbone) per
  image and a worst / best grid;
* [`evaluate_classification`]: linear probe (C chosen on a validation split) and k-NN accuracy, 95% intervals;
* [`evaluate_retrieval`]: mAP and recall@k with cosine similarity, queries and gallery from the labels;
* [`evaluate_verification`]: LFW-style 10-fold pair verification accuracy, per layer group;
* [`evaluate_landmarks`]: linear keypoint regression and its normalised mean error;
* [`evaluate_style_mixing`]: which class A shows with one layer group of B, judged by a [`DomainClassifier`];
* [`evaluate_generation`]: the Fréchet distance of generator samples to real images in that classifier's features;
* [`evaluate_segmentation`]: few-shot semantic segmentation (mIoU over K-shot draws) with spatial features
  ([`ghfeat_hf.segmentation`]).

Features come from [`GHFeatExtractor`] (chosen layers of the style codes), [`PixelExtractor`], a random-init encoder
([`random_init_model`]) or [`TimmExtractor`] ([`build_baselines`] builds them by name), and are extracted once per
model and dataset with a cached `datasets.Dataset.map` ([`cached_feature_table`]).

```python
from ghfeat_hf.runtime import load_model
from ghfeat_hf.evaluation import GHFeatExtractor, build_baselines, evaluate_classification, load_split

model, processor = load_model("ghfeat-fmnist32")
extractors = [GHFeatExtractor(model, processor)] + build_baselines(["pixels", "random-init"], model, processor)
report = evaluate_classification(extractors, load_split("fashion-mnist", "train"), load_split("fashion-mnist", "test"))
report.save("eval/")   # eval/classification.json + eval/classification.md
```
"""

import warnings

from ..evaluation_report import EvaluationReport, MetricColumn, ProtocolItem, results_markdown
from .classification import evaluate_classification
from .domain_classifier import DomainClassifier, embedded_classifiers, load_domain_classifier
from .extractors import (
    FeatureExtractor,
    GHFeatExtractor,
    PixelExtractor,
    TimmExtractor,
    build_baselines,
    random_init_model,
)
from .features import ExtractionOptions, FeatureTable, cached_feature_table
from .generation import evaluate_generation, frechet_distance
from .hierarchy import evaluate_style_mixing
from .landmarks import evaluate_landmarks
from .probes import knn_predict, linear_probe, ridge_regression
from .reconstruction_quality import LPIPS_NOTE, evaluate_reconstruction
from .retrieval import evaluate_retrieval
from .segmentation import evaluate_segmentation
from .splits import load_split, subsample
from .verification import evaluate_verification

__all__ = [
    "LPIPS_NOTE",
    "DomainClassifier",
    "EvaluationReport",
    "ExtractionOptions",
    "FeatureExtractor",
    "FeatureTable",
    "GHFeatExtractor",
    "MetricColumn",
    "PixelExtractor",
    "ProtocolItem",
    "TimmExtractor",
    "build_baselines",
    "cached_feature_table",
    "embedded_classifiers",
    "evaluate_classification",
    "evaluate_generation",
    "evaluate_landmarks",
    "evaluate_reconstruction",
    "evaluate_retrieval",
    "evaluate_segmentation",
    "evaluate_style_mixing",
    "evaluate_verification",
    "frechet_distance",
    "knn_predict",
    "linear_probe",
    "load_domain_classifier",
    "load_split",
    "random_init_model",
    "results_markdown",
    "ridge_regression",
    "subsample",
]


def __getattr__(name: str):
    """`extract_features`, the former name of [`cached_feature_table`], with a `DeprecationWarning`."""
    if name == "extract_features":
        warnings.warn("ghfeat_hf.evaluation.extract_features is deprecated; use cached_feature_table (the extraction "
                      "of image files is ghfeat_hf.extraction.extract_features).", DeprecationWarning, stacklevel=2)
        return cached_feature_table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
