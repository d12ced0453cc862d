"""The classifier-judged evaluations: the domain classifier and its trainer, the Fréchet distance, style-mixing class
transfer and `ghfeat evaluate style-mixing / generation`."""

import json

import datasets
import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch

import train_classifier
from ghfeat_hf import GHFeatImageProcessor, GHFeatModel, StyleGANGenerator
from ghfeat_hf.cli import main
from ghfeat_hf.editing.codes import decode_codes, encode_images
from ghfeat_hf.errors import UsageError
from ghfeat_hf.evaluation import GHFeatExtractor
from ghfeat_hf.evaluation.domain_classifier import DomainClassifier, embedded_classifiers, load_domain_classifier
from ghfeat_hf.evaluation.generation import effective_classes, evaluate_generation, frechet_distance, sample_images
from ghfeat_hf.evaluation.hierarchy import evaluate_style_mixing, generator_mixing_rows, sample_pairs
from ghfeat_hf.hub import save_ghfeat_directory
from tests.conftest import tiny_generator_config, tiny_ghfeat_config

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPES = ("horizontal bar", "vertical bar", "square")


def shapes_dataset(count: int, seed: int) -> datasets.Dataset:
    """32x32 grayscale images of three classes (a horizontal bar, a vertical bar, a square) at random positions and
    brightness, over noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(count):
        label = index % 3
        canvas = rng.integers(0, 40, (32, 32)).astype(np.uint8)
        top, left = rng.integers(4, 14, 2)
        height, width = [(4, 18), (18, 4), (12, 12)][label]
        canvas[top:top + height, left:left + width] = rng.integers(170, 256)
        images.append(PIL.Image.fromarray(canvas, mode="L"))
        labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(SHAPES))})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "data"
    datasets.DatasetDict({"train": shapes_dataset(240, 0), "test": shapes_dataset(60, 1)}).save_to_disk(root)
    return root


@pytest.fixture(scope="module")
def classifier_dir(shapes_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("classifier")
    metrics = train_classifier.main(["--dataset", str(shapes_dir), "--output_dir", str(output), "--epochs", "8",
                                     "--batch_size", "32", "--widths", "8", "16", "--feature_dim", "16",
                                     "--no_progress"])
    return output, metrics


@pytest.fixture(scope="module")
def gray_model_dir(tmp_path_factory):
    torch.manual_seed(3)
    directory = tmp_path_factory.mktemp("ghfeat-gray")
    save_ghfeat_directory(GHFeatModel(tiny_ghfeat_config(num_channels=1)).eval(), directory)
    StyleGANGenerator(tiny_generator_config(num_channels=1)).save_pretrained(directory / "stylegan-generator")
    return directory


# -- the classifier -----------------------------------------------------------------------------------------------


def test_classifier_trainer_learns_the_shapes_and_saves_a_loadable_card(classifier_dir, shapes_dir):
    output, metrics = classifier_dir
    assert metrics["test_accuracy"] >= 0.9  # three easy shapes; chance is 1/3
    assert metrics["test_images"] == 60 and metrics["train_images"] == 240
    low, high = metrics["test_accuracy_ci95"]
    assert low <= metrics["test_accuracy"] <= high
    assert json.loads((output / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    card = (output / "README.md").read_text()
    assert f"{100 * metrics['test_accuracy']:.2f}%" in card and "python training/train_classifier.py --dataset" in card
    classifier = load_domain_classifier(output)
    assert classifier.label_names == list(SHAPES) and not classifier.training
    test = datasets.load_from_disk(str(shapes_dir))["test"]
    pixels = GHFeatImageProcessor(size={"height": 32, "width": 32}, num_channels=1)(
        images=test["image"], return_tensors="pt")["pixel_values"]
    predicted, features = classifier.predict(pixels, batch_size=7)
    assert np.mean(predicted.numpy() == np.array(test["label"])) == pytest.approx(metrics["test_accuracy"])
    assert features.shape == (60, 16) and bool((features >= 0).all())


def test_classifier_input_conversion_matches_the_processor():
    torch.manual_seed(0)
    classifier = DomainClassifier(num_channels=1, resolution=16, widths=(4,), feature_dim=4).eval()
    rgb = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    as_rgb = GHFeatImageProcessor(size={"height": 16, "width": 16})(images=rgb, return_tensors="pt")["pixel_values"]
    as_gray = GHFeatImageProcessor(size={"height": 16, "width": 16}, num_channels=1)(
        images=rgb, return_tensors="pt")["pixel_values"]
    # PIL's "L" conversion rounds to 8 bits: within half a level of the float luminance
    assert torch.allclose(classifier.prepare(as_rgb), as_gray, atol=1.01 / 255)
    assert classifier.prepare(torch.zeros(2, 1, 40, 40)).shape == (2, 1, 16, 16)
    with pytest.raises(UsageError, match=r"\[N, 1 or 3, H, W\]"):
        classifier.prepare(torch.zeros(2, 4, 16, 16))


def test_shipped_classifier_and_unknown_names(tmp_path):
    assert "fashion-mnist-cnn" in embedded_classifiers()
    classifier = load_domain_classifier("fashion-mnist-cnn")
    assert classifier.num_classes == 10 and classifier.label_names[0] == "T-shirt/top"
    with pytest.raises(UsageError, match="shipped classifiers: fashion-mnist-cnn"):
        load_domain_classifier(tmp_path)


# -- statistics ---------------------------------------------------------------------------------------------------


def test_frechet_distance_matches_the_scipy_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(loc=0.5, size=(300, 6)) @ rng.normal(size=(6, 6))
    cov_a, cov_b = np.cov(a.T), np.cov(b.T)
    expected = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b).real))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-7)
    assert frechet_distance(a, a + 2.0) == pytest.approx(6 * 4.0, rel=1e-6)  # a shift of 2 in 6 dimensions
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(a, b[:, :5])


def test_effective_classes_and_pairs():
    assert effective_classes(np.arange(100) % 10, 10) == pytest.approx(10.0)
    assert effective_classes(np.zeros(50, dtype=int), 10) == pytest.approx(1.0)
    labels = np.repeat(np.arange(4), 25)
    a, b = sample_pairs(labels, 60, seed=5)
    assert len(set(a.tolist())) == 60 and bool(np.all(labels[a] != labels[b]))
    again = sample_pairs(labels, 60, seed=5)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])
    with pytest.raises(UsageError, match="two classes"):
        sample_pairs(np.zeros(10, dtype=int), 5)


# -- style mixing -------------------------------------------------------------------------------------------------


def test_style_mixing_rates_are_the_classifier_on_the_mixed_images(gray_model_dir, classifier_dir, shapes_dir,
                                                                   tmp_path):
    model = GHFeatModel.from_pretrained(gray_model_dir).eval()
    processor = GHFeatImageProcessor.from_pretrained(gray_model_dir)
    classifier = load_domain_classifier(classifier_dir[0])
    test = datasets.load_from_disk(str(shapes_dir))["test"]
    extractor = GHFeatExtractor(model, processor)
    report = evaluate_style_mixing(extractor, test, classifier, num_pairs=40, layer_groups=["coarse", "all"],
                                   seed=2, grid_path=tmp_path / "grid.png", grid_pairs=3)
    rows = {row["features"]: row for row in report.rows}
    assert list(rows) == ["input images", "reconstruction", "A + B's coarse", "A + B's all"]
    for row in rows.values():
        assert row["takes_b"] + row["keeps_a"] + row["neither"] == pytest.approx(1.0)
        assert row["takes_b_ci95"][0] <= row["takes_b"] <= row["takes_b_ci95"][1]
    # independent recomputation: the inputs' row is the classifier's accuracy on A, and taking every layer from B
    # decodes B, whose class the classifier gives
    a, b = sample_pairs(np.array(test["label"]), 40, seed=2)
    labels = np.array(test["label"])
    pixels = processor(images=test["image"], return_tensors="pt")["pixel_values"]
    predicted_inputs = classifier.predict(pixels[a])[0].numpy()
    assert rows["input images"]["keeps_a"] == pytest.approx(np.mean(predicted_inputs == labels[a]))
    decoded_b = decode_codes(model, encode_images(model, pixels[b]))
    assert rows["A + B's all"]["takes_b"] == pytest.approx(np.mean(classifier.predict(decoded_b)[0].numpy() == labels[b]))
    grid = PIL.Image.open(tmp_path / "grid.png")
    assert grid.height > 3 * 96 and report.artifacts["grid"] == str(tmp_path / "grid.png")
    assert "Style mixing on" in report.to_markdown()


class BrightnessJudge:
    """A stand-in judge: class 1 when an image's mean is above `threshold`, else 0."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def predict(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        means = images.float().mean(dim=(1, 2, 3))
        return (means > self.threshold).long(), means[:, None]


def test_generator_mixing_rows_mix_the_generators_own_samples(gray_model_dir):
    """Taking every layer from B renders B (B's class in every pair); with a two-class judge a partial group gives
    one of the two; the rows are seeded; a judge that sees one class gives no rows and a warning."""
    generator = StyleGANGenerator.from_pretrained(gray_model_dir / "stylegan-generator").eval()
    config = GHFeatModel.from_pretrained(gray_model_dir).config
    layers = generator.config.num_layers
    with torch.no_grad():
        w = generator.mapping(torch.randn(64, generator.config.latent_size, generator=torch.Generator().manual_seed(0)))
        threshold = float(generator.synthesis(w).mean(dim=(1, 2, 3)).median())
    judge = BrightnessJudge(threshold)
    groups = [("all", list(range(layers))), ("first", [0])]
    rows = {row["features"]: row for row in generator_mixing_rows(generator, judge, groups, config, 20, batch_size=8,
                                                                  seed=1)}
    assert list(rows) == ["generator: A + B's all", "generator: A + B's first"]
    assert rows["generator: A + B's all"]["takes_b"] == 1.0
    assert all(row["dim"] == 20 for row in rows.values())
    first = rows["generator: A + B's first"]
    assert first["takes_b"] + first["keeps_a"] == pytest.approx(1.0)  # two classes: never a third
    assert generator_mixing_rows(generator, judge, groups, config, 20, batch_size=8, seed=1)[1] == first
    with pytest.warns(UserWarning, match="one class"):
        assert generator_mixing_rows(generator, BrightnessJudge(1e9), groups, config, 4, batch_size=8) == []


def test_style_mixing_refuses_a_classifier_of_other_classes(gray_model_dir, shapes_dir):
    model = GHFeatModel.from_pretrained(gray_model_dir).eval()
    test = datasets.load_from_disk(str(shapes_dir))["test"]
    extractor = GHFeatExtractor(model, GHFeatImageProcessor.from_pretrained(gray_model_dir))
    with pytest.raises(UsageError, match="differ from the dataset"):
        evaluate_style_mixing(extractor, test, DomainClassifier(num_classes=3, widths=(4,), feature_dim=4,
                                                                label_names=["a", "b", "c"]), num_pairs=4)
    with pytest.raises(UsageError, match="knows 2 classes"):
        evaluate_style_mixing(extractor, test, DomainClassifier(num_classes=2, widths=(4,), feature_dim=4),
                              num_pairs=4)


# -- generation ---------------------------------------------------------------------------------------------------


def test_generation_fd_real_floor_and_generators(gray_model_dir, classifier_dir, shapes_dir):
    classifier = load_domain_classifier(classifier_dir[0])
    test = datasets.load_from_disk(str(shapes_dir))["test"]
    processor = GHFeatImageProcessor.from_pretrained(gray_model_dir)
    generator = StyleGANGenerator.from_pretrained(gray_model_dir / "stylegan-generator").eval()
    first = sample_images(generator, 12, batch_size=5, seed=4)
    assert first.shape == (12, 1, 32, 32) and torch.equal(first, sample_images(generator, 12, seed=4))
    levels = (first + 1) * 127.5
    assert float((levels - levels.round()).abs().max()) < 1e-3 and levels.min() >= 0 and levels.max() <= 255
    report = evaluate_generation({"tiny": generator}, test, classifier, processor,
                                 real_baselines={"same test images": test}, num_images=60, batch_size=16)
    rows = {row["features"]: row for row in report.rows}
    assert rows["same test images"]["fd"] == pytest.approx(0.0, abs=1e-6)  # all 60 test images: the same Gaussian
    assert rows["tiny"]["fd"] > 0.1 and rows["tiny"]["layers"] == "generated" and rows["tiny"]["images"] == 60
    assert 1.0 <= rows["tiny"]["effective_classes"] <= 3.0


def test_cli_style_mixing_and_generation(gray_model_dir, classifier_dir, shapes_dir, tmp_path, capsys):
    common = ["--model", str(gray_model_dir), "--dataset", str(shapes_dir), "--split", "test", "--classifier",
              str(classifier_dir[0]), "--no-progress"]
    assert main(["evaluate", "style-mixing", *common, "--num-pairs", "12", "-o", str(tmp_path / "mix")]) == 0
    out = capsys.readouterr().out
    assert "A + B's coarse" in out and (tmp_path / "mix" / "style_mixing_grid.png").is_file()
    assert json.loads((tmp_path / "mix" / "style_mixing.json").read_text())["settings"]["num_pairs"] == 12
    generator = str(gray_model_dir / "stylegan-generator")
    assert main(["evaluate", "generation", *common, "--num-images", "20", "--generators", f"copy={generator}",
                 "-o", str(tmp_path / "gen")]) == 0
    payload = json.loads((tmp_path / "gen" / "generation.json").read_text())
    assert [(row["features"], row["layers"]) for row in payload["rows"]] == [
        (gray_model_dir.name, "generated"), ("copy", "generated"), ("train images", "real")]
    assert payload["rows"][0]["fd"] == pytest.approx(payload["rows"][1]["fd"])  # the same generator twice
    assert main(["evaluate", "generation", *common, "--generators", generator, generator, "-o", str(tmp_path)]) == 2
    assert "two generators are named" in capsys.readouterr().err
    assert main(["evaluate", "generation", *common[:-3], "--no-progress", "-o", str(tmp_path / "x")]) == 2
    assert "needs --classifier" in capsys.readouterr().err
    assert main(["evaluate", "generation", *common, "--generators", str(tmp_path), "-o", str(tmp_path / "y")]) == 2
    assert "no StyleGAN generator" in capsys.readouterr().err
