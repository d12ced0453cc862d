"""Evaluation reports: one JSON document per task run plus its Markdown table.

A report holds the model, the data, the protocol (each detail marked with its source: the paper, an established
benchmark protocol, or our choice), one row per (features, layer group) with its metrics, and notes. The same
Markdown table fills the results section of a model card ([`results_markdown`]).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PAPER = "paper"
PAPER_UNVERIFIED = "paper, unverified"
STANDARD = "standard protocol"
OURS = "our choice"
PROTOCOL_SOURCES = (PAPER, PAPER_UNVERIFIED, STANDARD, OURS)

_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}  # how `to_dict` writes them
_FORMATS = ("pct", "pct_ci", "pct_std", "f2", "f3", "f4", "f6", "g", "int", "db")


@dataclass
class ProtocolItem:
    """One detail of a task protocol, `source` one of [`PROTOCOL_SOURCES`]."""

    name: str
    value: Any
    source: str
    note: str = ""

    def __post_init__(self):
        if self.source not in PROTOCOL_SOURCES:
            raise ValueError(f"protocol source must be one of {PROTOCOL_SOURCES}, got {self.source!r}.")


@dataclass
class MetricColumn:
    """A table column: `key` into the rows, a header `label` and a format: `pct` (a fraction shown in %), `pct_ci`
    (with the row's `<key>_ci95` interval), `pct_std` (with `<key>_std`), `f2`/`f3`/`f4`/`f6`, `g`, `int` or `db`."""

    key: str
    label: str
    fmt: str = "f4"

    def __post_init__(self):
        if self.fmt not in _FORMATS:
            raise ValueError(f"unknown metric format {self.fmt!r}; use one of {_FORMATS}.")

    def format(self, row: dict[str, Any]) -> str:
        value = row.get(self.key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        if self.fmt == "pct":
            return f"{100 * value:.2f}"
        if self.fmt == "pct_ci":
            low, high = row[f"{self.key}_ci95"]
            return f"{100 * value:.2f} [{100 * low:.2f}, {100 * high:.2f}]"
        if self.fmt == "pct_std":
            return f"{100 * value:.2f} ± {100 * row[f'{self.key}_std']:.2f}"
        if self.fmt == "int":
            return str(int(value))
        if self.fmt == "g":
            return f"{value:g}"
        if self.fmt == "db":
            return "inf" if math.isinf(value) else f"{value:.2f}"
        return f"{value:.{self.fmt[1:]}f}"


@dataclass
class EvaluationReport:
    """The result of one evaluation task. `rows[i]` holds `features` (the extractor's name), `layers` (the layer
    group), `dim` and the metric values named by `columns`."""

    task: str
    model: dict[str, Any]
    data: dict[str, Any]
    protocol: list[ProtocolItem]
    columns: list[MetricColumn]
    rows: list[dict[str, Any]]
    extractors: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    """The options of the run (the command line's, for `ghfeat evaluate`), so it can be repeated."""
    seconds: float | None = None
    version: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def __post_init__(self):
        if not self.version:
            from .version import __version__

            self.version = __version__

    # -- serialisation --------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> EvaluationReport:
        payload = dict(payload)
        payload["protocol"] = [ProtocolItem(**item) for item in payload.get("protocol", [])]
        payload["columns"] = [MetricColumn(**column) for column in payload.get("columns", [])]
        payload["rows"] = [{key: _NON_FINITE.get(value, value) if isinstance(value, str) else value
                            for key, value in row.items()} for row in payload.get("rows", [])]
        return cls(**payload)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvaluationReport:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save(self, output_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Write `<task>.json` and `<task>.md` into `output_dir`; returns their paths."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        json_path, markdown_path = output_dir / f"{self.task}.json", output_dir / f"{self.task}.md"
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        markdown_path.write_text(self.to_markdown())
        return json_path, markdown_path

    # -- Markdown -------------------------------------------------------------------------------------------------

    def table(self) -> str:
        """The results as a Markdown table, one row per (features, layer group)."""
        header = ["features", "layers", "dim", *(column.label for column in self.columns)]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            cells = [str(row["features"]), str(row["layers"]), str(row.get("dim", ""))]
            cells += [column.format(row) for column in self.columns]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def title(self) -> str:
        return f"{self.task.replace('_', ' ').capitalize()} on {self.data.get('name', 'the data')}"

    def to_markdown(self) -> str:
        """A standalone Markdown document: title, model and data, the table, the protocol and the notes."""
        model = self.model.get("model") or self.model.get("name", "")
        lines = [f"# {self.title()}", "", f"Model: `{model}` (fingerprint `{self.model.get('fingerprint', '')}`). "
                 f"Data: {_data_summary(self.data)}.", "", self.table(), "", "## Protocol", ""]
        for item in self.protocol:
            note = f". {item.note}" if item.note else ""
            lines.append(f"- **{item.name}** ({item.source}): {_format_value(item.value)}{note}")
        if self.notes:
            lines += ["", "## Notes", "", *(f"- {note}" for note in self.notes)]
        if self.artifacts:
            lines += ["", "## Files", "", *(f"- {name}: `{path}`" for name, path in self.artifacts.items())]
        seconds = f" in {self.seconds:.1f} s" if self.seconds is not None else ""
        lines += ["", f"ghfeat-hf {self.version}, {self.created}{seconds}.", ""]
        return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN / inf become strings so the JSON is standard; NumPy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _data_summary(data: dict[str, Any]) -> str:
    parts = []
    for role, info in data.get("splits", {}).items():
        split = "" if info.get("split") in (None, role) else f" = split {info['split']!r}"
        parts.append(f"{role}{split}: {info['num_rows']} rows")
    return f"`{data.get('name', '')}`" + (f" ({'; '.join(parts)})" if parts else "")


def results_markdown(reports: Sequence[EvaluationReport | dict[str, Any]], heading_level: int = 3) -> str:
    """The results section of a model card: for each report, a heading, the data, its table, the protocol details
    that are our choice and the notes."""
    blocks = []
    for report in reports:
        report = report if isinstance(report, EvaluationReport) else EvaluationReport.from_dict(report)
        lines = [f"{'#' * heading_level} {report.title()}", "", f"Data: {_data_summary(report.data)}.", "",
                 report.table(), ""]
        ours = [item.name for item in report.protocol if item.source == OURS]
        if ours:
            lines += [f"Protocol details that are our choice: {', '.join(ours)}.", ""]
        lines += [f"- {note}" for note in report.notes]
        blocks.append("\n".join(lines).rstrip())
    return "\n\n".join(blocks)


__all__ = [
    "OURS",
    "PAPER",
    "PAPER_UNVERIFIED",
    "PROTOCOL_SOURCES",
    "STANDARD",
    "EvaluationReport",
    "MetricColumn",
    "ProtocolItem",
    "results_markdown",
]
