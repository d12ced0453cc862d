"""Feature extractors: the common interface through which the evaluation tasks compare GH-Feat with its baselines.

Every extractor turns a list of PIL images into a `[N, D]` float32 matrix and has a stable fingerprint (what the
feature cache is keyed on):

* [`GHFeatExtractor`]: the style codes of a [`GHFeatModel`] for chosen generator layers, concatenated (all layers:
  the compact GH-Feat vector, `pooler_output`); [`random_init_model`] gives the same architecture with a randomly
  initialised encoder;
* [`PixelExtractor`]: raw pixels, resized, in `[0, 1]`;
* [`TimmExtractor`]: the pooled pre-logits features of any timm model, with its own data configuration.

[`build_baselines`] builds the baselines from their command-line names.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..configuration_ghfeat import ghfeat_config_dict
from ..encoding import encode_batch
from ..errors import UsageError
from ..modeling_ghfeat import GHFeatModel
from ..runtime import autocast_context, load_model, parse_layers, resolve_device, resolve_dtype, resolve_model_path
from ..visualization import to_rgb

BASELINE_NAMES = ("pixels", "random-init", "timm:<model>", "ghfeat:[LABEL=]<model>")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def stable_hash(payload: Any) -> str:
    """A short SHA-256 of a JSON-serialisable payload (keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def weights_digest(module: torch.nn.Module) -> str:
    """A hash of every tensor of `module`'s state dict (names, shapes and values): the same weights give the same
    digest whatever file or directory they were loaded from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureExtractor:
    """Images -> features `[N, D]` float32. Subclasses set `name` (the row label in reports) and `kind`, and
    implement `__call__` and `fingerprint`. Extractors over GH-Feat codes also map layers to columns."""

    name: str = ""
    kind: str = ""

    def __call__(self, images: Sequence[PIL.Image.Image]) -> np.ndarray:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A stable hash of everything that changes the features (weights, preprocessing, layers, dtype)."""
        raise NotImplementedError

    @property
    def layered(self) -> bool:
        """Whether the features are per-layer GH-Feat codes (so layer groups apply)."""
        return False

    @property
    def description(self) -> str:
        """How the features are made, in a few words (for the report's protocol)."""
        return self.name

    def describe(self) -> dict[str, Any]:
        """What the report records about this extractor."""
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "fingerprint": self.fingerprint()}


class GHFeatExtractor(FeatureExtractor):
    """The GH-Feat style codes of `layers` (default all: the compact vector, `pooler_output`), concatenated in layer
    order; `[N, sum(style_dims[layers])]`."""

    kind = "ghfeat"

    def __init__(
        self,
        model: GHFeatModel,
        processor,
        *,
        name: str = "GH-Feat",
        description: str = "the model's style codes",
        layers: str | Sequence[int] | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "fp32",
    ):
        self.model, self.processor, self.name = model.eval(), processor, name
        self._description = description
        self.config = model.config
        self.layers = parse_layers(layers, self.config)
        self.dtype = resolve_dtype(dtype)
        self.device = next(model.parameters()).device if device is None else resolve_device(device)
        self.model.to(self.device)
        widths = [self.config.style_dims[layer] for layer in self.layers]
        starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(int)
        self._columns = {layer: np.arange(start, start + width)
                         for layer, start, width in zip(self.layers, starts, widths)}
        self._fingerprint: str | None = None  # the weights are frozen while the extractor is in use

    @property
    def layered(self) -> bool:
        return True

    @property
    def description(self) -> str:
        return self._description

    def columns(self, layers: Sequence[int]) -> np.ndarray:
        """Column indices of the codes of `layers` in this extractor's feature vector."""
        missing = [layer for layer in layers if layer not in self._columns]
        if missing:
            raise UsageError(f"layers {missing} were not extracted (this extractor keeps layers {self.layers}).")
        return np.concatenate([self._columns[layer] for layer in sorted(layers)])

    def __call__(self, images: Sequence[PIL.Image.Image]) -> np.ndarray:
        pixel_values = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        codes, _ = encode_batch(self.model, pixel_values, dtype=self.dtype)
        return torch.cat([codes[layer] for layer in self.layers], dim=1).cpu().numpy()

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = stable_hash({
                "kind": self.kind, "architecture": ghfeat_config_dict(self.config),
                "weights": weights_digest(self.model), "layers": self.layers, "dtype": str(self.dtype),
                "processor": self.processor.to_dict(),
            })
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": str(getattr(self.config, "name_or_path", "") or ""),
                "layers": self.layers, "dim": int(sum(self.config.style_dims[layer] for layer in self.layers))}


def random_init_model(model: GHFeatModel, seed: int = 0) -> GHFeatModel:
    """A [`GHFeatModel`] of `model`'s configuration whose encoder is freshly initialised (seeded, the library's
    weight initialisation) and whose synthesis network is `model`'s, so it can still decode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random_model = GHFeatModel(copy.deepcopy(model.config))
    random_model.synthesis.load_state_dict(model.synthesis.state_dict())
    return random_model.eval()


class PixelExtractor(FeatureExtractor):
    """Raw pixels: each image converted to `mode` (`"RGB"` or `"L"`), resized to `size x size` (bilinear, as the
    GH-Feat processor does) and flattened, in `[0, 1]`; `[N, size * size * channels]`."""

    kind = "pixels"

    def __init__(self, size: int, mode: str = "RGB", name: str | None = None):
        if mode not in ("RGB", "L"):
            raise UsageError(f"pixel baseline mode must be RGB or L, got {mode!r}.")
        if size < 1:
            raise UsageError(f"pixel baseline size must be positive, got {size}.")
        self.size, self.mode = size, mode
        self.name = name or f"raw pixels ({size}x{size} {mode})"

    @property
    def description(self) -> str:
        return f"raw pixels: {self.mode}, bilinear resize to {self.size}x{self.size}, values in [0, 1]"

    def __call__(self, images: Sequence[PIL.Image.Image]) -> np.ndarray:
        arrays = [
            np.asarray(to_rgb(image).convert(self.mode).resize((self.size, self.size), PIL.Image.Resampling.BILINEAR))
            for image in images
        ]
        return (np.stack(arrays).reshape(len(arrays), -1) / np.float32(255)).astype(np.float32)

    def fingerprint(self) -> str:
        return stable_hash({"kind": self.kind, "size": self.size, "mode": self.mode})


class TimmExtractor(FeatureExtractor):
    """A timm model's pooled pre-logits features (`num_classes=0`), preprocessed with the model's own data
    configuration (`timm.data.resolve_model_data_config` + `create_transform`).

    `weights` is `"pretrained"` (timm's default pretrained tag, from the Hub or its cache), `"random"` (timm's
    initialisation, seeded) or the path of a weights file (`.safetensors` / `.pth`)."""

    kind = "timm"

    def __init__(
        self,
        model_name: str,
        weights: str = "pretrained",
        *,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype = "fp32",
        seed: int = 0,
    ):
        import timm

        self.model_name, self.weights = model_name, weights
        kwargs: dict[str, Any] = {"num_classes": 0}
        if weights not in ("pretrained", "random"):
            if not os.path.isfile(weights):
                raise UsageError(f"timm weights file {weights!r} does not exist.")
            kwargs["pretrained_cfg_overlay"] = {"file": os.path.abspath(weights)}
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = timm.create_model(model_name, pretrained=weights != "random", **kwargs).eval()
        except RuntimeError as error:
            if "Unknown model" in str(error):
                raise UsageError(f"unknown timm model {model_name!r}.") from error
            raise
        except (OSError, ValueError) as error:  # offline, missing or incompatible weights
            raise UsageError(
                f"could not load the {weights} weights of timm model {model_name!r}: {error}. Offline, pass a weights "
                f"file (timm:{model_name}@/path/model.safetensors) or timm:{model_name}@random."
            ) from error
        self.transform = timm.data.create_transform(**timm.data.resolve_model_data_config(self.model))
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_device(device)
        self.model.to(self.device)
        source = {"pretrained": "pretrained", "random": "random init"}.get(weights) or Path(weights).name
        self.name = f"timm {model_name} ({source})"
        self._weights_digest = weights_digest(self.model)

    def __call__(self, images: Sequence[PIL.Image.Image]) -> np.ndarray:
        batch = torch.stack([self.transform(to_rgb(image)) for image in images]).to(self.device)
        with torch.inference_mode(), autocast_context(self.device, self.dtype):
            features = self.model(batch)
        return features.float().flatten(1).cpu().numpy()

    def fingerprint(self) -> str:
        return stable_hash({"kind": self.kind, "model": self.model_name, "weights": self._weights_digest,
                        "dtype": str(self.dtype), "transform": repr(self.transform)})

    @property
    def description(self) -> str:
        return (f"timm {self.model_name} with {self.weights} weights: pooled pre-logits features, the model's own "
                "data configuration")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_name, "weights": self.weights}


def build_baselines(
    specs: Sequence[str],
    model: GHFeatModel,
    processor,
    *,
    sample_image: PIL.Image.Image | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "fp32",
    seed: int = 0,
) -> list[FeatureExtractor]:
    """Baseline extractors from their names.

    Args:
        specs: any of `"pixels"` (raw pixels at the model resolution capped at 64 px; `"pixels:SIZE"` sets it),
            `"random-init"` (the same GH-Feat architecture with a random encoder, seed `seed`), and
            `"timm:NAME"` (timm model `NAME` with its pretrained weights), `"timm:NAME@random"`,
            `"timm:NAME@/path/weights.safetensors"`, and `"ghfeat:MODEL"` / `"ghfeat:LABEL=MODEL"` (another GH-Feat
            model, with its own processor and generator: an embedded name, a directory or a Hub id; e.g. the
            previous version of a model).
        model, processor: the evaluated GH-Feat model (its configuration and resolution define the baselines).
        sample_image: one image of the data; a grayscale image makes the pixel baseline grayscale.
    """
    extractors: list[FeatureExtractor] = []
    for spec in specs:
        name, _, argument = spec.partition(":")
        if name == "pixels":
            try:
                size = int(argument) if argument else min(model.config.image_size, 64)
            except ValueError:
                raise UsageError(f"invalid pixel baseline {spec!r}: use pixels or pixels:SIZE.") from None
            gray = sample_image is not None and sample_image.mode in GRAYSCALE_MODES
            extractors.append(PixelExtractor(size, "L" if gray else "RGB"))
        elif name == "random-init" and not argument:
            description = (f"the same architecture with a randomly initialised encoder (seed {seed}) and the "
                           "evaluated model's generator")
            extractors.append(GHFeatExtractor(random_init_model(model, seed), processor, name="GH-Feat random init",
                                              description=description, device=device, dtype=dtype))
        elif name == "ghfeat" and argument:
            label, _, source = argument.rpartition("=")
            other, other_processor = load_model(resolve_model_path(source), device=device or "cpu")
            label = label or os.path.basename(os.path.normpath(source))
            extractors.append(GHFeatExtractor(other, other_processor, name=f"GH-Feat {label}",
                                              description=f"the style codes of another GH-Feat model ({source})",
                                              device=device, dtype=dtype))
        elif name == "timm" and argument:
            model_name, _, weights = argument.partition("@")
            extractors.append(TimmExtractor(model_name, weights or "pretrained", device=device or "cpu", dtype=dtype,
                                            seed=seed))
        else:
            raise UsageError(f"unknown baseline {spec!r}; use {', '.join(BASELINE_NAMES)} "
                             "(timm:<model>@random or timm:<model>@<weights file> for other weights; ghfeat:LABEL=<model> names "
                             "another GH-Feat model).")
    return extractors


__all__ = [
    "BASELINE_NAMES",
    "FeatureExtractor",
    "GHFeatExtractor",
    "PixelExtractor",
    "TimmExtractor",
    "build_baselines",
    "random_init_model",
    "stable_hash",
    "weights_digest",
]
