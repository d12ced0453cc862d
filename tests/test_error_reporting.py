"""The one error path: every command line error is one line on stderr and a non-zero exit, unless tracebacks are
asked for (`ghfeat --debug`, `GHFEAT_DEBUG=1`)."""

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from ghfeat_hf.cli import main
from ghfeat_hf.error_reporting import DEBUG_ENV, error_message, run_command
from ghfeat_hf.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def _raise(error: BaseException):
    def command():
        raise error

    return command


@pytest.mark.parametrize(("error", "status", "message"), [
    (UsageError("bad --layers\nvalue"), 2, "prog: error: bad --layers value"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y.png"), 1,
     "prog: error: No such file or directory: /x/y.png"),
    (OSError(errno.ENOSPC, "No space left on device"), 1, "prog: error: No space left on device"),
    (RuntimeError("shape mismatch:\n  a vs b"), 1,
     f"prog: error: RuntimeError: shape mismatch: a vs b (run again with {DEBUG_ENV}=1 for the traceback)"),
    (KeyboardInterrupt(), 130, "prog: interrupted"),
])
def test_errors_become_one_line_and_a_status(error, status, message, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert run_command("prog", _raise(error)) == status
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [message]


def test_return_values_and_debug(monkeypatch, capsys):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert run_command("prog", lambda: 3) == 3
    assert run_command("prog", lambda: None) == 0 and run_command("prog", lambda: {"metrics": 1}) == 0
    with pytest.raises(UsageError):
        run_command("prog", _raise(UsageError("x")), debug=True)
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(RuntimeError):
        run_command("prog", _raise(RuntimeError("x")))
    monkeypatch.setenv(DEBUG_ENV, "0")
    assert run_command("prog", _raise(RuntimeError("x"))) == 1
    assert capsys.readouterr().out == ""
    assert error_message(ValueError("")) == "ValueError"


def test_ghfeat_commands_share_the_error_path(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    missing = str(tmp_path / "missing.png")
    assert main(["reconstruct", missing, "-o", str(tmp_path / "grid.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ghfeat reconstruct: error: ") and len(err.strip().splitlines()) == 1
    assert main(["reconstruct", missing, "-o", str(tmp_path / "grid.txt")]) == 2
    assert "unknown image extension '.txt'" in capsys.readouterr().err
    assert main(["evaluate", "generation", "--dataset", str(tmp_path), "--model", str(tmp_path / "none"),
                 "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("ghfeat evaluate generation: error: ")
    with pytest.raises(UsageError):
        main(["--debug", "reconstruct", missing, "-o", str(tmp_path / "grid.png")])


def test_scripts_share_the_error_path(tmp_path):
    """A training script given a dataset that does not exist: one line, no traceback, exit status 1 or 2."""
    result = subprocess.run(
        [sys.executable, str(REPO / "training" / "train_classifier.py"), "--dataset", str(tmp_path / "nothing"),
         "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                                          "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode in (1, 2), result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and lines[-1].startswith("train_classifier.py: error: ")
    assert not (tmp_path / "out").exists()
