"""The search: a YAML space, Ray Tune + Optuna (TPE) + ASHA around the one training loop.

Importing this package imports neither Ray nor the data stack: the names below, which other
packages use, come in on first use (``raytower.tune.settings`` is standard library only, so the
command line builds its flags from it before it parses).
"""

__all__ = ["ExperimentStore", "SearchRecord", "SearchSettings", "Shared", "experiment_uri"]
_HOME = {"ExperimentStore": "_storage", "experiment_uri": "_storage", "SearchRecord": "record", "Shared": "record",
         "SearchSettings": "settings"}


def __getattr__(name: str):
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f"raytower.tune.{_HOME[name]}"), name)
    raise AttributeError(f"module 'raytower.tune' has no attribute {name!r}")
