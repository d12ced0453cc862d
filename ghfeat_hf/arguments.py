"""argparse building blocks shared by every command line of the project (``ghfeat``, the training and conversion
scripts): value types that turn bad input into usage errors, and the help text of ``--model``.

The ``ghfeat`` command uses kebab-case flags (``--batch-size``) as command-line tools do; the training scripts use
snake_case (``--batch_size``) as the accelerate and transformers example scripts they follow do, so their flags read
like the ``TrainingArguments`` fields users know.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .embedded import DEFAULT_MODEL

MODEL_HELP = (f"an embedded model name ({DEFAULT_MODEL}), a local model directory or a Hub id (default: $GHFEAT_MODEL, "
              f"else {DEFAULT_MODEL})")


def int_in_range(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse `type`: an integer in `[minimum, maximum]` (argparse reports anything else as a usage error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `minimum`."""
    return int_in_range(minimum)


__all__ = ["MODEL_HELP", "int_at_least", "int_in_range"]
