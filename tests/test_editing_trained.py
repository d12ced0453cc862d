"""Editing properties that only a trained GH-Feat has (a random network's codes are not local, and its decoder
ignores what its encoder sees). They run with the default model (or ``$GHFEAT_MODEL``) and are skipped in an
installation without one."""

import numpy as np
import PIL.Image
import pytest
import torch

from ghfeat_hf.demo import demo_image_paths
from ghfeat_hf.editing import (
    box_mask,
    decode_codes,
    encode_images,
    harmonize,
    image_mask,
    labelled_codes,
    learn_boundary,
    manipulate_codes,
    masks_at_resolution,
    select_codes,
)
from ghfeat_hf.errors import UsageError
from ghfeat_hf.runtime import load_model
from tests.editing_helpers import brightness_dataset


@pytest.fixture(scope="module")
def trained():
    try:
        model, processor = load_model(None, device="cpu")
    except UsageError:
        pytest.skip("needs a trained GH-Feat: no default model is installed and $GHFEAT_MODEL is not set")
    if model.config.image_size != 32:
        pytest.skip("the thresholds below are set for the 32 px Fashion-MNIST model")
    return model, processor


def test_harmonization_keeps_pixels_far_from_the_region(trained):
    model, processor = trained
    paths = demo_image_paths()
    base = processor([PIL.Image.open(paths[i]) for i in (0, 4, 13)], return_tensors="pt")["pixel_values"]
    source = processor([PIL.Image.open(paths[i]) for i in (14, 12, 2)], return_tensors="pt")["pixel_values"]
    mask = masks_at_resolution(box_mask((32, 32), (10, 20, 22, 30)), 32)  # lower middle
    result = harmonize(model, base, source, mask)
    change = (result.harmonized - result.base_reconstruction).abs().mean(dim=1)  # [N, 32, 32]
    far = change[:, :8, :]  # at least 12 rows above the region
    inside = change[:, 20:30, 10:22]
    assert far.mean() < 0.15 and far.mean() < inside.mean() / 3


def test_a_mask_image_harmonizes_its_region_and_leaves_the_rest_close_to_the_base(trained):
    # the path of `ghfeat edit harmonize --mask`: an opaque RGBA mask file (white = from the source), read at the
    # base image's size, resized to the model, pasted, encoded and decoded
    model, processor = trained
    paths = demo_image_paths()
    base = processor([PIL.Image.open(paths[i]) for i in (0, 4, 13)], return_tensors="pt")["pixel_values"]
    source = processor([PIL.Image.open(paths[i]) for i in (14, 12, 2)], return_tensors="pt")["pixel_values"]
    region = np.zeros((32, 32), np.uint8)
    region[18:, 8:24] = 255
    mask = masks_at_resolution(image_mask(PIL.Image.fromarray(region).convert("RGBA"), size=(32, 32)), 32)
    result = harmonize(model, base, source, mask)
    inside = torch.from_numpy(region == 255).expand_as(base)
    assert torch.equal(result.pasted[inside], source[inside]) and torch.equal(result.pasted[~inside], base[~inside])

    far = (..., slice(0, 8), slice(None))  # at least 10 rows above the region

    def far_error(images: torch.Tensor) -> torch.Tensor:  # [N] mean absolute difference to the base, far away
        return (images - base)[far].abs().flatten(1).mean(dim=1)

    # far from the region, as close to the base as the base's own reconstruction (the encoder's fidelity)
    assert (far_error(result.harmonized) < far_error(result.base_reconstruction) + 0.05).all()
    change = (result.harmonized - result.base_reconstruction).abs()
    assert change[..., 18:, 8:24].mean() > 3 * change[far].mean()


def test_footwear_boundary_separates_held_out_fashion_mnist(trained):
    from ghfeat_hf.data import load_training_images

    model, processor = trained
    try:
        dataset = load_training_images("fashion-mnist", split="train")
    except FileNotFoundError:
        pytest.skip("needs Fashion-MNIST (apt-get install -y dataset-fashion-mnist)")
    codes, labels = labelled_codes(model, processor, dataset, "label", ["5", "7", "9"], max_samples=1500,
                                   progress=False)
    boundary = learn_boundary(codes, labels, attribute="footwear", model=model)
    assert boundary.accuracy > 0.9 and boundary.balanced_accuracy > 0.9


def test_brightness_boundary_brightens_decoded_images(trained):
    model, _ = trained
    pixel_values, labels = brightness_dataset(500, num_channels=model.config.num_channels)
    codes = encode_images(model, pixel_values)
    boundary = learn_boundary(select_codes(codes, slice(0, 400)), labels[:400], attribute="bright")
    assert boundary.accuracy > 0.9
    probes = select_codes(codes, slice(400, 410))  # images the boundary never saw
    moved = manipulate_codes(probes, boundary, [-2.0, -1.0, 0.0, 1.0, 2.0])
    brightness = torch.stack([decode_codes(model, step).mean(dim=(1, 2, 3)) for step in moved], dim=1)
    assert (brightness.diff(dim=1) > 0).float().mean() > 0.9
