"""StyleGAN generator / discriminator: consistency between w, style codes and images; round trips."""

import pytest
import torch
from transformers import AutoModel

from ghfeat_hf import GHFeatModel, StyleGANDiscriminator, StyleGANGenerator
from tests.conftest import tiny_discriminator_config, tiny_generator_config, tiny_ghfeat_config
from tests.helpers import assert_device_map_keeps_blocks_whole


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    model = StyleGANGenerator(tiny_generator_config(128)).eval()
    with torch.no_grad():
        for layer in model.synthesis.layers:  # official init has zero noise strength: make noise matter
            layer.noise_strength.normal_()
    return model


def test_generator_paths_agree(generator):
    z = torch.randn(3, 16)
    with torch.no_grad():
        w = generator.mapping(z)
        assert w.shape == (3, generator.config.num_layers, 16)
        assert torch.equal(w[:, 0], w[:, -1])  # broadcast over layers
        codes = generator.style_codes(w)
        assert [c.shape[1] for c in codes] == generator.config.style_dims
        images = generator(z)
        assert images.shape == (3, 3, 128, 128)
        torch.testing.assert_close(generator.synthesis(w), images)
        torch.testing.assert_close(generator.synthesis(style_codes=codes), images)
        torch.testing.assert_close(generator.style_codes(w[:, 0]), codes)  # w or w+


def test_ghfeat_synthesis_renders_generator_codes(generator):
    """GH-Feat's StyleMod-free synthesis, loaded from the generator's weights, renders y = A(w) like G(w)."""
    model = GHFeatModel(tiny_ghfeat_config(128, generator_config=generator.config.to_dict())).eval()
    missing, unexpected = model.synthesis.load_state_dict(generator.synthesis.state_dict(), strict=False)
    assert not missing and all(".style." in key for key in unexpected)
    z = torch.randn(2, 16)
    with torch.no_grad():
        w = generator.mapping(z)
        torch.testing.assert_close(model.decode(generator.style_codes(w)), generator.synthesis(w))


def test_truncation(generator):
    z = torch.randn(2, 16)
    with torch.no_grad():
        generator.mapping.w_avg.normal_()
        w = generator.mapping(z)
        truncated = generator.mapping(z, truncation_psi=0.0, truncation_cutoff=3)
    torch.testing.assert_close(truncated[:, :3], generator.mapping.w_avg.expand(2, 3, -1))
    torch.testing.assert_close(truncated[:, 3:], w[:, 3:])


def test_noise_modes(generator):
    z = torch.randn(2, 16)
    with torch.no_grad():
        const = generator(z)
        torch.testing.assert_close(generator(z), const)
        assert (generator(z, noise_mode="random") - const).abs().max() > 1e-4
        assert (generator(z, noise_mode="none") - const).abs().max() > 1e-4
        with pytest.raises(ValueError, match="noise_mode"):
            generator(z, noise_mode="bogus")


def test_style_codes_need_style_mod():
    model = GHFeatModel(tiny_ghfeat_config())
    with pytest.raises(ValueError, match="StyleMod"):
        model.synthesis.style_codes(torch.randn(1, 16))
    with pytest.raises(ValueError, match="exactly one"):
        model.synthesis()


def test_discriminator_shapes_and_round_trip(tmp_path):
    discriminator = StyleGANDiscriminator(tiny_discriminator_config(128)).eval()
    images = torch.randn(4, 3, 128, 128)
    with torch.no_grad():
        scores = discriminator(images)
    assert scores.shape == (4, 1)
    discriminator.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, StyleGANDiscriminator)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), scores, rtol=0, atol=0)
        with pytest.raises(ValueError, match="divisible"):
            loaded(torch.randn(6, 3, 128, 128))


def test_generator_round_trip(tmp_path, generator):
    generator.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, StyleGANGenerator)
    z = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), generator(z), rtol=0, atol=0)
        torch.testing.assert_close(loaded.mapping.w_avg, generator.mapping.w_avg)


@pytest.mark.filterwarnings("ignore:Current model requires")  # the fake GPUs leave no room for offload buffers
def test_device_map_keeps_blocks_whole():
    models = [StyleGANGenerator(tiny_generator_config()), StyleGANDiscriminator(tiny_discriminator_config())]
    for model in models:
        assert_device_map_keeps_blocks_whole(model)
    classes = {type(module).__name__ for model in models for module in model.modules()}
    assert set(StyleGANGenerator._no_split_modules) <= classes  # no misspelt class name


def test_latents_of_the_wrong_width_are_refused_with_the_expected_shape():
    generator = StyleGANGenerator(tiny_generator_config()).eval()
    with pytest.raises(ValueError, match=r"z must be a \[N, 16\] tensor \(this generator's latent_size\), got \[4, 512\]"):
        generator.mapping(torch.randn(4, 512))
    with pytest.raises(ValueError, match="got list"):
        generator([0.0] * 16)
    assert generator(torch.randn(2, 16)).shape == (2, 3, 32, 32)
