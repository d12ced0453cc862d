"""Every directory the project writes gives the model's own image processor through transformers' Auto classes.

transformers >= 5.25 takes a *local* directory whose ``config.json`` holds timm's ``pretrained_cfg`` for a timm
checkpoint and reads the processor settings from ``config.json`` (no ``size`` there: 256 px). Directories are
therefore written with a plain transformers ``config.json``; those written before ghfeat-hf 0.2 (timm keys in
``config.json``, ``tests/data/pre-0.2-layout/config.json`` is the real embedded config of that version) still
resolve to their model's resolution.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import timm
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, pipeline
from transformers.models.auto import image_processing_auto

import ghfeat_hf
from ghfeat_hf import GHFeatModel
from ghfeat_hf.hub import save_ghfeat_directory
from tests.conftest import tiny_ghfeat_config

TIMM_KEYS = {"architecture", "pretrained_cfg", "model_args", "num_features", "global_pool", "image_processor_type"}
OLD_LAYOUT = Path(__file__).parent / "data" / "pre-0.2-layout"


def _saved_directory(root: Path) -> Path:
    """What the converter and both trainers write (they all call ``save_ghfeat_directory``), at 32 px."""
    directory = root / "saved"
    save_ghfeat_directory(GHFeatModel(tiny_ghfeat_config()).eval(), directory)
    return directory


def _old_layout_directory(root: Path) -> Path:
    """The ``config.json`` and processor file that ghfeat-hf 0.1 shipped with its embedded (RGB) model, with weights
    of that architecture (seeded, scaled so the codes are O(1))."""
    directory = root / "old-layout"
    directory.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copyfile(OLD_LAYOUT / name, directory / name)
    torch.manual_seed(0)
    model = GHFeatModel(AutoConfig.from_pretrained(directory))
    with torch.no_grad():
        for parameter in model.encoder.parameters():
            if parameter.ndim > 1:
                parameter.normal_(0.0, parameter[0].numel() ** -0.5)
    model.save_pretrained(root / "weights")
    shutil.move(root / "weights" / "model.safetensors", directory / "model.safetensors")
    return directory


def _embedded_directory(root: Path) -> Path:
    return ghfeat_hf.embedded_model_path()


DIRECTORIES = {"saved": _saved_directory, "old-layout": _old_layout_directory, "embedded": _embedded_directory}


@pytest.fixture(scope="module", params=sorted(DIRECTORIES))
def directory(request, tmp_path_factory) -> Path:
    return DIRECTORIES[request.param](tmp_path_factory.mktemp(request.param))


def test_auto_image_processor_and_pipeline_use_the_model_resolution(directory, monkeypatch):
    model = AutoModel.from_pretrained(directory).eval()
    size = model.config.image_size
    assert size == 32
    warnings = []  # neither a backend fallback nor anything else to warn about
    monkeypatch.setattr(image_processing_auto.logger, "warning_once", warnings.append)
    monkeypatch.setattr(image_processing_auto.logger, "warning", warnings.append)
    processor = AutoImageProcessor.from_pretrained(directory)
    assert type(processor) is ghfeat_hf.GHFeatImageProcessor and warnings == []
    assert (processor.size.height, processor.size.width) == (size, size)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 20, 3), dtype=np.uint8))
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, model.config.num_channels, size, size)

    extractor = pipeline("image-feature-extraction", model=str(directory))
    with torch.no_grad():
        expected = model(pixel_values=pixels)
    codes = extractor(image, return_tensors=True)
    assert tuple(codes.shape) == tuple(expected.last_hidden_state.shape)
    torch.testing.assert_close(codes, expected.last_hidden_state, rtol=0, atol=1e-6)
    torch.testing.assert_close(extractor(image, pool=True, return_tensors=True), expected.pooler_output,
                               rtol=0, atol=1e-6)


def test_written_config_holds_no_timm_keys(tmp_path):
    config = json.loads((_saved_directory(tmp_path) / "config.json").read_text())
    assert config["model_type"] == "ghfeat" and not TIMM_KEYS & set(config)
    assert not TIMM_KEYS & set(json.loads((ghfeat_hf.embedded_model_path() / "config.json").read_text()))
    assert TIMM_KEYS <= set(json.loads((OLD_LAYOUT / "config.json").read_text()))  # the fixture is the old layout


def test_timm_loads_both_layouts_from_the_same_weights(tmp_path):
    """New layout: the registered name + the weights file (architecture read from config.json); old layout: also
    timm's own ``local-dir:`` loader, which reads the timm keys it still has."""
    saved, old = _saved_directory(tmp_path), _old_layout_directory(tmp_path)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    for directory in (saved, old):
        with torch.no_grad():
            expected = AutoModel.from_pretrained(directory).eval()(pixel_values=pixels).last_hidden_state
            model = timm.create_model("ghfeat_resnet18_256", pretrained=True,
                                      pretrained_cfg_overlay=dict(file=str(directory / "model.safetensors")))
            torch.testing.assert_close(model.eval().forward_features(pixels), expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        legacy = timm.create_model(f"local-dir:{old}", pretrained=True).eval()
        torch.testing.assert_close(legacy.forward_features(pixels),
                                   AutoModel.from_pretrained(old).eval()(pixel_values=pixels).last_hidden_state,
                                   rtol=0, atol=1e-6)
