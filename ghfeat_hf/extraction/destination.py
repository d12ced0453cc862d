"""The destination of `ghfeat extract`: the checks of the output path, the lock that keeps a second run off the
same output, and the removal of the temporary files of killed runs."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Collection, Iterator
from pathlib import Path

from ..errors import DestinationError, UsageError
from .split_output import is_split_folder, remove_output
from .storage import OUTPUT_FORMATS, TEMPORARY_NAME, partial_path, read_partial_progress

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks there
    fcntl = None


def check_destination(output: Path) -> None:
    """A [`UsageError`] when `output` cannot become a file or a folder of split Parquet files: an existing folder
    (other than a split output of its name), FIFO, socket or device, or a path below something that is not a
    folder."""
    for ancestor in output.absolute().parents:
        if os.path.isdir(ancestor):
            break
        if os.path.lexists(ancestor):
            raise UsageError(f"cannot write {os.fspath(output)!r}: {os.fspath(ancestor)!r} is a file, not a folder.")
    try:
        mode = os.stat(output).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode) and not is_split_folder(output):
        raise UsageError(f"the output {os.fspath(output)!r} is a folder: name a file ending in "
                         f"{', '.join(OUTPUT_FORMATS)} (or, with --max-rows-per-file, a new folder).")
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise UsageError(f"the output {os.fspath(output)!r} exists and is not a regular file (a FIFO, socket or "
                         "device).")


def _running(pid: int) -> bool:
    """Whether process `pid` exists (always `True` off POSIX, where `os.kill` would terminate it)."""
    if os.name != "posix":
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: Path, names: Collection[str] | None = None, recursive: bool = False) -> None:
    """Remove the `.<name>.tmp-<PID>` files that killed writers left in `directory` (and its subfolders with
    `recursive`): those whose PID no longer runs, and only for `names` when given; also the temporary folders of
    split outputs."""
    if not directory.is_dir():
        return
    folders = (folder for folder, _, _ in os.walk(directory)) if recursive else [directory]
    for folder in folders:
        with os.scandir(folder) as entries:
            stale = [Path(entry.path) for entry in entries if (match := TEMPORARY_NAME.fullmatch(entry.name))
                     and (names is None or match[1] in names) and not entry.is_symlink()
                     and not _running(int(match[2]))]
        for path in stale:
            remove_output(path)


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `.<name>.lock` next to `output` while a run writes it: a second run on the same
    output gets a [`UsageError`] at once. The file is removed on release; a run re-checks after locking that its
    file is still the one at that name, so the removal never lets two runs in. (No lock without `fcntl`.)"""
    if fcntl is None:
        yield
        return
    path = output.with_name(f".{output.name}.lock")
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode(errors="replace").strip()
            os.close(descriptor)
            gone = (" (that process is gone: its decoding workers are still exiting, retry in a few seconds)"
                    if holder.isdigit() and not _running(int(holder)) else "")
            raise UsageError(f"another run (PID {holder or '?'}) is writing {os.fspath(output)!r}{gone}; wait for "
                             f"it to end or stop it (lock file {os.fspath(path)!r}).") from None
        if _same_file(descriptor, path):
            break
        os.close(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(descriptor)


@contextlib.contextmanager
def claimed(output: Path) -> Iterator[None]:
    """Check the output path, create its folder, hold its lock and remove the temporary files of killed runs; an
    `OSError` of the run (a read-only or full file system, ...) becomes a one-line [`DestinationError`]."""
    try:
        check_destination(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        with output_lock(output):
            remove_stale_temporaries(output.parent, {output.name, f"{output.name}.json"})
            remove_stale_temporaries(partial_path(output))
            yield
    except OSError as error:
        reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
        where = f" ({os.fspath(error.filename)!r})" if error.filename else ""
        kept = (f"; the rows committed so far stay in {os.fspath(partial_path(output))!r}: run the same command "
                "with --resume once that is fixed" if read_partial_progress(output) else "")
        raise DestinationError(f"cannot write {os.fspath(output)!r}: {reason}{where}{kept}.") from error


__all__ = ["check_destination", "claimed", "output_lock", "remove_stale_temporaries"]
