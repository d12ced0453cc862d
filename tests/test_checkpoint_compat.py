"""Saved model directories keep loading, strictly and with bit-identical outputs, as the model code evolves.

``tests/data/checkpoint-compat/`` holds tiny fp32 ``save_pretrained`` directories of a GHFeatModel, a
StyleGANGenerator and a StyleGANDiscriminator (``ghfeat/``, ``generator/``, ``discriminator/``) and
``expected.safetensors``, their outputs on the fixed inputs of :func:`fixed_inputs`. Regenerate them (only when the
saved format is meant to change) with ``PYTHONPATH=$PWD python -m tests.test_checkpoint_compat --regenerate``.
"""

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from ghfeat_hf import GHFeatModel, StyleGANDiscriminator, StyleGANGenerator
from tests.conftest import tiny_discriminator_config, tiny_generator_config, tiny_ghfeat_config

DATA = Path(__file__).parent / "data" / "checkpoint-compat"
MODEL_DIRS = ("ghfeat", "generator", "discriminator")


def fixed_inputs() -> dict[str, torch.Tensor]:
    """Two 32 px RGB images in [-1, 1] ``[2, 3, 32, 32]`` and two latents ``[2, 16]`` (seed 0)."""
    generator = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1,
            "z": torch.randn(2, 16, generator=generator)}


@torch.no_grad()
def model_outputs(ghfeat, generator, discriminator) -> dict[str, torch.Tensor]:
    """Every output the checks compare: GH-Feat codes, pyramid and reconstructions, the generator's w, codes and
    images, the discriminator's scores of the images and of the reconstructions."""
    inputs = fixed_inputs()
    encoded = ghfeat(pixel_values=inputs["pixel_values"])
    reconstructions = ghfeat.decode(encoded.style_codes)
    w = generator.mapping(inputs["z"])
    outputs = {
        "ghfeat_codes": encoded.pooler_output,
        "ghfeat_tiled_codes": encoded.last_hidden_state,
        "ghfeat_reconstructions": reconstructions,
        "generator_w": w,
        "generator_codes": torch.cat(generator.style_codes(w), dim=1),
        "generator_images": generator(inputs["z"]),
        "discriminator_scores": discriminator(inputs["pixel_values"]),
        "discriminator_reconstruction_scores": discriminator(reconstructions),
    }
    outputs.update({f"ghfeat_pyramid_{level}": feature for level, feature in enumerate(encoded.pyramid_features)})
    return outputs


def regenerate() -> None:
    """Write the tiny model directories and ``expected.safetensors`` with the current code (seed 0, fp32)."""
    torch.manual_seed(0)
    narrow = dict(fmap_base=64, fmap_max=16)  # keeps the three directories together under 1 MB
    generator_config = tiny_generator_config(**narrow)
    models = (GHFeatModel(tiny_ghfeat_config(base_width=4, generator_config=generator_config.to_dict())),
              StyleGANGenerator(generator_config), StyleGANDiscriminator(tiny_discriminator_config(**narrow)))
    for name, model in zip(MODEL_DIRS, models):
        model.eval().save_pretrained(DATA / name)
    save_file({name: value.contiguous() for name, value in model_outputs(*models).items()},
              DATA / "expected.safetensors")


@pytest.fixture(scope="module")
def loaded() -> dict[str, torch.nn.Module]:
    """The saved directories through AutoModel, asserting a strict load (no missing, unexpected or resized keys)."""
    models = {}
    for name in MODEL_DIRS:
        model, info = AutoModel.from_pretrained(DATA / name, output_loading_info=True)
        assert not any(info.values()), (name, info)
        models[name] = model.eval()
    return models


def test_saved_directories_load_as_their_classes_in_fp32(loaded):
    assert [type(model) for model in loaded.values()] == [GHFeatModel, StyleGANGenerator, StyleGANDiscriminator]
    assert {parameter.dtype for model in loaded.values() for parameter in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("name", MODEL_DIRS)
def test_state_dict_keys_are_the_saved_ones(loaded, name):
    with safe_open(DATA / name / "model.safetensors", framework="pt") as saved:
        assert sorted(loaded[name].state_dict()) == sorted(saved.keys())


def test_outputs_are_bit_identical(loaded):
    expected = load_file(DATA / "expected.safetensors")
    outputs = model_outputs(*loaded.values())
    assert outputs.keys() == expected.keys()
    for name, value in outputs.items():
        assert torch.equal(value, expected[name]), name


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: python -m tests.test_checkpoint_compat --regenerate  (rewrites {DATA})")
    regenerate()
