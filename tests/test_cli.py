"""The ``ghfeat`` console script."""

import subprocess
import sys

import pytest

import ghfeat_hf
from ghfeat_hf import runtime
from ghfeat_hf.cli import main
from ghfeat_hf.embedded import embedded_model_path, embedded_models


def test_version_and_help(capsys):
    assert main([]) == 0
    assert "GH-Feat" in capsys.readouterr().out
    result = subprocess.run([sys.executable, "-m", "ghfeat_hf.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"ghfeat-hf {ghfeat_hf.__version__}"


def test_subcommands_are_registered(capsys):
    for command, options in (("extract", ["--resume", "--layers", "--dataset", "--streaming", "--keep-tiled",
                                          "--num-workers", "--dtype", "--reconstructions"]),
                             ("reconstruct", ["--model", "--output", "--cell-size"])):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert all(option in text for option in options)
    with pytest.raises(SystemExit):
        main(["extract", "photos"])  # -o is required
    assert "--output" in capsys.readouterr().err


def test_counts_must_be_positive(capsys):
    for argv, message in ((["reconstruct", "a.png", "--cell-size", "-4"], "--cell-size: must be at least 8, got -4"),
                          (["reconstruct", "a.png", "--cell-size", "0"], "--cell-size: must be at least 8, got 0"),
                          (["reconstruct", "a.png", "--batch-size", "x"], "--batch-size: invalid integer 'x'"),
                          (["extract", "a.png", "-o", "f.parquet", "--batch-size", "0"], "--batch-size: must be"),
                          (["extract", "a.png", "-o", "f.parquet", "--num-workers", "-1"], "must be at least 0")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, argv


def test_extract_argument_errors(tmp_path, capsys, monkeypatch):
    import PIL.Image

    images = tmp_path / "images"
    images.mkdir()
    PIL.Image.new("RGB", (8, 8)).save(images / "a.png")
    (tmp_path / "empty").mkdir()
    monkeypatch.delenv("GHFEAT_MODEL", raising=False)
    monkeypatch.setattr(runtime, "default_model_path", lambda: None)  # an installation without the default
    cases = [
        (["extract", str(images), "-o", str(tmp_path / "f.csv"), "--model", "m"], "unknown output extension '.csv'"),
        (["extract", str(tmp_path / "empty"), "-o", str(tmp_path / "f.parquet"), "--model", "m"], "no images found"),
        (["extract", str(tmp_path / "nothing*.png"), "-o", str(tmp_path / "f.parquet"), "--model", "m"],
         "no files match"),
        (["extract", str(tmp_path / "missing"), "-o", str(tmp_path / "f.parquet"), "--model", "m"],
         "no such file, folder or glob match"),
        (["extract", str(images), "-o", str(tmp_path / "f.parquet"), "--model", str(tmp_path / "no-model")],
         "does not exist"),
        (["extract", str(images), "-o", str(tmp_path / "f.parquet")], "no default model installed, pass --model"),
        (["extract", str(images), "--dataset", "x", "-o", str(tmp_path / "f.parquet"), "--model", "m"],
         "either INPUT paths or --dataset"),
        (["extract", str(images), "-o", str(tmp_path / "f.npy"), "--model", "m", "--keep-codes"], "compact matrix"),
        (["extract", str(images), "-o", str(tmp_path / "f.parquet"), "--model", "m", "--resume", "--overwrite"],
         "exclude each other"),
        (["reconstruct", str(images / "a.png"), "--model", str(tmp_path / "no-model"), "-o", str(tmp_path / "g.png")],
         "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert not any(path.suffix == ".partial" for path in tmp_path.iterdir())


def test_default_model_hook(monkeypatch):
    monkeypatch.delenv("GHFEAT_MODEL", raising=False)
    assert runtime.default_model_path() == (str(embedded_model_path()) if embedded_models() else None)
    monkeypatch.setenv("GHFEAT_MODEL", "org/from-env")
    assert runtime.resolve_model_path(None) == "org/from-env"
    assert runtime.resolve_model_path("given") == "given"
    monkeypatch.delenv("GHFEAT_MODEL")
    monkeypatch.setattr(runtime, "default_model_path", lambda: "org/shipped")
    assert runtime.resolve_model_path(None) == "org/shipped"


def test_reconstruct_splits_large_grids_and_bounds_the_cell_size(tmp_path, capsys):
    """Many images give several grid pictures of --rows-per-grid rows each; a huge --cell-size is a usage error."""
    import PIL.Image

    from ghfeat_hf.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(5):
        PIL.Image.new("L", (32, 32), color=index * 40).save(folder / f"{index}.png")
    assert main(["reconstruct", str(folder), "-o", str(tmp_path / "grid.png"), "--rows-per-grid", "2",
                 "--no-progress"]) == 0
    assert sorted(path.name for path in tmp_path.glob("grid*.png")) == ["grid-2.png", "grid-3.png", "grid.png"]
    assert "images 5-5" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["reconstruct", str(folder), "--cell-size", "30000"])
    assert "must be at most 1024" in capsys.readouterr().err


def test_reconstruct_notes_non_square_inputs_and_the_model_domain(tmp_path, capsys):
    import PIL.Image

    from ghfeat_hf.cli import main

    PIL.Image.new("RGB", (64, 32), color=(200, 10, 10)).save(tmp_path / "wide.png")
    PIL.Image.new("RGB", (32, 32)).save(tmp_path / "square.png")
    assert main(["reconstruct", str(tmp_path / "wide.png"), str(tmp_path / "square.png"), "-o",
                 str(tmp_path / "grid.png"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "1 of 2 images are not square; they are resized to 32x32" in err
    assert "the model was trained on Fashion-MNIST" in err
