"""Evaluation reports: formatting, JSON round trip, and the results section of the model card."""

import json
import math

import pytest
import torch

from ghfeat_hf import GHFeatModel
from ghfeat_hf.evaluation_report import OURS, STANDARD, EvaluationReport, MetricColumn, ProtocolItem, results_markdown
from ghfeat_hf.hub import save_ghfeat_directory
from ghfeat_hf.model_card import add_evaluation_report, render_model_card
from tests.conftest import tiny_ghfeat_config


def _report(task="classification", accuracy=0.8125):
    return EvaluationReport(
        task=task, model={"name": "GH-Feat", "model": "org/ghfeat-tiny", "fingerprint": "abc"},
        data={"name": "toy", "splits": {"train": {"split": "train", "num_rows": 10, "fingerprint": "f"},
                                        "test": {"split": "validation", "num_rows": 16, "fingerprint": "g"}}},
        protocol=[ProtocolItem("k-NN", "k = 10", OURS), ProtocolItem("folds", "10", STANDARD, "LFW")],
        columns=[MetricColumn("acc", "acc. (%)", "pct_ci"), MetricColumn("psnr", "PSNR (dB)", "db"),
                 MetricColumn("c", "C", "g"), MetricColumn("missing", "other", "f4")],
        rows=[{"features": "GH-Feat", "layers": "all", "dim": 8, "acc": accuracy, "acc_ci95": [0.57, 0.93],
               "psnr": math.inf, "c": 1e-4, "missing": math.nan}],
        notes=["a note"],
    )


def test_formats_and_round_trip(tmp_path):
    report = _report()
    assert report.table().splitlines()[2] == "| GH-Feat | all | 8 | 81.25 [57.00, 93.00] | inf | 0.0001 | n/a |"
    json_path, markdown_path = report.save(tmp_path)
    payload = json.loads(json_path.read_text())  # standard JSON: no NaN / Infinity literals
    assert payload["rows"][0]["psnr"] == "inf" and payload["rows"][0]["missing"] == "nan"
    loaded = EvaluationReport.load(json_path)
    assert loaded.protocol == report.protocol and loaded.columns == report.columns and loaded.task == "classification"
    markdown = markdown_path.read_text()
    assert "- **k-NN** (our choice): k = 10" in markdown and "- **folds** (standard protocol): 10. LFW" in markdown
    assert "test = split 'validation': 16 rows" in markdown and "- a note" in markdown
    with pytest.raises(ValueError, match="protocol source"):
        ProtocolItem("x", 1, "folklore")
    with pytest.raises(ValueError, match="unknown metric format"):
        MetricColumn("x", "x", "pct2")


def test_results_section_blocks():
    text = results_markdown([_report(), _report("retrieval").to_dict()])
    first, second = text.split("\n\n### ")
    assert first.startswith("### Classification on toy\n\nData: `toy`")
    assert "\n\n| features | layers | dim |" in first and "\n\nProtocol details that are our choice: k-NN." in first
    assert second.startswith("Retrieval on toy")


def test_model_card_results_section(tmp_path):
    torch.manual_seed(0)
    directory = save_ghfeat_directory(GHFeatModel(tiny_ghfeat_config()).eval(), tmp_path / "model",
                                      metrics={"reconstruction PSNR": 12.5})
    card = (directory / "README.md").read_text()
    assert "| reconstruction PSNR | 12.5 |" in card and "Evaluation results" not in card  # as before
    add_evaluation_report(directory, _report(accuracy=0.5))
    add_evaluation_report(directory, _report("retrieval"))
    add_evaluation_report(directory, _report(accuracy=0.75))  # replaces the first classification report
    stored = json.loads((directory / "evaluation.json").read_text())
    assert sorted(stored) == ["classification", "retrieval"] and stored["classification"]["rows"][0]["acc"] == 0.75
    card = render_model_card(directory).read_text()  # later renders keep the results
    assert "## Evaluation results" in card and "| GH-Feat | all | 8 | 75.00 [57.00, 93.00] |" in card
    assert "### Retrieval on toy" in card and "| reconstruction PSNR | 12.5 |" in card
    assert card.index("## Evaluation results") < card.index("## Intended use")
