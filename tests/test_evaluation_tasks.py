"""The five evaluation tasks end to end on small real-image datasets, each number checked against an independent
computation (scikit-learn, scikit-image, the reconstruction helpers of the package, brute force)."""

import math

import numpy as np
import PIL.Image
import pytest
from skimage.metrics import structural_similarity
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import average_precision_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from ghfeat_hf.evaluation import (
    LPIPS_NOTE,
    EvaluationReport,
    ExtractionOptions,
    GHFeatExtractor,
    build_baselines,
    evaluate_classification,
    evaluate_landmarks,
    evaluate_reconstruction,
    evaluate_retrieval,
    evaluate_verification,
    extract_features,
)
from ghfeat_hf.evaluation.landmarks import eye_points
from ghfeat_hf.evaluation.metrics import wilson_interval
from ghfeat_hf.evaluation.report import OURS
from ghfeat_hf.evaluation.retrieval import query_gallery_split
from ghfeat_hf.evaluation.verification import assign_folds
from ghfeat_hf.extraction import UsageError
from ghfeat_hf.reconstruction import image_metrics, reconstruct_images
from tests.evaluation_data import astronaut_landmarks, augmented_copies, lfw_faces, tiny_model, verification_pairs


@pytest.fixture(scope="module")
def extractors():
    model, processor = tiny_model()
    return [GHFeatExtractor(model, processor)] + build_baselines(["pixels", "random-init"], model, processor)


@pytest.fixture
def options(tmp_path):
    return ExtractionOptions(batch_size=32, cache_dir=tmp_path / "cache", progress=False)


def _features(dataset, extractor, options, row, column="image"):
    """The features of a report row, read back from the cache (independently of the task's own slicing)."""
    features = extract_features(dataset, extractor, image_column=column, options=options).features
    if extractor.layered:
        layers = range(extractor.config.num_layers) if row["layers"] == "all" else extractor.config.head_layers[
            ["coarse", "middle", "fine"].index(row["layers"])]
        features = features[:, extractor.columns(list(layers))]
    assert features.shape[1] == row["dim"]
    return features


def _by_name(extractors):
    return {extractor.name: extractor for extractor in extractors}


def test_classification(extractors, options, tmp_path):
    faces = lfw_faces()
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
            assert row[f"{key}_ci95"] == pytest.approx(list(wilson_interval(round(row[key] * 80), 80)))
    pixels = report.rows[2]
    assert pixels["linear_probe"] > 0.85 and pixels["knn"] > 0.7  # faces vs other photos: easy on raw pixels
    assert report.data["num_classes"] == 2 and report.data["class_names"] == ["other", "face"]
    assert any(item.source == OURS and item.name == "k-NN" for item in report.protocol)
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


def test_landmarks(extractors, options):
    data = astronaut_landmarks(count=60)
    train, test = data.select(range(45)), data.select(range(45, 60))
    report = evaluate_landmarks(extractors, train, test, options=options)
    assert report.data["keypoints"] == ["left_eye", "right_eye", "flag"]
    assert "inter-ocular" in next(item.value for item in report.protocol if item.name == "NME normaliser")
    points = {split: np.stack([np.stack([np.array(ds[f"{n}_x"]), np.array(ds[f"{n}_y"])], 1)
                                for n in ("left_eye", "right_eye", "flag")], 1) for split, ds in (("train", train),
                                                                                                  ("test", test))}
    for row in report.rows:
        extractor = _by_name(extractors)[row["features"]]
        scaler = StandardScaler().fit(_features(train, extractor, options, row))
        ridge = Ridge(alpha=row["ridge_alpha"]).fit(scaler.transform(_features(train, extractor, options, row)),
                                                    (points["train"] / 32).reshape(45, -1))
        predicted = ridge.predict(scaler.transform(_features(test, extractor, options, row))).reshape(15, 3, 2) * 32
        target = points["test"]
        interocular = np.linalg.norm(target[:, 0] - target[:, 1], axis=-1)
        errors = np.linalg.norm(predicted - target, axis=-1).mean(1) / interocular
        assert row["nme"] == pytest.approx(errors.mean(), rel=1e-4)
    assert report.rows[1]["nme"] < 0.1  # raw pixels follow a translated crop

    # the same keypoints as one [K, 2] column with names: the same numbers
    def as_column(ds):
        return ds.map(lambda r: {"points": [[r[f"{n}_x"], r[f"{n}_y"]] for n in ("left_eye", "right_eye", "flag")]},
                      remove_columns=[c for c in ds.column_names if c != "image"])

    again = evaluate_landmarks(extractors[:2], as_column(train), as_column(test), keypoints_column="points",
                               keypoint_names=["left_eye", "right_eye", "flag"], options=options)
    assert [row["nme"] for row in again.rows] == pytest.approx([row["nme"] for row in report.rows[:2]])
    assert eye_points(["lefteye", "righteye", "nose"]) == (0, 1) and eye_points(["a", "b"]) is None
    with pytest.raises(UsageError, match="no keypoints"):
        evaluate_landmarks(extractors, lfw_faces().select(range(10)), lfw_faces().select(range(10, 20)))


def test_reconstruction(extractors, options, tmp_path):
    copies = augmented_copies(num_photos=4, copies=3)
    grid_path = tmp_path / "grid.png"
    report = evaluate_reconstruction(extractors, copies, grid_path=grid_path, grid_count=3, options=options)
    assert [row["features"] for row in report.rows] == ["GH-Feat", "GH-Feat random init"]
    assert LPIPS_NOTE in report.notes and any("raw pixels" in note for note in report.notes)
    images = list(copies["image"])
    for row, extractor in zip(report.rows, (extractors[0], extractors[2])):
        result = reconstruct_images(extractor.model, extractor.processor, images)
        metrics = [image_metrics(a, b) for a, b in zip(result.inputs, result.reconstructions)]
        assert row["mse"] == pytest.approx(np.mean([m["mse"] for m in metrics]), rel=1e-9)
        assert row["psnr"] == pytest.approx(np.mean([m["psnr"] for m in metrics]), rel=1e-9)
        ssims = [structural_similarity(np.asarray(a) / 255, np.asarray(b) / 255, channel_axis=-1, data_range=1.0,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                 for a, b in zip(result.inputs, result.reconstructions)]
        assert row["ssim"] == pytest.approx(np.mean(ssims), abs=1e-9)
    grid = PIL.Image.open(grid_path)
    assert report.artifacts["grid"] == str(grid_path) and grid.height > 6 * 128  # 3 worst + 3 best rows
    again = evaluate_reconstruction(extractors, copies, options=options)
    assert again.rows == report.rows
    assert all(record["cache_hits"]["reconstruction"] for record in again.extractors if record["kind"] == "ghfeat")
    with pytest.raises(UsageError, match="needs a GH-Feat model as the first extractor"):
        evaluate_reconstruction(extractors[1:2], copies, options=options)
