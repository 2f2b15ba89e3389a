"""`raytower report` / `compare` on a real search (the search fixture of tests/tune)."""

import struct

import pytest

from raytower.cli import main

pytestmark = pytest.mark.ray


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_report_writes_real_pictures_and_markdown(search, trials, capsys):
    assert main(["report", str(search)]) == 0
    out = search / "report"
    pictures = ["learning_curves.png", "loss_vs_random.png", "knobs.png", "importance.png"]
    if trials["param/fusion"].isin(["gated", "moe"]).any():
        pictures.append("gates.png")
    for name in pictures:
        w, h = _png_size(out / name)
        assert 300 <= w <= 2000 and 200 <= h <= 1500, (name, w, h)
    md = (out / "report.md").read_text()
    assert "## Leaderboard" in md and "![](learning_curves.png)" in md and "Popularity" in md
    assert "ASHA-stopped ones included" in md  # what the importance is computed from, beside the picture


def test_leaderboard_numbers_match_trials_parquet(search, trials):
    from raytower.report import leaderboard, load_experiment

    df, _, _, _ = load_experiment(search)
    board = leaderboard(df, top=len(df))
    top = trials.sort_values("best/val/recall@100", ascending=False)
    assert list(board["trial"]) == list(top.trial_id)
    assert board["val R@100"].tolist() == pytest.approx(top["best/val/recall@100"].tolist())
    assert board["epochs run"].tolist() == top.epochs.tolist()
    assert board["best epoch"].tolist() == top.best_epoch.tolist()
    assert board["stop"].tolist() == top.stop_reason.tolist()


def test_compare_puts_searches_side_by_side(search, capsys):
    assert main(["compare", str(search), str(search)]) == 0
    text = capsys.readouterr().out
    assert text.count(search.name) == 2 and "trial-epochs" in text


def test_report_on_a_non_search_dir_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path) in err


def test_at_a_glance_says_what_trials_parquet_says(search, trials):
    from raytower.report import at_a_glance, load_experiment

    df, _, best, _ = load_experiment(search)
    text = "\n".join(at_a_glance(df, best, {"val": 0.0}, {"temp_start": 0.7, "fusion": 0.2}))
    assert f"trial `{best['trial_id']}`" in text and f"{best['params']['fusion']} fusion" in text
    done = trials[trials.full_fidelity]
    assert f"{len(done)} of {len(trials)}" in text
    for fusion, g in done.groupby("param/fusion"):  # the medians quoted are the table's
        assert f"{fusion} {g['best/val/recall@100'].median():.3f} (n={len(g)})" in text, text
    stopped = int((trials.stop_reason == "asha").sum())
    assert (f"ASHA stopped {stopped} trial(s)" in text) == (stopped > 0)
    assert f"{len(trials)} of {len(trials)} trials beat it" in text  # every trial beats a zero baseline
    assert "`temp_start` (0.70 of the total), then `fusion` (0.20)" in text
    # a plateau stop is a converged trial: counted with the finishers and named with its epochs
    flat = df.copy()
    i = flat.index[flat.stop_reason == "asha"][0] if (flat.stop_reason == "asha").any() else flat.index[0]
    flat.loc[i, ["stop_reason", "full_fidelity", "epochs", "best_epoch"]] = ["plateau", True, 4, 2]
    text = "\n".join(at_a_glance(flat, best, {"val": 0.0}, {}))
    assert "1 trial(s) stopped on a plateau** (no better validation Recall@100 for the patience window) at epochs 4, " \
           "their best epochs 2" in text
    assert f"or stopped on a plateau (1): {int(flat.full_fidelity.sum())} of {len(flat)}" in text
    # the horizon is the search's, even when every trial stopped short of it on a plateau
    short = flat.assign(epochs=flat.epochs.clip(upper=4), stop_reason="plateau", full_fidelity=True)
    assert f"Trials that ran all {best['search']['max_epochs']} epochs" in "\n".join(at_a_glance(short, best, None, {}))


def test_a_damaged_best_config_is_one_line(search, tmp_path, capsys):
    import json
    import shutil

    exp = tmp_path / "exp"
    shutil.copytree(search, exp)
    best = json.loads((exp / "best_config.json").read_text())
    best["params"]["lr"] = "abc"
    (exp / "best_config.json").write_text(json.dumps(best))
    assert main(["report", str(exp)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "best_config.json" in err and "lr" in err, err


def test_at_a_glance_places_the_choice_against_the_curriculum_study(search):
    from raytower.report import at_a_glance, load_experiment

    df, _, best, _ = load_experiment(search)
    text = "\n".join(at_a_glance(df, best, None, {}, n_users=25_000))
    assert "outside the regions" in text and "Warning" not in text
    # the same choice with the whole item tower at the study's collapsing LR, on few large steps
    bad = {**best, "params": {**best["params"], "lr": 0.01, "unfreeze_depth": 2, "lr_ratio": 1.0,
                              "batch_size": 25_000, "targets": "last"}}
    line = [t for t in at_a_glance(df, bad, None, {}, n_users=25_000) if "curriculum study" in t][0]
    assert line.startswith("**Warning, in the curriculum study's failure region**")
    assert "a slow start: 1 steps an epoch" in line and "item-tower collapse" in line, line


@pytest.mark.parametrize("key", ["study_url", "storage"])  # storage: a record written before the rename
def test_importance_reads_the_study_where_the_search_kept_it(search, tmp_path, key):
    """A study at --study-url (not OUT/optuna.db) still gives the report its importance section."""
    import shutil

    from raytower.report import importance
    from raytower.tune import SearchRecord

    copy = tmp_path / "s"
    shutil.copytree(search, copy)
    (copy / "optuna.db").rename(tmp_path / "elsewhere.db")
    record = SearchRecord.read(copy)
    del record.settings["study_url"]
    record.settings[key] = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    record.write(copy)
    assert importance(copy)[:3] == importance(search)[:3]
    assert importance(copy)[3] >= 2  # COMPLETE trials were read
    (tmp_path / "elsewhere.db").unlink()
    assert "could not be read" in importance(copy)[2]


def test_the_knob_panels_are_the_searched_knobs(search, trials, tmp_path):
    from raytower.report import plot_knobs

    few = trials.drop(columns=[c for c in trials if c.startswith("param/") and c != "param/temp_start"])
    plot_knobs(few, tmp_path / "one.png", None)  # one panel, not nine mostly empty ones
    w, h = _png_size(tmp_path / "one.png")
    plot_knobs(trials, tmp_path / "all.png", None)
    assert _png_size(tmp_path / "all.png")[0] > w and h < _png_size(tmp_path / "all.png")[1]
