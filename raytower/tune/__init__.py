"""The search: a YAML space, Ray Tune + Optuna (TPE) + ASHA around the one training loop.

Importing this package imports neither Ray nor the data stack: the names below, which other
packages use, come in on first use (``raytower.tune.settings`` is standard library only, so the
command line builds its flags from it before it parses).
"""

__all__ = ["ExperimentStore", "SearchRecord", "SearchSettings", "TrialContext", "experiment_uri"]
# Where each name lives: the store and what trials share lie on floors below the search (raytower._storage,
# raytower._trial), so that the trainables read them without importing raytower.tune.
_HOME = {"ExperimentStore": "raytower._storage", "experiment_uri": "raytower._storage",
         "SearchRecord": "raytower.tune.record", "TrialContext": "raytower._trial", "SearchSettings": "raytower.tune.settings"}


_OLD_NAMES = {"Shared": "TrialContext"}  # raytower 0.x's names, kept for one release


def __getattr__(name: str):
    name = _OLD_NAMES.get(name, name)
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'raytower.tune' has no attribute {name!r}")
