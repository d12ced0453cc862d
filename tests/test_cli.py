"""The ``ghfeat`` console script."""

import subprocess
import sys

import ghfeat_hf
from ghfeat_hf.cli import main


def test_version_and_help(capsys):
    assert main([]) == 0
    assert "GH-Feat" in capsys.readouterr().out
    result = subprocess.run([sys.executable, "-m", "ghfeat_hf.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"ghfeat-hf {ghfeat_hf.__version__}"
