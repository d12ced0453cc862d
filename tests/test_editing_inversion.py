"""Inversion refinement (ghfeat_hf.editing.inversion): Adam on the codes, PSNR before / after, perceptual term."""

import numpy as np
import pytest
import torch

from ghfeat_hf.editing import (
    MAX_REFINEMENT_STEPS,
    decode_codes,
    encode_images,
    refine_style_codes,
    resize_images,
)
from ghfeat_hf.errors import UsageError
from ghfeat_hf.image_metrics import pixel_mse, psnr
from ghfeat_hf.perceptual import build_perceptual_loss
from tests.editing_helpers import demo_pixel_values


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model()


@pytest.fixture(scope="module")
def pixel_values():
    return demo_pixel_values(3)


def psnr_of(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return psnr(pixel_mse(images, reference))


def test_psnr():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[1] = 0.2  # a difference of 0.1 on the [0, 1] scale: PSNR 20 dB
    torch.testing.assert_close(psnr_of(b, a), torch.tensor([float("inf"), 20.0]))
    assert psnr(0.01) == pytest.approx(20.0) and psnr(0.0) == float("inf")
    assert psnr(np.array([0.01, 0.001])).tolist() == pytest.approx([20.0, 30.0])


def test_refinement_raises_the_psnr_and_leaves_the_model_alone(model, pixel_values):
    parameters = {name: value.clone() for name, value in model.state_dict().items()}
    flags = [parameter.requires_grad for parameter in model.parameters()]
    codes = encode_images(model, pixel_values)
    result = refine_style_codes(model, pixel_values, codes, steps=40, learning_rate=0.02, batch_size=2,
                                progress=False)
    assert result.final_psnr.shape == (3,) and len(result.losses) == 2 and len(result.losses[0]) == 41
    torch.testing.assert_close(result.initial_psnr, psnr_of(decode_codes(model, codes), pixel_values))
    torch.testing.assert_close(result.final_psnr, psnr_of(decode_codes(model, result.style_codes), pixel_values))
    assert (result.final_psnr > result.initial_psnr + 0.5).all()
    assert (result.final_psnr - result.initial_psnr).mean() > 2.0
    assert all(history[-1] < history[0] for history in result.losses)
    assert all(torch.equal(value, parameters[name]) for name, value in model.state_dict().items())
    assert [parameter.requires_grad for parameter in model.parameters()] == flags
    assert all(parameter.grad is None for parameter in model.parameters())
    for bad in (0, MAX_REFINEMENT_STEPS + 1):
        with pytest.raises(UsageError, match="refinement steps"):
            refine_style_codes(model, pixel_values, steps=bad)
    with pytest.raises(UsageError, match="perceptual weight must be at least 0"):
        refine_style_codes(model, pixel_values, steps=1, perceptual_weight=-0.5)


@pytest.mark.parametrize("image_size", [16, 64])
def test_refinement_when_the_encoder_input_size_is_not_the_generator_resolution(image_size, tiny_model):
    model = tiny_model(image_size=image_size)  # the generator renders 32 px
    pixel_values = demo_pixel_values(2, size=image_size)
    result = refine_style_codes(model, pixel_values, steps=10, learning_rate=0.02, progress=False)
    target = resize_images(pixel_values, 32)  # the input as the generator's resolution sees it
    assert target.shape == (2, 3, 32, 32)
    torch.testing.assert_close(result.initial_psnr,
                               psnr_of(decode_codes(model, encode_images(model, pixel_values)), target))
    torch.testing.assert_close(result.final_psnr, psnr_of(decode_codes(model, result.style_codes), target))
    assert result.losses[0][-1] < result.losses[0][0]


def test_refinement_keeps_each_images_best_codes(model, pixel_values):
    # a learning rate far too large makes the later steps worse: the result must still be the best step's codes
    result = refine_style_codes(model, pixel_values, steps=5, learning_rate=50.0, progress=False)
    best = min(result.losses[0])
    assert result.losses[0][-1] > best
    assert (result.final_psnr >= result.initial_psnr - 1e-4).all()


def test_perceptual_term_from_local_weights(model, pixel_values, tmp_path):
    from safetensors.torch import save_file

    from ghfeat_hf.perceptual import VGG16

    weights = tmp_path / "vgg16.safetensors"  # "any local VGG16 state dict": random weights, for the plumbing
    save_file({f"{index}.{kind}": value for index, conv in zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21),
                                                              VGG16("conv4_3").convs.values())
               for kind, value in conv.state_dict().items()}, str(weights))
    loss = build_perceptual_loss(weights=weights, size=None, reduction="none")
    assert loss.source == f"local file {weights}" and not any(p.requires_grad for p in loss.parameters())
    distances = loss(pixel_values, pixel_values.flip(0))
    assert distances.shape == (3,) and distances[1] == 0 and (distances[[0, 2]] > 0).all()
    assert loss.size is None  # the generator's resolution, not the trainer's 256 px
    result = refine_style_codes(model, pixel_values, steps=3, perceptual=loss, perceptual_weight=0.5,
                                progress=False)
    assert len(result.losses[0]) == 4
    with pytest.raises(UsageError, match="does not exist"):
        build_perceptual_loss(weights=tmp_path / "missing.safetensors")
    with pytest.raises(UsageError, match="no pretrained weights for the perceptual model 'vgg16.tv_in1k'"):
        build_perceptual_loss("vgg16.tv_in1k")  # HF_HUB_OFFLINE and nothing cached: refuse a random network
