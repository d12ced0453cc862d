"""Models shipped inside the package, under ``ghfeat_hf/pretrained/<name>/``: they load with no network.

Each one is a complete [`GHFeatModel`] directory (``config.json`` with the timm keys, ``model.safetensors``,
``preprocessor_config.json``, ``README.md`` model card), so every loader takes its path::

    from transformers import AutoModel
    from ghfeat_hf import embedded_model_path

    model = AutoModel.from_pretrained(embedded_model_path())          # the default, "ghfeat-fmnist32"
    timm.create_model("ghfeat_resnet18_32.fmnist32", pretrained=True)  # the same weights through timm

The command line accepts the short name anywhere a model is asked for (``--model ghfeat-fmnist32``) and uses the
default model when none is given.
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_MODEL = "ghfeat-fmnist32"


def embedded_models() -> list[str]:
    """Names of the models shipped in this installation (directories holding a ``config.json``)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(path.parent.name for path in PRETRAINED_DIR.glob("*/config.json"))


def embedded_model_path(name: str = DEFAULT_MODEL) -> Path:
    """The directory of the shipped model ``name``; a `FileNotFoundError` naming the available ones otherwise."""
    path = PRETRAINED_DIR / name
    if not (path / "config.json").is_file():
        available = ", ".join(embedded_models()) or "none"
        raise FileNotFoundError(f"No embedded GH-Feat model {name!r} in {PRETRAINED_DIR} (available: {available}).")
    return path


__all__ = ["DEFAULT_MODEL", "PRETRAINED_DIR", "embedded_model_path", "embedded_models"]
