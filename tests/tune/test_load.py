"""Load: 50 short trials, 2 at a time. Every trial is accounted for, and the search driver's memory
does not grow with the number of trials (Ray has an open report of it doing so).

Second tier: about three minutes on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from raytower.tune.record import SearchRecord
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.ray]
TRIALS = 50


def test_fifty_trials_all_accounted_for_and_driver_memory_flat(tmp_path):
    out = tmp_path / "load"
    cmd = [str(Path(sys.executable).with_name("raytower")), "tune", "--data", "synthetic:n_users=300,n_items=150,seed=5",
           "--space", str(REPO / "search_spaces" / "quick.yaml"), "--num-samples", str(TRIALS), "--max-epochs", "1",
           "--scheduler", "none", "--executor", "function", "--max-concurrent", "2", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1500,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    df = pd.read_parquet(out / "trials.parquet")
    assert len(df) == TRIALS and df["trial_id"].is_unique and (df["stop_reason"] == "completed").all()
    name = SearchRecord.read(out).study_name  # the search's own study, named after it
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}").trials
    assert len(study) == TRIALS and {t.state.name for t in study} == {"COMPLETE"}

    memory = json.loads((out / "driver_memory.json").read_text())
    assert [m["trials_ended"] for m in memory] == list(range(1, TRIALS + 1))
    assert {m["trial_id"] for m in memory} == set(df["trial_id"])
    at10, at50 = memory[9]["rss_mb"], memory[TRIALS - 1]["rss_mb"]
    print(f"driver RSS: {at10} MiB at trial 10, {at50} MiB at trial {TRIALS} ({at50 / at10 - 1:+.1%})")
    assert at50 < 1.2 * at10
