"""What a search prints: raytower's lines only; Ray's go to OUT/ray.log (a 6-trial search once
printed 485 lines, 26 of them "Checkpoint successfully created")."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMALL_SYNTHETIC

pytestmark = pytest.mark.ray
RAYTOWER = str(Path(sys.executable).with_name("raytower"))


def test_a_search_in_a_log_prints_a_header_a_line_per_trial_and_the_summary(tmp_path):
    trials = 3
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAYTOWER_CACHE"] = str(tmp_path / "cache")  # the pretraining is made, not found
    run = subprocess.run([RAYTOWER, "tune", "--data", SMALL_SYNTHETIC, "--space", "quick", "--num-samples", str(trials),
                          "--max-epochs", "2", "--grace-period", "1", "--executor", "function", "--out",
                          str(tmp_path / "out")], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = (run.stdout + run.stderr).splitlines()
    assert len(lines) <= 3 * trials + 20, "\n".join(lines)
    text = "\n".join(lines)
    assert "Checkpoint successfully created" not in text and "Trial status" not in text and "╭" not in text
    assert text.count("  trial ") == trials  # one line per ended trial, with its stop reason in raytower's words
    assert all(any(r in line for r in ("completed", "asha", "plateau")) for line in lines if line.startswith("  trial "))
    assert "search: 3 trials of up to 2 epochs" in text and "best trial" in text
    # the header comes first, then what the pretraining will take (issue 28 part 2), then its progress
    header = next(i for i, line in enumerate(lines) if line.startswith("search: "))
    assert lines[header + 1].startswith("pretraining LightGCN + item tower on cpu") and "about" in lines[header + 1]
    assert any(line.startswith("  lightgcn") for line in lines[header + 2:])
    assert (tmp_path / "out" / "ray.log").is_file()


def test_the_eta_counts_the_epochs_of_running_trials_so_it_does_not_climb_with_the_clock():
    from raytower.tune._console import search_eta

    assert search_eta(60.0, 4, 0, [0], 3) is None  # nothing reported yet: no guess
    # One of 4 trials ended; the running one is at epoch 1 of 3 after 9 minutes: a third done.
    assert search_eta(540.0, 4, 1, [1], 3) == pytest.approx(540.0 * 2)
    # The same search later, one more epoch reported: the ETA falls (counting ended trials alone
    # gave 540 x 3 and then 600 x 3, rising while the trial ran).
    assert search_eta(600.0, 4, 1, [2], 3) < search_eta(540.0, 4, 1, [1], 3)
    assert search_eta(100.0, 2, 2, [], 3) == 0.0
    # Resumed with 2 of 4 trials ended in an earlier session: only this session's progress sets
    # the pace. 10 minutes in, a third trial ended: a quarter of the search in 600 s, a quarter left.
    assert search_eta(600.0, 4, 3, [], 3, ended_at_start=2) == pytest.approx(600.0)
    assert search_eta(5.0, 4, 2, [0], 3, ended_at_start=2) is None


def test_the_reporter_restarts_its_clock_when_a_resumed_search_starts():
    from raytower.tune._console import ConsoleReporter

    reporter = ConsoleReporter(4, [], stops=None, max_epochs=3)
    reporter.ended = {"a": 0.5, "b": 0.6}  # as unpickled from the earlier session
    reporter.t0 = -1e6
    reporter.setup(total_num_samples=4)
    assert reporter.ended_at_start == 2 and reporter.t0 > 0
