"""`raytower train` runs that outlive their process: --resume after a kill, SIGTERM, --evaluate, --patience."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raytower.cli import main
from tests.conftest import SMALL_SYNTHETIC

CONFIG = "dim: 32\nitem_layers: 2\nmax_len: 30\nbatch_size: 64\nstage1_max_epochs: 1\nepochs: 4\nseed: 5\n"
VOLATILE = ("epoch_time_s", "epoch_cpu_s")  # wall and CPU times differ between any two runs


def _comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in history]


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "cfg.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cfg_file) -> dict:
    """The run never interrupted: what every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(["train", "--data", SMALL_SYNTHETIC, "--config", str(cfg_file), "--out", str(out), "--threads", "1"]) == 0
    return json.loads((out / "metrics.json").read_text())


def _train_cmd(cfg_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "raytower.cli", "train", "--data", SMALL_SYNTHETIC, "--config", str(cfg_file),
            "--out", str(out), "--threads", "1"]


def _wait_for_epoch(proc: subprocess.Popen, last: Path, epoch: int, timeout: float = 300) -> None:
    import torch

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before epoch {epoch}: {proc.stderr.read()}")
        if last.is_file():
            try:
                if torch.load(last, weights_only=True)["epoch"] >= epoch:
                    return
            except Exception:  # noqa: BLE001 - a rename may be under way; look again
                pass
        time.sleep(0.2)
    pytest.fail(f"no checkpoint of epoch {epoch} within {timeout} s")


@pytest.mark.slow  # kill-and-resume of a real training process: second tier
def test_kill_9_then_resume_gives_the_uninterrupted_runs_epochs(tmp_path, cfg_file, straight, capsys):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(cfg_file, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAYTOWER_CACHE": os.environ["RAYTOWER_CACHE"]})
    _wait_for_epoch(proc, out / "checkpoints" / "last.pt", 2)
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed
    proc.wait()
    assert not (out / "metrics.json").exists()
    assert main(["train", "--resume", str(out), "--threads", "1"]) == 0
    assert "resuming" in capsys.readouterr().out
    resumed = json.loads((out / "metrics.json").read_text())
    assert _comparable(resumed["history"]) == _comparable(straight["history"])
    assert resumed["test"] == straight["test"] and resumed["best_epoch"] == straight["best_epoch"]
    assert resumed["complete"] is True and resumed["stop"] == "epochs"
    # A finished run is not resumed again.
    assert main(["train", "--resume", str(out)]) == 2
    assert "finished" in capsys.readouterr().err


@pytest.mark.slow  # kill-and-resume of a real training process: second tier
def test_sigterm_keeps_the_last_epoch_and_prints_the_resume_command(tmp_path, cfg_file, straight):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(cfg_file, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_epoch(proc, out / "checkpoints" / "last.pt", 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert f"train --resume {out}" in err
    assert "Traceback" not in err
    # The hint is a command that runs as printed, in a shell whose PATH has no raytower
    hint = shlex.split(err.split("resume it with: ", 1)[1].splitlines()[0])
    done = subprocess.run(hint, capture_output=True, text=True, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    resumed = json.loads((out / "metrics.json").read_text())
    assert _comparable(resumed["history"]) == _comparable(straight["history"])


# raytower's SIGTERM handler in a process that then receives SIGTERM, as `raytower train` or `tune` would
SIGTERM_PROBE = """
import os, signal, sys, time
from raytower import cli
cli._stop_on_sigterm()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(20)
except KeyboardInterrupt:
    sys.exit(cli._interrupted_status())
"""


def test_sigterm_stops_a_run_whose_shell_ignores_sigint():
    # A non-interactive shell starts `raytower train ... &` with SIGINT ignored; the handler raised
    # SIGINT, which was then ignored too, and the run went on to its end as if never signalled.
    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.run([sys.executable, "-c", SIGTERM_PROBE], preexec_fn=ignore_sigint, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM


@pytest.mark.slow  # kill-and-resume of a real training process: second tier
def test_evaluate_tests_a_run_cut_short_once_and_says_so(tmp_path, cfg_file, straight):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(cfg_file, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_epoch(proc, out / "checkpoints" / "last.pt", 2)
    proc.kill()
    proc.wait()
    assert main(["train", "--evaluate", str(out), "--threads", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["complete"] is False and m["stop"] == "cut_short"
    assert m["epochs_run"] >= 2 and len(m["history"]) == m["epochs_run"]
    earlier = straight["history"][: m["epochs_run"]]
    assert m["best_epoch"] == max(earlier, key=lambda r: (r["val/recall@100"], r["epoch"]))["epoch"]
    # A run cut short and tested may still be resumed to its end.
    assert main(["train", "--resume", str(out), "--threads", "1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["complete"] is True


def test_resume_refuses_flags_that_would_change_the_run_and_folders_that_are_no_run(tmp_path, cfg_file, capsys):
    assert main(["train", "--resume", str(tmp_path), "--epochs", "9"]) == 2
    assert "--epochs cannot be given with --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no run.json" in err and len(err.strip().splitlines()) == 1


def test_patience_stops_a_flat_run_and_counts_only_from_stage_2(small_bundle, small_artifacts, small_config):
    from raytower.train.epochs import run_epochs
    from raytower.train.loop import Curriculum

    cfg = small_config.replace(epochs=30, patience=2, lr=1e-9, stage1_max_epochs=3, stage2_min_recall=0,
                               stage2_max_loss=0, logq_warmup_epochs=0)
    run = Curriculum.create(cfg, small_bundle, small_artifacts)
    best = run_epochs(run, lambda row, best: None)
    # lr 1e-9 leaves validation flat: no epoch beats the first, so the run stops 2 epochs after the
    # Stage 2 switch at epoch 3, not 2 epochs after its best (epoch 1), and long before 30.
    values = [r["val/recall@100"] for r in run.history]
    assert max(values[3:]) <= max(values[:3])  # flat: ties are the later epoch's, but not better
    assert run.switch["epoch"] == 3
    assert run.epoch == 5 and best is not None
