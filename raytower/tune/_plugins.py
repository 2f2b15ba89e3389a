"""What a caller plugs into a search beside its settings: objects, not values a record can hold.

    plugins = Plugins(callbacks=[MyCallback()], sampler=optuna.samplers.RandomSampler(seed=1),
                      loggers=("mlflow",))
    run_search(settings, plugins=plugins); plugins.result_grid      # Tune's ResultGrid, once fit ends

* ``callbacks``: Ray Tune callbacks, run after raytower's own (RunConfig(callbacks=...)).
* ``sampler``: an Optuna sampler, in place of the one ``searcher`` builds.
* ``pruner``: refused. raytower stops trials with Ray Tune's scheduler (ASHA, or none) and the
  curriculum's stopper; Ray's OptunaSearch builds its study with Optuna's NopPruner and never asks
  a pruner, so one handed in would be silently ignored.
* ``loggers``: "mlflow" and/or "wandb", through Ray's own MLflowLoggerCallback and
  WandbLoggerCallback: every result a trial reports (tau, lambda, stage, loss, the validation
  metrics...) becomes a metric of that trial's run (for MLflow, which refuses '@' in a name,
  val/recall@100 is val/recall_at_100). Where they write is the libraries' own
  settings: MLFLOW_TRACKING_URI (default: mlflow's, sqlite:///mlflow.db in the working directory)
  and MLFLOW_EXPERIMENT_NAME (default: the name of --out); WANDB_PROJECT (default "raytower"),
  WANDB_MODE=offline for runs kept on disk (under OUT/wandb). Each is an extra:
  pip install 'raytower[mlflow]' / 'raytower[wandb]'.

A resumed search keeps what it was started with: Tune restores its callbacks and its searcher
(with the sampler) from its saved state, so any of these given with --resume is refused.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytower.errors import ConfigError, UsageError

LOGGERS = {"mlflow": "mlflow", "wandb": "wandb"}  # --logger name -> the package (and raytower's extra) it needs


@dataclass
class Plugins:
    callbacks: list = field(default_factory=list)
    sampler: Any = None
    pruner: Any = None
    loggers: tuple[str, ...] = ()
    result_grid: Any = field(default=None, repr=False)  # set by the search once Tune's fit has returned

    def check(self, resume: bool, api: bool) -> None:
        """One-line errors worded in the API's keywords (``api``) or the command line's flags."""
        def name(keyword: str, flag: str) -> str:
            return keyword if api else flag

        error = UsageError if api else ConfigError
        if self.pruner is not None:
            raise error(f"{name('pruner', '--pruner')}: raytower stops trials with Ray Tune's scheduler "
                        "(scheduler='asha' or 'none') and the curriculum's stopper; Ray's OptunaSearch never asks an "
                        "Optuna pruner, so one given here would be ignored: leave it None")
        self._check_types(error)
        given = [n for n, v in (("callbacks", self.callbacks), ("sampler", self.sampler is not None),
                                (name("loggers", "--logger"), self.loggers)) if v]
        if resume and given:
            raise error(f"{given[0]} cannot be given with {name('resume=True', '--resume')}: the resumed search "
                        "keeps the callbacks and sampler it was started with (Tune restores them from its state)")
        for logger in self.loggers:
            check_logger(logger, name("loggers", "--logger"), error)

    def _check_types(self, error) -> None:
        if not isinstance(self.callbacks, (list, tuple)):
            raise error(f"callbacks must be a list of ray.tune.Callback objects, got {type(self.callbacks).__name__}")
        if self.callbacks:
            from ray import tune

            wrong = [c for c in self.callbacks if not isinstance(c, tune.Callback)]
            if wrong:
                raise error(f"callbacks must be ray.tune.Callback objects, got {type(wrong[0]).__name__}")
        if self.sampler is not None:
            import optuna

            if not isinstance(self.sampler, optuna.samplers.BaseSampler):
                raise error(f"sampler must be an optuna.samplers.BaseSampler, got {type(self.sampler).__name__}")

    def describe(self) -> dict:
        """What was plugged in, for the search record: class names (objects are not data), so that
        setup.json does not claim TPE for a search a caller's sampler drove."""
        return {"sampler": type(self.sampler).__name__ if self.sampler is not None else None,
                "callbacks": [type(c).__name__ for c in self.callbacks], "loggers": list(self.loggers)}

    def import_loggers(self) -> None:
        """Import the loggers' packages now: each sets up its own Python logger on import, which a
        search then sends to OUT/ray.log with Ray's (raytower.tune._console.ray_logs_to)."""
        import importlib

        for name in self.loggers:
            importlib.import_module(LOGGERS[name])

    def tune_callbacks(self, out: Path) -> list:
        """The loggers' Ray callbacks, then the caller's own."""
        return [_logger_callback(name, out) for name in self.loggers] + list(self.callbacks)


def check_logger(logger: str, what: str, error=ConfigError, find_spec=None) -> None:
    if logger not in LOGGERS:
        raise error(f"{what} {logger!r}: raytower logs to {' or '.join(LOGGERS)}")
    package = LOGGERS[logger]
    if (find_spec or importlib.util.find_spec)(package) is None:
        raise error(f"{what} {logger}: {package} is not installed; pip install 'raytower[{logger}]'")
    if logger == "wandb":
        _check_wandb_setup(what, error)


def _check_wandb_setup(what: str, error) -> None:
    try:
        ready = wandb_can_log()
    except Exception as e:  # noqa: BLE001 - wandb's own settings check (WANDB_MODE=junk: a pydantic error)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise error(f"{what} wandb: wandb refuses its settings ({first}; WANDB_MODE "
                    f"{os.environ.get('WANDB_MODE')!r})") from None
    if not ready:
        raise error(f"{what} wandb: no W&B API key (WANDB_API_KEY, or `wandb login`), and WANDB_MODE is not "
                    "offline: set WANDB_MODE=offline to keep the runs on disk, in OUT/wandb")


def wandb_can_log() -> bool:
    """What Ray's WandbLoggerCallback asks when Tune starts (ray.air.integrations.wandb._set_api_key),
    after Ray and the pretraining, where a missing key was a ValueError traceback: offline, or a key."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_SETUP_API_KEY_HOOK"):
        return True
    import contextlib
    import io

    import wandb

    with contextlib.redirect_stderr(io.StringIO()):  # wandb.api's deprecation notice: Ray's to print, later
        try:
            return bool(wandb.api.api_key)  # `wandb login`'s netrc entry, or wandb's settings
        except AttributeError:
            return False


def parse_loggers(values: list[str] | None) -> tuple[str, ...]:
    """--logger mlflow --logger wandb, or --logger mlflow,wandb: the names, each once, in order."""
    names: list[str] = []
    for value in values or []:
        for name in value.split(","):
            name = name.strip().lower()
            if name and name not in names:
                names.append(name)
    return tuple(names)


def logger_destinations(loggers: tuple[str, ...], out: Path) -> str:
    """Where each logger writes, for the search's header: mlflow's tracking URI (its default is a file
    in the working directory) and experiment, W&B's project and mode."""
    where = []
    for name in loggers:
        if name == "mlflow":
            import mlflow

            where.append(f"mlflow at {mlflow.get_tracking_uri()} (experiment {_mlflow_experiment(out)})")
        else:
            where.append(f"wandb project {_wandb_project()} ({os.environ.get('WANDB_MODE') or 'online'}, files in "
                         f"{out / 'wandb'})")
    return ", ".join(where)


def _logger_callback(name: str, out: Path):
    if name == "mlflow":
        from raytower.tune._mlflow import RaytowerMLflowCallback

        # tracking URI: mlflow's own (MLFLOW_TRACKING_URI, else its default)
        return RaytowerMLflowCallback(experiment_name=_mlflow_experiment(out),
                                    tags={"raytower.out": str(out)})
    from ray.air.integrations.wandb import WandbLoggerCallback

    project = _wandb_project()
    (out / "wandb").mkdir(exist_ok=True)
    # group: the search; dir: W&B's files (offline runs) inside the search, not in each trial's folder
    return WandbLoggerCallback(project=project, group=out.name, dir=str(out / "wandb"))


def _mlflow_experiment(out: Path) -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or out.name


def _wandb_project() -> str:
    return os.environ.get("WANDB_PROJECT") or os.environ.get("WANDB_PROJECT_NAME") or "raytower"
