"""Losses shared by the GH-Feat trainers: the StyleGAN logistic GAN losses with R1, and the VGG16 perceptual loss.

GAN losses (NVlabs/stylegan ``training/loss.py``, ghfeat ``training/loss_encoder.py``), on raw D logits:

* generator / encoder, non-saturating: ``mean(softplus(-D(fake)))``               (:func:`generator_nonsaturating_loss`)
* discriminator, logistic: ``mean(softplus(D(fake))) + mean(softplus(-D(real)))``  (:func:`discriminator_logistic_loss`)
* R1 on the reals: ``mean_batch(sum_{C,H,W} (d sum(D(x)) / dx)^2)``; the trainers add ``gamma / 2 * R1``
  (:func:`r1_penalty`; ``D_logistic_simplegp`` with ``r1_gamma = 10``).

Perceptual loss (:class:`VGG16PerceptualLoss`). The official GH-Feat ``E_loss`` is
``feature_scale * mean((VGG(x) - VGG(x_rec))^2)`` with ``feature_scale = 5e-5`` and ``VGG`` = Keras
``VGG16(include_top=False, weights="imagenet")`` up to ``block4_conv3`` *after its ReLU*, i.e. torchvision / timm
``features[:23]``. Official preprocessing (``preprocess="caffe"`` here): nearest resize to 256x256
(``tf.image.resize_images(method=1)``, identity at 256 px), ``[-1, 1] -> [0, 255]``, RGB -> BGR, subtract the
BGR means ``(103.939, 116.779, 123.68)``, no std scaling: the Keras/caffe VGG16 expects exactly that.

Weights must be a real pretrained VGG16, never a random one (a random network makes the term meaningless noise):

* default: timm's ``vgg16.tv_in1k`` (the torchvision ImageNet weights) from the Hugging Face cache, downloaded through
  timm when online. Those weights were trained on RGB ``[0, 1]`` inputs normalised with the ImageNet mean/std, so
  they get that preprocessing (``preprocess="torchvision"``); the caffe preprocessing above would feed them inputs
  they were not trained on. Note the scale: caffe inputs span 0..255 while torchvision inputs span about -2..2.6, so
  conv4_3 features (and their squared differences) are much larger with the official network, and ``5e-5`` weighs
  the torchvision features far less than it weighs the Keras ones. Raise ``--perceptual_weight`` to compensate, or
  give converted Keras weights (``layerN.*`` keys as genforce's ``vgg16.pth``), which select the caffe path.
* any local VGG16 state dict (``.safetensors`` / ``.pth``): timm/torchvision ``features.N.*`` keys, genforce's
  Keras conversion ``layerN.*`` keys, or bare ``N.*`` keys; a ``state_dict`` / ``model`` wrapper and ``module.``
  prefixes are removed. Only ``features.0 .. features.21`` are used.
* no weights available: :class:`PerceptualWeightsUnavailable` explains how to provide them, or to disable the
  loss explicitly (``--perceptual_weight 0``).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ghfeat_hf.hub import restore_default_file_mode

# ----------------------------------------------------------------------------------------------------------------
# GAN losses


def generator_nonsaturating_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """``mean(softplus(-D(fake)))``: the non-saturating logistic loss of a generator (or encoder) on D logits."""
    return F.softplus(-fake_scores.float()).mean()


def discriminator_logistic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean(softplus(-D(real))), mean(softplus(D(fake))))``: the two terms of the logistic D loss."""
    return F.softplus(-real_scores.float()).mean(), F.softplus(fake_scores.float()).mean()


def r1_penalty(real_scores: torch.Tensor, reals: torch.Tensor, create_graph: bool = True,
               scale: float | torch.Tensor | None = None) -> torch.Tensor:
    """R1: ``mean over the batch of sum_{C,H,W} (d sum(D(reals)) / d reals)^2`` (``reals`` must require grad).

    Multiply by ``gamma / 2`` (StyleGAN v1 / GH-Feat ``r1_gamma = 10``). ``create_graph`` keeps the graph for the
    double backward into D's weights. Computed in float32. Under fp16 autocast pass the GradScaler's loss ``scale``
    (``training.engine.loss_scale``): the input gradient is then taken of ``scale * sum(D(reals))``, so its fp16
    intermediates do not underflow, and divided by ``scale`` again (an overflow gives inf, which the GradScaler
    skips like any other inf gradient).
    """
    total = real_scores.float().sum()
    if scale is not None:
        total = total * scale
    (grad,) = torch.autograd.grad(total, reals, create_graph=create_graph)
    grad = grad.float() if scale is None else grad.float() / scale
    return grad.square().sum(dim=list(range(1, grad.ndim))).mean()


# ----------------------------------------------------------------------------------------------------------------
# VGG16 perceptual loss

VGG16_CONV4_3_LAYERS = 23  # features[:23]: conv1_1 .. conv4_3 and the ReLU after conv4_3 (Keras block4_conv3)
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)  # up to conv4_3
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)
PREPROCESSING = ("caffe", "torchvision")
DEFAULT_PERCEPTUAL_MODEL = "vgg16.tv_in1k"


class PerceptualWeightsUnavailable(RuntimeError):
    """No pretrained VGG16 weights could be found for the perceptual loss."""


def vgg16_features() -> nn.Sequential:
    """VGG16 ``features[:23]`` (conv1_1 .. relu4_3) with the layer indices of timm / torchvision, uninitialised."""
    layers: list[nn.Module] = []
    channels = 3
    for value in VGG16_CFG:
        if value == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, value, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = value
    assert len(layers) == VGG16_CONV4_3_LAYERS
    return nn.Sequential(*layers)


def normalize_vgg16_state_dict(state_dict: dict) -> tuple[dict[str, torch.Tensor], str]:
    """Keep the conv1_1..conv4_3 tensors of a VGG16 state dict as ``features.N.{weight,bias}``.

    Returns ``(state_dict, key_style)`` with ``key_style`` ``"layer"`` for genforce's Keras conversion
    (``layerN.*``, caffe preprocessing) and ``"features"`` otherwise.
    """
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    out: dict[str, torch.Tensor] = {}
    styles = set()
    pattern = re.compile(r"^(?:.*\.)?(features\.|layer|)(\d+)\.(weight|bias)$")
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        match = pattern.match(key)
        if not match:
            continue
        prefix, index, kind = match.group(1), int(match.group(2)), match.group(3)
        if index in VGG16_CONV_INDICES:
            out[f"features.{index}.{kind}"] = value
            styles.add("layer" if prefix == "layer" else "features")
    return out, ("layer" if styles == {"layer"} else "features")


def load_state_dict_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Perceptual weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _timm_cached_file(model_name: str, cache_dir: str | os.PathLike | None) -> str | None:
    """The weights file of a timm pretrained tag in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename, cache_dir=str(cache_dir) if cache_dir else None)
        if isinstance(found, str):
            return found
    return None


def load_timm_vgg16_state_dict(model_name: str = DEFAULT_PERCEPTUAL_MODEL,
                               cache_dir: str | os.PathLike | None = None) -> tuple[dict, str]:
    """ImageNet VGG16 weights of a timm pretrained tag: from the Hugging Face cache, else downloaded through timm.

    Returns ``(state_dict, source)``; raises :class:`PerceptualWeightsUnavailable` when they cannot be obtained.
    """
    import timm
    from huggingface_hub import constants

    if not model_name.split(".")[0] == "vgg16":
        raise ValueError(f"The perceptual loss needs a timm 'vgg16.*' model, got {model_name!r}.")
    cached = _timm_cached_file(model_name, cache_dir)
    if cached is not None:
        return load_state_dict_file(cached), f"timm {model_name} ({cached})"
    if constants.HF_HUB_OFFLINE:
        raise PerceptualWeightsUnavailable(f"timm {model_name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        model = timm.create_model(model_name, pretrained=True, cache_dir=cache_dir)
    except Exception as error:  # no network, no such tag, ...
        raise PerceptualWeightsUnavailable(f"timm could not load {model_name!r}: {type(error).__name__}: {error}") from error
    return model.state_dict(), f"timm {model_name} (downloaded)"


class VGG16PerceptualLoss(nn.Module):
    """``mean((VGG(real) - VGG(fake))^2)`` on VGG16 conv4_3 features (after ReLU), frozen; see the module docstring.

    Inputs are images ``[N, C, H, W]`` in [-1, 1] (``C = 1`` is replicated to RGB). ``size`` resizes them
    (nearest, like the official ``tf.image.resize_images(method=1)``) to ``size x size`` first; ``None`` or 0 keeps
    them. Gradients flow to ``fake`` only (the real features are computed without grad). The result is unweighted.
    """

    def __init__(self, preprocess: str = "torchvision", size: int | None = 256):
        super().__init__()
        if preprocess not in PREPROCESSING:
            raise ValueError(f"preprocess must be one of {PREPROCESSING}, got {preprocess!r}.")
        self.preprocess = preprocess
        self.size = size or None
        self.features = vgg16_features()
        if preprocess == "caffe":
            mean, scale = torch.tensor(CAFFE_BGR_MEAN), torch.ones(3)
        else:
            mean, scale = torch.tensor(IMAGENET_RGB_MEAN) * 255.0, 1.0 / (torch.tensor(IMAGENET_RGB_STD) * 255.0)
        # x_net = ((x + 1) * 127.5 [channel order] - mean) * scale
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.source = "uninitialised"
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16PerceptualLoss:  # always frozen, always eval
        return super().train(False)

    def load_weights(self, state_dict: dict, source: str = "state dict") -> VGG16PerceptualLoss:
        normalized, _ = normalize_vgg16_state_dict(state_dict)
        weights = {key.removeprefix("features."): value for key, value in normalized.items()}
        missing = [f"features.{k}" for k in self.features.state_dict() if k not in weights]
        if missing:
            raise ValueError(f"{source} is not a VGG16 state dict: missing {missing[:4]}{'...' if len(missing) > 4 else ''}.")
        self.features.load_state_dict(weights, strict=True)
        self.source = source
        return self

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.size is not None and tuple(images.shape[-2:]) != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="nearest")
        x = (images + 1) * 127.5
        if self.preprocess == "caffe":
            x = x.flip(1)  # RGB -> BGR
        return (x - self.mean.to(x.dtype)) * self.scale.to(x.dtype)

    def features_of(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(self.prepare(images))

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.features_of(real)
        return (self.features_of(fake).float() - target.float()).square().mean()


def build_perceptual_loss(
    weights: str | os.PathLike | None = None,
    model_name: str = DEFAULT_PERCEPTUAL_MODEL,
    preprocess: str = "auto",
    size: int | None = 256,
    cache_dir: str | os.PathLike | None = None,
) -> VGG16PerceptualLoss:
    """A :class:`VGG16PerceptualLoss` with real pretrained weights, or :class:`PerceptualWeightsUnavailable`.

    ``weights``: a local VGG16 state dict file (see the module docstring); otherwise timm's ``model_name`` from the
    Hugging Face cache (``cache_dir``) or downloaded. ``preprocess="auto"`` chooses ``"caffe"`` for genforce's
    Keras conversion (``layerN.*`` keys) and ``"torchvision"`` for everything else.
    """
    if weights is not None:
        state_dict, source = load_state_dict_file(weights), f"local file {weights}"
    else:
        try:
            state_dict, source = load_timm_vgg16_state_dict(model_name, cache_dir)
        except PerceptualWeightsUnavailable as error:
            raise PerceptualWeightsUnavailable(
                f"No pretrained VGG16 weights are available for the perceptual loss ({error}). The loss refuses to run "
                "on a randomly initialised network. Either make the ImageNet weights available (run once online so "
                f"timm caches '{model_name}', or copy its Hub cache), or pass a local VGG16 state dict with "
                "--perceptual_weights <file.safetensors|.pth>, or disable the perceptual term explicitly with "
                "--perceptual_weight 0."
            ) from None
    normalized, key_style = normalize_vgg16_state_dict(state_dict)
    if preprocess == "auto":
        preprocess = "caffe" if key_style == "layer" else "torchvision"
    return VGG16PerceptualLoss(preprocess=preprocess, size=size).load_weights(normalized, source)


def save_vgg16_features_state_dict(module: nn.Module, path: str | os.PathLike) -> Path:
    """Write the conv1_1..conv4_3 tensors of a timm/torchvision VGG16 (or :func:`vgg16_features`) as safetensors."""
    from safetensors.torch import save_file

    weights, _ = normalize_vgg16_state_dict(module.state_dict() if isinstance(module, nn.Module) else module)
    weights = OrderedDict((k, v.detach().contiguous().cpu()) for k, v in weights.items())
    save_file(weights, str(path))
    restore_default_file_mode(path)
    return Path(path)


__all__ = [
    "CAFFE_BGR_MEAN",
    "DEFAULT_PERCEPTUAL_MODEL",
    "PerceptualWeightsUnavailable",
    "VGG16PerceptualLoss",
    "build_perceptual_loss",
    "discriminator_logistic_loss",
    "generator_nonsaturating_loss",
    "load_timm_vgg16_state_dict",
    "normalize_vgg16_state_dict",
    "r1_penalty",
    "save_vgg16_features_state_dict",
    "vgg16_features",
]
