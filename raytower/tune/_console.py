"""What a search prints: a header, one line per ended trial, a progress line, the summary.

Ray's own lines (progress tables, "Checkpoint successfully created", warnings) go to ``OUT/ray.log``
instead; ``-v`` shows them as Ray prints them. raytower's own lines go through ``raytower._log``
(the ``raytower`` logger and the caller's ``log``): on the command line's terminal the progress line
is redrawn in place, elsewhere it is said at most every 30 s.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Iterator

from ray import tune

from raytower._log import drawer, say
from raytower._progress import LOG_EVERY_S, TERMINAL_EVERY_S, clock
from raytower.names import BROKEN, DEFAULT_METRIC, StopReason, best_key, label
SHORT = {"temp_start": "T0", "anneal_rate": "anneal", "temp_min": "Tmin", "logq_warmup_epochs": "logq_wu",
         "logq_max": "logq", "logq_ramp_epochs": "logq_ramp", "unfreeze_depth": "depth", "lr_ratio": "lr_ratio",
         "fusion": "fusion", "lr": "lr", "dim": "dim", "item_layers": "layers", "stage1_max_epochs": "s1_max"}


@contextlib.contextmanager
def ray_logs_to(path: Path) -> Iterator[None]:
    """Within the block, Ray's, Tune's and Optuna's Python log lines and warnings go to ``path``,
    not the console; everything is put back after (a notebook keeps its own logging)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    import optuna

    optuna.logging.get_verbosity()  # Optuna adds its console handler on first use: make that happen now
    saved = {}
    # mlflow and wandb (--logger) log through their own loggers: imported before the block, so their
    # handlers are in place to be swapped (raytower.tune._plugins.Plugins.import_loggers)
    for name in ("ray", "py.warnings", "optuna", "mlflow", "wandb"):
        lg = logging.getLogger(name)
        saved[name] = (list(lg.handlers), lg.propagate)
        for h in saved[name][0]:
            lg.removeHandler(h)
        lg.addHandler(handler)
        lg.propagate = False
    # Tune's newer console output prints its experiment box whatever the verbosity; the classic
    # reporter at verbosity 0 prints nothing.
    env = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each shown once, into the file
            logging.captureWarnings(True)
            yield
    finally:
        logging.captureWarnings(False)
        for name, (handlers, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.removeHandler(handler)
            for h in handlers:
                lg.addHandler(h)
            lg.propagate = propagate
        if env is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = env
        handler.close()


def _short(config: dict, knobs: list[str]) -> str:
    parts = []
    for k in knobs:
        if k in config:
            v = config[k]
            parts.append(f"{SHORT.get(k, k)}={v:.3g}" if isinstance(v, float) else f"{SHORT.get(k, k)}={v}")
    return " ".join(parts)


def search_eta(spent: float, total: int, ended: int, running_epochs: list[int], max_epochs: int,
               ended_at_start: int = 0) -> float | None:
    """Seconds left, from the share of the search done in ``spent`` seconds: ended trials whole,
    running ones by the epochs they have reported; trials that had ended before this session
    (``--resume``) are done but took none of its time. Counting ended trials alone made the ETA
    climb with the clock while a long trial ran (9 minutes into a 1M search it read 27 minutes,
    growing 3 s a second). An upper bound when ASHA or the plateau stop end trials early; None
    before this session has made progress."""
    partial = sum(min(e, max_epochs) / max_epochs for e in running_epochs) if max_epochs > 0 else 0.0
    share = min((ended + partial) / total, 1.0) if total else 0.0
    gained = share - ended_at_start / total if total else 0.0
    if gained <= 0:
        return None
    return spent * (1 - share) / gained


class ConsoleReporter(tune.Callback):
    # Tune pickles its callbacks into the experiment state (for --resume): no stream or log is kept
    # here; lines are said through raytower._log, to whatever the running search's caller asked.
    def __init__(self, total: int, knobs: list[str], stops, max_epochs: int, metric: str = DEFAULT_METRIC):
        self.total, self.knobs, self.stops, self.max_epochs, self.metric = total, knobs, stops, max_epochs, metric
        self.ended: dict[str, float] = {}
        self.t0 = self.last = time.monotonic()
        self.ended_at_start = 0

    def setup(self, **info):
        # Called as each session's fit starts. A resumed search unpickles this reporter with the
        # earlier session's clock: the time between the sessions is not the search's pace.
        self.t0 = self.last = time.monotonic()
        self.ended_at_start = len(self.ended)

    def _print(self, line: str) -> None:
        say(line)  # the command line's console clears a progress line it drew first

    def _ended(self, trial, error: bool = False) -> None:
        if trial.trial_id in self.ended:
            return
        result = trial.last_result or {}
        best = result.get(best_key(self.metric), math.nan)
        epochs = int(result.get("epoch", 0))
        reason = StopReason.ERROR if error else (self.stops.reason(trial.trial_id) or
                                                 (StopReason.COMPLETED if epochs >= self.max_epochs else "stopped"))
        self.ended[trial.trial_id] = math.nan if reason in BROKEN else best  # never the best so far
        self._print(f"  trial {trial.trial_id}  {reason:<9} epochs {epochs:>3}  best val {label(self.metric)} "
                    f"{best:.4f}  {_short(trial.config, self.knobs)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, error=True)

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        console = drawer()  # the command line on a terminal: the line is redrawn in place
        if now - self.last < (TERMINAL_EVERY_S if console else LOG_EVERY_S):
            return
        self.last = now
        done = len(self.ended)
        running = sum(t.status == "RUNNING" for t in trials)
        finite = [v for v in self.ended.values() if v == v]
        best = f"{max(finite):.4f}" if finite else "-"
        spent = now - self.t0
        epochs = [int((t.last_result or {}).get("epoch", 0)) for t in trials
                  if t.status == "RUNNING" and t.trial_id not in self.ended]
        left = search_eta(spent, self.total, done, epochs, self.max_epochs, self.ended_at_start)
        eta = f"ETA {clock(left)}" if left is not None else "ETA -"
        line = f"  ended {done} of {self.total}, running {running}, best so far {best}, {clock(spent)} in, {eta}"
        if console:
            console.draw(line)
        else:
            self._print(line)

    def on_experiment_end(self, trials, **info):
        console = drawer()
        if console:
            console.clear()
