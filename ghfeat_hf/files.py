"""File-system conventions shared by everything that writes model directories and weights."""

from __future__ import annotations

import os
from pathlib import Path


def restore_default_file_mode(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or every ``*.safetensors`` below a directory) the mode ``open`` gives a new file
    (``0o666 & ~umask``, usually ``0644``).

    safetensors >= 0.8 writes through a temporary file created ``0600`` (safetensors/safetensors#782), so weights
    saved by ``save_pretrained`` or ``save_file`` would be unreadable to other users, containers and file servers
    while every other file of the directory is readable.
    """
    path = Path(path)
    umask = os.umask(0)
    os.umask(umask)
    for file in sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]:
        file.chmod(0o666 & ~umask)


__all__ = ["restore_default_file_mode"]
