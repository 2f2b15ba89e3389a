"""The search: a YAML space, Ray Tune + Optuna (TPE) + ASHA around the one training loop.

Importing this package does not import Ray: the names below are what other packages use.
"""

from raytower.tune._storage import ExperimentStore, experiment_uri
from raytower.tune.record import SearchRecord, Shared
from raytower.tune.settings import SearchSettings

__all__ = ["ExperimentStore", "SearchRecord", "SearchSettings", "Shared", "experiment_uri"]
