"""The exception types of the extraction package."""


class UsageError(ValueError):
    """A user-facing error (bad argument, missing input, inconsistent resume); the CLI prints it without a trace."""


class DestinationError(OSError):
    """The output could not be written (a read-only or full file system, a folder that vanished, ...): an `OSError`
    whose message names the output and where the rows committed so far are kept (the system's error is its
    `__cause__`)."""


__all__ = ["DestinationError", "UsageError"]
