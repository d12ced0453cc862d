"""A small CNN classifier of a model's image domain: the judge of generated and style-mixed images.

GH-Feat's hierarchy claim is that coarse layers carry shape (for Fashion-MNIST: the garment class) and fine layers
carry appearance. A classifier trained on the real images measures it: which class does a style-mixed image show?
Its penultimate features also give a Fréchet distance between generated and real images in a space trained on the
domain (``FD-FMNIST`` for Fashion-MNIST), where ImageNet Inception features (FID) would be both unavailable offline
and meaningless for 32x32 grayscale garments.

The classifier is a plain `torch.nn.Module` with `huggingface_hub.PyTorchModelHubMixin` (``save_pretrained`` /
``from_pretrained`` / ``push_to_hub`` with ``config.json`` + ``model.safetensors``). The Fashion-MNIST one ships in
the package (``training/train_classifier.py`` trains it)::

    from ghfeat_hf.evaluation import load_domain_classifier

    classifier = load_domain_classifier("fashion-mnist-cnn")
    logits = classifier(pixel_values)          # [N, 10] from [N, C, H, W] images in [-1, 1]
    features = classifier.features(pixel_values)  # [N, 128] penultimate activations (the FD space)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..errors import UsageError

CLASSIFIERS_DIR = Path(__file__).resolve().parents[1] / "pretrained" / "classifiers"
DEFAULT_CLASSIFIER = "fashion-mnist-cnn"
# The luminance weights of ITU-R 601-2, as PIL's "L" conversion and GHFeatImageProcessor(num_channels=1) use.
LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)


class DomainClassifier(nn.Module, PyTorchModelHubMixin, library_name="ghfeat-hf",
                       tags=["image-classification", "ghfeat"], license="mit"):
    """VGG-style CNN: per width two 3x3 conv + BatchNorm + ReLU then 2x2 max pooling, global average pooling, a
    `feature_dim` ReLU layer (the features) and a linear classifier.

    Args:
        num_channels: input channels (1: grayscale).
        resolution: input size; other sizes are resized (bilinear) by [`prepare`].
        num_classes: number of classes.
        widths: channels of the conv stages.
        feature_dim: width of the penultimate (feature) layer.
        label_names: class names, index order.
    """

    def __init__(self, num_channels: int = 1, resolution: int = 32, num_classes: int = 10,
                 widths: Sequence[int] = (32, 64, 128), feature_dim: int = 128,
                 label_names: Sequence[str] | None = None):
        super().__init__()
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}.")
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(f"{len(label_names)} label names for {num_classes} classes.")
        self.num_channels, self.resolution, self.num_classes = num_channels, resolution, num_classes
        self.label_names = list(label_names) if label_names is not None else [str(i) for i in range(num_classes)]
        layers, channels = [], num_channels
        for width in widths:
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.trunk = nn.Sequential(*layers)
        self.embedding = nn.Sequential(nn.Linear(channels, feature_dim), nn.ReLU())
        self.classifier = nn.Linear(feature_dim, num_classes)

    def prepare(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[N, C, H, W]` images in [-1, 1] -> the classifier's input `[N, num_channels, resolution, resolution]`:
        RGB -> luminance for a grayscale classifier, gray -> 3 equal channels for an RGB one, bilinear resize."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] not in (1, 3):
            raise UsageError(f"the classifier takes [N, 1 or 3, H, W] images, got {tuple(pixel_values.shape)}.")
        pixel_values = pixel_values.float()
        if pixel_values.shape[1] == 3 and self.num_channels == 1:
            weights = pixel_values.new_tensor(LUMINANCE_WEIGHTS).view(1, 3, 1, 1)
            pixel_values = (pixel_values * weights).sum(dim=1, keepdim=True)
        elif pixel_values.shape[1] == 1 and self.num_channels == 3:
            pixel_values = pixel_values.expand(-1, 3, -1, -1)
        if pixel_values.shape[-2:] != (self.resolution, self.resolution):
            pixel_values = F.interpolate(pixel_values, size=(self.resolution, self.resolution), mode="bilinear",
                                         align_corners=False, antialias=True)
        return pixel_values

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[N, C, H, W]` images in [-1, 1] -> penultimate features `[N, feature_dim]` (non-negative)."""
        hidden = self.trunk(self.prepare(pixel_values))
        return self.embedding(hidden.mean(dim=(2, 3)))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[N, C, H, W]` images in [-1, 1] -> class logits `[N, num_classes]`."""
        return self.classifier(self.features(pixel_values))

    @torch.inference_mode()
    def predict(self, pixel_values: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """`(labels [N] int64, features [N, feature_dim] float32)` on the CPU, in eval mode, batch by batch."""
        self.eval()
        device = next(self.parameters()).device
        labels, features = [], []
        for start in range(0, len(pixel_values), batch_size):
            batch_features = self.features(pixel_values[start:start + batch_size].to(device))
            labels.append(self.classifier(batch_features).argmax(dim=1).cpu())
            features.append(batch_features.float().cpu())
        return torch.cat(labels), torch.cat(features)


def embedded_classifiers() -> list[str]:
    """Names of the classifiers shipped in this installation."""
    return sorted(path.parent.name for path in CLASSIFIERS_DIR.glob("*/config.json")) if CLASSIFIERS_DIR.is_dir() else []


def load_domain_classifier(name_or_path: str | os.PathLike = DEFAULT_CLASSIFIER) -> DomainClassifier:
    """A shipped classifier by name (``"fashion-mnist-cnn"``), or one saved with ``save_pretrained`` (a local
    directory or a Hub id), in eval mode. Raises `UsageError` naming the shipped ones when nothing matches."""
    path = CLASSIFIERS_DIR / str(name_or_path)
    if not (path / "config.json").is_file():
        path = Path(name_or_path)
    if path.is_dir() and not (path / "config.json").is_file():
        raise UsageError(f"{path} holds no classifier (no config.json); shipped classifiers: "
                         f"{', '.join(embedded_classifiers()) or 'none'}.")
    try:
        classifier = DomainClassifier.from_pretrained(str(path) if path.is_dir() else str(name_or_path), strict=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise UsageError(f"cannot load the classifier {str(name_or_path)!r} ({error}); shipped classifiers: "
                         f"{', '.join(embedded_classifiers()) or 'none'}.") from error
    return classifier.eval()


__all__ = ["CLASSIFIERS_DIR", "DEFAULT_CLASSIFIER", "DomainClassifier", "embedded_classifiers",
           "load_domain_classifier"]
