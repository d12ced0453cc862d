#!/usr/bin/env python
"""Measure the times and sizes that README.md quotes, record them, and write them into its measured spans.

    python scripts/doc_measurements.py            # measure, write docs/measurements.json, rewrite the spans
    python scripts/doc_measurements.py --install  # also time `make demo` in a new virtual environment (minutes)
    python scripts/doc_measurements.py --results-only  # only the tables read from the embedded evaluation.json
    python scripts/doc_measurements.py --check    # exit 1 when a span disagrees with docs/measurements.json

A span is ``<!-- measured:KEY -->text<!-- /measured -->``: ``MEASUREMENTS[KEY]`` makes its text from the record,
so the docs never hold a hand-written time or size. A measurement that is not taken again (``--install`` left out)
keeps its recorded value. ``tests/test_docs.py`` checks that the spans agree with the record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ghfeat_hf.evaluation_report import EvaluationReport

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "measurements.json"
DOCUMENTS = (ROOT / "README.md",)
EMBEDDED_MODEL = ROOT / "ghfeat_hf" / "pretrained" / "ghfeat-fmnist32"
SPAN = re.compile(r"<!-- measured:(?P<key>[\w-]+) -->(?P<text>.*?)<!-- /measured -->", re.DOTALL)


def duration(seconds: float) -> str:
    """``14 s``, ``1 min 44 s``, ``2 h 03 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _machine(record: dict[str, Any], key: str) -> str:
    machine = record[key]["machine"]
    return f"{machine['cpu']}, {machine['cpus']} CPUs, 1-min load average {machine['load']:.1f}"


RESULT_TASKS = ("classification", "reconstruction")
# Reports whose own table (EvaluationReport.table) the README quotes as it is, in a span named "<task>-results".
REPORT_TABLES = ("restoration", "style_mixing")

MEASUREMENTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "demo-seconds": lambda record: duration(record["demo"]["seconds"]),
    "demo-machine": lambda record: _machine(record, "demo"),
    "make-demo-new-venv-seconds": lambda record: duration(record["make_demo_new_venv"]["seconds"]),
    "make-demo-new-venv-machine": lambda record: _machine(record, "make_demo_new_venv"),
    "embedded-model-size": lambda record: f"{record['embedded_model']['mib']:.1f} MiB",
    "evaluation-time": lambda record: duration(record["evaluation"]["seconds"]),
    "embedded-results": lambda record: "\n" + record["embedded_results"]["table"] + "\n",
    **{f"{task}-results": (lambda record, task=task: "\n" + record["embedded_results"]["reports"][task] + "\n")
       for task in REPORT_TABLES},
    "embedded-segmentation": lambda record: "\n" + record["embedded_segmentation"]["table"] + "\n",
}

# The README's table of the embedded model: one row per feature extractor of the classification report, with the
# reconstruction metrics of the extractors that decode (the model and its GH-Feat baselines).


def machine() -> dict[str, Any]:
    """The CPU, its count and the 1-minute load average now (the machine is often shared)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cpus": os.cpu_count(), "load": os.getloadavg()[0]}


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Wall seconds of ``command`` (its output is shown; a failure stops the measurement)."""
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True)
    return time.perf_counter() - start


def measure_demo() -> dict[str, Any]:
    """The demo step of ``make demo`` (``python -m ghfeat_hf.cli demo``) with the installed package."""
    with tempfile.TemporaryDirectory() as directory:
        taken = machine()
        seconds = timed([sys.executable, "-m", "ghfeat_hf.cli", "demo", "-o", "ghfeat-demo"], Path(directory))
    return {"seconds": seconds, "machine": taken, "command": "python -m ghfeat_hf.cli demo -o ghfeat-demo"}


def measure_make_demo_new_venv() -> dict[str, Any]:
    """``make demo`` in a copy of the working tree with a new virtual environment: the install, then the demo (pip's
    cache is used as a user's would be)."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
    with tempfile.TemporaryDirectory() as directory:
        clone = Path(directory) / "clone"
        for name in filter(None, listing.split("\0")):
            if (ROOT / name).is_file():
                (clone / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, clone / name)
        taken = machine()
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(Path(directory) / "venv")], check=True)
        env = {**os.environ, "PATH": f"{Path(directory) / 'venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        env.pop("PYTHONPATH", None)
        timed(["make", "demo"], clone, env)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "machine": taken, "command": "python -m venv venv && make demo"}


def measure_embedded_model() -> dict[str, Any]:
    size = sum(path.stat().st_size for path in EMBEDDED_MODEL.rglob("*") if path.is_file())
    return {"mib": size / 2**20, "path": EMBEDDED_MODEL.relative_to(ROOT).as_posix()}


def measure_evaluation() -> dict[str, Any]:
    """The time of the README's two evaluation commands, as ``ghfeat evaluate`` recorded it in the embedded
    model's ``evaluation.json`` (reconstruction and classification, on the machine of the model's recipe)."""
    reports = json.loads((EMBEDDED_MODEL / "evaluation.json").read_text())
    return {"seconds": sum(reports[task]["seconds"] for task in ("reconstruction", "classification")),
            "source": f"{EMBEDDED_MODEL.relative_to(ROOT).as_posix()}/evaluation.json"}


def _percent(row: dict[str, Any], key: str) -> str:
    low, high = row[f"{key}_ci95"]
    return f"{100 * row[key]:.2f} [{100 * low:.2f}, {100 * high:.2f}]"


def results_table(reports: dict[str, Any]) -> str:
    """The Markdown table of the embedded model's classification and reconstruction reports (rows in the
    classification report's order; the best value of each column in bold)."""
    reconstruction = {row["features"]: row for row in reports["reconstruction"]["rows"]}
    rows = reports["classification"]["rows"]
    best = {key: max(row[key] for row in rows) for key in ("linear_probe", "knn")}
    lines = ["| features | dim | linear probe acc. (%) [95% CI] | 10-NN acc. (%) [95% CI] | "
             "reconstruction PSNR (dB) / SSIM / LPIPS (HED-VGG backbone) |", "|---|---|---|---|---|"]
    for row in rows:
        cells = [_percent(row, key) for key in ("linear_probe", "knn")]
        cells = [f"**{cell}**" if row[key] == best[key] else cell for cell, key in zip(cells, ("linear_probe", "knn"))]
        decoded = reconstruction.get(row["features"])
        metrics = (f"{decoded['psnr']:.2f} / {decoded['ssim']:.3f} / {decoded['lpips_hed_vgg']:.4f}"
                   if decoded and decoded.get("lpips_hed_vgg") is not None else "")
        lines.append(f"| {row['features']} | {row['dim']} | {cells[0]} | {cells[1]} | {metrics} |")
    return "\n".join(lines)


def measure_embedded_results() -> dict[str, Any]:
    """The README table, from the reports ``ghfeat evaluate --update-model-card`` stored in the embedded model."""
    reports = json.loads((EMBEDDED_MODEL / "evaluation.json").read_text())
    return {"table": results_table({task: reports[task] for task in RESULT_TASKS}),
            "reports": {task: EvaluationReport.from_dict(reports[task]).table() for task in REPORT_TABLES},
            "source": f"{EMBEDDED_MODEL.relative_to(ROOT).as_posix()}/evaluation.json"}


def segmentation_table(report: dict[str, Any]) -> str:
    """The README table of the segmentation report: one row per method, one mIoU column per K (mean over the
    draws with its 95% interval; the best of each column in bold)."""
    shots = sorted({row["shots"] for row in report["rows"]})
    methods = list(dict.fromkeys(row["features"] for row in report["rows"]))
    cell = {(row["features"], row["shots"]): row for row in report["rows"]}
    best = {k: max(cell[method, k]["miou"] for method in methods) for k in shots}
    lines = ["| features | " + " | ".join(f"mIoU (%), K = {k} [95% CI]" for k in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for method in methods:
        cells = [_percent(cell[method, k], "miou") for k in shots]
        cells = [f"**{text}**" if cell[method, k]["miou"] == best[k] else text for text, k in zip(cells, shots)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_embedded_segmentation() -> dict[str, Any]:
    """The README's segmentation table, from the report stored in the embedded model."""
    reports = json.loads((EMBEDDED_MODEL / "evaluation.json").read_text())
    return {"table": segmentation_table(reports["segmentation"]),
            "source": f"{EMBEDDED_MODEL.relative_to(ROOT).as_posix()}/evaluation.json"}


def read_record() -> dict[str, Any]:
    return json.loads(RECORD.read_text())


def measured_spans() -> list[tuple[str, str, str]]:
    """``(document, key, text)`` of every measured span."""
    return [(path.name, match["key"], match["text"]) for path in DOCUMENTS for match in SPAN.finditer(path.read_text())]


def rewrite_spans(record: dict[str, Any]) -> None:
    for path in DOCUMENTS:
        text = path.read_text()
        rewritten = SPAN.sub(lambda match: f"<!-- measured:{match['key']} -->{MEASUREMENTS[match['key']](record)}"
                                           "<!-- /measured -->", text)
        if rewritten != text:
            path.write_text(rewritten)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare the spans with the record")
    parser.add_argument("--install", action="store_true",
                        help="also time `make demo` in a new virtual environment (installs every dependency)")
    parser.add_argument("--results-only", action="store_true",
                        help="only read the embedded model's evaluation.json again (no timing, no demo run)")
    args = parser.parse_args(argv)
    if args.check:
        record = read_record()
        wrong = [f"{document}: {key}: {text!r}, recorded {MEASUREMENTS[key](record)!r}"
                 for document, key, text in measured_spans() if text != MEASUREMENTS[key](record)]
        print("\n".join(wrong) or "every measured span agrees with the record")
        return 1 if wrong else 0
    record = read_record() if RECORD.exists() else {}
    record.update(embedded_results=measure_embedded_results(), embedded_segmentation=measure_embedded_segmentation())
    if not args.results_only:
        record.update(demo=measure_demo(), embedded_model=measure_embedded_model(), evaluation=measure_evaluation())
    if args.install:
        record["make_demo_new_venv"] = measure_make_demo_new_venv()
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    rewrite_spans(record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
