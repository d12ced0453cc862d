"""Restoration through the generator: the degradation operators on hand-made tensors, the optimisation, and
``ghfeat restore`` / ``ghfeat evaluate restoration`` end to end on tiny models."""

import json
from pathlib import Path

import PIL.Image
import pytest
import torch

from ghfeat_hf import GHFeatModel, StyleGANGenerator
from ghfeat_hf.cli import main
from ghfeat_hf.demo import demo_image_paths
from ghfeat_hf.errors import UsageError
from ghfeat_hf.hub import save_ghfeat_directory
from ghfeat_hf.restoration import (
    Downsample,
    Grayscale,
    Mask,
    Noise,
    average_style_codes,
    centered_box_mask,
    code_prior,
    random_box_masks,
    random_stroke_masks,
    restore,
)
from ghfeat_hf.runtime import GENERATOR_SUBFOLDER
from tests.conftest import tiny_ghfeat_config
from tests.helpers import write_saved_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mask_multiplies_and_the_composite_keeps_known_pixels_exactly():
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    images = torch.tensor([[[[0.5, -0.25], [0.75, -1.0]]]])
    operator = Mask(mask)
    assert torch.equal(operator(images), torch.tensor([[[[0.5, 0.0], [0.0, -1.0]]]]))
    observation = operator.degrade(images)
    restored = torch.full_like(images, 0.125)
    composite = operator.composite(restored, observation)
    assert torch.equal(composite, torch.tensor([[[[0.5, 0.125], [0.125, -1.0]]]]))
    # mean fill: the holes take the mean of the known pixels, (0.5 - 1) / 2
    assert torch.equal(operator.encoder_input(observation), torch.tensor([[[[0.5, -0.25], [-0.25, -1.0]]]]))
    with pytest.raises(UsageError, match="whole image"):
        Mask(torch.zeros(2, 2))


def test_mask_generators():
    hole = centered_box_mask(32, 12)
    assert hole.shape == (1, 1, 32, 32) and int((hole == 0).sum()) == 144 and hole[0, 0, 10, 10] == 0
    assert hole[0, 0, 9, 9] == 1 and hole[0, 0, 22, 22] == 1 and hole[0, 0, 21, 21] == 0
    boxes = random_box_masks(5, 32, 4, 8, torch.Generator().manual_seed(0))
    hidden = (boxes == 0).flatten(1).sum(1)
    assert boxes.shape == (5, 1, 32, 32) and bool(((hidden >= 16) & (hidden <= 64)).all())
    strokes = random_stroke_masks(3, 32, generator=torch.Generator().manual_seed(0))
    assert bool(((strokes == 0).flatten(1).sum(1) > 0).all()) and set(strokes.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(UsageError, match="hole"):
        centered_box_mask(32, 32)


def test_downsample_averages_blocks_and_upsamples_back():
    images = torch.arange(16.0).view(1, 1, 4, 4) / 16
    small = Downsample(2)(images)
    expected = torch.tensor([[2.5, 4.5], [10.5, 12.5]]) / 16  # the means of the 2x2 blocks
    assert torch.allclose(small[0, 0], expected)
    assert Downsample(2).encoder_input(small).shape == (1, 1, 4, 4)
    flat = torch.full((1, 1, 8, 8), 0.25)
    assert torch.allclose(Downsample(4, "bicubic")(flat), torch.full((1, 1, 2, 2), 0.25))
    with pytest.raises(UsageError, match="factor"):
        Downsample(3)
    with pytest.raises(UsageError, match="cannot be downsampled"):
        Downsample(8).observation_size(36)


def test_noise_operators():
    images = torch.zeros(4, 1, 32, 32)
    gaussian = Noise(0.1)
    assert torch.equal(gaussian(images), images)  # A is the identity; the noise is in the observation
    noisy = gaussian.degrade(images, torch.Generator().manual_seed(0))
    assert abs(float(noisy.std()) - 0.2) < 0.01 and abs(float(noisy.mean())) < 0.02  # sigma on [0, 1] = 2 sigma here
    again = gaussian.degrade(images, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    salted = Noise(kind="salt-pepper", amount=0.2).degrade(images, torch.Generator().manual_seed(0))
    assert abs(float((salted == 1).float().mean()) - 0.1) < 0.02 and abs(float((salted == -1).float().mean()) - 0.1) < 0.02
    with pytest.raises(UsageError, match="sigma"):
        Noise(0.0)


def test_grayscale_is_the_luma_and_one_channel_models_are_refused():
    images = torch.tensor([1.0, 0.5, -1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    gray = Grayscale()(images)
    assert gray.shape == (1, 1, 2, 2) and torch.allclose(gray, torch.full_like(gray, 0.299 + 0.2935 - 0.114))
    assert Grayscale().encoder_input(gray).shape == (1, 3, 2, 2)
    with pytest.raises(UsageError, match="colour .3-channel. model; this model has 1 channel"):
        Grayscale().check_channels(1)


def test_classical_baselines_keep_shapes_and_known_pixels():
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    operator = Mask(centered_box_mask(16, 4))
    observation = operator.degrade(images)
    classical = operator.classical(observation)
    assert set(classical) == {"mean fill", "biharmonic"}
    known = operator.mask.bool().expand_as(images)
    for outputs in classical.values():
        assert outputs.shape == images.shape and torch.equal(outputs[known], observation[known])
    denoised = Noise(0.1).classical(Noise(0.1).degrade(images, torch.Generator().manual_seed(0)))
    assert set(denoised) == {"Gaussian filter", "non-local means"}
    assert all(outputs.shape == images.shape for outputs in denoised.values())


def _generator_of(model: GHFeatModel) -> StyleGANGenerator:
    """A StyleGAN generator whose synthesis is the model's (random StyleMod affines, a random w_avg)."""
    generator = StyleGANGenerator(model.config.generator_config).eval()
    missing, unexpected = generator.synthesis.load_state_dict(model.synthesis.state_dict(), strict=False)
    assert not unexpected and all(".style." in key for key in missing)
    with torch.no_grad():
        generator.mapping.w_avg.normal_()
    return generator


def test_restore_improves_the_data_term_from_either_start(tiny_model):
    model = tiny_model()
    generator = _generator_of(model)
    images = model.decode(tuple(code + 0.5 * torch.randn_like(code) for code in
                                average_style_codes(generator))).detach().expand(3, -1, -1, -1)
    operator = Mask(centered_box_mask(32, 12))
    observation = operator.degrade(images)
    start = restore(model, observation, operator, "encoder", steps=0, progress=False)
    refined = restore(model, observation, operator, "encoder", steps=15, learning_rate=0.05, snapshot_steps=(0, 5),
                      progress=False)
    assert torch.allclose(refined.start_images, start.images) and set(refined.snapshots) == {0, 5}
    assert bool((refined.data_psnr >= start.data_psnr - 1e-4).all()) and float(refined.data_psnr.mean()) > float(
        start.data_psnr.mean()) + 0.5
    known = operator.mask.bool().expand_as(images)
    assert torch.equal(refined.outputs[known], observation[known])
    average = restore(model, observation, operator, "average", generator=generator, steps=5, progress=False,
                      prior=code_prior(generator, 0.01, num_samples=64), optimize_noise=True, batch_size=2)
    expected = model.decode(average_style_codes(generator)).detach()
    assert torch.allclose(average.start_images, expected.expand_as(average.start_images), atol=1e-4, rtol=1e-4)
    with pytest.raises(UsageError, match="generator"):
        restore(model, observation, operator, "average", steps=1, progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model):
    model = tiny_model(seed=0)
    directory = save_ghfeat_directory(model, tmp_path_factory.mktemp("tiny"))
    _generator_of(model).save_pretrained(directory / GENERATOR_SUBFOLDER)
    return directory


def test_restore_command_writes_images_figure_and_metrics(model_dir, tmp_path, capsys):
    images = [str(path) for path in demo_image_paths()[:2]]
    code = main(["restore", "inpaint", *images, "--degrade", "--hole", "10", "--steps", "3", "--out",
                 str(tmp_path / "out"), "--model", str(model_dir), "--device", "cpu", "--no-progress",
                 "--min-cell-size", "64", "--prior-weight", "0.001"])
    out = capsys.readouterr().out
    assert code == 0 and "(refined)" in out
    names = [PIL.Image.open(path).size for path in sorted((tmp_path / "out").glob("*.png"))]
    assert len(names) == 3 and (32, 32) in names
    figure = PIL.Image.open(tmp_path / "out" / "restoration.png")
    assert figure.width > 4 * 64 and figure.height > 2 * 64  # 4 columns (with the originals), 2 rows
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(metrics["images"]) == 2 and metrics["steps"] == 3
    for values in metrics["images"].values():
        assert values["refined"]["psnr"] > 0 and 0 < values["encoder only"]["ssim"] <= 1

    small = tmp_path / "small.png"
    PIL.Image.open(images[0]).resize((8, 8)).save(small)
    code = main(["restore", "superres", str(small), "--factor", "4", "--steps", "2", "--out", str(tmp_path / "sr"),
                 "--model", str(model_dir), "--device", "cpu", "--no-progress"])
    assert code == 0 and PIL.Image.open(tmp_path / "sr" / "small.png").size == (32, 32)
    assert not (tmp_path / "sr" / "metrics.json").exists()


@pytest.mark.parametrize("task", ["colorize", "denoise"])
def test_colorize_and_denoise_run_on_a_colour_model(task, model_dir, tmp_path, capsys):
    images = [str(path) for path in demo_image_paths()[:2]]
    code = main(["restore", task, *images, "--degrade", "--steps", "2", "--out", str(tmp_path / task),
                 "--model", str(model_dir), "--device", "cpu", "--no-progress", "--min-cell-size", "32"])
    assert code == 0, capsys.readouterr().err
    restored = PIL.Image.open(tmp_path / task / f"{Path(images[0]).stem}.png")
    assert restored.size == (32, 32) and restored.mode == "RGB"
    metrics = json.loads((tmp_path / task / "metrics.json").read_text())
    assert len(metrics["images"]) == 2 and all(values["refined"]["psnr"] > 0 for values in metrics["images"].values())


def test_colorize_refuses_a_one_channel_model(tmp_path, capsys):
    torch.manual_seed(0)
    directory = save_ghfeat_directory(GHFeatModel(tiny_ghfeat_config(num_channels=1)).eval(), tmp_path / "gray")
    code = main(["restore", "colorize", str(demo_image_paths()[0]), "--out", str(tmp_path / "out"),
                 "--model", str(directory), "--device", "cpu", "--no-progress"])
    assert code == 2
    assert "colorize needs a colour (3-channel) model; this model has 1 channel" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate_restoration_reports_every_method(model_dir, tmp_path, capsys):
    images = [PIL.Image.open(path).convert("RGB").resize((32, 32)) for path in demo_image_paths()[:4]]
    dataset = write_saved_dataset(tmp_path / "data", images)
    code = main(["evaluate", "restoration", "--model", str(model_dir), "--dataset", str(dataset), "--split", "train",
                 "--task", "inpaint", "superres", "--steps", "4", "--curve-steps", "2", "--batch-size", "2",
                 "--device", "cpu", "--no-progress", "-o", str(tmp_path / "eval")])
    assert code == 0
    report = json.loads((tmp_path / "eval" / "restoration.json").read_text())
    methods = [row["features"] for row in report["rows"]]
    assert methods == ["inpaint: classical, mean fill", "inpaint: classical, biharmonic", "inpaint: encoder only",
                       "inpaint: average code + optimisation", "inpaint: GH-Feat + optimisation",
                       "superres: classical, bicubic", "superres: encoder only",
                       "superres: average code + optimisation", "superres: GH-Feat + optimisation"]
    for row in report["rows"]:
        assert row["psnr"] > 0 and 0 < row["ssim"] <= 1 and row["seconds_per_image"] >= 0
    ghfeat = {row["features"]: row for row in report["rows"]}["inpaint: GH-Feat + optimisation"]
    assert ghfeat["psnr"] >= {row["features"]: row for row in report["rows"]}["inpaint: encoder only"]["psnr"] - 0.5
    assert "steps_to_average_final" in ghfeat
    assert any("by step: 0:" in note and ", 2:" in note and ", 4:" in note for note in report["notes"])
    assert "steps to the average start" in capsys.readouterr().out
