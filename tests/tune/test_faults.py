"""Faults injected for real: a killed driver, Ctrl-C, a killed Train worker, a diverging trial.

Second tier: each test runs its own search (a `raytower tune` process or an in-process one).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest

from raytower.cli import main
from raytower.tune.record import SearchRecord
from tests.conftest import REPO, SMALL_SYNTHETIC, reported_rows

pytestmark = [pytest.mark.slow, pytest.mark.ray]
RAYTOWER = str(Path(sys.executable).with_name("raytower"))
QUICK = str(REPO / "search_spaces" / "quick.yaml")
FINAL = ("COMPLETE", "PRUNED", "FAIL")


def _tune_args(out: Path, samples: int, epochs: int, *extra: str) -> list[str]:
    return ["tune", "--data", SMALL_SYNTHETIC, "--space", QUICK, "--num-samples", str(samples),
            "--max-epochs", str(epochs), "--executor", "function", "--seed", "3", "--out", str(out), *extra]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([RAYTOWER, *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _reported_epochs(out: Path) -> dict[str, list[int]]:
    """Every epoch each trial reported to Tune, duplicates included, in order."""
    return {t: [int(r["epoch"]) for r in rows if "epoch" in r] for t, rows in reported_rows(out).items()}


def _wait_until(condition, timeout: float, proc: subprocess.Popen | None = None, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the search ended (rc {proc.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _mid_search(out: Path, epochs: int):
    """One trial has ended and another is past its second epoch: the moment to strike."""
    def check():
        seen = _reported_epochs(out)
        done = [t for t, e in seen.items() if e and e[-1] == epochs]
        running = [t for t, e in seen.items() if e and 2 <= e[-1] < epochs]
        return (done, running) if done and running else None
    return check


def _study(out: Path) -> optuna.Study:
    name = SearchRecord.read(out).study_name  # the search's own study, named after it
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")


def _assert_whole(out: Path, samples: int, epochs: int) -> pd.DataFrame:
    """Every trial once in trials.parquet and in the study, each with a final state, and the best
    config the best finisher."""
    df = pd.read_parquet(out / "trials.parquet")
    assert len(df) == samples and df["trial_id"].is_unique
    assert "unfinished" not in set(df["stop_reason"])
    study = _study(out).trials
    assert len(study) == samples
    assert {t.state.name for t in study} <= set(FINAL)
    best = json.loads((out / "best_config.json").read_text())
    finishers = df[df["reached_final_rung"]]
    assert best["trial_id"] == finishers.loc[finishers["best/val/recall@100"].idxmax(), "trial_id"]
    assert best["finished"] is True and best["test"]["recall@100"] > 0
    for trial_id, seen in _reported_epochs(out).items():
        assert sorted(set(seen)) == list(range(1, max(seen) + 1)), f"trial {trial_id} lost epochs: {seen}"
    return df


def test_killed_driver_resumes_and_loses_nothing(tmp_path, capsys):
    out, samples, epochs = tmp_path / "exp", 6, 8
    args = _tune_args(out, samples, epochs, "--scheduler", "none")
    proc = _start(args, tmp_path / "first.log")
    done, running = _wait_until(_mid_search(out, epochs), 600, proc, "a trial ended and another ran")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, with no warning
    proc.wait()
    before = _reported_epochs(out)
    assert (out / "tune" / "tuner.pkl.hmac").is_file()  # signed as Tuner() returned: the kill cannot undo it

    # The interrupted directory already gives its leader, but not test figures: test is touched
    # once, for what the whole search chooses.
    assert main(["best", str(out), "-o", str(tmp_path / "interim.json")]) == 0
    interim = json.loads((tmp_path / "interim.json").read_text())
    assert not (out / "best_config.json").exists() and not (out / "trials.parquet").exists()  # best only reads
    assert interim["finished"] is False and interim["test"] is None
    assert interim["trial_id"] in done
    assert any(t.state.name == "RUNNING" for t in _study(out).trials)  # what the kill left dangling
    # A kill between the searcher asking Optuna for a trial and Tune saving that trial leaves it
    # RUNNING in the study with no Tune trial behind it. Make one such orphan for sure.
    from raytower.tune.space import load_space

    assert len(before) < samples
    orphan = _study(out).ask()
    load_space(QUICK).define_by_run(orphan)  # samples its params, as the searcher's suggest does
    assert orphan.params

    resumed = subprocess.run([RAYTOWER, *args, "--resume"], capture_output=True, text=True, timeout=900,
                             env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # Nothing the kill left behind (a checkpoint half deleted, a TensorBoard file) is a traceback.
    assert "Traceback" not in resumed.stdout + resumed.stderr, (resumed.stdout + resumed.stderr)[-3000:]
    _assert_whole(out, samples, epochs)
    taken_over = _study(out).trials[orphan.number]  # the resumed searcher ran it instead of asking anew
    assert taken_over.state.name in FINAL and taken_over.params == orphan.params
    after = _reported_epochs(out)
    for t in done:  # finished trials are kept, not run again
        # A trial that ended after Tune's last save of the experiment is restored at its last epoch
        # and reports that row once more (trainables.curriculum: report_again_when_done), without
        # training: at most that one repeat, never an epoch run again.
        assert after[t][:len(before[t])] == before[t]
        assert after[t][len(before[t]):] in ([], [before[t][-1]]), f"trial {t} ran again: {after[t]}"
    for t in running:  # unfinished ones resumed from their checkpoints, not from epoch 1
        assert after[t].count(1) == 1 and after[t][-1] == epochs


def test_ctrl_c_saves_the_search_and_says_how_to_resume(tmp_path, capsys):
    out, samples, epochs = tmp_path / "exp", 4, 8
    args = _tune_args(out, samples, epochs, "--scheduler", "none")
    log = tmp_path / "first.log"
    proc = _start(args, log)
    _wait_until(_mid_search(out, epochs), 600, proc, "a trial ended and another ran")
    ray_processes = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    text = log.read_text()
    assert "interrupted:" in text and "resume it with: " in text and " tune " in text and "--resume" in text
    assert "Traceback" not in text
    _, left = psutil.wait_procs(ray_processes, timeout=30)  # Ray went down with it
    assert not left, [p.cmdline()[:2] for p in left]
    df = pd.read_parquet(out / "trials.parquet")  # what finished is saved
    assert (df["stop_reason"] == "completed").any() and (df["stop_reason"] == "unfinished").any()
    # --resume unpickles tune/tuner.pkl: only as this user's key signed it. One byte more is refused.
    pkl = out / "tune" / "tuner.pkl"
    genuine = pkl.read_bytes()
    pkl.write_bytes(genuine + b"\0")
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tuner.pkl: refused: it does not match its signature" in err, err
    pkl.write_bytes(genuine)

    assert main([*args, "--resume"]) == 0
    _assert_whole(out, samples, epochs)


def test_sigterm_to_the_whole_group_saves_the_search_like_ctrl_c(tmp_path):
    # What `timeout` does (Slurm and `docker stop` send SIGTERM too): the signal goes to the
    # driver's process group. It once ended in Ray's C++ stack dump, no message and no hint.
    out, samples, epochs = tmp_path / "exp", 4, 8
    args = _tune_args(out, samples, epochs, "--scheduler", "none")
    log = tmp_path / "first.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(["timeout", "900", RAYTOWER, *args], stdin=subprocess.DEVNULL, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _wait_until(_mid_search(out, epochs), 600, proc, "a trial ended and another ran")
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    text = log.read_text()
    assert "interrupted:" in text and "resume it with: " in text and " tune " in text
    assert "Traceback" not in text and "SIGTERM received" not in text
    assert main([*args, "--resume"]) == 0
    _assert_whole(out, samples, epochs)


def _train_worker_pids(driver: int) -> list[int]:
    """The Train workers of this test's search: among its driver's descendants (the local cluster's
    raylet is the driver's child), so a Ray search of the developer's own is never the victim."""
    pids = []
    for p in psutil.Process(driver).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return pids


def test_killed_train_worker_restarts_from_its_checkpoint(tmp_path):
    out, epochs = tmp_path / "exp", 10
    args = [*_tune_args(out, 1, epochs, "--scheduler", "none"), "--executor", "train"]
    proc = _start(args, tmp_path / "tune.log")
    _wait_until(lambda: any(len(e) >= 1 for e in _reported_epochs(out).values()), 600, proc,
                "an epoch was reported")
    victims = _train_worker_pids(proc.pid)
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    (at_kill,) = _reported_epochs(out).values()
    assert at_kill[-1] < epochs  # the kill landed mid-trial
    assert proc.wait(timeout=600) == 0, (tmp_path / "tune.log").read_text()[-3000:]
    (seen,) = _reported_epochs(out).values()
    assert seen == list(range(1, epochs + 1))  # nothing lost, nothing reported twice
    # The worker died at epoch at_kill[-1] < 10 and all 10 epochs were reported once: a new worker
    # took over from the checkpoint (a fresh start would have reported epoch 1 again).
    df = pd.read_parquet(out / "trials.parquet")
    assert df.loc[0, "stop_reason"] == "completed"


def test_a_diverging_trial_is_recorded_and_the_search_goes_on(tmp_path):
    space = tmp_path / "space.yaml"
    # 1e-39 is a float32 subnormal: logits / tau overflow to inf, and the loss is NaN at once.
    space.write_text("fixed: {dim: 32, item_layers: 2, max_len: 50, stage1_max_epochs: 2, temp_min: 1.0e-40}\n"
                     "search:\n  temp_start: {distribution: categorical, choices: [1.0e-39, 0.5]}\n"
                     "start_from: [{temp_start: 1.0e-39}, {temp_start: 0.5}]\n")
    out = tmp_path / "exp"
    assert main(["tune", "--data", SMALL_SYNTHETIC, "--space", str(space), "--num-samples", "2",
                 "--max-epochs", "3", "--scheduler", "none", "--executor", "function", "--out", str(out)]) == 0
    df = pd.read_parquet(out / "trials.parquet").set_index("param/temp_start")
    assert df.loc[1e-39, "stop_reason"] == "diverged" and df.loc[1e-39, "epochs"] == 1
    assert df.loc[0.5, "stop_reason"] == "completed"
    states = {t.params["temp_start"]: t.state.name for t in _study(out).trials}
    assert states == {1e-39: "FAIL", 0.5: "COMPLETE"}
    assert json.loads((out / "best_config.json").read_text())["params"]["temp_start"] == 0.5


def test_resume_after_the_driver_alone_was_killed_stops_the_ray_it_left(tmp_path):
    # kill -9 of the driver alone: its local Ray (raylet, GCS, the trial's worker, still writing
    # checkpoints into --out) runs on for minutes. --resume stops it before continuing.
    out, epochs = tmp_path / "exp", 6
    args = _tune_args(out, 1, epochs, "--scheduler", "none")
    proc = _start(args, tmp_path / "first.log")
    _wait_until(lambda: any(_reported_epochs(out).values()), 600, proc, "an epoch was reported")
    recorded = json.loads((out / ".ray-processes.json").read_text())["processes"]
    ray_processes = []
    for r in recorded:
        with contextlib.suppress(psutil.Error):
            ray_processes.append(psutil.Process(r["pid"]))
    ray_processes += [c for p in ray_processes for c in p.children(recursive=True)]
    assert ray_processes
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert [p for p in ray_processes if p.is_running()]  # the driver is gone, its Ray is not
        resumed = subprocess.run([RAYTOWER, *args, "--resume"], capture_output=True, text=True, timeout=900,
                                 env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        text = resumed.stdout + resumed.stderr
        assert resumed.returncode == 0, text[-3000:]
        assert "Ray process(es) the interrupted search left running" in text, text[-3000:]
        assert not [p for p in ray_processes if p.is_running()]
        _assert_whole(out, 1, epochs)
    finally:
        for p in ray_processes:
            with contextlib.suppress(psutil.Error):
                p.kill()
