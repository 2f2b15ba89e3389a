"""raytower's version, read from the installed package's metadata: pyproject.toml is the one place
it is written, and every record (run.json, an output's marker, ``raytower.__version__``) reads it here."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("raytower")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "unknown"
