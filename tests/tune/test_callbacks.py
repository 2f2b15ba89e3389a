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


def test_the_default_collapse_line_stops_the_collapse_of_the_curriculum_study():
    """Issue 17's study (dim 64): the whole item tower unfrozen at LR 1e-2 fell to effective rank 8.5,
    11.5 and 13.4 (three seeds) and ended at popularity's level; a tenth of dim (6.4) let every one
    run on. A soft fixed temperature's run at 27.6 is poor but not collapsed, and is left to ASHA."""
    def row(erank):
        return {**_row(1, 5.0, stage=2, erank=erank), "config": {**CFG, "dim": 64}}

    log = StopLog()
    assert CurriculumStopper(log)("collapsed", row(8.5)) and log.reason("collapsed") == "collapsed"
    assert CurriculumStopper(StopLog())("seed 2", row(13.4))
    assert not CurriculumStopper(StopLog())("poor", row(27.6))
    assert not CurriculumStopper(StopLog(), collapse_frac=0.1)("old line", row(8.5))


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
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last save before the kill
    study = optuna.load_study(study_name="s", storage=storage)
    study.tell(study.trials[0].number, 0.5)  # closed before the kill
    resumed = TruthfulOptunaSearch(space=load_space(REPO / "search_spaces" / "quick.yaml").define_by_run,
                                   metric="val/recall@100", mode="max", storage=storage, study_name="s",
                                   log=StopLog(str(tmp_path / "stops.json")))
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_result("t1", {"val/recall@100": 0.6, "epoch": 2})  # the resumed trial reports on
    resumed.on_trial_complete("t1", {"val/recall@100": 0.6, "epoch": 2})
    (t,) = optuna.load_study(study_name="s", storage=storage).trials
    assert t.state.name == "COMPLETE" and t.value == 0.5 and set(t.intermediate_values) == {1}


def _val(epoch, recall):
    return {**_row(epoch, 5.0, stage=2), "val/recall@100": recall}


def test_plateau_stops_after_patience_epochs_without_a_better_recall():
    log = StopLog()
    stop = CurriculumStopper(log, patience=3, grace=4)
    curve = [0.10, 0.20, 0.30, 0.35, 0.34, 0.35, 0.33]  # best 0.35 at epoch 4; ties do not count
    assert [stop("t", _val(e, r)) for e, r in enumerate(curve, start=1)] == [False] * 6 + [True]
    assert log.reasons["t"] == ("plateau", 7)


def test_plateau_waits_for_the_grace_period_and_can_be_turned_off():
    flat = [0.3] * 8
    stop = CurriculumStopper(StopLog(), patience=2, grace=6)
    # flat from epoch 1, but the curriculum is still switching stages before the grace period
    assert [stop("t", _val(e, r)) for e, r in enumerate(flat, start=1)].index(True) + 1 == 6
    off = CurriculumStopper(StopLog(), patience=0, grace=1)
    assert not any(off("t", _val(e, r)) for e, r in enumerate(flat, start=1))


def test_plateau_counts_again_from_a_restarted_trials_epochs():
    stop = CurriculumStopper(StopLog(), patience=2, grace=1)
    assert not stop("t", _val(1, 0.5))
    assert not stop("t", _val(2, 0.4))
    # the trial was restarted from its epoch-1 checkpoint: epoch 2 again is not a third flat epoch
    assert not stop("t", _val(1, 0.45))
    assert not stop("t", _val(2, 0.44))
    assert stop("t", _val(3, 0.44))


def test_plateau_at_the_last_epoch_is_a_completed_trial():
    log = StopLog()
    stop = CurriculumStopper(log, patience=1, grace=1)
    last = {**_val(2, 0.3), "config": {**CFG, "epochs": 2}}
    assert not stop("t", _val(1, 0.3)) and not stop("t", last)
    assert log.reason("t") is None


def test_a_plateau_is_told_to_optuna_as_complete_with_its_best(tmp_path):
    import optuna

    from raytower.tune._callbacks import TruthfulOptunaSearch
    from tests.conftest import REPO

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    log = StopLog(str(tmp_path / "stops.json"))
    searcher = TruthfulOptunaSearch(space=load_space(REPO / "search_spaces" / "quick.yaml").define_by_run,
                                    metric="val/recall@100", mode="max", storage=storage, study_name="s", log=log)
    for tid in ("plateau", "asha"):
        assert searcher.suggest(tid)
        for epoch, r in ((1, 0.5), (2, 0.4)):
            searcher.on_trial_result(tid, {"val/recall@100": r, "epoch": epoch})
        log.record(tid, tid, 2)
        searcher.on_trial_complete(tid, {"val/recall@100": 0.4, "epoch": 2})
    plateau, asha = optuna.load_study(study_name="s", storage=storage).trials
    assert plateau.state.name == "COMPLETE" and plateau.value == 0.5
    assert asha.state.name == "PRUNED"


def test_a_config_without_dim_or_warmup_reads_trainconfigs_defaults():
    """A space that neither fixes nor searches ``dim`` trains at TrainConfig's dim (64): its collapse
    must still stop it, and the chance count must skip TrainConfig's logQ warm-up (2 epochs)."""
    from raytower.train.config import TrainConfig

    bare = {"config": {"temp_start": 1.0}}
    log = StopLog()
    collapsing = {**_row(3, 5.0, stage=2, erank=0.2 * TrainConfig().dim), **bare}
    assert CurriculumStopper(log)("t", collapsing) and log.reason("t") == "collapsed"
    stop = CurriculumStopper(StopLog(), chance_patience=1)
    # epoch 2 is inside the default warm-up: at chance there, but not counted
    assert not stop("w", {**_row(2, 7.5), **bare})
    assert stop("w", {**_row(3, 7.5), **bare})
