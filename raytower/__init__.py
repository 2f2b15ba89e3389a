"""raytower: hyperparameter search for two-tower recommenders trained with a two-stage curriculum.

    import raytower
    result = raytower.search(data="ml-100k", space="quick", num_samples=8, max_epochs=6, out="runs/nb")
    raytower.fit(result.best_config, data="ml-100k", out="runs/nb-final")

The public surface is these names (``raytower.api``); ``import raytower`` alone imports neither
torch nor Ray. The pipeline reads top to bottom: ``raytower.data`` (logs in, bundle out) ->
``raytower.model`` (the towers) -> ``raytower.train`` (loss, schedules, curriculum, metrics: plain
PyTorch) -> ``raytower.tune`` (Ray Tune + Optuna around it) -> ``raytower.cli``.
"""

from raytower.errors import RaytowerError, UsageError

__all__ = ["FitResult", "RaytowerError", "SearchResult", "TrainConfig", "UsageError", "__version__", "fit",
           "load_bundle", "search", "towers"]


def __getattr__(name: str):
    # PEP 562: the API's names are imported on first use, so `import raytower` stays light.
    if name == "__version__":  # from the package's metadata (raytower._version)
        from raytower._version import version

        return version()
    if name in ("FitResult", "SearchResult", "fit", "load_bundle", "search"):
        from raytower import api

        return getattr(api, name)
    if name == "TrainConfig":
        from raytower.train.config import TrainConfig

        return TrainConfig
    if name == "towers":  # the tower protocol: @raytower.towers.builder() for a team's own towers
        from raytower.model import towers

        return towers
    raise AttributeError(f"module 'raytower' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazily imported names too, so completion in a notebook shows them.
    return sorted(set(globals()) | set(__all__))
