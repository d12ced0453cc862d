"""One error path for every command line of the project (``ghfeat`` and the scripts under ``training/``,
``conversion/``): an error ends in one line on stderr and a non-zero exit status, never a traceback.

* a [`UsageError`] (bad argument, missing input, a file that is not what it should be): its message, exit 2;
* an `OSError` (permissions, a full or read-only disk, a missing file): the system's message and the path, exit 1;
* Ctrl-C: ``interrupted``, exit 130;
* anything else (a bug, or an error a library raised for bad input): the exception type and message, exit 1.

``ghfeat --debug ...`` or the environment variable ``GHFEAT_DEBUG=1`` lets the exception through, with its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from .errors import UsageError, one_line

DEBUG_ENV = "GHFEAT_DEBUG"
USAGE_EXIT, ERROR_EXIT, INTERRUPT_EXIT = 2, 1, 130


def debug_requested() -> bool:
    """Whether ``$GHFEAT_DEBUG`` asks for tracebacks (any value but empty, ``0``, ``false``, ``no``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def error_message(error: BaseException) -> str:
    """The error's message on one line: an `OSError`'s system message and path, else its text (its type when
    empty)."""
    if isinstance(error, OSError) and not isinstance(error, UsageError) and error.strerror:
        where = f": {error.filename}" if error.filename is not None else ""
        return f"{error.strerror}{where}"
    return one_line(error) or type(error).__name__


def run_command(prog: str, command: Callable[[], object], debug: bool = False) -> int:
    """Run `command` and return its exit status (its return value when that is an int, else 0); errors are
    reported as the module docstring says, prefixed with `prog` (``"ghfeat extract"``, ``"train_encoder.py"``)."""
    debug = debug or debug_requested()
    try:
        status = command()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return INTERRUPT_EXIT
    except UsageError as error:
        if debug:
            raise
        print(f"{prog}: error: {error_message(error)}", file=sys.stderr)
        return USAGE_EXIT
    except OSError as error:
        if debug:
            raise
        print(f"{prog}: error: {error_message(error)}", file=sys.stderr)
        return ERROR_EXIT
    except Exception as error:  # noqa: BLE001 - the one place that turns any error into one line
        if debug:
            raise
        print(f"{prog}: error: {type(error).__name__}: {error_message(error)} (run again with {DEBUG_ENV}=1 for the "
              "traceback)", file=sys.stderr)
        return ERROR_EXIT
    return status if isinstance(status, int) else 0


def run_script(main: Callable[[], object], prog: str | None = None) -> None:
    """The ``if __name__ == "__main__"`` of a script: run `main` through [`run_command`] and exit with its status."""
    raise SystemExit(run_command(prog or os.path.basename(sys.argv[0]), main))


__all__ = ["DEBUG_ENV", "debug_requested", "error_message", "run_command", "run_script"]
