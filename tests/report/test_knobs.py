"""A report shows the knobs the search searched: its recorded space's, in that order, not a fixed
list, and not the fixed values a trial's params also carry. Plain pandas and matplotlib: no Ray."""

import struct

import numpy as np
import pandas as pd
import pytest

from raytower._trial import TrialContext
from raytower.report import at_a_glance, leaderboard, plot_knobs, searched_knobs
from raytower.tune.record import SearchRecord

SPACE = """
fixed: {dim: 16, fusion: gated}
search:
  temp_start: {distribution: log_uniform, low: 0.05, high: 1.0}
  batch_size: {distribution: categorical, choices: [64, 128]}
  dropout: {distribution: uniform, low: 0.0, high: 0.3}
  unfreeze_depth: {distribution: int, low: 0, high: 2}
  lr_ratio: {distribution: log_uniform, low: 0.001, high: 1.0, when: "unfreeze_depth > 0"}
"""
SEARCHED = ["temp_start", "batch_size", "dropout", "unfreeze_depth", "lr_ratio"]


@pytest.fixture
def trials() -> pd.DataFrame:
    """Four finished trials as trial_rows gives them: the params hold the fixed dim and fusion too,
    and lr_ratio only where unfreeze_depth > 0 sampled it."""
    return pd.DataFrame({
        "trial_id": ["a", "b", "c", "d"],
        "param/dim": [16] * 4, "param/fusion": ["gated"] * 4,
        "param/temp_start": [0.06, 0.2, 0.5, 0.9], "param/batch_size": [64, 128, 64, 128],
        "param/dropout": [0.0, 0.1, 0.2, 0.25], "param/unfreeze_depth": [0, 1, 2, 0],
        "param/lr_ratio": [np.nan, 0.01, 0.3, np.nan],
        "best/val/recall@10": [0.2, 0.3, 0.25, 0.1], "best/val/recall@100": [0.5, 0.6, 0.55, 0.4],
        "best/val/ndcg@10": [0.1, 0.15, 0.12, 0.05], "best_epoch": [3, 3, 2, 3], "epochs": [3] * 4,
        "status": ["COMPLETE"] * 4, "stop_reason": ["completed"] * 4, "full_fidelity": [True] * 4,
    })


def _record(space: str) -> SearchRecord:
    return SearchRecord(settings={"space": space}, data="synthetic", shared=TrialContext(bundle="", artifacts={}), dataset={})


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_the_knobs_are_the_recorded_spaces_in_its_order(trials, tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    knobs = searched_knobs(trials, _record(str(tmp_path / "space.yaml")))
    assert [k.name for k in knobs] == SEARCHED  # not dim or fusion, which the space fixed
    assert [k.distribution for k in knobs] == ["log_uniform", "categorical", "uniform", "int", "log_uniform"]
    board = leaderboard(trials, metric="recall@100", knobs=knobs)
    assert list(board.columns) == ["trial", *SEARCHED, "val R@10", "val R@100", "val NDCG@10", "best epoch",
                                   "epochs run", "status", "stop"]
    assert list(board.trial) == ["b", "c", "a", "d"] and list(board.dropout) == [0.1, 0.2, 0.0, 0.25]


def test_a_space_out_of_reach_gives_the_params_that_vary(trials, tmp_path):
    knobs = searched_knobs(trials, _record(str(tmp_path / "moved.yaml")))  # the search's space file is gone
    assert [k.name for k in knobs] == SEARCHED
    # read from the values: more than a decade apart and positive is a log axis, whole numbers are int
    assert [k.distribution for k in knobs] == ["log_uniform", "int", "uniform", "int", "log_uniform"]
    assert list(leaderboard(trials).columns)[:6] == ["trial", *SEARCHED]


def test_a_fixed_fusion_is_not_summarised_as_if_searched(trials, tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    knobs = searched_knobs(trials, _record(str(tmp_path / "space.yaml")))
    text = "\n".join(at_a_glance(trials, None, None, {}, knobs=knobs))
    assert "by fusion" not in text
    assert "by Stage 2 unfreezing: kept frozen 0.450 (n=2), unfrozen 0.575 (n=2)" in text


def test_the_knob_picture_has_a_panel_per_searched_knob(trials, tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    plot_knobs(trials[["trial_id", "param/dropout", "best/val/recall@100", "stop_reason"]], tmp_path / "one.png", None)
    w, h = _png_size(tmp_path / "one.png")  # dropout alone: a knob no fixed list named
    plot_knobs(trials, tmp_path / "five.png", None, knobs=searched_knobs(trials, _record(str(tmp_path / "space.yaml"))))
    wide, high = _png_size(tmp_path / "five.png")
    assert wide > 2 * w and high > 1.5 * h  # 3 panels wide, 2 high
