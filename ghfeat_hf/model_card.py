"""Model cards (README.md with Hub metadata) for GH-Feat and StyleGAN directories.

A card is rendered from the directory itself: ``config.json`` gives the architecture, ``provenance.json``
(written by the converter or a trainer: source, domain, license notice, summary; optionally ``license``, an SPDX id
for the metadata, and ``load_args``, the arguments of the usage snippet) the history, ``metrics.json``
(parity or evaluation numbers, when measured) the table of measured numbers, and ``evaluation.json`` (the
``ghfeat evaluate`` reports, one per task) the evaluation results section. Templates live in the repository's
``model_cards/`` folder, which wheels install as ``ghfeat_hf/model_cards`` (see :func:`template_directory`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .evaluation_report import results_markdown

PROVENANCE_FILE = "provenance.json"
METRICS_FILE = "metrics.json"
EVALUATION_FILE = "evaluation.json"
CARD_TAGS = ["ghfeat", "timm", "stylegan", "gan-inversion", "image-feature-extraction"]
DEFAULT_LICENSE_NOTICE = (
    "The weights keep the terms of the checkpoint or data they come from; check them before any use. The official "
    "StyleGAN v1 networks are released by NVIDIA under CC BY-NC 4.0, and GH-Feat encoders are trained against such "
    "generators. The `ghfeat-hf` code is MIT licensed."
)


# Line breaks and other C0/C1 controls, Unicode line/paragraph separators and bidirectional overrides.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")
_MARKDOWN_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", **{c: "\\" + c for c in "\\`*[]|#~"}})


def escape_markdown(text: str) -> str:
    """``text`` (untrusted: a file name, a metric name, a CLI argument) as inert inline Markdown on one line.

    Control characters, line breaks and bidi overrides become one space, ``& < >`` HTML entities, and the characters
    that open code, emphasis, links/images, table cells, headings or strike-through are backslash-escaped. ``_`` is
    kept: inside a word (file names are full of them) it never starts emphasis, and emphasis cannot inject anything.
    """
    return _CONTROL_CHARACTERS.sub(" ", text).translate(_MARKDOWN_ESCAPES)


def template_directory() -> Path:
    """The folder of the card templates: ``ghfeat_hf/model_cards`` in an installed wheel (pyproject.toml maps the
    repository's ``model_cards/`` there), the repository's ``model_cards/`` in a source checkout or editable install."""
    packaged = resources.files(__package__) / "model_cards"
    return Path(str(packaged)) if packaged.is_dir() else Path(__file__).resolve().parents[1] / "model_cards"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def write_provenance(directory: str | Path, **fields: Any) -> Path:
    """Record where a model directory comes from (merged into an existing ``provenance.json``)."""
    path = Path(directory) / PROVENANCE_FILE
    path.write_text(json.dumps({**_read_json(path), **fields}, indent=2, default=str) + "\n")
    return path


def _ghfeat_fields(directory: Path) -> dict[str, Any]:
    from .configuration_ghfeat import GHFeatConfig

    config = GHFeatConfig.from_pretrained(directory)
    weights = directory / "model.safetensors"
    return {
        "template": "ghfeat.md",
        "pipeline_tag": "image-feature-extraction",
        "model_name": f"GH-Feat ResNet-{config.depth} encoder ({config.image_size} px)",
        "depth": config.depth,
        "image_size": config.image_size,
        "color_mode": {1: "grayscale", 3: "RGB"}.get(config.num_channels, f"{config.num_channels}-channel"),
        "num_layers": config.num_layers,
        "feature_dim": sum(config.style_dims),
        "max_style_dim": max(config.style_dims),
        "style_dims": config.style_dims,
        "head_layers": " / ".join(f"{layers[0]}-{layers[-1]}" for layers in config.head_layers),
        "resolution": config.generator_config.resolution,
        "weights_size": f"{weights.stat().st_size / 2**20:.1f} MiB" if weights.exists() else "n/a",
    }


def _stylegan_fields(directory: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    generator = config["model_type"] == "stylegan-generator"
    return {
        "template": "stylegan.md",
        "pipeline_tag": None,
        "model_name": f"StyleGAN v1 {'generator' if generator else 'discriminator'} ({config['resolution']} px)",
        "part": "generator" if generator else "discriminator",
        "resolution": config["resolution"],
        "class_name": "StyleGANGenerator" if generator else "StyleGANDiscriminator",
        "usage": (
            "images = model(torch.randn(4, model.config.latent_size))  # [-1, 1]"
            if generator
            else "scores = model(images)  # [N, 1] logits"
        ),
    }


def _report_dict(report: Any) -> dict[str, Any]:
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)


def render_model_card(
    directory: str | Path,
    repo_id: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    subfolder: str | None = None,
    evaluation: Sequence[Any] | None = None,
) -> Path:
    """Write ``directory/README.md`` for a saved GH-Feat or StyleGAN directory; returns its path.

    ``repo_id`` (and ``subfolder`` for a directory inside a repo) fill the usage snippet; ``metrics`` are
    merged into ``metrics.json`` first, and ``evaluation`` reports (``EvaluationReport`` objects or their JSON
    dicts) into ``evaluation.json`` (one per task, a newer report replacing an older one), so later renders keep
    them. The evaluation reports fill the card's results section.
    """
    directory = Path(directory)
    config = _read_json(directory / "config.json")
    if config.get("model_type") == "ghfeat":
        fields = _ghfeat_fields(directory)
    elif config.get("model_type") in ("stylegan-generator", "stylegan-discriminator"):
        fields = _stylegan_fields(directory, config)
    else:
        raise ValueError(f"{directory} holds no GH-Feat or StyleGAN model (config model_type {config.get('model_type')!r}).")
    if metrics:
        (directory / METRICS_FILE).write_text(json.dumps({**_read_json(directory / METRICS_FILE), **metrics}, indent=2) + "\n")
    if evaluation:
        reports = {**_read_json(directory / EVALUATION_FILE),
                   **{payload["task"]: payload for payload in map(_report_dict, evaluation)}}
        (directory / EVALUATION_FILE).write_text(json.dumps(reports, indent=2) + "\n")
    provenance = {"summary": "", "source": "Not recorded.", "domain": "the training data",
                  "license_notice": DEFAULT_LICENSE_NOTICE, "datasets": None, **_read_json(directory / PROVENANCE_FILE)}
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=fields.pop("pipeline_tag"),
        license=provenance.pop("license", None) or "other",
        tags=list(CARD_TAGS),
        datasets=provenance.pop("datasets"),
    )
    template = template_directory() / fields.pop("template")
    if not template.exists():
        raise FileNotFoundError(f"Model card template {template} not found: install ghfeat-hf from a wheel or a "
                                "checkout that has model_cards/.")
    card = ModelCard.from_template(
        card_data,
        template_path=str(template),
        load_args=provenance.pop("load_args", None)
        or f'"{repo_id or "<org>/" + directory.name}"' + (f', subfolder="{subfolder}"' if subfolder else ""),
        metrics={escape_markdown(str(name)): escape_markdown(str(value))
                 for name, value in _read_json(directory / METRICS_FILE).items()},
        results=_results_section(directory),
        **provenance,
        **fields,
    )
    path = directory / "README.md"
    card.save(path)
    return path


def _results_section(directory: Path) -> str:
    """The Markdown of the evaluation reports stored in ``evaluation.json`` ("" when there are none)."""
    reports = _read_json(directory / EVALUATION_FILE)
    if not reports:
        return ""
    return results_markdown(list(reports.values()))


def _data_rows(report: Mapping[str, Any]) -> int:
    """How many data rows a report's splits hold together."""
    return sum(int(split.get("num_rows", 0)) for split in report.get("data", {}).get("splits", {}).values())


def stored_report_conflict(directory: str | Path, report: Any) -> str | None:
    """Why storing `report` would lose information: the card's report of the same task measured on more data
    (a subset run replacing a full one); `None` when storing it loses nothing."""
    payload = _report_dict(report)
    stored = _read_json(Path(directory) / EVALUATION_FILE).get(payload["task"])
    if stored is None or _data_rows(payload) >= _data_rows(stored):
        return None
    return (f"the model card's {payload['task']} results were measured on {_data_rows(stored)} rows and this run on "
            f"{_data_rows(payload)}")


def add_evaluation_report(directory: str | Path, report: Any) -> Path:
    """Store an evaluation report (an ``EvaluationReport`` or its JSON dict) in a model directory's
    ``evaluation.json`` and render its model card again; returns the card's path."""
    return render_model_card(directory, evaluation=[report])


__all__ = ["CARD_TAGS", "add_evaluation_report", "stored_report_conflict", "escape_markdown", "render_model_card", "template_directory",
           "write_provenance"]
