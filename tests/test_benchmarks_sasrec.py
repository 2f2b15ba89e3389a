"""benchmarks/sasrec_plus.py, the SASRec+ reference arm: its model is causal and blind to padding,
its loss is a full softmax over every item, and a run stopped at any point (a finished epoch,
SIGTERM mid-epoch, kill -9) resumes to the same per-epoch figures as an uninterrupted one.

Tiny synthetic bundles only: the real runs are benchmarks (benchmarks/results/sasrec_plus_*).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import sasrec_plus as sp  # noqa: E402

DATA = "synthetic:n_users=500,n_items=200,seed=3"
TINY = ["--data", DATA, "--dim", "16", "--max-len", "30", "--batch-size", "32", "--threads", "1", "--seed", "1"]


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def rows(path: Path) -> list[dict]:
    """The per-epoch figures without the timing fields (which differ from run to run)."""
    return [{k: v for k, v in json.loads(line).items() if k not in sp.TIMING}
            for line in path.read_text().splitlines()]


def run_args(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [*TINY, "--run-dir", str(tmp_path / name), "--results", str(tmp_path / f"res_{name}"), *extra]


# ---------------------------------------------------------------- the model and its loss


def test_causal_and_blind_to_padding():
    torch.manual_seed(0)
    net = sp.SASRec(n_items=20, dim=8, blocks=2, heads=2, dropout=0.1, max_len=10).eval()
    seq = torch.tensor([[3, 5, 7, 2]])
    out = net(seq)
    padded = net(torch.tensor([[0, 0, 0, 3, 5, 7, 2]]))
    assert torch.allclose(out, padded[:, 3:], atol=1e-5)  # left padding changes nothing
    assert torch.all(padded[:, :3] == net.norm(torch.zeros(8)))  # padding rows carry nothing
    changed = net(torch.tensor([[3, 5, 7, 9]]))
    assert torch.allclose(out[:, :3], changed[:, :3], atol=1e-6)  # no position sees a later item
    assert not torch.allclose(out[:, 3], changed[:, 3])


def test_loss_is_a_softmax_over_every_item_at_every_position():
    net = sp.SASRec(n_items=50, dim=8, blocks=1, heads=1, dropout=0.0, max_len=10)
    with torch.no_grad():
        net.items.weight.zero_()  # every logit 0: each position's loss is log(number of classes)
    seqs = torch.tensor([[0, 0, 4, 9, 1], [2, 3, 4, 5, 6]])
    loss, n = sp.full_cross_entropy(net, seqs)
    assert n == 2 + 4  # positions with an input and a target
    assert math.isclose(loss.item(), n * math.log(50), rel_tol=1e-6)  # 50 items, padding no class


# ---------------------------------------------------------------- runs that outlive their process


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    assert sp.main(run_args(tmp_path, "whole", "--max-epochs", "3")) == 0
    assert sp.main(run_args(tmp_path, "split", "--max-epochs", "1")) == 0
    assert sp.main(run_args(tmp_path, "split", "--max-epochs", "3", "--resume")) == 0
    whole, split = rows(tmp_path / "res_whole.jsonl"), rows(tmp_path / "res_split.jsonl")
    assert len(whole) == 3 and whole == split
    a, b = (json.loads((tmp_path / f"res_{n}.json").read_text()) for n in ("whole", "split"))
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"] == max(
        range(1, 4), key=lambda e: whole[e - 1]["val/ndcg@10"])
    assert "sasrec_plus.py" in a["command"] and str(REPO) not in a["command"] and a["commit"]


def test_refuses_to_overwrite_or_to_resume_other_settings(tmp_path, capsys):
    assert sp.main(run_args(tmp_path, "r", "--max-epochs", "1")) == 0
    assert sp.main(run_args(tmp_path, "r", "--max-epochs", "1")) == 2
    assert "--resume to continue" in capsys.readouterr().err
    assert sp.main(run_args(tmp_path, "r", "--max-epochs", "2", "--resume", "--lr", "0.01")) == 2
    assert "--lr 0.001" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_and_kill_resume_to_the_same_figures(tmp_path):
    """SIGTERM mid-epoch: a checkpoint, exit 143 and the resume command; kill -9: the last epoch's
    checkpoint. Both resume to the figures of a run never stopped."""
    epochs = ["--max-epochs", "5"]
    assert sp.main(run_args(tmp_path, "whole", *epochs)) == 0
    script = [sys.executable, str(REPO / "benchmarks" / "sasrec_plus.py"), *run_args(tmp_path, "cut", *epochs)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = tmp_path / "res_cut.jsonl"

    def start_and_stop(cmd: list[str], sig: int, after_rows: int) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        deadline = time.time() + 120
        while (not log.is_file() or len(log.read_text().splitlines()) < after_rows) and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(cmd, proc.returncode, "", err)

    first = start_and_stop(script, signal.SIGTERM, 1)
    assert first.returncode == 143, first.stderr
    assert "resume it with: python benchmarks/sasrec_plus.py" in first.stderr and "--resume" in first.stderr
    second = start_and_stop([*script, "--resume"], signal.SIGKILL, len(rows(log)) + 1)
    assert second.returncode == -signal.SIGKILL
    assert len(rows(log)) < 5  # stopped before the end both times
    done = subprocess.run([*script, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    cut = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["resumed"] for r in cut)
    assert rows(log) == rows(tmp_path / "res_whole.jsonl")
    a, b = (json.loads((tmp_path / f"res_{n}.json").read_text()) for n in ("whole", "cut"))
    assert a["test"] == b["test"]
