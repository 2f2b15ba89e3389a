"""A real search: Ray on 127.0.0.1, Optuna in SQLite, ASHA stopping trials, both executors."""

import json
import math

import optuna
import pandas as pd
import pytest

from raytower.cli import main
from raytower.tune.record import SearchRecord
from tests.conftest import SEARCH_SPACE as SPACE
from tests.conftest import SMALL_SYNTHETIC

pytestmark = pytest.mark.ray


def test_every_trial_is_in_trials_parquet_and_asha_stopped_some(trials):
    assert len(trials) == 8
    stopped = trials[trials.stop_reason == "asha"]
    assert len(stopped) >= 1 and (stopped.epochs < 6).all()
    assert (trials[trials.stop_reason == "completed"].epochs == 6).all()
    assert set(trials.stop_reason) <= {"asha", "plateau", "completed", "chance", "collapsed", "diverged"}


def test_best_config_is_the_best_validation_among_finishers(search, trials):
    best = json.loads((search / "best_config.json").read_text())
    finishers = trials[trials.full_fidelity]
    top = finishers.loc[finishers["best/val/recall@100"].idxmax()]
    assert best["trial_id"] == top.trial_id
    assert best["selection"]["value"] == pytest.approx(top["best/val/recall@100"])
    assert best["selection"]["split"] == "validation"
    assert 0 < best["test"]["recall@100"] <= 1 and "recall@10" in best["test"]
    assert best["dataset"]["fingerprint"] and best["versions"]["ray"] and best["versions"]["optuna"]
    assert best["search"]["num_samples"] == 8 and best["params"]["epochs"] == 6
    # retrained for longer, the chosen config stops on a plateau as the search's trials did
    assert best["params"]["patience"] == best["search"]["patience"] > 0


def test_optuna_study_holds_every_trial_with_the_truth(search, trials):
    study = _study(search)
    assert len(study.trials) == 8
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.RUNNING not in states
    n_pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    assert n_pruned == (trials.stop_reason != "completed").sum()  # ASHA's stops are PRUNED, not COMPLETE
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(round(t.value, 6) for t in complete) == sorted(
        round(v, 6) for v in trials[trials.stop_reason == "completed"]["best/val/recall@100"])
    for t in study.trials:  # intermediate values are keyed by epoch
        assert set(t.intermediate_values) == set(range(1, len(t.intermediate_values) + 1))
    # the first trial is the space's start point
    assert study.trials[0].params["fusion"] == "gated" and study.trials[0].params["unfreeze_depth"] == 2


def test_trial_tensorboard_files_are_written_once_with_stable_names(search, trials):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = search / "tune" / trials.trial_dir.iloc[0]
    files = list(d.glob("events.out.tfevents.*"))
    assert len(files) == 1  # ours only: Tune's TBX logger is off
    acc = EventAccumulator(str(d))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"curriculum/tau", "curriculum/lambda", "loss/train", "loss/random_guess", "val/recall_at_100",
            "collapse/effective_rank"} <= tags
    assert len(acc.Scalars("val/recall_at_100")) == trials.epochs.iloc[0]
    # HPARAMS: the trial's knobs as a session, its best validation metric so far as the session's metric
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    params = {k[len("param/"):]: v for k, v in trials.iloc[0].items() if k.startswith("param/") and v == v}
    assert set(params) <= set(start.hparams)
    assert start.hparams["fusion"].string_value == params["fusion"]
    assert acc.Scalars("hparams/best_val_recall_at_100")[-1].value == pytest.approx(trials["best/val/recall@100"].iloc[0])


def test_study_and_trials_parquet_link_to_each_other(search, trials):
    study = _study(search)
    by_number = {t.number: t for t in study.trials}
    for row in trials.itertuples():
        t = by_number[row.optuna_number]  # trials.parquet names each trial's Optuna number
        assert t.user_attrs["tune_trial_id"] == row.trial_id
        assert t.user_attrs["stop_reason"] == row.stop_reason and t.user_attrs["epochs"] == row.epochs


def test_best_prints_and_writes_nothing_in_the_search(search, capsys):
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (search / "best_config.json", search / "trials.parquet")}
    capsys.readouterr()
    assert main(["best", str(search)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["trial_id"] == json.loads((search / "best_config.json").read_text())["trial_id"]
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == files


def test_retraining_best_config_reproduces_its_validation(search, tmp_path):
    best = json.loads((search / "best_config.json").read_text())
    rc = main(["train", "--config", str(search / "best_config.json"), "--data", SMALL_SYNTHETIC,
               "--threads", "1", "--out", str(tmp_path)])
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert abs(m["val"]["recall@100"] - best["selection"]["value"]) <= 0.02


def test_best_reexports_the_same_choice(search, tmp_path, capsys):
    before = json.loads((search / "best_config.json").read_text())
    assert main(["best", str(search), "-o", str(tmp_path / "b.json")]) == 0
    after = json.loads((tmp_path / "b.json").read_text())
    assert after["trial_id"] == before["trial_id"] and after["test"] == before["test"]


def test_a_second_search_in_the_same_dir_needs_resume(search, capsys):
    rc = main(["tune", "--data", SMALL_SYNTHETIC, "--space", SPACE, "--out", str(search)])
    assert rc == 2 and "--resume" in capsys.readouterr().err


# One more search, shared by the tests below: the train executor, warm-started from the session's
# search, selecting by another metric with multivariate TPE. Each test checks one of these.
@pytest.fixture(scope="module")
def train_exec(search, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-exec") / "out"
    rc = main(["tune", "--data", SMALL_SYNTHETIC, "--space", SPACE, "--num-samples", "1", "--max-epochs", "2",
               "--scheduler", "none", "--executor", "train", "--out", str(out), "--warm-start", str(search),
               "--metric", "ndcg@10", "--searcher", "tpe-mv"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def train_exec_study(train_exec):
    return _study(train_exec)


def _study(out):
    """The search's own study in OUT/optuna.db, by the name its setup.json records."""
    return optuna.load_study(study_name=SearchRecord.read(out).study_name, storage=f"sqlite:///{out / 'optuna.db'}")


def _new_trial(study):
    return next(t for t in study.trials if "warm_start_from" not in t.user_attrs)


def _rows(exp, trial_dir):
    return [json.loads(line) for line in (exp / "tune" / trial_dir / "result.json").read_text().splitlines()]


def test_train_executor_runs_its_trial_to_the_end_and_tests_the_choice(train_exec):
    t = pd.read_parquet(train_exec / "trials.parquet")
    assert len(t) == 1 and t.epochs.iloc[0] == 2 and t.stop_reason.iloc[0] == "completed"
    best = json.loads((train_exec / "best_config.json").read_text())
    assert math.isfinite(best["test"]["recall@100"])


def test_train_executor_reports_the_function_executors_curriculum_metrics(train_exec, search, trials):
    t = pd.read_parquet(train_exec / "trials.parquet")
    rows_train = _rows(train_exec, t.trial_dir.iloc[0])
    rows_func = _rows(search, trials.trial_dir.iloc[0])
    curriculum_keys = {k for k in rows_func[0] if ("/" in k and not k.startswith("best/"))
                       or k in ("loss", "loss_random", "tau", "lambda", "stage", "epoch")}
    assert curriculum_keys <= set(rows_train[0])


def test_train_executor_keeps_the_newest_and_the_best_checkpoint(train_exec):
    assert len(list((train_exec / "train").rglob("state.pt"))) == 2  # Train run's checkpoints, newest and best


def test_warm_start_copies_the_earlier_studys_finished_trials(train_exec_study):
    # --warm-start: the new study starts from the earlier study's finished trials
    assert len(train_exec_study.trials) == 8 + 1
    warm = [t for t in train_exec_study.trials if "warm_start_from" in t.user_attrs]  # marked as copies
    assert len(warm) == 8 and {t.user_attrs["warm_start_number"] for t in warm} == set(range(8))


def test_warm_start_points_are_not_run_again(train_exec_study):
    warm = [t for t in train_exec_study.trials if "warm_start_from" in t.user_attrs]
    new = _new_trial(train_exec_study)
    assert all(t.params != new.params for t in warm)  # the start points already ran: not run again


def test_trials_parquet_names_the_new_trials_optuna_number(train_exec, train_exec_study):
    t = pd.read_parquet(train_exec / "trials.parquet")
    assert t.optuna_number.iloc[0] == _new_trial(train_exec_study).number


def test_metric_chooses_each_trials_best_epoch_and_the_best_config(train_exec):
    # --metric: the trial's best epoch, and the choice, are by validation NDCG@10
    best = json.loads((train_exec / "best_config.json").read_text())
    assert best["selection"]["metric"] == "val/ndcg@10" and best["search"]["metric"] == "ndcg@10"
    rows_train = _rows(train_exec, pd.read_parquet(train_exec / "trials.parquet").trial_dir.iloc[0])
    by_ndcg = max(rows_train, key=lambda r: r["val/ndcg@10"])
    assert best["selection"]["epoch"] == by_ndcg["epoch"] and best["selection"]["value"] == by_ndcg["val/ndcg@10"]
    assert rows_train[-1]["best/val/ndcg@10"] == by_ndcg["val/ndcg@10"]


def test_the_grace_period_is_recorded_resolved(train_exec):
    best = json.loads((train_exec / "best_config.json").read_text())
    assert best["search"]["grace_period"] == 2  # resolved, not null: min(--max-epochs 2, stage1 2 + 3)
