"""The one exception type users see: a one-line message that names the file and the problem.

The CLI prints ``raytower: error: <message>`` and exits with status 2 for any ``RaytowerError``;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class RaytowerError(Exception):
    """Bad input from the user: a file, a flag, a config. Always one line."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        message = " ".join(str(message).split())  # one line, always
        self.path = None if path is None else os.fspath(path)
        shown = self.path if self.path is None or self.path.isprintable() else repr(self.path)  # a newline in a name
        super().__init__(f"{shown}: {message}" if self.path else message)


class DataError(RaytowerError):
    """An input data file or directory is missing, malformed or empty."""


class ConfigError(RaytowerError):
    """A training config, search space or result file is malformed or out of range."""


class UsageError(RaytowerError, TypeError):
    """The Python API called with a keyword it does not take, or a value of the wrong type. A
    TypeError too, so code that catches either still works."""
