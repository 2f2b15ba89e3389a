"""The importance picture: every trial of the search at a common rung, or nothing, said why (issue 28 part 7)."""

import shutil

import pytest

from raytower.cli import main
from raytower.report._facts import common_rung


def test_the_common_rung_is_the_highest_epoch_enough_trials_reached():
    assert common_rung([{1, 2, 3}, {1, 2}, {1, 2}, {1}], 3) == 2
    assert common_rung([{1, 2, 3, 4}, {1, 2, 3, 4}, {1}], 2) == 4
    assert common_rung([{1}, {1, 2}], 3) is None
    assert common_rung([], 1) is None


@pytest.mark.ray
def test_importance_counts_every_trial_at_the_rung_asha_stopped_ones_too(search):
    import optuna

    from raytower.report import importance
    from raytower.report._facts import MIN_TRIALS_AT_RUNG
    from raytower.tune.results import own_trials, read_study

    imp = importance(search)
    ended = [t for t in own_trials(read_study(search))
             if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    reached = [t for t in ended if imp.rung in t.intermediate_values]
    assert imp.main and imp.n_trials == len(reached) >= MIN_TRIALS_AT_RUNG
    assert sum(imp.rung + 1 in t.intermediate_values for t in ended) < MIN_TRIALS_AT_RUNG  # the highest such epoch
    # The search's ASHA stopped trials (PRUNED): they count now, where COMPLETE trials alone were fewer
    assert imp.n_trials > sum(t.state == optuna.trial.TrialState.COMPLETE for t in reached)
    assert f"trials at epoch {imp.rung}" in imp.note


@pytest.mark.ray
def test_with_too_few_trials_at_any_epoch_nothing_is_drawn_and_the_report_says_why(search, tmp_path, monkeypatch):
    from raytower.report import _facts

    copy = tmp_path / "s"
    shutil.copytree(search, copy)
    (copy / "report").mkdir(exist_ok=True)
    (copy / "report" / "importance.png").write_bytes(b"an earlier report's picture")
    monkeypatch.setattr(_facts, "MIN_TRIALS_AT_RUNG", 100)
    assert main(["report", str(copy)]) == 0
    assert not (copy / "report" / "importance.png").exists()
    md = (copy / "report" / "report.md").read_text()
    assert "Not drawn: no epoch was reached by 100 or more trials" in md and "![](importance.png)" not in md
