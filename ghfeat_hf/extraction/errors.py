"""The one exception type of the extraction package."""


class UsageError(ValueError):
    """A user-facing error (bad argument, missing input, inconsistent resume); the CLI prints it without a trace."""


__all__ = ["UsageError"]
