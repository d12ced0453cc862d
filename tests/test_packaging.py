"""The wheel: it holds the embedded model, the card templates and the demo images, and works without the checkout.

The wheel is built offline from a copy of the sources (``pip wheel --no-deps --no-build-isolation``, with the
setuptools of the dev extras), so the build leaves nothing in the working tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = Path("ghfeat_hf/pretrained/ghfeat-fmnist32")
DEPENDENCIES_OF_RECORD = ("torch", "timm", "transformers", "huggingface-hub", "safetensors", "datasets", "accelerate")

# Run in a subprocess on the unpacked wheel: argv[1] is the unpacked directory. Prints one JSON line.
LOAD_FROM_WHEEL = """
import json, sys
sys.path.insert(0, sys.argv[1])
from importlib import resources
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

import ghfeat_hf
from ghfeat_hf.model_card import template_directory

path = ghfeat_hf.embedded_model_path()
model = AutoModel.from_pretrained(path)
processor = AutoImageProcessor.from_pretrained(path)
image_file = sorted((resources.files("ghfeat_hf") / "assets" / "demo_images").iterdir(), key=str)[0]
pixel_values = processor(Image.open(image_file), return_tensors="pt")["pixel_values"]
with torch.no_grad():
    out = model(pixel_values=pixel_values)
    images = model.decode(out.style_codes)
template = (resources.files("ghfeat_hf") / "model_cards" / "ghfeat.md").read_text(encoding="utf-8")
print(json.dumps({
    "module": ghfeat_hf.__file__,
    "model_path": str(path),
    "template_directory": str(template_directory()),
    "template_head": template[:40],
    "model_class": type(model).__name__,
    "processor_class": type(processor).__name__,
    "image_size": model.config.image_size,
    "processor_size": [processor.size["height"], processor.size["width"]],
    "pixel_values": list(pixel_values.shape),
    "pixel_range": [pixel_values.min().item(), pixel_values.max().item()],
    "last_hidden_state": list(out.last_hidden_state.shape),
    "pooler_output": list(out.pooler_output.shape),
    "style_dims": [code.shape[-1] for code in out.style_codes],
    "decoded": list(images.shape),
    "finite": all(bool(torch.isfinite(t).all()) for t in (out.last_hidden_state, out.pooler_output, images)),
}))
"""


def _copy_sources(destination: Path) -> Path:
    """The files the build reads, copied so that setuptools' build/ and egg-info land outside the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, destination / name)
    for name in ("ghfeat_hf", "model_cards"):
        shutil.copytree(ROOT / name, destination / name, ignore=ignore)
    return destination


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built offline from a copy of the sources."""
    pytest.importorskip("setuptools", minversion="68")
    sources = _copy_sources(tmp_path_factory.mktemp("sources"))
    output = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--wheel-dir", str(output), str(sources)], check=True, timeout=300)
    (built,) = output.glob("ghfeat_hf-*.whl")
    return built


def _repository_files(folder: Path, pattern: str = "**/*") -> set[str]:
    return {path.relative_to(ROOT).as_posix() for path in (ROOT / folder).glob(pattern)
            if path.is_file() and "__pycache__" not in path.parts}


def test_wheel_contains_the_embedded_model_card_templates_and_demo_images(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    model = {f"{EMBEDDED}/{name}" for name in ("model.safetensors", "config.json", "preprocessor_config.json",
                                               "README.md", "stylegan-generator/config.json",
                                               "stylegan-generator/model.safetensors",
                                               "stylegan-discriminator/config.json",
                                               "stylegan-discriminator/model.safetensors")}
    assert model <= _repository_files(EMBEDDED)
    assert _repository_files(EMBEDDED) <= names
    templates = {f"ghfeat_hf/model_cards/{Path(name).name}" for name in _repository_files(Path("model_cards"), "*.md")}
    assert {"ghfeat_hf/model_cards/ghfeat.md", "ghfeat_hf/model_cards/stylegan.md"} <= templates <= names
    demo_images = _repository_files(Path("ghfeat_hf/assets/demo_images"), "*.png")
    assert len(demo_images) >= 1 and demo_images <= names
    # the weights are the real files, not Git LFS pointers
    with zipfile.ZipFile(wheel) as archive:
        assert archive.getinfo(f"{EMBEDDED}/model.safetensors").file_size == (ROOT / EMBEDDED / "model.safetensors").stat().st_size


def test_wheel_declares_bounded_dependencies(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line]
    for package in DEPENDENCIES_OF_RECORD:
        (spec,) = [r for r in requires if re.match(rf"{package}\b(?!-)", r, flags=re.IGNORECASE)]
        assert ">=" in spec and "<" in spec.replace("<=", ""), spec


def test_unpacked_wheel_loads_and_runs_the_embedded_model(wheel, tmp_path):
    unpacked = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(unpacked)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    # -I: no current directory, user site or PYTHONPATH on sys.path; the script puts the unpacked wheel first
    result = subprocess.run([sys.executable, "-I", "-c", LOAD_FROM_WHEEL, str(unpacked)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    package = unpacked / "ghfeat_hf"
    assert Path(report["module"]) == package / "__init__.py"
    assert Path(report["model_path"]) == package / "pretrained" / "ghfeat-fmnist32"
    assert Path(report["template_directory"]) == package / "model_cards"
    assert report["template_head"].startswith("---")
    assert (report["model_class"], report["processor_class"]) == ("GHFeatModel", "GHFeatImageProcessor")

    size = report["image_size"]
    assert size == 32 and report["processor_size"] == [size, size]
    assert report["pixel_values"] == [1, 1, size, size]  # the shipped model is grayscale: one channel in
    assert -1.0 <= report["pixel_range"][0] < report["pixel_range"][1] <= 1.0
    dims = report["style_dims"]
    assert len(dims) == 8  # a 32 px StyleGAN has 2 * (log2(32) - 1) layers
    assert report["last_hidden_state"] == [1, len(dims), max(dims)]
    assert report["pooler_output"] == [1, sum(dims)] == [1, 896]
    assert report["decoded"] == [1, 1, size, size]  # and one channel out
    assert report["finite"]
