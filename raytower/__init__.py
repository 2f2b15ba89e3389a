"""raytower: hyperparameter search for two-tower recommenders trained with a two-stage curriculum.

The pipeline reads top to bottom: ``raytower.data`` (logs in, bundle out) -> ``raytower.model``
(the towers) -> ``raytower.train`` (loss, schedules, curriculum, metrics: plain PyTorch) ->
``raytower.tune`` (Ray Tune + Optuna around it) -> ``raytower.cli``.
"""

__version__ = "0.1.0"

from raytower.errors import RaytowerError  # noqa: E402

__all__ = ["RaytowerError", "__version__"]
