"""raytower's Python API: what the CLI does, for a notebook or a script.

    import raytower

    result = raytower.search(data="ml-100k", space="quick", num_samples=8, max_epochs=6, out="runs/nb")
    result.trials                  # one row per trial (pandas DataFrame, as trials.parquet)
    result.best_config             # the chosen configuration's fields (a dict)
    result.study                   # the Optuna study (optuna.Study)
    result.result_grid             # Ray Tune's ResultGrid of this call's fit
    run = raytower.fit(result.best_config, data="ml-100k", out="runs/nb-final")
    run.test["recall@100"]         # test figures of the best validation epoch

Errors are ``raytower.RaytowerError``, one line each, worded in the API's own names; a keyword the
call does not take, or a value of the wrong type, is a ``raytower.UsageError`` (a TypeError too).
"""

from __future__ import annotations

import html
import inspect
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from raytower.errors import RaytowerError, UsageError


def _table_html(title: str, rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in rows)
    return f"<b>{html.escape(title)}</b><table>{cells}</table>"


def _figure(metrics: dict | None, key: str) -> str:
    v = (metrics or {}).get(key)
    return "-" if v is None else f"{v:.4f}"


@dataclass
class SearchResult:
    """A finished (or interrupted and exported) search: its directory and its best_config.json."""

    out: Path
    best: dict[str, Any]  # best_config.json: selection, validation and test figures, the dataset, the search
    settings: Any = field(repr=False, default=None)
    # Ray Tune's ResultGrid (ray.tune.ResultGrid) of the call that ran the search; None for a result
    # made from a directory
    result_grid: Any = field(repr=False, default=None)

    @property
    def best_config(self) -> dict[str, Any]:
        """The chosen trial's config fields: what ``fit`` and ``raytower train --config`` take."""
        return dict(self.best["params"])

    @cached_property
    def trials(self):
        """One row per trial (trials.parquet) as a pandas DataFrame."""
        import pandas as pd

        from raytower.names import TRIALS

        return pd.read_parquet(self.out / TRIALS)

    @cached_property
    def study(self):
        """The search's Optuna study (every trial, its value and its stop reason as user attributes)."""
        import optuna

        from raytower.names import OPTUNA_DB
        from raytower.tune.record import SearchRecord

        from raytower.tune._study import missing_sqlite

        record = SearchRecord.read(self.out)
        url = record.study_url or f"sqlite:///{(self.out / OPTUNA_DB).resolve()}"
        if missing_sqlite(url):  # optuna would create an empty database there
            raise RaytowerError(f"no study database at {url} (a search directory copied without it?)", self.out)
        return optuna.load_study(study_name=record.study_name, storage=url)

    def _summary(self) -> list[tuple[str, Any]]:
        sel = self.best.get("selection", {})
        return [("out", self.out), ("trial", self.best.get("trial_id")),
                (f"validation {sel.get('metric', '')}", _figure(sel, "value")),
                ("test recall@100", _figure(self.best.get("test"), "recall@100")),
                ("test ndcg@10", _figure(self.best.get("test"), "ndcg@10")),
                ("trials", (self.best.get("trials") or {}).get("total"))]

    def __repr__(self) -> str:
        return "SearchResult(" + ", ".join(f"{k}={v}" for k, v in self._summary()) + ")"

    def _repr_html_(self) -> str:
        return _table_html("raytower search", self._summary())


@dataclass
class FitResult:
    """One trained configuration (``fit``, ``raytower train``): what its metrics.json holds."""

    out: Path
    metrics: dict[str, Any] = field(repr=False)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.metrics["config"])

    @property
    def best_epoch(self) -> int:
        return int(self.metrics["best_epoch"])

    @property
    def val(self) -> dict[str, float]:
        return dict(self.metrics["val"])

    @property
    def test(self) -> dict[str, float]:
        """Test figures of the best validation epoch, evaluated once."""
        return dict(self.metrics["test"])

    @cached_property
    def history(self):
        """One row per epoch (pandas DataFrame)."""
        import pandas as pd

        return pd.DataFrame(self.metrics["history"])

    def __getitem__(self, key: str) -> Any:  # run["test"]: the metrics.json document, as before
        return self.metrics[key]

    def _summary(self) -> list[tuple[str, Any]]:
        return [("out", self.out), ("best epoch", self.best_epoch),
                (f"validation {self.metrics.get('selection_metric', '')}",
                 _figure(self.val, self.metrics.get("selection_metric", "recall@100"))),
                ("test recall@100", _figure(self.test, "recall@100")), ("test ndcg@10", _figure(self.test, "ndcg@10"))]

    def __repr__(self) -> str:
        return "FitResult(" + ", ".join(f"{k}={v}" for k, v in self._summary()) + ")"

    def _repr_html_(self) -> str:
        return _table_html("raytower fit", self._summary())


def _check_keywords(func: str, given: dict[str, Any], accepted) -> None:
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise UsageError(f"{func}() got unknown keyword(s) {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(accepted))}")


def _current_names(func: str, given: dict[str, Any]) -> dict[str, Any]:
    """A keyword renamed (storage -> study_url) still works for one release, with a DeprecationWarning."""
    import warnings

    from raytower.tune.settings import RENAMED

    for old in sorted(set(given) & set(RENAMED)):
        if RENAMED[old] in given:
            raise UsageError(f"{func}(): {old} is the old name of {RENAMED[old]}; give only {RENAMED[old]}")
        warnings.warn(f"{func}({old}=...) is deprecated and goes in the next release; use {RENAMED[old]}=...",
                      DeprecationWarning, stacklevel=3)
    return {RENAMED.get(k, k): v for k, v in given.items()}


def _check_type(func: str, name: str, value: Any, kinds: tuple, what: str) -> None:
    """A UsageError unless ``value`` is one of ``kinds`` (a bool is no number)."""
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise UsageError(f"{func}(): {name} must be {what}, got {type(value).__name__}")


def _prepare_options(func: str, prepare: Any):
    """``prepare`` (a dict of PrepareOptions' fields, or None) as PrepareOptions."""
    from dataclasses import fields

    from raytower.data import PrepareOptions

    if prepare is None:
        return PrepareOptions()
    _check_type(func, "prepare", prepare, (dict,), "a dict of PrepareOptions' fields")
    known = [f.name for f in fields(PrepareOptions)]
    unknown = sorted(set(prepare) - set(known), key=str)
    if unknown:
        raise UsageError(f"{func}(): prepare got unknown key(s) {', '.join(map(str, unknown))}; it takes "
                         f"{', '.join(sorted(known))}")
    return PrepareOptions(**prepare)


def _check_common(func: str, data: Any, out: Any, log: Any) -> None:
    _check_type(func, "data", data, (str, Path), "a path or a source name")
    if out is not None:
        _check_type(func, "out", out, (str, Path), "a path")
    if not callable(log):
        raise UsageError(f"{func}(): log must be callable (print, or a function taking one line), got "
                         f"{type(log).__name__}")


def load_bundle(data: str = "synthetic", **prepare: Any):
    """A prepared data set (cached by content): ``prepare`` takes PrepareOptions' fields
    (split, cold_frac, k_core, min_rating, seed)."""
    from dataclasses import fields

    from raytower.data import PrepareOptions
    from raytower.data import load_bundle as _load

    _check_keywords("load_bundle", prepare, [f.name for f in fields(PrepareOptions)])
    if not isinstance(data, (str, Path)):
        raise UsageError(f"load_bundle(): data must be a path or a source name, got {type(data).__name__}")
    return _load(str(data), PrepareOptions(**prepare))


def search(data: str = "synthetic", space: str = "default", out: str | Path = "runs/search",
           prepare: dict | None = None, log=print, *, callbacks: list | None = None, sampler=None, pruner=None,
           loggers: str | list[str] = (), **settings: Any) -> SearchResult:
    """Run a search (``raytower tune``). Every keyword of SearchSettings is accepted, by name (the
    signature below lists them with their defaults).

    Every line (header, one per ended trial, progress, summary) goes to the ``raytower`` logger
    (INFO) and to ``log``; ``log=None``: to the logger only. ``callbacks``: Ray Tune callbacks
    (RunConfig's), after raytower's own. ``sampler``: an Optuna sampler instead of ``searcher``'s.
    ``pruner``: refused (raytower stops trials with Ray Tune's ASHA and its own stopper, and Ray's
    OptunaSearch never asks an Optuna pruner). ``loggers``: "mlflow" and/or "wandb", through Ray's
    MLflowLoggerCallback and WandbLoggerCallback (extras raytower[mlflow], raytower[wandb];
    raytower.tune._plugins says where they write)."""
    from dataclasses import fields

    from raytower.tune.search import run_search
    from raytower.tune.settings import SearchSettings

    settings = _current_names("search", settings)
    _check_keywords("search", settings, [f.name for f in fields(SearchSettings) if f.name not in ("space", "out")])
    _check_common("search", data, out, print if log is None else log)  # None: the raytower logger alone
    _check_type("search", "space", space, (str, Path), "a search space file or a built-in space's name")
    plugins = _plugins(callbacks, sampler, pruner, loggers, resume=settings.get("resume", False))
    options = _prepare_options("search", prepare)
    # What the CLI reads from the environment (RAYTOWER_STORAGE), unless given here
    from_env = {f.name: os.environ[f.metadata["env"]] for f in fields(SearchSettings)
                if f.metadata.get("env") and os.environ.get(f.metadata["env"]) and f.name not in settings}
    s = SearchSettings(space=str(space), out=str(out), **from_env, **settings)
    s.validate(api=True)
    run_search(s, data=str(data), prepare_options=options, log=log,
               given=frozenset(settings) | {"space"} if space != "default" else frozenset(settings), plugins=plugins)
    # best_config.json as written: plain JSON values (the in-memory document holds NumPy scalars,
    # which json.dumps refuses in a notebook)
    import json

    from raytower.names import BEST_CONFIG

    return SearchResult(Path(out), json.loads((Path(out) / BEST_CONFIG).read_text()), s, plugins.result_grid)


def _plugins(callbacks, sampler, pruner, loggers, resume: bool):
    """What search() plugs in beside its settings, checked in the API's names."""
    from raytower.tune._plugins import Plugins, parse_loggers

    if isinstance(loggers, str):
        loggers = [loggers]
    if not isinstance(loggers, (list, tuple)) or not all(isinstance(x, str) for x in loggers):
        raise UsageError(f"search(): loggers must be 'mlflow', 'wandb' or a list of them, got {loggers!r}"[:200])
    plugins = Plugins(callbacks=[] if callbacks is None else callbacks, sampler=sampler, pruner=pruner,
                      loggers=parse_loggers(list(loggers)))
    plugins.check(resume=bool(resume), api=True)
    return plugins


def _search_signature() -> inspect.Signature:
    """search()'s signature with every SearchSettings field spelled out as a keyword, generated
    from the dataclass (one source for names and defaults), so help() and completion show them."""
    from dataclasses import MISSING, fields

    from raytower.tune.settings import SearchSettings

    own = [p for p in inspect.signature(search).parameters.values() if p.kind is not p.VAR_KEYWORD]
    names = {p.name for p in own}
    extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                               default=None if f.default is MISSING else f.default, annotation=f.type)
             for f in fields(SearchSettings) if f.name not in names]
    return inspect.Signature(own + extra, return_annotation="SearchResult")


def fit(config: Any = None, data: str = "synthetic", out: str | Path | None = None, *, device: str = "cpu",
        threads: int | None = None, force: bool = False, prepare: dict | None = None, log=print,
        metric: str = "recall@100", **overrides: Any) -> FitResult:
    """Train one configuration (``raytower train``; named fit, as ``raytower.train`` is the package):
    ``config`` is a TrainConfig, a dict of its fields, or a JSON/YAML file (a best_config.json too);
    ``overrides`` replace single fields; ``metric`` chooses the best epoch, the one tested."""
    from dataclasses import fields

    from raytower.data import load_bundle as _load
    from raytower.names import check_metric
    from raytower.train.config import TrainConfig
    from raytower.train.run import train as _train

    _check_keywords("fit", overrides, [f.name for f in fields(TrainConfig)])
    if config is None:
        cfg = TrainConfig()
    elif isinstance(config, TrainConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = TrainConfig.from_dict(config)
    elif isinstance(config, (str, Path)):
        cfg = TrainConfig.load(config)
    else:
        raise UsageError(f"fit(): config must be a TrainConfig, a dict of its fields or a file, "
                         f"got {type(config).__name__}")
    if overrides:
        cfg = cfg.replace(**overrides)
    check_metric(metric, "metric")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"fit(): threads must be a positive int (or None), got {threads!r}")
    _check_device(device)
    _check_common("fit", data, out, log)
    _check_type("fit", "force", force, (bool,), "True or False")
    bundle = _load(str(data), _prepare_options("fit", prepare))
    run_dir = Path(out or f"runs/train-{bundle.name}")
    metrics = _train(cfg, bundle, run_dir, device=device, threads=threads, log=log, force=force, metric=metric)
    return FitResult(run_dir, metrics)


def _check_device(device: str) -> None:
    """cpu, cuda or cuda:N, and there: refused before a run directory exists."""
    import torch

    from raytower.errors import ConfigError

    if not isinstance(device, str):
        raise UsageError(f"fit(): device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: raytower trains on 'cpu' or 'cuda' (or 'cuda:N')")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: no CUDA device is available here")


search.__signature__ = _search_signature()
