"""`ghfeat demo` on the bundled images."""

import os
import shutil
from pathlib import Path

import datasets
import PIL.Image
import pytest
import torch

from ghfeat_hf import GHFeatModel, demo
from ghfeat_hf.demo import DEMO_IMAGES, demo_image_paths, run_demo
from ghfeat_hf.editing import interpolate_style_codes, mix_style_codes
from ghfeat_hf.errors import UsageError
from ghfeat_hf.hub import save_ghfeat_directory
from tests.conftest import tiny_ghfeat_config


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny")
    save_ghfeat_directory(GHFeatModel(tiny_ghfeat_config()).eval(), directory)
    return directory


def test_demo_writes_the_four_outputs(tiny_dir, tmp_path):
    result = run_demo(tmp_path / "demo", model=tiny_dir)
    count = len(demo_image_paths())
    assert count == 20
    rows = datasets.load_dataset("parquet", data_files=str(result.features), split="train")
    assert rows.num_rows == count and len(rows[0]["ghfeat"]) == sum(tiny_ghfeat_config().style_dims)
    sizes = {}
    for path in (result.reconstruction, result.style_mixing, result.interpolation):
        with PIL.Image.open(path) as image:
            sizes[path] = image.size
        assert sizes[path][0] > 100 and sizes[path][1] > 30
    assert sizes[result.reconstruction][1] > sizes[result.interpolation][1]
    assert 0 < result.mean_psnr < 100 and "mean" in result.table


def test_demo_with_a_grayscale_model(tmp_path):
    """A 1-channel model: the RGB demo images are read as luminance, the grids show them replicated to RGB."""
    images = tmp_path / "images"
    images.mkdir()
    for path in demo_image_paths()[:3]:
        shutil.copy(path, images / path.name)
    model = save_ghfeat_directory(GHFeatModel(tiny_ghfeat_config(num_channels=1)).eval(), tmp_path / "gray")
    result = run_demo(tmp_path / "demo", model=model, images=images, interpolation_steps=3)
    for path in (result.reconstruction, result.style_mixing, result.interpolation):
        with PIL.Image.open(path) as grid:
            assert grid.mode == "RGB" and grid.width > 100
    rows = datasets.load_dataset("parquet", data_files=str(result.features), split="train")
    assert rows.num_rows == 3 and 0 < result.mean_psnr < 100


def _open_demo_images() -> list[str]:
    """The bundled demo images this process holds open (from /proc/self/fd)."""
    targets = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return [target for target in targets if target.startswith(str(DEMO_IMAGES))]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to list open files")
def test_demo_closes_its_images(tiny_dir, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("stop after reading the images")

    monkeypatch.setattr(demo, "reconstruct_images", fail)
    with pytest.raises(RuntimeError, match="stop") as failure:
        run_demo(tmp_path / "demo", model=tiny_dir)
    assert _open_demo_images() == [], failure  # checked while the traceback still holds run_demo's images


def test_demo_needs_two_images(tiny_dir, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(demo_image_paths()[0], one)
    for folder, found in ((one, 1), (tmp_path / "missing", 0)):
        with pytest.raises(UsageError, match=f"at least 2 PNG images in .*, found {found}"):
            run_demo(tmp_path / "demo", model=tiny_dir, images=folder)
    assert not (tmp_path / "demo").exists()


def test_mixing_and_interpolation_identities():
    a = (torch.randn(2, 4), torch.randn(2, 8))
    b = (torch.randn(2, 4), torch.randn(2, 8))
    assert all(torch.equal(x, y) for x, y in zip(mix_style_codes(a, b, []), a))
    assert all(torch.equal(x, y) for x, y in zip(mix_style_codes(a, b, [0, 1]), b))
    mixed = mix_style_codes(a, b, [1])
    assert torch.equal(mixed[0], a[0]) and torch.equal(mixed[1], b[1])
    path = interpolate_style_codes(a, b, 5)
    assert all(torch.equal(x, y) for x, y in zip(path[0], a)) and all(torch.equal(x, y) for x, y in zip(path[-1], b))
    torch.testing.assert_close(path[2][0], (a[0] + b[0]) / 2)
    only_fine = interpolate_style_codes(a, b, 3, layers=[1])
    assert torch.equal(only_fine[-1][0], a[0]) and torch.equal(only_fine[-1][1], b[1])
    with pytest.raises(ValueError, match="2 steps"):
        interpolate_style_codes(a, b, 1)
