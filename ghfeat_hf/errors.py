"""The library's exception types and the one-line form of an error message: the bottom layer, imported by every
other module and by the command lines (see [`ghfeat_hf.error_reporting`])."""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the Unicode bidi embeddings/overrides/isolates (U+202A-U+202E, U+2066-U+2069): what
# could move the cursor, recolour or reorder a terminal line once whitespace is collapsed
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class UsageError(ValueError):
    """A user-facing error (bad argument, missing input, a file that is not what it should be): the command lines
    print its message as one line, without a traceback."""


class DestinationError(OSError):
    """The output could not be written (a read-only or full file system, a folder that vanished, ...): an `OSError`
    whose message names the output and where the rows committed so far are kept (the system's error is its
    `__cause__`)."""


def one_line(error: BaseException | str) -> str:
    """`error`'s text on one printable line: whitespace runs (newlines included) collapsed to one space, and the
    control characters left escaped as Python does (``\\x1b``, ``\\u202e``), so that a hostile file name or message
    cannot forge terminal output."""
    text = " ".join(str(error).split())
    return _UNPRINTABLE.sub(lambda match: ascii(match.group())[1:-1], text)


__all__ = ["DestinationError", "UsageError", "one_line"]
