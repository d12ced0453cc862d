"""The library's exception types and the one-line form of an error message: the bottom layer, imported by every
other module and by the command lines (see [`ghfeat_hf.error_reporting`])."""

from __future__ import annotations


class UsageError(ValueError):
    """A user-facing error (bad argument, missing input, a file that is not what it should be): the command lines
    print its message as one line, without a traceback."""


class DestinationError(OSError):
    """The output could not be written (a read-only or full file system, a folder that vanished, ...): an `OSError`
    whose message names the output and where the rows committed so far are kept (the system's error is its
    `__cause__`)."""


def one_line(error: BaseException | str) -> str:
    """`error`'s text with its whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(error).split())


__all__ = ["DestinationError", "UsageError", "one_line"]
