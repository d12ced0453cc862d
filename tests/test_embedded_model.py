"""The shipped default model: packaging, lookup by name, and every loader reaching it with no network."""

import json

import PIL.Image
import pytest
import timm
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

import ghfeat_hf
from ghfeat_hf import GHFeatModel, StyleGANDiscriminator, StyleGANGenerator, embedded
from ghfeat_hf.configuration_ghfeat import ghfeat_config_dict
from ghfeat_hf.demo import demo_image_paths, run_demo
from ghfeat_hf.hub import save_ghfeat_directory
from ghfeat_hf.runtime import load_model, resolve_model_path
from ghfeat_hf.timm_models import PRESETS, resolve_ghfeat_config
from package_embedded_model import main as package_main
from tests.conftest import tiny_discriminator_config, tiny_ghfeat_config


def test_lookup_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "PRETRAINED_DIR", tmp_path)
    assert embedded.embedded_models() == []
    with pytest.raises(FileNotFoundError, match="available: none"):
        embedded.embedded_model_path("ghfeat-x")
    (tmp_path / "ghfeat-x").mkdir()
    (tmp_path / "ghfeat-x" / "config.json").write_text("{}")
    (tmp_path / "not-a-model").mkdir()
    assert embedded.embedded_models() == ["ghfeat-x"]
    assert embedded.embedded_model_path("ghfeat-x") == tmp_path / "ghfeat-x"
    monkeypatch.delenv("GHFEAT_MODEL", raising=False)
    assert resolve_model_path("ghfeat-x") == str(tmp_path / "ghfeat-x")  # the CLI's --model ghfeat-x
    assert resolve_model_path("org/ghfeat-x") == "org/ghfeat-x"  # Hub ids are left alone


def finished_runs(tmp_path) -> GHFeatModel:
    """A tiny encoder run (`encoder-run/ghfeat`) and the GAN run it was trained against (`gan-run/`) under
    `tmp_path`, as package_embedded_model.py expects them; returns the encoder's model."""
    model = GHFeatModel(tiny_ghfeat_config()).eval()
    save_ghfeat_directory(model, tmp_path / "encoder-run" / "ghfeat")
    generator = StyleGANGenerator(model.config.generator_config)
    generator.synthesis.load_state_dict(model.synthesis.state_dict(), strict=False)
    generator.save_pretrained(tmp_path / "gan-run" / "stylegan-generator")
    StyleGANDiscriminator(tiny_discriminator_config()).save_pretrained(tmp_path / "gan-run" / "stylegan-discriminator")
    return model


def test_package_embedded_model(tmp_path):
    model = finished_runs(tmp_path)
    recipe = tmp_path / "recipe.md"
    recipe.write_text("Trained with `python training/train_stylegan.py --resolution 32` on 2 CPU cores.\n")
    exported_config = tmp_path / "encoder-run" / "ghfeat" / "config.json"
    config = json.loads(exported_config.read_text())
    config["generator_config"]["_name_or_path"] = "/training/machine/runs/stylegan-generator"
    exported_config.write_text(json.dumps(config))
    output = tmp_path / "pretrained" / "ghfeat-tiny"
    argv = ["--encoder-run", str(tmp_path / "encoder-run"), "--gan-run", str(tmp_path / "gan-run"),
            "--recipe", str(recipe), "--output", str(output)]
    assert package_main(argv) == 0
    assert package_main(argv) == 0  # packaging again replaces the directory
    assert sorted(path.name for path in output.parent.iterdir()) == ["ghfeat-tiny"]  # no staging directory left
    assert not any(path.name.endswith(".py") for path in output.rglob("*"))
    packaged_config = json.loads((output / "config.json").read_text())
    assert "auto_map" not in packaged_config and "_name_or_path" not in packaged_config["generator_config"]
    assert "auto_map" not in json.loads((output / "preprocessor_config.json").read_text())
    card = (output / "README.md").read_text()
    assert "license: mit" in card and "train_stylegan.py --resolution 32" in card
    assert 'ghfeat_hf.embedded_model_path("ghfeat-tiny")' in card
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    loaded = AutoModel.from_pretrained(output)
    torch.testing.assert_close(loaded(pixel_values=pixels).pooler_output, model(pixel_values=pixels).pooler_output)
    assert StyleGANGenerator.from_pretrained(output / "stylegan-generator").config.resolution == 32
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        package_main(["--encoder-run", str(tmp_path / "missing"), *argv[2:]])
    # a GAN run whose generator is not the one the encoder was trained against is refused; the package is kept
    StyleGANGenerator(model.config.generator_config).save_pretrained(tmp_path / "gan-run" / "stylegan-generator")
    with pytest.raises(ValueError, match="not the one the encoder .* synthesis tensors are missing or differ"):
        package_main(argv)
    torch.testing.assert_close(AutoModel.from_pretrained(output)(pixel_values=pixels).pooler_output,
                               model(pixel_values=pixels).pooler_output)


def test_package_in_half_precision_loads_and_computes_in_float32(tmp_path):
    model = finished_runs(tmp_path)
    (tmp_path / "recipe.md").write_text("Recipe.\n")
    output = tmp_path / "ghfeat-half"
    assert package_main(["--encoder-run", str(tmp_path / "encoder-run"), "--gan-run", str(tmp_path / "gan-run"),
                         "--recipe", str(tmp_path / "recipe.md"), "--output", str(output),
                         "--storage-dtype", "float16"]) == 0
    for weights in output.rglob("model.safetensors"):
        stored = load_file(str(weights))
        assert {tensor.dtype for tensor in stored.values() if tensor.is_floating_point()} == {torch.float16}
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    loaded = AutoModel.from_pretrained(output)
    assert {parameter.dtype for parameter in loaded.parameters()} == {torch.float32}
    expected = model(pixel_values=pixels).pooler_output
    torch.testing.assert_close(loaded(pixel_values=pixels).pooler_output, expected, rtol=2e-2, atol=2e-2)
    backbone = timm.create_model("ghfeat_resnet18_32", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(output / "model.safetensors")))
    assert {parameter.dtype for parameter in backbone.parameters()} == {torch.float32}
    assert StyleGANGenerator.from_pretrained(output / "stylegan-generator").mapping.w_avg.dtype == torch.float32


def test_timm_preset_of_the_embedded_architecture():
    config = resolve_ghfeat_config(None, PRESETS["ghfeat_resnet18_32"])
    assert sum(config.style_dims) == 896 and config.num_layers == 8


# ----------------------------------------------------------------------------------------------------------------
# The shipped model itself (skipped in an installation without it)

shipped = pytest.mark.skipif(ghfeat_hf.DEFAULT_MODEL not in embedded.embedded_models(),
                             reason="the default model is not installed")


@shipped
def test_every_loader_reaches_the_shipped_model():
    path = embedded.embedded_model_path()
    model, processor = load_model(None)  # the default of the CLI
    assert model.config.to_dict() == AutoModel.from_pretrained(path).config.to_dict()
    assert ghfeat_config_dict(model.config) == ghfeat_config_dict(resolve_ghfeat_config(
        None, PRESETS["ghfeat_resnet18_32"]))  # the timm preset describes the shipped architecture
    images = [PIL.Image.open(p) for p in demo_image_paths()[:4]]
    processor = AutoImageProcessor.from_pretrained(path)
    assert (processor.size.height, processor.size.width) == (32, 32) == (model.config.image_size,) * 2
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    reference = model(pixel_values=pixels).pooler_output
    timm_model = timm.create_model("ghfeat_resnet18_32.fmnist32", pretrained=True).eval()
    torch.testing.assert_close(timm_model(pixels), reference)
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < 30 * 2**20


@shipped
def test_demo_runs_on_the_shipped_model(tmp_path):
    result = run_demo(tmp_path / "demo")  # no --model: the embedded default
    for path in (result.reconstruction, result.style_mixing, result.interpolation, result.features):
        assert path.is_file() and path.stat().st_size > 0
    assert result.mean_psnr > 15.0, result.mean_psnr
