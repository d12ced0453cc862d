"""File-system conventions: the mode of written model files, and the opening of input files that never blocks."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
_SPECIAL_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


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


def _refuse_special(mode: int) -> None:
    """A `ValueError` naming what a non-regular file is (a FIFO, a socket, ...)."""
    if not stat.S_ISREG(mode):
        kind = next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "a special file")
        raise ValueError(f"{kind}, not a regular file (not opened)")


@contextlib.contextmanager
def open_regular_file(path: str | os.PathLike) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """Open a regular file for reading without ever blocking: `stat` first (a FIFO, socket, device or folder is
    refused unopened), then a non-blocking `open` and an `fstat` of what was opened (the name may have been
    swapped in between). Yields the binary file and that `fstat`; a `ValueError` for anything not regular."""
    _refuse_special(os.stat(path).st_mode)
    descriptor = os.open(path, _OPEN_FLAGS)
    try:
        status = os.fstat(descriptor)
        _refuse_special(status.st_mode)
    except BaseException:
        os.close(descriptor)
        raise
    with os.fdopen(descriptor, "rb") as handle:
        yield handle, status


__all__ = ["open_regular_file", "restore_default_file_mode"]
