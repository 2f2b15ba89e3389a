"""What raytower adds to Ray Tune: stop reasons, truthful pruning, per-trial bookkeeping.

* ``CurriculumStopper`` ends a trial that diverged (NaN/inf loss), sits at chance (loss at or above
  its random-guess loss for ``chance_patience`` epochs once the logQ warm-up is over and the
  temperature has decayed once) or whose item vectors collapsed (effective rank under
  ``collapse_frac`` x dim after Stage 2 starts); and one whose validation metric has not
  improved for ``patience`` epochs once ASHA's grace period is over (``plateau``: it has converged,
  so its best is a full-fidelity figure, unlike an ASHA stop's).
* ``RecordingASHA`` is Ray's ASHA that also writes down which trials it stopped, and when.
* ``TruthfulOptunaSearch`` tells Optuna what happened: a trial that ASHA or the stopper ended is
  PRUNED (its intermediate values are in the study, keyed by epoch), a diverged one FAILED, and a
  finished one COMPLETE with its best validation value. Ray's OptunaSearch would record an
  early-stopped trial as COMPLETE with its low-fidelity value, which misleads TPE.

All three share one ``StopLog`` in the driver process. ``DriverMemory`` writes down the search
driver's resident memory each time a trial ends (Ray has an open report of it growing with the
number of trials), into ``driver_memory.json``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from raytower._io import write_json
from raytower.names import EPOCHS, STOP_REASON, TUNE_TRIAL_ID, StopReason, val_key
from raytower.train.config import TrainConfig
from raytower.tune import _adapter as private
from raytower.tune.settings import SearchSettings

TIME_ATTR = "epoch"  # training_iteration restarts at 1 when Tune restarts a trial; epoch does not


@dataclass
class StopLog:
    """trial_id -> (reason, epoch) for every trial ended before its last epoch.

    Kept in ``stops.json`` beside the experiment too, so a resumed search and ``raytower best``
    on an interrupted directory know why each trial ended.
    """

    path: str | None = None
    reasons: dict[str, tuple[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._load()

    def _load(self) -> None:
        # Tuner.restore unpickles the scheduler's, stopper's and searcher's copies as they were
        # when first saved: the file, not memory, is what every copy agrees on.
        if self.path and os.path.exists(self.path):
            with open(self.path) as f:
                self.reasons = {**{k: (v[0], int(v[1])) for k, v in json.load(f).items()}, **self.reasons}

    def record(self, trial_id: str, reason: str, epoch: int) -> None:
        self._load()
        if trial_id in self.reasons:
            return
        self.reasons[trial_id] = (reason, int(epoch))
        if self.path:
            write_json(self.path, self.reasons)

    def reason(self, trial_id: str) -> str | None:
        if trial_id not in self.reasons:
            self._load()
        r = self.reasons.get(trial_id)
        return r[0] if r else None


class DriverMemory(tune.Callback):
    def __init__(self, path: str):
        self.path = path

    def _ended(self, trial) -> None:
        import psutil

        # The file is the only state: a copy unpickled by --resume goes on counting from it.
        rows = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                rows = json.load(f)
        rows.append({"trials_ended": len(rows) + 1, "trial_id": trial.trial_id,
                     "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1)})
        write_json(self.path, rows)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)


class CurriculumStopper(tune.Stopper):
    def __init__(self, log: StopLog, chance_patience: int = SearchSettings.chance_patience,
                 collapse_frac: float = SearchSettings.collapse_frac,
                 patience: int = 0, grace: int = 0, metric: str = val_key()):
        self.log = log
        self.metric = metric  # the validation key the plateau stop watches
        self.chance_patience = chance_patience
        self.collapse_frac = collapse_frac
        self.patience = patience  # 0: off
        self.grace = grace
        self._at_chance: dict[str, int] = {}
        self._best: dict[str, tuple[float, int]] = {}  # trial -> (best validation value, its epoch)

    def __call__(self, trial_id: str, result: dict) -> bool:
        epoch = int(result.get(TIME_ATTR, 0))
        if result.get("diverged") or not math.isfinite(result.get("loss", 0.0)):
            self.log.record(trial_id, StopReason.DIVERGED, epoch)
            return True
        # The trial's own config, its defaults TrainConfig's: a knob the space neither fixes nor
        # searches is the default the trial trains with, never a second default spelled here.
        cfg = TrainConfig.from_dict(result.get("config", {}))
        warm = epoch > cfg.logq_warmup_epochs and result.get("tau", 0) < cfg.temp_start
        if warm and result["loss"] >= result["loss_random"]:
            self._at_chance[trial_id] = self._at_chance.get(trial_id, 0) + 1
        else:
            self._at_chance[trial_id] = 0
        if self._at_chance[trial_id] >= self.chance_patience:
            self.log.record(trial_id, StopReason.CHANCE, epoch)
            return True
        dim = result.get("vector_dim", cfg.dim)  # the towers' own width, which a team's towers set themselves
        if result.get("stage") == 2 and result.get("effective_rank", math.inf) < self.collapse_frac * dim:
            self.log.record(trial_id, StopReason.COLLAPSED, epoch)
            return True
        if epoch >= cfg.epochs:
            return False  # its last epoch: it ends as completed, not as a plateau
        return self._plateaued(trial_id, epoch, result.get(self.metric))

    def _plateaued(self, trial_id: str, epoch: int, value) -> bool:
        if value is None or not math.isfinite(value):
            return False
        best = self._best.get(trial_id)
        # A trial restarted from a checkpoint reports its epochs again: only a later epoch counts.
        if best is None or value > best[0] or (epoch < best[1]):
            self._best[trial_id] = best = (value, epoch)
        # Counted only past the grace period, where the Stage 2 switch and the logQ warm-up are
        # over: before that a flat curve is the curriculum at work, not convergence.
        if self.patience and epoch >= self.grace and epoch - best[1] >= self.patience:
            self.log.record(trial_id, StopReason.PLATEAU, epoch)
            return True
        return False

    def stop_all(self) -> bool:
        return False


class RecordingASHA(ASHAScheduler):
    def __init__(self, log: StopLog, **kwargs):
        # metric and mode come from TuneConfig (set_search_properties), like every scheduler's
        super().__init__(time_attr=TIME_ATTR, **kwargs)
        self.log = log

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get(TIME_ATTR, 0) < private.asha_max_t(self):
            self.log.record(trial.trial_id, StopReason.ASHA, result.get(TIME_ATTR, 0))
        return decision


class TruthfulOptunaSearch(OptunaSearch):
    def __init__(self, *args, log: StopLog, truthful: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = log
        self.truthful = truthful
        self._best: dict[str, float] = {}
        self._reported: dict[str, set[int]] = {}

    def restore(self, checkpoint_path: str) -> None:
        # The study may hold trials asked for after Tune's last save (the driver died in between):
        # RUNNING, with no Tune trial behind them. The next suggestions take them over, params and
        # all, so the resumed study ends with num_samples trials and none left dangling.
        super().restore(checkpoint_path)
        from optuna.trial import TrialState

        study, trials = private.study(self), private.optuna_trials(self)
        mine = {private.optuna_trial_id(t) for t in trials.values()}
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        self._orphans = [private.optuna_trial_id(t) for t in running if private.optuna_trial_id(t) not in mine]
        # The study (SQLite) is written at once, Tune's searcher state only at its periodic saves:
        # a trial that ended between the last save and a killed driver is still open in this
        # restored state but closed in the study. Telling the study again is an error that would
        # end the search, so such trials count as told.
        closed = {private.optuna_trial_id(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        private.told(self).update(tid for tid, t in trials.items() if private.optuna_trial_id(t) in closed)

    def suggest(self, trial_id: str):
        orphans = getattr(self, "_orphans", None)
        trials = private.optuna_trials(self)
        if orphans and trial_id not in trials:
            trials[trial_id] = private.optuna_trial(private.study(self), orphans.pop(0))
        suggestion = super().suggest(trial_id)
        if trial_id in trials:  # the study's trial names its Tune trial: trials.parquet links back by it
            trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return suggestion

    def _open(self, trial_id: str) -> bool:
        """Whether this searcher asked Optuna for the trial and has not told its end yet."""
        return trial_id in private.optuna_trials(self) and trial_id not in private.told(self)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._open(trial_id):
            return
        value = result.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self._best[trial_id] = max(value, self._best.get(trial_id, -math.inf))
        # Keyed by epoch, not training_iteration, so a resumed trial does not rewrite step 1.
        step = int(result.get(TIME_ATTR, result.get("training_iteration", 0)))
        reported = self._reported.setdefault(trial_id, set())
        if step not in reported:
            reported.add(step)
            private.optuna_trials(self)[trial_id].report(value, step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not self._open(trial_id):
            return
        from optuna.trial import TrialState

        if result:  # Tune hands a trial's last result to on_trial_complete only
            self.on_trial_result(trial_id, result)
        reason = self.log.reason(trial_id)
        ot_trial, study = private.optuna_trials(self)[trial_id], private.study(self)
        epochs = int((result or {}).get(TIME_ATTR, 0))
        ot_trial.set_user_attr(STOP_REASON, StopReason.ERROR if error else reason or StopReason.COMPLETED)
        ot_trial.set_user_attr(EPOCHS, epochs)
        if error or reason == StopReason.DIVERGED:
            study.tell(ot_trial, state=TrialState.FAIL)
        elif reason in (StopReason.ASHA, StopReason.CHANCE, StopReason.COLLAPSED):
            if self.truthful:
                study.tell(ot_trial, state=TrialState.PRUNED)
            else:  # what Ray's OptunaSearch does: COMPLETE with the last, low-fidelity value
                study.tell(ot_trial, (result or {}).get(self.metric), state=TrialState.COMPLETE)
        elif trial_id in self._best:
            study.tell(ot_trial, self._best[trial_id], state=TrialState.COMPLETE)
        else:
            study.tell(ot_trial, state=TrialState.FAIL)
        private.told(self).add(trial_id)
