"""Evaluation metrics and probes against independent computations (scikit-image, scikit-learn, hand-computed cases)."""

import math

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import structural_similarity
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.neighbors import KNeighborsClassifier

from ghfeat_hf.errors import UsageError
from ghfeat_hf.evaluation.metrics import (
    accuracy_with_ci,
    average_precision,
    bbox_diagonal,
    best_threshold,
    interocular_distance,
    kfold_verification,
    normalised_mean_error,
    retrieval_metrics,
    ssim,
    wilson_interval,
)
from ghfeat_hf.evaluation.probes import fit_with_validation, knn_predict, linear_probe, validation_split
from ghfeat_hf.image_metrics import psnr


def test_ssim_matches_scikit_image_on_a_real_photo():
    rng = np.random.default_rng(0)
    photo = skdata.astronaut()[::8, ::8].astype(np.float64) / 255  # 64x64 RGB
    degraded = [np.clip(photo + rng.normal(0, 0.08, photo.shape), 0, 1), np.clip(photo * 0.7 + 0.1, 0, 1),
                photo[::-1].copy()]
    ours = ssim(torch.from_numpy(np.stack([photo] * 3)).permute(0, 3, 1, 2),
                torch.from_numpy(np.stack(degraded)).permute(0, 3, 1, 2)).numpy()
    reference = [structural_similarity(photo, other, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False) for other in degraded]
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10)
    assert ours[0] < 1 and ours[2] < ours[0]
    identical = ssim(torch.from_numpy(photo).permute(2, 0, 1)[None], torch.from_numpy(photo).permute(2, 0, 1)[None])
    assert identical.item() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_psnr_and_wilson_interval_hand_cases():
    np.testing.assert_allclose(psnr([0.01, 1e-4, 0.0]), [20.0, 40.0, math.inf])
    low, high = wilson_interval(8, 10)  # textbook: p = 0.8, n = 10 -> [0.490, 0.943]
    assert low == pytest.approx(0.4901625, abs=1e-6) and high == pytest.approx(0.9433178, abs=1e-6)
    assert wilson_interval(0, 20)[0] == 0 and wilson_interval(20, 20)[1] == 1
    assert all(wilson_interval(n, n)[1] == 1 and wilson_interval(0, n)[0] == 0 for n in range(1, 500))
    result = accuracy_with_ci(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    assert result["accuracy"] == 0.75 and result["ci95"] == list(wilson_interval(3, 4))


def test_average_precision_hand_case_and_scikit_learn():
    assert average_precision([1, 0, 1, 0, 0, 1]) == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    assert math.isnan(average_precision([0, 0, 0]))
    rng = np.random.default_rng(1)
    for _ in range(20):
        relevant = rng.random(30) < 0.3
        relevant[rng.integers(30)] = True
        scores = rng.permutation(30).astype(float)  # distinct scores: no tie conventions involved
        ranked = relevant[np.argsort(-scores)]
        assert average_precision(ranked) == pytest.approx(average_precision_score(relevant, scores), abs=1e-12)


def test_retrieval_metrics_hand_case():
    # 2-D features on the unit circle; query "a" at 0 degrees, query "b" at 90 degrees; no ties in similarity
    angles = np.deg2rad([10, 75, 35, 100, 160])
    gallery = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1))
    gallery_labels = np.array(["a", "b", "b", "a", "b"])
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    result = retrieval_metrics(query, gallery, np.array(["a", "b"]), gallery_labels, ks=(1, 2))
    # query a ranks 10(a) 35(b) 75(b) 100(a) 160(b): AP = (1/1 + 2/4) / 2, hit at rank 1
    # query b ranks 100(a) 75(b) 35(b) 160(b) 10(a): AP = (1/2 + 2/3 + 3/4) / 3, first hit at rank 2
    assert result["map"] == pytest.approx(((1 + 2 / 4) / 2 + (1 / 2 + 2 / 3 + 3 / 4) / 3) / 2)
    assert result["recall@1"] == 0.5 and result["recall@2"] == 1.0 and result["num_queries"] == 2
    lonely = retrieval_metrics(query, gallery, np.array(["a", "z"]), gallery_labels, ks=(1,))
    assert lonely["num_queries"] == 1 and lonely["map"] == pytest.approx(0.75)  # the query without match is left out


def test_best_threshold_and_kfold_verification_hand_cases():
    # sorted: 0.1 (different) 0.35 (same) 0.4 (different) 0.8 (same); 0.225 and 0.6 both make one error: the lower
    threshold, accuracy = best_threshold([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    assert threshold == pytest.approx(0.225) and accuracy == 0.75
    assert best_threshold([0.5, 0.6], [True, True])[1] == 1.0  # threshold below every score

    # 2 folds of 4 pairs. Fold 0 (0.9 S, 0.8 S, 0.2 D, 0.1 D) is separated by 0.5. Fold 1 (0.7 S, 0.3 S, 0.6 D,
    # 0.4 D) is best cut at 0.65 (3 of 4). Fold 0 tested at 0.65: 4 of 4; fold 1 tested at 0.5: 0.7 and 0.4 right.
    scores = np.array([0.9, 0.8, 0.2, 0.1, 0.7, 0.3, 0.6, 0.4])
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = kfold_verification(np.stack([scores, scores]), same, folds)
    assert result["thresholds"] == pytest.approx([0.65, 0.5])
    assert result["fold_accuracies"] == [1.0, 0.5]
    assert result["accuracy"] == 0.75 and result["std"] == pytest.approx(math.sqrt(0.125))
    assert result["stderr"] == pytest.approx(0.25)
    # row k of the scores is the one used when fold k is tested: other rows never decide fold k
    shifted = np.stack([scores, scores + 10])
    assert kfold_verification(shifted, same, folds)["fold_accuracies"] == [1.0, 0.5]


def test_normalised_mean_error_hand_case():
    target = np.array([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]]])
    predicted = target + np.array([[[3.0, 4.0], [0.0, 0.0], [0.0, -1.0]]])  # errors 5, 0, 1
    assert interocular_distance(target, 0, 1)[0] == 10
    assert normalised_mean_error(predicted, target, interocular_distance(target, 0, 1))[0] == pytest.approx(0.2)
    assert bbox_diagonal(target)[0] == pytest.approx(math.hypot(10, 5))


def _features(n_per_class: int, classes: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    return (centres[labels] + 1.5 * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def test_knn_matches_scikit_learn():
    train_x, train_y = _features(30, 4, 16, seed=0)
    test_x, test_y = _features(10, 4, 16, seed=1)
    ours = knn_predict(train_x, train_y, test_x, k=10, chunk_size=7)
    reference = KNeighborsClassifier(n_neighbors=10, metric="cosine", algorithm="brute").fit(train_x, train_y)
    np.testing.assert_array_equal(ours, reference.predict(test_x))


def test_linear_probe_selection_and_refit():
    train_x, train_y = _features(40, 3, 24, seed=2)
    test_x, _ = _features(20, 3, 24, seed=3)
    predictions, info = linear_probe(train_x, train_y, test_x, c_grid=(1e-3, 1e-2, 1e-1, 1.0), seed=0)
    assert info["C"] in (1e-3, 1e-2, 1e-1, 1.0) and info["converged"]
    # the same choice, made independently: cold fits on the same held-out split
    fit_rows, val_rows = validation_split(len(train_x), 0.1, 0, train_y)
    assert sorted(np.bincount(train_y[val_rows])) == [4, 4, 4]  # stratified
    scores = {}
    for c in (1e-3, 1e-2, 1e-1, 1.0):
        model = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(train_x[fit_rows], train_y[fit_rows])
        scores[c] = np.mean(model.predict(train_x[val_rows]) == train_y[val_rows])
        if c == info["C"]:
            assert scores[c] == info["validation_accuracy"]
    assert info["validation_accuracy"] == max(scores[c] for c in scores if c <= info["C"])
    final = LogisticRegression(C=info["C"], max_iter=5000, tol=1e-8).fit(train_x, train_y)
    assert np.mean(final.predict(test_x) == predictions) >= 0.98


def test_fit_with_validation_stops_after_patience():
    class Recorder:
        tried: list = []

        def set_params(self, value):
            self.value = value
            return self

        def fit(self, x, y):
            Recorder.tried.append(self.value)
            return self

    score = {1: 0.5, 2: 0.9, 3: 0.8, 4: 0.7, 5: 0.95}
    x, y = np.zeros((10, 1)), np.zeros(10)
    _, chosen, best = fit_with_validation(Recorder(), "value", [1, 2, 3, 4, 5], (x, y), (x, y),
                                          lambda fitted, *_: score[fitted.value], patience=2)
    assert Recorder.tried == [1, 2, 3, 4] and chosen == 2 and best == 0.9


def test_validation_split_row_counts():
    with pytest.raises(UsageError, match="holding out 10% of 1 training rows for validation leaves none to fit on"):
        validation_split(1, 0.1, 0)
    labels = np.repeat([0, 1, 2], 4)
    _, val_rows = validation_split(12, 0.5, 0, labels)
    assert sorted(np.bincount(labels[val_rows])) == [2, 2, 2]  # stratified
    # 10 of 12 held out: the 2 rows left cannot hold the 3 classes, so the split is not stratified (no error)
    fit_rows, val_rows = validation_split(12, 0.8, 0, labels)
    assert len(fit_rows) == 2 and len(val_rows) == 10
