"""Few-shot segmentation: metrics against a hand-computed confusion matrix, the factorised head against the explicit
hypercolumn, save / load, the `ghfeat segment` and `ghfeat evaluate segmentation` commands on a tiny model, and the
errors for bad annotations."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from ghfeat_hf.cli import main
from ghfeat_hf.errors import UsageError
from ghfeat_hf.evaluation.segmentation import draw_shots, student_interval
from ghfeat_hf.hub import save_ghfeat_directory
from ghfeat_hf.image_processing_ghfeat import GHFeatImageProcessor
from ghfeat_hf.segmentation import (
    FitSettings,
    GHFeatSpatialFeatures,
    LabelSet,
    PixelPositionFeatures,
    SegmentationData,
    confusion_matrix,
    fashion_mnist_silhouettes,
    fit_segmenter,
    folder_data,
    gather_pixels,
    load_head,
    mean_iou,
    per_class_iou,
    pixel_accuracy,
    predict_masks,
    read_mask,
    save_head,
    upsample,
)

LABELS = LabelSet.from_names(["background", "left", "right"])


def test_metrics_match_a_hand_computed_confusion_matrix():
    target = torch.tensor([[0, 0, 1], [1, 2, 2]])
    predicted = torch.tensor([[0, 1, 1], [1, 2, 0]])
    confusion = confusion_matrix(predicted, target, 4)
    # rows: truth, columns: prediction; label 3 appears nowhere
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(confusion, expected)
    # IoU: 0 -> 1 / (2 + 2 - 1), 1 -> 2 / (2 + 3 - 2), 2 -> 1 / (2 + 1 - 1), 3 -> none
    np.testing.assert_allclose(per_class_iou(confusion)[:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(per_class_iou(confusion)[3])
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert pixel_accuracy(confusion) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(predicted[:1], target, 4)


def test_student_interval_and_draws():
    mean, (low, high), std = student_interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1)
    assert (high - mean) == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)  # t(0.975, 2)
    assert student_interval([0.99, 0.2])[1][1] == 1.0  # clipped to a fraction
    data = SegmentationData([PIL.Image.new("L", (4, 4))] * 6, np.zeros((6, 4, 4), np.uint8), np.array([0, 0, 0, 1, 1, 1]))
    chosen = draw_shots(data, 2, seed=0)
    assert len(chosen) == 4 and sorted(data.classes[chosen].tolist()) == [0, 0, 1, 1]
    with pytest.raises(UsageError, match="only 3"):
        draw_shots(data, 4, seed=0)


def halves(size: int = 32, count: int = 4, seed: int = 0):
    """Images with a bright left or right half (labels 1 / 2) on a dark background (label 0) in the top rows."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for index in range(count):
        array = rng.integers(0, 30, (size, size)).astype(np.uint8)
        mask = np.zeros((size, size), np.int64)
        side = index % 2
        columns = slice(0, size // 2) if side == 0 else slice(size // 2, size)
        array[size // 4:, columns] = 220
        mask[size // 4:, columns] = 1 + side
        images.append(PIL.Image.fromarray(array).convert("RGB"))
        masks.append(mask)
    return images, np.stack(masks)


@pytest.fixture(scope="module")
def spatial(tiny_model):
    processor = GHFeatImageProcessor(size={"height": 32, "width": 32})
    return GHFeatSpatialFeatures(tiny_model(seed=0), processor, pyramid=True)


@pytest.mark.parametrize("hidden, members", [(0, 1), (6, 2)])
def test_the_factorised_head_is_the_hypercolumn_head(spatial, hidden, members):
    images, masks = halves()
    head = fit_segmenter(spatial, images, masks, LABELS, hidden=hidden, members=members,
                         settings=FitSettings(steps=20), pixels_per_image=64)
    maps = spatial(images)
    assert [source.shape[1] for source in maps] == spatial.channels and len(maps) == 8 + 3
    every_pixel = torch.arange(32 * 32).expand(len(images), -1)
    rows = gather_pixels(maps, 32, every_pixel)
    explicit = head.rows_logits(rows).softmax(dim=-1).mean(dim=0)  # [N * H * W, L]
    factorised = head.probabilities(maps).permute(0, 2, 3, 1).reshape(-1, len(LABELS.names))
    torch.testing.assert_close(factorised, explicit, atol=1e-5, rtol=1e-4)
    assert upsample(maps[0], 32).shape[-1] == 32


def test_round_trip_through_save_and_load_gives_identical_masks(spatial, tmp_path):
    images, masks = halves()
    head = fit_segmenter(spatial, images, masks, LABELS, hidden=8, settings=FitSettings(steps=30))
    before = torch.cat(list(predict_masks(spatial, head, images, batch_size=3, progress=False)))
    loaded = load_head(save_head(head, tmp_path / "head"))
    after = torch.cat(list(predict_masks(spatial, loaded, images, batch_size=3, progress=False)))
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert loaded.config.names == LABELS.names and loaded.config.features["pyramid"] is True
    assert before.shape == (4, 32, 32) and set(before.unique().tolist()) <= {0, 1, 2}


def test_pixel_features_learn_a_position_rule():
    """Raw pixels + position separate bright-left from bright-right: the head is fitted and predicts well."""
    images, masks = halves(count=6)
    features = PixelPositionFeatures(32, "L")
    head = fit_segmenter(features, images, masks, LABELS, hidden=16, settings=FitSettings(steps=300),
                         pixels_per_image=256)
    predicted = torch.cat(list(predict_masks(features, head, images, progress=False)))
    assert mean_iou(confusion_matrix(predicted, torch.as_tensor(masks), 3)) > 0.9


def test_bad_annotations_give_clear_errors(spatial, tmp_path):
    with pytest.raises(UsageError, match="is 8x8 but its image is 32x32"):
        read_mask(np.zeros((8, 8), np.uint8), 3, image_size=(32, 32), name="mask a.png")
    with pytest.raises(UsageError, match=r"labels \[5\] outside the label set 0..2"):
        read_mask(np.full((4, 4), 5), 3)
    with pytest.raises(UsageError, match="no annotated images"):
        fit_segmenter(spatial, [], [], LABELS)
    with pytest.raises(UsageError, match="single-channel label image"):
        read_mask(PIL.Image.new("RGB", (4, 4)), 3)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    PIL.Image.new("L", (32, 32)).save(tmp_path / "images" / "a.png")
    with pytest.raises(UsageError, match=r"no mask .* for 1 images: \['a.png'\]"):
        folder_data(tmp_path / "images", tmp_path / "masks", LABELS, 32)
    with pytest.raises(UsageError, match="holds no segmentation head"):
        load_head(tmp_path)


def test_fashion_mnist_silhouettes():
    images = np.array([[[0, 15, 16], [200, 3, 255]]], np.uint8)
    np.testing.assert_array_equal(fashion_mnist_silhouettes(images, np.array([4])), [[[0, 0, 5], [5, 0, 5]]])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model):
    return str(save_ghfeat_directory(tiny_model(seed=0), tmp_path_factory.mktemp("tiny")))


def test_fit_and_predict_through_the_command_line(model_dir, tmp_path, capsys):
    images, masks = halves(size=40, count=4)  # not the model's 32 px: predictions come back at the input size
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for index, (image, mask) in enumerate(zip(images, masks)):
        image.save(tmp_path / "images" / f"x{index}.jpg")
        PIL.Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "masks" / f"x{index}.png")
    (tmp_path / "labels.json").write_text(json.dumps({"names": LABELS.names, "palette": [[0, 0, 0], [255, 0, 0],
                                                                                          [0, 0, 255]]}))
    assert main(["segment", "fit", "--model", model_dir, "--images", str(tmp_path / "images"), "--masks",
                 str(tmp_path / "masks"), "--labels", str(tmp_path / "labels.json"), "--out", str(tmp_path / "head"),
                 "--steps", "20", "--hidden", "4"]) == 0
    assert "on 4 annotated images (3 labels)" in capsys.readouterr().out
    assert main(["segment", "predict", "--head", str(tmp_path / "head"), str(tmp_path / "images"), "-o",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    labels = np.asarray(PIL.Image.open(tmp_path / "out" / "x0_labels.png"))
    assert labels.shape == (40, 40) and labels.max() <= 2
    colours = np.asarray(PIL.Image.open(tmp_path / "out" / "x0_mask.png"))
    np.testing.assert_array_equal(colours, np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)[labels])
    assert PIL.Image.open(tmp_path / "out" / "x1_overlay.png").size == (40, 40)

    PIL.Image.fromarray(np.full((40, 40), 7, np.uint8)).save(tmp_path / "masks" / "x3.png")
    assert main(["segment", "fit", "--model", model_dir, "--images", str(tmp_path / "images"), "--masks",
                 str(tmp_path / "masks"), "--labels", str(tmp_path / "labels.json"), "--out", str(tmp_path / "h2")]) == 2
    assert "mask x3.png holds labels [7] outside the label set 0..2" in capsys.readouterr().err


def test_evaluate_segmentation_on_fashion_mnist_silhouettes(model_dir, tmp_path, capsys):
    code = main(["evaluate", "segmentation", "--model", model_dir, "--dataset", "fashion-mnist", "--shots", "1", "2",
                 "--draws", "2", "--max-train-samples", "200", "--max-test-samples", "40", "--steps", "5", "--figure-count", "2", "-o",
                 str(tmp_path), "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "segmentation.json").read_text())
    methods = [row["features"] for row in report["rows"]]
    assert methods == ["spatial GH-Feat", "raw pixels + position", "random init (encoder + generator)",
                       "encoder pyramid alone"] * 2
    assert [row["shots"] for row in report["rows"]] == [1] * 4 + [2] * 4
    for row in report["rows"]:
        assert 0 <= row["miou_ci95"][0] <= row["miou"] <= row["miou_ci95"][1] <= 1
        assert set(row["per_class_iou"]) == {"background", *report["data"]["labels"][1:]}
    assert report["data"]["splits"]["test"]["num_rows"] == 40
    assert PIL.Image.open(tmp_path / "segmentation_grid.png").size[0] > 4 * 96
    assert "mIoU (%) [95% CI]" in capsys.readouterr().out


def test_refined_codes_change_the_synthesis_maps_not_their_shapes(tiny_model):
    processor = GHFeatImageProcessor(size={"height": 32, "width": 32})
    images, _ = halves(count=2)
    plain = GHFeatSpatialFeatures(tiny_model(seed=0), processor, layers="0-3")
    refined = GHFeatSpatialFeatures(tiny_model(seed=0), processor, layers="0-3", refine_steps=3)
    before, after = plain(images), refined(images)
    assert [m.shape for m in before] == [m.shape for m in after] == [(2, 32, 4, 4)] * 2 + [(2, 32, 8, 8)] * 2
    assert not torch.allclose(before[0], after[0])
    assert refined.describe()["refine_steps"] == 3 and plain.channels == [32] * 4
    with pytest.raises(UsageError, match="need synthesis layers or the encoder pyramid"):
        GHFeatSpatialFeatures(tiny_model(seed=0), processor, layers="none")
