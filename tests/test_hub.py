"""Hub-facing behaviour: backbone, pipeline, remote code, Hub-cache loading, model cards and the upload path."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import pipeline

from ghfeat_hf import GHFeatModel, StyleGANDiscriminator, StyleGANGenerator
from ghfeat_hf.files import restore_default_file_mode
from ghfeat_hf.hub import load_backbone, push_to_hub, save_ghfeat_directory, save_stylegan_directory
from ghfeat_hf.model_card import template_directory
from ghfeat_hf.modeling_ghfeat import GHFeatBackbone
from tests.conftest import tiny_discriminator_config, tiny_generator_config, tiny_ghfeat_config

REPO_ID = "ghfeat-test/ghfeat-tiny"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("ghfeat-tiny")
    model = GHFeatModel(tiny_ghfeat_config()).eval()
    save_ghfeat_directory(model, directory, provenance={"source": "random init (test)", "domain": "test images"},
                          metrics={"reconstruction PSNR": 12.5})
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model(pixel_values=pixels)
    np.save(directory.parent / "pixels.npy", pixels.numpy())
    return directory, model, pixels, out


def test_directory_layout(saved):
    directory, *_ = saved
    names = {path.name for path in directory.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_ghfeat.py",
            "configuration_ghfeat.py", "configuration_stylegan.py", "modeling_stylegan.py", "layers.py",
            "image_processing_ghfeat.py", "provenance.json", "metrics.json"} <= names
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "ghfeat" and config["auto_map"]["AutoBackbone"] == "modeling_ghfeat.GHFeatBackbone"
    assert not {"architecture", "pretrained_cfg", "model_args"} & set(config)  # see test_processor_resolution.py
    assert config["auto_map"]["AutoImageProcessor"] == "image_processing_ghfeat.GHFeatImageProcessor"


def test_weights_are_as_readable_as_the_other_files(saved):
    directory, *_ = saved
    mode = (directory / "config.json").stat().st_mode & 0o777
    assert (directory / "model.safetensors").stat().st_mode & 0o777 == mode


def test_restore_default_file_mode_follows_the_umask(tmp_path):
    from safetensors.torch import save_file

    previous = os.umask(0o027)
    try:
        save_file({"x": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
        (tmp_path / "sub").mkdir()
        save_file({"x": torch.zeros(2)}, str(tmp_path / "sub" / "b.safetensors"))
        (tmp_path / "notes.txt").write_text("plain file")
        os.chmod(tmp_path / "notes.txt", 0o600)
        restore_default_file_mode(tmp_path)  # a directory: every *.safetensors below it, nothing else
        assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "sub" / "b.safetensors").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "notes.txt").stat().st_mode & 0o777 == 0o600
        os.umask(0o022)
        restore_default_file_mode(tmp_path / "a.safetensors")  # a single file
        assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(previous)


def test_model_card_metadata(saved):
    directory, *_ = saved
    card = (directory / "README.md").read_text()
    front = card.split("---")[1]
    for line in ("library_name: transformers", "pipeline_tag: image-feature-extraction", "- timm", "- ghfeat",
                 "- stylegan", "- gan-inversion", "license: other"):
        assert line in front, line
    assert "random init (test)" in card and "| reconstruction PSNR | 12.5 |" in card
    assert "| input | 32x32 RGB, values in [-1, 1]" in card
    assert "CC BY-NC 4.0" in card and "Limitations" in card and "Intended use" in card


def test_model_card_templates_are_found_in_a_checkout_and_in_a_wheel(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    assert template_directory() == root / "model_cards"  # source checkout / editable install
    installed = tmp_path / "site-packages" / "ghfeat_hf"
    shutil.copytree(root / "model_cards", installed / "model_cards")  # where pyproject.toml installs them
    monkeypatch.setattr("ghfeat_hf.model_card.resources.files", lambda package: installed)
    assert template_directory() == installed / "model_cards"
    assert {"ghfeat.md", "stylegan.md"} <= {path.name for path in template_directory().iterdir()}


def test_wheel_packages_are_complete_and_include_the_templates():
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(path.parent.relative_to(root).parts) for path in (root / "ghfeat_hf").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"ghfeat_hf.model_cards"}
    assert setuptools["package-dir"] == {"ghfeat_hf.model_cards": "model_cards"}
    assert setuptools["package-data"]["ghfeat_hf.model_cards"] == ["*.md"]


def test_backbone_from_full_checkpoint(saved):
    directory, _, pixels, out = saved
    backbone, info = load_backbone(directory, out_indices=[0, 2], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # synthesis, SAM, heads are ignored quietly
    assert isinstance(backbone, GHFeatBackbone) and backbone.out_features == ["p4", "p6"]
    assert backbone.channels == [16, 16]
    with torch.no_grad():
        maps = backbone(pixels).feature_maps
    torch.testing.assert_close(maps[0], out.pyramid_features[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(maps[1], out.pyramid_features[2], rtol=0, atol=1e-6)


def test_pipeline_pooled_and_not(saved, capsys):
    directory, model, pixels, out = saved
    extractor = pipeline("image-feature-extraction", model=str(directory))
    assert "custom code" not in capsys.readouterr().out  # the installed package needs no remote-code prompt
    images = [_to_pil(image) for image in pixels]
    pixel_values = extractor.image_processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():  # the pipeline runs one image at a time; so does the reference (same conv kernels)
        outputs = [model(pixel_values=pixel_values[i : i + 1]) for i in range(len(images))]
    expected = type(outputs[0])(last_hidden_state=torch.cat([o.last_hidden_state for o in outputs]),
                                pooler_output=torch.cat([o.pooler_output for o in outputs]))
    codes = extractor(images, return_tensors=True)
    pooled = extractor(images, pool=True, return_tensors=True)
    assert codes[0].shape == (1, 8, max(model.config.style_dims)) and pooled[0].shape == (1, sum(model.config.style_dims))
    torch.testing.assert_close(torch.cat(codes), expected.last_hidden_state, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat(pooled), expected.pooler_output, rtol=0, atol=1e-6)


def test_grayscale_directory_processor_and_pipeline(tmp_path):
    from transformers import AutoImageProcessor, AutoModel

    from ghfeat_hf import GHFeatImageProcessor

    model = GHFeatModel(tiny_ghfeat_config(num_channels=1)).eval()
    with pytest.raises(ValueError, match="3-channel images"):
        save_ghfeat_directory(model, tmp_path / "mismatch", processor=GHFeatImageProcessor(size=32))
    directory = save_ghfeat_directory(model, tmp_path / "gray")
    assert json.loads((directory / "preprocessor_config.json").read_text())["num_channels"] == 1
    assert "| input | 32x32 grayscale, values in [-1, 1]" in (directory / "README.md").read_text()
    processor = AutoImageProcessor.from_pretrained(directory)
    assert processor.num_channels == 1 and (processor.size.height, processor.size.width) == (32, 32)
    # directories of the old layout take the processor from config.json: the model's channels too
    assert GHFeatImageProcessor.from_dict(json.loads((directory / "config.json").read_text())).num_channels == 1
    images = [_to_pil(image) for image in torch.rand(2, 3, 40, 40) * 2 - 1]  # RGB photos, read as luminance
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (2, 1, 32, 32)
    loaded = AutoModel.from_pretrained(directory).eval()
    with torch.no_grad():
        assert loaded.reconstruct(pixel_values).shape == (2, 1, 32, 32)
        expected = torch.cat([loaded(pixel_values=pixel_values[i : i + 1]).pooler_output for i in range(2)])
    pooled = pipeline("image-feature-extraction", model=str(directory))(images, pool=True, return_tensors=True)
    torch.testing.assert_close(torch.cat(pooled), expected, rtol=0, atol=1e-6)
    assert [image.mode for image in processor.postprocess(pixel_values)] == ["L", "L"]


def _to_pil(pixels: torch.Tensor):
    from PIL import Image

    array = ((pixels.permute(1, 2, 0).numpy() + 1) * 127.5 + 0.5).clip(0, 255).astype(np.uint8)
    return Image.fromarray(array)


def test_remote_code_without_the_package(saved, run_python):
    """trust_remote_code loads the directory's own files in a process where ghfeat_hf cannot be imported."""
    directory, _, _, out = saved
    result = run_python(f"""
        import json, sys
        sys.modules["ghfeat_hf"] = None  # any import of the installed package fails
        import numpy as np, torch
        from transformers import AutoImageProcessor, AutoModel, pipeline
        model = AutoModel.from_pretrained({str(directory)!r}, trust_remote_code=True)
        processor = AutoImageProcessor.from_pretrained({str(directory)!r}, trust_remote_code=True)
        pixels = torch.from_numpy(np.load({str(directory.parent / "pixels.npy")!r}))
        with torch.no_grad():
            out = model(pixel_values=pixels)
        extractor = pipeline("image-feature-extraction", model={str(directory)!r}, trust_remote_code=True)
        from transformers.dynamic_module_utils import get_class_from_dynamic_module
        print(json.dumps({{"model": type(model).__module__, "processor": type(processor).__name__,
                          "codes": out.last_hidden_state.tolist(), "pipeline": type(extractor.model).__name__}}))
    """)
    assert "transformers_modules" in result["model"] and result["processor"] == "GHFeatImageProcessor"
    assert result["pipeline"] == "GHFeatModel"
    np.testing.assert_allclose(np.array(result["codes"]), out.last_hidden_state.numpy(), atol=1e-6)


def test_loading_from_a_populated_hub_cache(saved, tmp_path, run_python):
    """Offline from_pretrained("org/name") for transformers, the backbone helper and timm (hf_hub_id overlay)."""
    directory, _, pixels, out = saved
    cache = tmp_path / "hub"
    snapshot = cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(directory, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    result = run_python(f"""
        import json, numpy as np, torch, timm, ghfeat_hf
        from transformers import AutoModel
        from ghfeat_hf.hub import load_backbone
        pixels = torch.from_numpy(np.load({str(directory.parent / "pixels.npy")!r}))
        model = AutoModel.from_pretrained({REPO_ID!r})
        backbone = load_backbone({REPO_ID!r}, out_indices=[1])
        timm_model = timm.create_model("ghfeat_resnet18_256", pretrained=True,
                                       pretrained_cfg_overlay=dict(hf_hub_id={REPO_ID!r})).eval()
        with torch.no_grad():
            print(json.dumps({{"codes": model(pixel_values=pixels).last_hidden_state.tolist(),
                              "p5": backbone(pixels).feature_maps[0].tolist(),
                              "timm": timm_model.forward_features(pixels).tolist()}}))
    """, env={"HF_HUB_CACHE": str(cache)})
    np.testing.assert_allclose(np.array(result["codes"]), out.last_hidden_state.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.array(result["timm"]), out.last_hidden_state.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.array(result["p5"]), out.pyramid_features[1].numpy(), atol=1e-6)


def test_push_to_hub_renders_cards_and_uploads_the_folder(saved, tmp_path, recording_api):
    directory, *_ = saved
    target = tmp_path / "upload"
    shutil.copytree(directory, target)
    api = recording_api
    url = push_to_hub(target, REPO_ID, metrics={"parity (max relative error)": "1.4e-05"}, api=api)
    assert url.endswith("/commit/1")
    (_, repo, create), (_, repo2, upload) = api.calls
    assert repo == repo2 == REPO_ID and create["exist_ok"] is True
    assert Path(upload["folder_path"]).name == target.name and "checkpoints/*" in upload["ignore_patterns"]
    assert upload["files"]["model.safetensors"] == (target / "model.safetensors").read_bytes()
    card = (target / "README.md").read_text()
    assert upload["files"]["README.md"].decode() == card  # the local card is the pushed one
    assert f'AutoModel.from_pretrained("{REPO_ID}")' in card and "| parity (max relative error) | 1.4e-05 |" in card
    assert "| reconstruction PSNR | 12.5 |" in card  # earlier metrics are kept
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        push_to_hub(tmp_path / "empty", REPO_ID, api=api)


def test_push_to_hub_uploads_a_directory_of_model_subfolders(tmp_path, recording_api):
    """A converted (G, D, Gs) pickle: no top-level model, a generator and a discriminator sub-directory."""
    target = tmp_path / "stylegan"
    save_stylegan_directory(StyleGANGenerator(tiny_generator_config()), target / "stylegan-generator")
    save_stylegan_directory(StyleGANDiscriminator(tiny_discriminator_config()), target / "stylegan-discriminator")
    api = recording_api
    assert push_to_hub(target, REPO_ID, api=api).endswith("/commit/1")
    assert Path(api.calls[-1][2]["folder_path"]).name == target.name and not (target / "README.md").exists()
    for part, class_name in (("generator", "StyleGANGenerator"), ("discriminator", "StyleGANDiscriminator")):
        card = (target / f"stylegan-{part}" / "README.md").read_text()
        assert f'{class_name}.from_pretrained("{REPO_ID}", subfolder="stylegan-{part}")' in card
    with pytest.raises(ValueError, match="no top-level model"):
        push_to_hub(target, REPO_ID, metrics={"FID": 4.4}, api=api)


def test_a_failed_push_leaves_the_local_cards_alone(saved, tmp_path, recording_api, monkeypatch):
    directory, *_ = saved
    target = tmp_path / "upload"
    shutil.copytree(directory, target)
    before = {path.name: path.read_bytes() for path in target.iterdir() if path.is_file()}

    def failing_upload(**kwargs):
        raise OSError("connection reset")

    monkeypatch.setattr(recording_api, "upload_folder", failing_upload)
    with pytest.raises(OSError, match="connection reset"):
        push_to_hub(target, REPO_ID, metrics={"FID": 4.4}, api=recording_api)
    assert {path.name: path.read_bytes() for path in target.iterdir() if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["upload"]  # no staging folder left
