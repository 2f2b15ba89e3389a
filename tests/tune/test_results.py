"""Which trial a search chooses, from trials.parquet's rows alone (no Ray)."""

import pandas as pd
import pytest

from raytower.tune.results import choose


def _rows(*trials):
    return pd.DataFrame([{"trial_id": t, "stop_reason": r, "epochs": e, "full_fidelity": e >= 30 or r == "plateau",
                          "best/val/recall@100": v} for t, r, e, v in trials])


def test_a_plateau_trial_competes_with_the_finishers_and_an_asha_stop_does_not():
    df = _rows(("done", "completed", 30, 0.60), ("flat", "plateau", 17, 0.62), ("cut", "asha", 9, 0.70))
    assert choose(df)["trial_id"] == "flat"
    assert choose(df[df.trial_id != "flat"])["trial_id"] == "done"


def test_with_no_full_fidelity_trial_every_trial_competes():
    assert choose(_rows(("cut", "asha", 9, 0.7), ("cut2", "asha", 9, 0.5)))["trial_id"] == "cut"
    with pytest.raises(Exception, match="none reported"):
        choose(_rows(("x", "asha", 1, None)))


@pytest.mark.parametrize("reason", ["diverged", "chance", "collapsed", "error"])
def test_a_broken_trial_never_wins_whatever_its_metric_reads(reason):
    # A NaN-scored epoch once read as Recall@100 1.0; a broken trial is out of the choice entirely.
    df = _rows(("bad", reason, 30, 1.0), ("ok", "completed", 30, 0.4), ("cut", "asha", 9, 0.5))
    assert choose(df)["trial_id"] == "ok"
    assert choose(_rows(("bad", reason, 9, 1.0), ("cut", "asha", 9, 0.5)))["trial_id"] == "cut"
    with pytest.raises(Exception, match=f"no trial is eligible.*1 {reason}"):
        choose(_rows(("bad", reason, 30, 1.0)))


def test_the_choice_follows_the_selection_metric():
    df = _rows(("wide", "completed", 30, 0.60), ("sharp", "completed", 30, 0.55))
    df["best/val/ndcg@10"] = [0.10, 0.14]  # the sharper model ranks its hits higher
    assert choose(df)["trial_id"] == "wide"
    assert choose(df, "ndcg@10")["trial_id"] == "sharp"


def test_a_trial_tune_restarted_after_a_failure_and_finished_is_not_an_error(tmp_path):
    """error.txt stays in a trial's directory after a failure Tune recovered from."""
    import json

    from raytower.tune import SearchRecord, TrialContext
    from raytower.tune.results import trial_rows

    out = tmp_path / "s"
    SearchRecord(settings={"max_epochs": 2, "num_samples": 2}, data="synthetic", dataset={},
                 shared=TrialContext(bundle="", artifacts={})).write(out)
    for tid, status in (("a", "TERMINATED"), ("b", "ERROR")):
        d = out / "tune" / f"trial_{tid}"
        d.mkdir(parents=True)
        (d / "params.json").write_text("{}")
        (d / "error.txt").write_text("a node was lost")
        (d / "result.json").write_text("".join(json.dumps({"epoch": e, "trial_id": tid, "val/recall@100": 0.3})
                                               + "\n" for e in (1, 2)))
    state = {"trial_data": [[json.dumps({"trial_id": t, "status": s})] for t, s in (("a", "TERMINATED"), ("b", "ERROR"))]}
    (out / "tune" / "experiment_state-2026-12-02_10-00-00.json").write_text(json.dumps(state))
    reasons = dict(zip(*trial_rows(out)[["trial_id", "stop_reason"]].T.values))
    assert reasons == {"a": "completed", "b": "error"}


def test_the_closing_line_leads_with_the_selection_metric():
    from raytower.tune.results import _test_figures

    test = {"recall@100": 0.5, "recall@10": 0.3, "ndcg@10": 0.18, "ndcg@100": 0.2}
    assert _test_figures(test, "ndcg@10") == "NDCG@10 0.1800, R@100 0.5000, R@10 0.3000"
    assert _test_figures(test, "recall@100") == "R@100 0.5000, R@10 0.3000, NDCG@10 0.1800"


def test_export_results_returns_the_document_it_writes(tmp_path):
    """`raytower best -o FILE` writes what export_results returns (once the closing line's helper
    swallowed the return, it wrote null)."""
    from raytower.tune.results import export_results
    from tests.test_bad_input import damaged_trial

    doc = export_results(damaged_trial(tmp_path), log=lambda line: None, evaluate_test=False, write=False)
    assert doc["trial_id"] == "lead" and doc["selection"]["value"] == 0.9
