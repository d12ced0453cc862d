"""Style-code algebra, style mixing and interpolation (ghfeat_hf.editing.codes) on a tiny random model."""

import pytest
import torch

from ghfeat_hf.editing import (
    concat_codes,
    decode_codes,
    describe_layers,
    encode_images,
    flatten_codes,
    interpolate_keyframes,
    select_codes,
    shift_codes,
    style_mixing,
)
from ghfeat_hf.errors import UsageError
from ghfeat_hf.runtime import parse_layers
from tests.conftest import tiny_ghfeat_config
from tests.editing_helpers import demo_pixel_values


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model()


@pytest.fixture(scope="module")
def pixel_values():
    return demo_pixel_values(5)


def test_layer_selections_and_labels():
    config = tiny_ghfeat_config()  # 8 layers: coarse 0-1, middle 2-3, fine 4-7
    assert parse_layers(None, config) == parse_layers("all", config) == list(range(8))
    assert parse_layers("middle|fine", config) == list(range(2, 8))
    assert parse_layers("0-1,5", config) == [0, 1, 5]
    assert describe_layers(range(8), config) == "all layers"
    assert describe_layers([0, 1], config) == "coarse (0-1)"
    assert describe_layers(range(2, 8), config) == "middle+fine (2-7)"
    assert describe_layers([0, 1, 5], config) == "layers 0-1,5"
    for bad, message in (("coarsest", "invalid --layers item"), ("9", "out of range"), ("3-1", "start is after")):
        with pytest.raises(UsageError, match=message):
            parse_layers(bad, config)


def test_flatten_and_shift_codes_use_the_same_layout():
    codes = (torch.zeros(2, 4), torch.zeros(2, 6), torch.zeros(2, 4))
    delta = torch.arange(8.0)
    shifted = shift_codes(codes, [2, 0], delta)  # layer order, not argument order: layer 0 then layer 2
    assert torch.equal(shifted[0], delta[:4].expand(2, 4)) and torch.equal(shifted[2], delta[4:].expand(2, 4))
    assert torch.equal(shifted[1], codes[1])
    assert torch.equal(flatten_codes(shifted, [0, 2]), delta.expand(2, 8))
    with pytest.raises(ValueError, match="hold 8"):
        shift_codes(codes, [0, 2], torch.zeros(5))


def test_encode_and_decode_batches_agree_with_one_call(model, pixel_values):
    codes = encode_images(model, pixel_values, batch_size=2)
    with torch.no_grad():
        reference = model.encode(pixel_values)
        images = model.decode(reference)
    for ours, theirs in zip(codes, reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(decode_codes(model, codes, batch_size=3), images, rtol=1e-4, atol=1e-4)


def test_mixing_all_layers_from_the_style_gives_its_reconstruction(model, pixel_values):
    codes = encode_images(model, pixel_values)
    content, style = select_codes(codes, slice(0, 3)), select_codes(codes, slice(3, 5))
    with torch.no_grad():
        reconstructions = model.reconstruct(pixel_values)
    everything = style_mixing(model, content, style, list(range(8)), batch_size=4)
    nothing = style_mixing(model, content, style, [], batch_size=4)
    assert everything.shape == (3, 2, 3, 32, 32)
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(everything[i, j], reconstructions[3 + j], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(nothing[i, j], reconstructions[i], rtol=1e-4, atol=1e-5)
    coarse = style_mixing(model, content, style, [0, 1])
    assert (coarse[0, 0] - reconstructions[0]).abs().max() > 1e-2  # the coarse layers do change the image
    assert (coarse[0, 0] - coarse[0, 1]).abs().max() > 1e-2


def test_interpolation_endpoints_are_the_reconstructions(model, pixel_values):
    codes = encode_images(model, pixel_values[:3])
    keyframes = [select_codes(codes, slice(i, i + 1)) for i in range(3)]
    path = interpolate_keyframes(keyframes, steps=4)
    assert len(path) == 7
    images = decode_codes(model, concat_codes(path))
    with torch.no_grad():
        reconstructions = model.reconstruct(pixel_values[:3])
    for frame, keyframe in ((0, 0), (3, 1), (6, 2)):
        torch.testing.assert_close(images[frame], reconstructions[keyframe], rtol=1e-4, atol=1e-5)
    for a, b, c in zip(path[0], path[1], path[3]):  # linear within a segment
        torch.testing.assert_close(b, a + (c - a) / 3)

    fine_only = interpolate_keyframes(keyframes, steps=4, layers=[4, 5, 6, 7])
    for step in fine_only:  # the other layers keep the first keyframe's codes all along
        assert all(torch.equal(step[layer], keyframes[0][layer]) for layer in range(4))
    assert all(torch.equal(fine_only[-1][layer], keyframes[2][layer]) for layer in range(4, 8))
    with pytest.raises(ValueError, match="2 keyframes"):
        interpolate_keyframes(keyframes[:1], steps=4)
