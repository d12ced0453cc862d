"""`ghfeat evaluate`: every task from the command line, reports, the feature cache across runs, the model card and
argument errors."""

import json
import shutil

import datasets
import pytest

from ghfeat_hf import GHFeatModel
from ghfeat_hf.cli import main
from ghfeat_hf.data import find_fashion_mnist
from ghfeat_hf.evaluation import PixelExtractor
from ghfeat_hf.hub import save_ghfeat_directory
from tests.evaluation_data import MODEL_SEED, astronaut_landmarks, augmented_copies, lfw_faces, verification_pairs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model):
    directory = tmp_path_factory.mktemp("ghfeat-tiny")
    save_ghfeat_directory(tiny_model(seed=MODEL_SEED), directory)
    return directory


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    faces = lfw_faces()
    splits = {"train": faces.select(range(100)), "test": faces.select(range(100, 160))}
    datasets.DatasetDict(splits).save_to_disk(root / "faces")
    datasets.DatasetDict({"test": verification_pairs(num_photos=6, pairs_per_kind=20)}).save_to_disk(root / "pairs")
    datasets.DatasetDict({"test": augmented_copies(num_photos=4, copies=4)}).save_to_disk(root / "copies")
    # single-split folders (a saved `Dataset`), the way the README saves its pairs
    verification_pairs(num_photos=4, pairs_per_kind=10).save_to_disk(root / "single-pairs")
    faces.select(range(40)).save_to_disk(root / "single-faces")
    points = astronaut_landmarks(count=40)
    datasets.DatasetDict({"train": points.select(range(30)), "test": points.select(range(30, 40))}).save_to_disk(
        root / "points")
    return root


def _run(argv, tmp_path, capsys, code=0):
    result = main(["evaluate", *argv, "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    captured = capsys.readouterr()
    assert result == code, captured.err
    return captured


def test_evaluate_is_registered(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(task in text for task in ("reconstruction", "classification", "retrieval", "verification", "landmarks"))
    with pytest.raises(SystemExit):
        main(["evaluate", "classification", "--help"])
    text = capsys.readouterr().out
    assert all(option in text for option in ("--baselines", "--layers", "--max-train-samples", "--train-split",
                                             "--label-column", "--cache-dir", "--update-model-card"))


def test_fashion_mnist_classification_with_baselines_and_cache(model_dir, tmp_path, capsys, monkeypatch):
    try:
        find_fashion_mnist()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist)")
    argv = ["classification", "--model", str(model_dir), "--dataset", "fashion-mnist", "--max-train-samples", "300",
            "--max-test-samples", "200", "-o", str(tmp_path / "eval"), "--update-model-card"]
    out = _run(argv, tmp_path, capsys).out
    assert "| raw pixels (32x32 L) | all | 1024 |" in out and "| GH-Feat random init | all | 352 |" in out
    report = json.loads((tmp_path / "eval" / "classification.json").read_text())
    assert [row["features"] for row in report["rows"]] == ["GH-Feat", "raw pixels (32x32 L)", "GH-Feat random init"]
    assert report["data"]["num_classes"] == 10 and report["data"]["splits"]["train"]["num_rows"] == 300
    assert report["rows"][1]["knn"] > 0.5  # 10 classes: raw pixels are far above chance even with 300 samples
    assert not any(any(record["cache_hits"].values()) for record in report["extractors"])

    card = (model_dir / "README.md").read_text()
    assert "## Evaluation results" in card and "### Classification on fashion-mnist" in card
    assert "| raw pixels (32x32 L) | all | 1024 |" in card
    assert "classification" in json.loads((model_dir / "evaluation.json").read_text())

    # the second run, repeated from the settings the report recorded: every feature comes from the cache
    assert report["settings"]["max_train_samples"] == 300 and report["settings"]["baselines"] is None
    calls, encode, pixels = [], GHFeatModel.encode, PixelExtractor.__call__  # the second run computes no feature
    monkeypatch.setattr(GHFeatModel, "encode", lambda self, x: calls.append(len(x)) or encode(self, x))
    monkeypatch.setattr(PixelExtractor, "__call__", lambda self, images: calls.append(len(images)) or pixels(
        self, images))
    assert main(_argv_from_settings({**report["settings"], "update_model_card": False})) == 0
    again = json.loads((tmp_path / "eval" / "classification.json").read_text())
    assert calls == [] and all(all(record["cache_hits"].values()) for record in again["extractors"])
    assert again["rows"] == report["rows"]


def test_every_task_from_the_command_line(model_dir, data_dirs, tmp_path, capsys, monkeypatch):
    common = ["--model", str(model_dir), "-o", str(tmp_path / "eval")]
    _run(["classification", "--dataset", str(data_dirs / "faces"), "--baselines", "pixels:8", "--layers", "all",
          "fine", *common], tmp_path, capsys)
    rows = json.loads((tmp_path / "eval" / "classification.json").read_text())["rows"]
    assert [(row["features"], row["layers"]) for row in rows] == [("GH-Feat", "all"), ("GH-Feat", "fine"),
                                                                  ("raw pixels (8x8 L)", "all")]
    out = _run(["verification", "--dataset", str(data_dirs / "pairs"), "--baselines", *common], tmp_path, capsys).out
    assert out.count("| GH-Feat |") == 4  # all, coarse, middle, fine
    out = _run(["retrieval", "--dataset", str(data_dirs / "copies"), "--baselines", "random-init", "--ks", "1", "3",
                *common], tmp_path, capsys).out
    assert "R@3 (%)" in out and "| GH-Feat random init |" in out
    out = _run(["landmarks", "--dataset", str(data_dirs / "points"), *common], tmp_path, capsys).out
    assert "NME (%)" in out and "| raw pixels (32x32 RGB) |" in out
    out = _run(["reconstruction", "--dataset", str(data_dirs / "copies"), "--grid-count", "2", *common], tmp_path,
               capsys).out
    assert "LPIPS (HED-VGG backbone)" in out  # its column, or the note that its wheels are not installed
    calls, reconstruct = [], GHFeatModel.reconstruct  # again: every metric from the cache (the grid uses decode)
    monkeypatch.setattr(GHFeatModel, "reconstruct", lambda self, pixels: calls.append(len(pixels)) or reconstruct(
        self, pixels))
    _run(["reconstruction", "--dataset", str(data_dirs / "copies"), "--grid-count", "2", *common], tmp_path, capsys)
    report = json.loads((tmp_path / "eval" / "reconstruction.json").read_text())
    assert sum(calls) == 0 and all(all(record["cache_hits"].values()) for record in report["extractors"])
    assert (tmp_path / "eval" / "reconstruction_grid.png").is_file()
    assert {path.name for path in (tmp_path / "eval").iterdir()} >= {
        f"{task}.{ext}" for task in ("classification", "verification", "retrieval", "landmarks", "reconstruction")
        for ext in ("json", "md")}


def test_argument_errors(model_dir, data_dirs, tmp_path, capsys):
    faces = ["classification", "--model", str(model_dir), "--dataset", str(data_dirs / "faces"), "-o", str(tmp_path)]
    cases = [
        ([*faces, "--label-column", "identity"], "no label column 'identity'"),
        ([*faces, "--layers", "all", "deep"], "invalid --layers item 'deep'"),
        ([*faces, "--baselines", "hog"], "unknown baseline 'hog'"),
        ([*faces, "--test-split", "validation"], "split 'validation'"),
        (["classification", "--model", str(tmp_path / "nothing"), "--dataset", str(data_dirs / "faces")],
         "does not exist"),
        (["verification", "--model", str(model_dir), "--dataset", str(data_dirs / "faces"), "--split", "test"],
         "Column 'image_a' not found"),
        (["landmarks", "--model", str(model_dir), "--dataset", str(data_dirs / "faces")], "no keypoints"),
        ([*faces, "--max-train-samples", "1"], "all of one class; the linear probe needs two classes or more"),
        (["retrieval", "--model", str(model_dir), "--dataset", str(data_dirs / "copies"), "--gallery-split", "test",
          "--max-samples", "8"], "--gallery-split test is the query split"),  # a subset of the gallery as queries
        (["classification", "--model", str(model_dir), "--dataset", str(data_dirs / "single-faces")],
         "gives the same data for --train-split train and --test-split test"),
    ]
    for argv, message in cases:
        err = _run(argv, tmp_path, capsys, code=2).err
        assert message in err and "Traceback" not in err, (argv, err)


def test_single_split_folders_are_the_data(model_dir, data_dirs, tmp_path, capsys):
    """A folder saved from one `Dataset` is read whatever --split says (it has no split name)."""
    for extra in ([], ["--split", "validation"]):
        out = _run(["verification", "--model", str(model_dir), "--dataset", str(data_dirs / "single-pairs"),
                    "--baselines", "-o", str(tmp_path / "v"), *extra], tmp_path, capsys).out
        assert "| GH-Feat | all |" in out


@pytest.mark.slow
def test_two_processes_share_the_extraction(model_dir, data_dirs, tmp_path):
    """`accelerate launch` with two CPU processes: each extracts one shard, the main process writes the report."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--main_process_port", "29541", "-m", "ghfeat_hf.cli", "evaluate", "classification", "--model",
               str(model_dir), "--dataset", str(data_dirs / "faces"), "-o", str(tmp_path / "eval"), "--cache-dir",
               str(tmp_path / "cache"), "--no-progress"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("report: ") == 1  # only the main process reports
    shards = sorted(path.name.rsplit("-", 1)[1] for path in (tmp_path / "cache").glob("features-*.arrow"))
    assert shards == ["0of2.arrow"] * 6 + ["1of2.arrow"] * 6  # 3 extractors x 2 splits, each cut in two
    single = tmp_path / "single"
    assert main(["evaluate", "classification", "--model", str(model_dir), "--dataset", str(data_dirs / "faces"),
                 "-o", str(single), "--cache-dir", str(tmp_path / "cache-single"), "--no-progress"]) == 0
    rows = [json.loads((folder / "classification.json").read_text())["rows"] for folder in (tmp_path / "eval", single)]
    assert rows[0] == rows[1]


def _argv_from_settings(settings: dict) -> list[str]:
    """The `ghfeat evaluate` command line recorded in a report's settings."""
    argv = ["evaluate", settings["task"]]
    for key, value in settings.items():
        if key in ("command", "task") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return argv


@pytest.mark.slow
def test_shipped_model_reproduces_its_classification_report(tmp_path, capsys):
    """The shipped Fashion-MNIST model's classification numbers (its `evaluation.json`, written by `ghfeat evaluate
    --update-model-card`) come out again from the recorded command."""
    from ghfeat_hf.embedded import DEFAULT_MODEL, embedded_model_path, embedded_models

    if DEFAULT_MODEL not in embedded_models() or not (embedded_model_path() / "evaluation.json").is_file():
        pytest.skip(f"{DEFAULT_MODEL} is not shipped with an evaluation report in this installation")
    stored = json.loads((embedded_model_path() / "evaluation.json").read_text()).get("classification")
    if not stored or not stored.get("settings"):
        pytest.skip(f"{DEFAULT_MODEL} has no classification report made by ghfeat evaluate")
    settings = {**stored["settings"], "model": str(embedded_model_path()), "output_dir": str(tmp_path / "eval"),
                "cache_dir": str(tmp_path / "cache"), "update_model_card": False, "no_progress": True}
    assert main(_argv_from_settings(settings)) == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "eval" / "classification.json").read_text())["rows"]
    assert [row["features"] for row in rows] == [row["features"] for row in stored["rows"]]
    for row, expected in zip(rows, stored["rows"]):
        assert row["knn"] == pytest.approx(expected["knn"], abs=1e-9)
        assert row["linear_probe"] == pytest.approx(expected["linear_probe"], abs=2e-3)  # lbfgs on another BLAS


def test_the_model_card_keeps_results_measured_on_more_data(model_dir, data_dirs, tmp_path, capsys, monkeypatch):
    card_dir = tmp_path / "model"
    shutil.copytree(model_dir, card_dir)
    base = ["reconstruction", "--model", str(card_dir), "--dataset", str(data_dirs / "faces"), "--split", "test",
            "-o", str(tmp_path / "r"), "--update-model-card"]
    _run(base, tmp_path, capsys)
    assert json.loads((card_dir / "evaluation.json").read_text())["reconstruction"]["data"]["splits"]["images"][
        "num_rows"] == 60
    err = _run([*base, "--max-samples", "10"], tmp_path, capsys, code=2).err
    assert "measured on 60 rows and this run on 10" in err and "--replace-larger-report" in err
    assert json.loads((card_dir / "evaluation.json").read_text())["reconstruction"]["data"]["splits"]["images"][
        "num_rows"] == 60
    _run([*base, "--max-samples", "10", "--replace-larger-report"], tmp_path, capsys)
    assert json.loads((card_dir / "evaluation.json").read_text())["reconstruction"]["data"]["splits"]["images"][
        "num_rows"] == 10
    # the installed package's models are never written to
    from ghfeat_hf.evaluation import cli as evaluation_cli

    monkeypatch.setattr(evaluation_cli, "PRETRAINED_DIR", tmp_path)
    err = _run(base, tmp_path, capsys, code=2).err
    assert "is a model of the installed package" in err
