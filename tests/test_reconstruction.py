"""`ghfeat reconstruct`, `reconstruct_images` metrics and the labelled grid of `ghfeat_hf.visualization`."""

import math

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch

from ghfeat_hf import GHFeatImageProcessor, GHFeatModel
from ghfeat_hf.cli import main
from ghfeat_hf.image_metrics import picture_metrics
from ghfeat_hf.reconstruction import format_metrics_table, reconstruct_images
from ghfeat_hf.visualization import make_grid

WHITE = (255, 255, 255)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, save_tiny_model):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def images():
    """RGB, grayscale and RGBA photos of different sizes."""
    rgb = PIL.Image.fromarray(skimage.data.chelsea()[40:240, 100:300])
    gray = PIL.Image.fromarray(skimage.data.camera()[100:400, 50:300])
    rgba = PIL.Image.fromarray(np.dstack([skimage.data.coffee()[:96, :128], np.full((96, 128), 180, np.uint8)]))
    return [rgb, gray, rgba]


def independent_metrics(model_dir, images):
    """Inputs resized with PIL, reconstructions with the documented uint8 mapping, metrics with numpy."""
    model = GHFeatModel.from_pretrained(model_dir).eval()
    processor = GHFeatImageProcessor.from_pretrained(model_dir)
    inputs, reconstructions, psnrs = [], [], []
    for image in images:
        rgb = image.convert("RGBA") if image.mode == "RGBA" else image.convert("RGB")
        if rgb.mode == "RGBA":  # composite onto white, as the processor documents
            rgb = PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgb.size, (*WHITE, 255)), rgb).convert("RGB")
        resized = np.asarray(rgb.resize((32, 32), PIL.Image.Resampling.BILINEAR))
        scaled = resized.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(1 / 127.5) - 1
        pixel_values = torch.from_numpy(scaled)
        with torch.inference_mode():
            decoded = model.decode(model(pixel_values=pixel_values).style_codes)[0].numpy()
        recon = np.clip((decoded.astype(np.float64) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        mse = np.mean((resized / 255.0 - recon / 255.0) ** 2)
        inputs.append(resized)
        reconstructions.append(recon)
        psnrs.append(10 * math.log10(1 / mse))
    return inputs, reconstructions, psnrs, processor


def test_reconstruct_images_matches_numpy(model_dir, images):
    model = GHFeatModel.from_pretrained(model_dir)
    processor = GHFeatImageProcessor.from_pretrained(model_dir)
    inputs, reconstructions, metrics = reconstruct_images(model, processor, images, batch_size=2)
    ref_inputs, ref_recons, ref_psnrs, _ = independent_metrics(model_dir, images)
    assert len(inputs) == len(reconstructions) == len(metrics) == 3
    for got, ref in zip(inputs, ref_inputs):
        assert got.size == (32, 32) and got.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(got), ref)
    for got, ref in zip(reconstructions, ref_recons):
        assert np.abs(np.asarray(got, dtype=np.int16) - ref).max() <= 1
    np.testing.assert_allclose([metric["psnr"] for metric in metrics], ref_psnrs, atol=1e-3)
    for metric in metrics:  # psnr is exactly 10 log10(1 / mse) of the returned images
        assert metric["psnr"] == pytest.approx(10 * math.log10(1 / metric["mse"]), abs=1e-9)
    assert 0 < min(metric["mse"] for metric in metrics)


def test_image_metrics_known_values():
    black, white = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    assert picture_metrics(black, white) == {"mse": 1.0, "psnr": 0.0}
    assert picture_metrics(white, white)["psnr"] == math.inf
    half = np.full((4, 4, 3), 51, np.uint8)  # 0.2 -> mse 0.04 -> psnr 13.979 dB
    assert picture_metrics(black, half)["psnr"] == pytest.approx(10 * math.log10(1 / 0.04))
    table = format_metrics_table(["a", "bb"], [{"mse": 0.04, "psnr": 13.9794}, {"mse": 0.01, "psnr": 20.0}])
    assert table.splitlines()[-1].split() == ["mean", "0.025000", "16.9897"]


def test_cli_reconstruct_grid_and_printed_psnr(model_dir, images, tmp_path, capsys):
    names = ["cat.png", "camera.jpg", "coffee_rgba.png"]
    for name, image in zip(names, images):
        image.save(tmp_path / name, quality=95) if name.endswith(".jpg") else image.save(tmp_path / name)
    files = [PIL.Image.open(tmp_path / name) for name in names]
    ref_inputs, ref_recons, ref_psnrs, _ = independent_metrics(model_dir, files)
    output = tmp_path / "out" / "grid.png"
    assert main(["reconstruct", *(str(tmp_path / name) for name in names), "--model", str(model_dir),
                 "-o", str(output), "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    table = {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if len(line.split()) == 3}
    printed = [float(table[(tmp_path / name).as_posix()][1]) for name in names]
    np.testing.assert_allclose(printed, ref_psnrs, atol=1e-3)
    assert float(table["mean"][1]) == pytest.approx(np.mean(printed), abs=1e-3)

    grid = PIL.Image.open(output)
    cell, pad, rows, cols = 128, 4, 3, 2  # 32 px cells enlarged x4 (nearest neighbour)
    assert grid.mode == "RGB"
    header = grid.height - rows * (cell + pad) - pad  # column labels
    label_width = grid.width - cols * (cell + pad) - 2 * pad  # row labels
    assert 8 <= header <= 40 and 40 <= label_width <= 3 * cell
    pixels = np.asarray(grid)
    for r in range(rows):
        y0 = grid.height - pad - (rows - r) * cell - (rows - 1 - r) * pad
        for c, reference in enumerate((ref_inputs[r], ref_recons[r])):
            x0 = grid.width - pad - (cols - c) * cell - (cols - 1 - c) * pad
            crop = pixels[y0:y0 + cell, x0:x0 + cell].astype(np.int16)
            enlarged = np.repeat(np.repeat(reference, 4, axis=0), 4, axis=1).astype(np.int16)
            assert np.abs(crop - enlarged).max() <= (0 if c == 0 else 1)
    assert (pixels[:header, 2 * pad + label_width:] < 128).any()  # column labels drawn
    assert (pixels[header + pad:, :label_width] < 128).any()  # row labels drawn


def test_cli_reconstruct_errors(model_dir, tmp_path, capsys):
    PIL.Image.fromarray(skimage.data.astronaut()[:64, :64]).save(tmp_path / "a.png")
    assert main(["reconstruct", str(tmp_path / "a.png"), "--model", str(model_dir), "-o", "grid.txt"]) == 2
    assert "unknown image extension" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["reconstruct", str(tmp_path / "bad.png"), "--model", str(model_dir),
                 "-o", str(tmp_path / "g.png")]) == 2
    assert "bad.png" in capsys.readouterr().err


def test_make_grid_layout_and_boxes():
    red = PIL.Image.new("RGB", (20, 10), (255, 0, 0))
    blue = np.zeros((10, 10, 3), np.uint8)
    blue[..., 2] = 255
    grid, boxes = make_grid([[red, blue], [None, PIL.Image.new("RGBA", (10, 10), (0, 0, 0, 0))], [blue]],
                            padding=3, return_boxes=True)
    assert grid.size == (3 + 2 * (20 + 3), 3 + 3 * (10 + 3))  # cells take the largest image size
    assert boxes[0][0] == (3, 3, 23, 13) and boxes[1][0] is None and boxes[2][1] is None
    assert boxes[0][1] == (26 + 5, 3, 26 + 15, 13)  # narrower image centred in its cell
    assert grid.getpixel((10, 8)) == (255, 0, 0) and grid.getpixel((35, 8)) == (0, 0, 255)
    assert grid.getpixel((35, 21)) == WHITE  # transparent composited on the background

    big, boxes = make_grid([[red]], ["a very long column label that cannot fit"], ["row"], cell_size=40,
                           return_boxes=True)
    left, top, right, bottom = boxes[0][0]
    assert (right - left, bottom - top) == (40, 20) and big.width == left + 40 + 4
    assert (np.asarray(big)[:top, left:] < 128).any() and (np.asarray(big)[top:, :left] < 128).any()
    with pytest.raises(ValueError):
        make_grid([[red]], row_labels=["a", "b"])


def test_make_grid_replicates_grayscale_cells():
    gray = np.full((10, 10, 1), 77, np.uint8)  # a 1-channel image as (H, W, 1), and as a PIL "L" image
    grid, boxes = make_grid([[gray, PIL.Image.fromarray(gray[..., 0])]], padding=2, return_boxes=True)
    assert grid.mode == "RGB"
    for left, top, _, _ in boxes[0]:
        assert grid.getpixel((left + 5, top + 5)) == (77, 77, 77)
