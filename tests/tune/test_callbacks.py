import json
import math

from raytower.tune._callbacks import CurriculumStopper, StopLog
from raytower.tune.search import default_grace_period
from raytower.tune.space import load_space

CFG = {"logq_warmup_epochs": 2, "temp_start": 1.0, "dim": 32}


def _row(epoch, loss, rnd=7.0, tau=0.5, stage=1, erank=20.0):
    return {"epoch": epoch, "loss": loss, "loss_random": rnd, "tau": tau, "stage": stage,
            "effective_rank": erank, "config": CFG}


def test_nan_loss_is_diverged_at_once(tmp_path):
    log = StopLog(str(tmp_path / "stops.json"))
    stop = CurriculumStopper(log)
    assert stop("t1", _row(1, math.nan))
    assert log.reason("t1") == "diverged"
    assert json.loads((tmp_path / "stops.json").read_text()) == {"t1": ["diverged", 1]}


def test_chance_counts_only_after_warmup_and_first_decay():
    log = StopLog()
    stop = CurriculumStopper(log, chance_patience=2)
    # at chance during the logQ warm-up and at the starting temperature: not counted
    assert not stop("t", _row(1, 7.5, tau=1.0))
    assert not stop("t", _row(2, 7.5, tau=0.9))
    assert not stop("t", _row(3, 7.5, tau=0.8))  # first counted epoch
    assert stop("t", _row(4, 7.2, tau=0.7))  # second
    assert log.reason("t") == "chance"


def test_chance_patience_resets_when_the_loss_dips_below_random():
    stop = CurriculumStopper(StopLog(), chance_patience=2)
    assert not stop("t", _row(3, 7.5))
    assert not stop("t", _row(4, 6.0))
    assert not stop("t", _row(5, 7.5))


def test_collapse_only_counts_in_stage_two():
    log = StopLog()
    stop = CurriculumStopper(log, collapse_frac=0.1)
    assert not stop("t", _row(1, 5.0, stage=1, erank=1.5))
    assert stop("t", _row(2, 5.0, stage=2, erank=1.5))
    assert log.reason("t") == "collapsed"


def test_stop_log_survives_a_restart(tmp_path):
    StopLog(str(tmp_path / "s.json")).record("a", "asha", 4)
    assert StopLog(str(tmp_path / "s.json")).reason("a") == "asha"


def test_default_grace_period_lies_after_the_latest_stage2_switch():
    default = load_space("search_spaces/default.yaml")
    # stage1_max_epochs 6 fixed, logq warm-up at most 4: first rung at 6 + 3
    assert default_grace_period(default, 30) == 9
    assert default_grace_period(default, 5) == 5  # never beyond the trial's length


def test_a_trial_the_study_already_closed_is_not_told_twice(tmp_path):
    # What a driver killed between Tune's last save and a trial's end leaves behind: the study
    # (SQLite, written at once) has the trial COMPLETE, the restored searcher still has it open.
    import optuna

    from raytower.tune._callbacks import StopLog, TruthfulOptunaSearch
    from raytower.tune.space import load_space
    from tests.conftest import REPO

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = TruthfulOptunaSearch(space=load_space(REPO / "search_spaces" / "quick.yaml").define_by_run,
                                    metric="val/recall@100", mode="max", storage=storage, study_name="s",
                                    log=StopLog(str(tmp_path / "stops.json")))
    assert searcher.suggest("t1")
    searcher.on_trial_result("t1", {"val/recall@100": 0.5, "epoch": 1})
    study = optuna.load_study(study_name="s", storage=storage)
    study.tell(study.trials[0].number, 0.5)  # closed before the kill
    searcher.on_trial_result("t1", {"val/recall@100": 0.6, "epoch": 2})  # the resumed trial reports on
    searcher.on_trial_complete("t1", {"val/recall@100": 0.6, "epoch": 2})
    (t,) = optuna.load_study(study_name="s", storage=storage).trials
    assert t.state.name == "COMPLETE" and t.value == 0.5 and set(t.intermediate_values) == {1}
