"""Model cards (README.md with Hub metadata) for converted and trained GH-Feat / StyleGAN directories."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

CARD_TAGS = ["ghfeat", "timm", "stylegan", "gan-inversion", "image-feature-extraction"]


def write_model_card(
    directory: str | Path,
    template_path: str | Path,
    *,
    pipeline_tag: str | None = "image-feature-extraction",
    license: str = "other",
    extra_tags: list[str] | None = None,
    datasets: list[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    **fields: Any,
) -> Path:
    """Render ``template_path`` (a Jinja template with ``{{ card_data }}`` front matter) into ``directory/README.md``.

    ``metrics`` (name -> value) are rendered by the template as a table; every other keyword is passed to
    the template as is. Returns the written path.
    """
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license=license,
        tags=CARD_TAGS + list(extra_tags or []),
        datasets=datasets,
    )
    card = ModelCard.from_template(card_data, template_path=str(template_path), metrics=dict(metrics or {}), **fields)
    path = Path(directory) / "README.md"
    card.save(path)
    return path


__all__ = ["CARD_TAGS", "write_model_card"]
