"""GHFeatModel: shapes, layouts, head-to-layer mapping, hidden states, gradient checkpointing, save/load, errors."""

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModel

from ghfeat_hf import GHFeatConfig, GHFeatModel, tile_style_codes
from ghfeat_hf.configuration_ghfeat import default_head_layer_groups
from tests.conftest import tiny_generator_config, tiny_ghfeat_config
from tests.helpers import assert_checkpointing_recomputes_exactly, assert_device_map_keeps_blocks_whole

OFFICIAL_TRAINABLE = {50: 151_766_976, 18: 124_871_872}  # manifest.json, E_gpu0 trainable scalars


@pytest.mark.parametrize("depth", [50, 18])
def test_encoder_parameter_count_equals_official(depth):
    with torch.device("meta"):
        model = GHFeatModel(GHFeatConfig(depth=depth))
    assert sum(p.numel() for p in model.encoder.parameters()) == OFFICIAL_TRAINABLE[depth]
    # the official synthesis network without StyleMod affines and unused ToRGB_lod1..6 (G_StyleMod: 18,863,189)
    assert sum(p.numel() for p in model.synthesis.parameters()) == 18_863_189 - 7_314


def test_default_config_is_the_released_ffhq256_model():
    config = GHFeatConfig()
    assert config.style_dims == [1024] * 8 + [512] * 2 + [256] * 2 + [128] * 2
    assert sum(config.style_dims) == 9984
    assert config.head_layers == [[0, 1, 2, 3], [4, 5, 6, 7], list(range(8, 14))]
    assert config.aligned_size == 4 and config.pyramid_strides == [16, 32, 64]


@pytest.mark.parametrize("num_layers, groups", [(8, [2, 2, 4]), (10, [4, 2, 4]), (14, [4, 4, 6]), (18, [6, 6, 6])])
def test_head_layer_groups_default_rule(num_layers, groups):
    assert default_head_layer_groups(num_layers) == groups


def test_config_errors_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="depth"):
        GHFeatConfig(depth=42)
    with pytest.raises(ValueError, match="head_layer_groups"):
        GHFeatConfig(head_layer_groups=[4, 4, 4])
    with pytest.raises(ValueError, match="divisible"):
        GHFeatConfig(image_size=100)
    config = tiny_ghfeat_config(head_layer_groups=[4, 2, 2])
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, GHFeatConfig)
    assert loaded.head_layer_groups == [4, 2, 2] and loaded.style_dims == config.style_dims
    assert loaded.generator_config.resolution == 32


def test_grayscale_model_encodes_and_decodes_one_channel():
    config = tiny_ghfeat_config(num_channels=1)
    assert config.num_channels == 1 and config.generator_config.num_channels == 1
    model = GHFeatModel(config).eval()
    pixels = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model(pixel_values=pixels)
        assert out.pooler_output.shape == (2, sum(config.style_dims))
        assert model.decode(out.style_codes).shape == (2, 1, 32, 32)
        assert model.reconstruct(pixels).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"\[N, 1, 32, 32\]"):
        model(pixel_values=torch.zeros(1, 3, 32, 32))


def test_encoder_and_generator_channels_must_match():
    with pytest.raises(ValueError, match=r"num_channels \(1\) must equal the generator's num_channels \(3\)"):
        tiny_ghfeat_config(num_channels=1, generator_config=tiny_generator_config().to_dict())
    with pytest.raises(ValueError, match="generator's num_channels"):
        GHFeatConfig(generator_config={"num_channels": 1})
    assert GHFeatConfig(num_channels=1).generator_config.num_channels == 1  # the default generator follows


def test_head_layer_groups_are_checked_after_a_new_generator_config():
    config = tiny_ghfeat_config()  # 8 generator layers, groups [2, 2, 4]
    config.generator_config = tiny_generator_config(64)  # 10 layers: the groups are stale
    with pytest.raises(ValueError, match=r"summing to 10 .*got \[2, 2, 4\]; set them again"):
        GHFeatModel(config)
    config.head_layer_groups = default_head_layer_groups(config.num_layers)
    assert config.head_layers[-1][-1] == 9


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = GHFeatModel(tiny_ghfeat_config()).eval()
    for module in model.modules():  # non-trivial BN statistics so eval mode is really tested
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def test_output_layouts(tiny_model):
    config = tiny_model.config
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = tiny_model(pixel_values=pixels)
    dims = config.style_dims
    assert [tuple(code.shape) for code in out.style_codes] == [(3, d) for d in dims]
    assert out.last_hidden_state.shape == (3, len(dims), max(dims))
    assert out.pooler_output.shape == (3, sum(dims))
    torch.testing.assert_close(out.pooler_output, torch.cat(out.style_codes, dim=1))
    for layer, code in enumerate(out.style_codes):  # narrower codes are tiled, not zero-padded
        repeats = max(dims) // dims[layer]
        torch.testing.assert_close(out.last_hidden_state[:, layer], code.repeat(1, repeats))
    assert [tuple(p.shape[1:]) for p in out.pyramid_features] == [(16, 8, 8), (16, 4, 4), (16, 2, 2)]
    assert list(out.keys())[0] == "last_hidden_state"  # what pipelines return by default
    assert out.hidden_states is None and len(tiny_model(pixel_values=pixels, return_dict=False)) == 4


def test_hidden_states_of_the_official_model():
    """stem, res2..res6, p4..p6 at 256 px, as documented in GHFeatModelOutput; the last three are the pyramid."""
    with torch.device("meta"):
        model = GHFeatModel(GHFeatConfig())
        out = model(pixel_values=torch.empty(2, 3, 256, 256), output_hidden_states=True)
        as_tuple = model(pixel_values=torch.empty(2, 3, 256, 256), output_hidden_states=True, return_dict=False)
    shapes = [tuple(state.shape[1:]) for state in out.hidden_states]
    assert shapes == [(64, 64, 64), (256, 64, 64), (512, 32, 32), (1024, 16, 16), (2048, 8, 8), (2048, 4, 4),
                      (512, 16, 16), (512, 8, 8), (512, 4, 4)]
    assert out.hidden_states[-3:] == out.pyramid_features and list(out.keys())[-1] == "hidden_states"
    assert len(as_tuple) == 5 and len(as_tuple[-1]) == 9


def test_gradient_checkpointing_recomputes_with_identical_results(tiny_model):
    assert GHFeatModel.supports_gradient_checkpointing
    assert_checkpointing_recomputes_exactly(
        tiny_model, lambda model: model.activation_checkpointing_enable(),
        lambda model, pixels: model(pixel_values=pixels).pooler_output, torch.rand(4, 3, 32, 32) * 2 - 1,
    )
    model = copy.deepcopy(tiny_model)
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    assert set(tiny_model.state_dict()) == set(model.state_dict())  # checkpointing adds no state
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing


def test_decode_accepts_every_layout_and_reconstruct(tiny_model):
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = tiny_model(pixel_values=pixels)
        images = tiny_model.decode(out.style_codes)
        assert images.shape == (2, 3, 32, 32)
        torch.testing.assert_close(tiny_model.decode(out.last_hidden_state), images)
        torch.testing.assert_close(tiny_model.decode(out.pooler_output), images)
        torch.testing.assert_close(tiny_model.reconstruct(pixels), images)
        with pytest.raises(ValueError, match="layout"):
            tiny_model.decode(torch.randn(2, 5, 7))
        with pytest.raises(ValueError, match="per-layer codes"):
            tiny_model.decode(out.style_codes[:-1])


def test_deepest_level_drives_coarse_layers(tiny_model):
    """Perturbing the finest aligned level changes only the fine head's layers."""
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = tiny_model.encode(pixels)
        bias = tiny_model.encoder.alignment.convs[0].bias
        bias.add_(1.0)
        after = tiny_model.encode(pixels)
        bias.sub_(1.0)
    changed = [layer for layer, (a, b) in enumerate(zip(before, after)) if not torch.equal(a, b)]
    assert changed == tiny_model.config.head_layers[2]


def test_bad_pixel_values_raise(tiny_model):
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        tiny_model(pixel_values=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="4-D"):
        tiny_model(pixel_values=torch.zeros(3, 32, 32))


@pytest.mark.parametrize("resolution", [32, 128])
def test_save_pretrained_round_trip_is_exact(tmp_path, resolution):
    model = GHFeatModel(tiny_ghfeat_config(resolution)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    pixels = torch.rand(2, 3, resolution, resolution) * 2 - 1
    with torch.no_grad():
        expected_codes = model(pixel_values=pixels).last_hidden_state
        expected_images = model.reconstruct(pixels)
    for _ in range(2):  # any buffer left uninitialised by from_pretrained would show up as a mismatch
        loaded = AutoModel.from_pretrained(tmp_path)
        assert isinstance(loaded, GHFeatModel) and not loaded.training
        with torch.no_grad():
            torch.testing.assert_close(loaded(pixel_values=pixels).last_hidden_state, expected_codes, rtol=0, atol=0)
            torch.testing.assert_close(loaded.reconstruct(pixels), expected_images, rtol=0, atol=0)


def test_tile_style_codes_explicit_width():
    codes = (torch.ones(1, 4), torch.full((1, 2), 2.0))
    tiled = tile_style_codes(codes, width=8)
    assert tiled.shape == (1, 2, 8) and tiled[0, 1].tolist() == [2.0] * 8


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.filterwarnings("ignore:Current model requires")  # the fake GPUs leave no room for offload buffers
def test_device_map_keeps_blocks_whole(depth):
    model = GHFeatModel(tiny_ghfeat_config(depth=depth))
    assert_device_map_keeps_blocks_whole(model)
    present = {type(module).__name__ for module in model.modules()}
    # no misspelt class name
    assert set(model._no_split_modules) <= present | {"GHFeatBasicUnit", "GHFeatBottleneckUnit"}


def test_integer_pixel_values_are_refused_with_the_conversion():
    model = GHFeatModel(tiny_ghfeat_config()).eval()
    pixels = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"floating point in \[-1, 1\], got torch.uint8.*GHFeatImageProcessor"):
        model(pixel_values=pixels)
    assert model(pixel_values=pixels / 127.5 - 1).pooler_output.shape == (1, sum(model.config.style_dims))
