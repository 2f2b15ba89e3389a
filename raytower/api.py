"""raytower's Python API: what the CLI does, for a notebook or a script.

    import raytower

    result = raytower.search(data="ml-100k", space="quick", num_samples=8, max_epochs=6, out="runs/nb")
    result.trials                  # one row per trial (pandas DataFrame, as trials.parquet)
    result.best_config             # the chosen configuration's fields (a dict)
    run = raytower.fit(result.best_config, data="ml-100k", out="runs/nb-final")
    run["test"]["recall@100"]      # test figures of the best validation epoch

Errors are ``raytower.RaytowerError``, one line each, as on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any


@dataclass
class SearchResult:
    out: Path
    best: dict[str, Any]  # best_config.json: selection, validation and test figures, the dataset, the search
    settings: Any = field(repr=False, default=None)

    @property
    def best_config(self) -> dict[str, Any]:
        """The chosen trial's config fields: what ``train`` and ``raytower train --config`` take."""
        return dict(self.best["params"])

    @cached_property
    def trials(self):
        import pandas as pd

        return pd.read_parquet(self.out / "trials.parquet")


def load_bundle(data: str = "synthetic", **prepare: Any):
    """A prepared data set (cached by content): ``prepare`` takes PrepareOptions' fields
    (split, cold_frac, k_core, min_rating, seed)."""
    from raytower.data import PrepareOptions
    from raytower.data import load_bundle as _load

    return _load(data, PrepareOptions(**prepare))


def search(data: str = "synthetic", space: str = "default", out: str | Path = "runs/search",
           prepare: dict | None = None, log=print, **settings: Any) -> SearchResult:
    """Run a search (``raytower tune``); ``settings`` are SearchSettings' fields (num_samples,
    max_epochs, metric, searcher, seed, executor, cpus_per_trial, patience, val_users, resume, ...)."""
    from raytower.data import PrepareOptions
    from raytower.tune.search import run_search
    from raytower.tune.settings import SearchSettings

    s = SearchSettings(space=str(space), out=str(out), **settings)
    doc = run_search(s, data=data, prepare_options=PrepareOptions(**(prepare or {})), log=log,
                     given=frozenset(settings) | {"space"} if space != "default" else frozenset(settings))
    return SearchResult(Path(out), doc, s)


def fit(config: Any = None, data: str = "synthetic", out: str | Path | None = None, *, device: str = "cpu",
        threads: int | None = None, force: bool = False, prepare: dict | None = None, log=print,
        metric: str = "recall@100", **overrides: Any) -> dict:
    """Train one configuration (``raytower train``; named fit, as ``raytower.train`` is the package):
    ``config`` is a TrainConfig, a dict of its fields, or a JSON/YAML file (a best_config.json too);
    ``overrides`` replace single fields; ``metric`` chooses the best epoch, the one tested. Returns
    what metrics.json holds."""
    from raytower.data import PrepareOptions
    from raytower.data import load_bundle as _load
    from raytower.train.config import TrainConfig
    from raytower.train.run import train as _train

    if config is None:
        cfg = TrainConfig()
    elif isinstance(config, TrainConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = TrainConfig.from_dict(config)
    else:
        cfg = TrainConfig.load(config)
    if overrides:
        cfg = cfg.replace(**overrides)
    bundle = _load(data, PrepareOptions(**(prepare or {})))
    return _train(cfg, bundle, Path(out or f"runs/train-{bundle.name}"), device=device, threads=threads, log=log,
                  force=force, metric=metric)
