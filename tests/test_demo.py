"""`ghfeat demo` on the bundled images."""

import datasets
import PIL.Image
import pytest
import torch

from ghfeat_hf import GHFeatModel
from ghfeat_hf.demo import demo_image_paths, run_demo
from ghfeat_hf.editing import interpolate_style_codes, mix_style_codes
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
    for path in (result.reconstruction, result.style_mixing, result.interpolation):
        image = PIL.Image.open(path)
        assert image.width > 100 and image.height > 30
    assert PIL.Image.open(result.reconstruction).height > PIL.Image.open(result.interpolation).height
    assert 0 < result.mean_psnr < 100 and "mean" in result.table


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
