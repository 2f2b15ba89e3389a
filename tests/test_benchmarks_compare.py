"""benchmarks/compare_arms.py: raytower against SASRec+ paired per user, on tiny runs of both arms.

The paired difference must be the difference of the figures each run recorded (the same users, the
same ranks), its bootstrap interval must hold it, and a checkpoint whose weights are not the ones its
run was tested with is refused rather than compared.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import compare_arms  # noqa: E402
import sasrec_plus as sp  # noqa: E402

DATA = "synthetic:n_users=400,n_items=150,seed=5"


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arms")
    n_threads = torch.get_num_threads()
    sp.main(["--data", DATA, "--dim", "16", "--max-len", "30", "--batch-size", "32", "--threads", "1",
             "--max-epochs", "2", "--run-dir", str(tmp / "sasrec"), "--results", str(tmp / "sasrec_result")])
    torch.set_num_threads(n_threads)
    (tmp / "cfg.yaml").write_text("dim: 16\nmax_len: 30\nepochs: 2\n")
    subprocess.run([sys.executable, "-m", "raytower.cli", "train", "--data", DATA, "--config", str(tmp / "cfg.yaml"),
                    "--metric", "ndcg@10", "--threads", "1", "--out", str(tmp / "raytower")], check=True, cwd=REPO,
                   capture_output=True)
    return tmp


def test_the_paired_difference_is_that_of_the_recorded_figures(arms):
    result = compare_arms.compare(arms / "raytower", arms / "sasrec" / "checkpoint.pt", samples=500, seed=0)
    for k, d in result["raytower_minus_sasrec_plus"].items():
        recorded = result["raytower"]["test"][k] - result["sasrec_plus"]["test"][k]
        assert d["mean"] == pytest.approx(recorded, abs=1e-12)
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
        assert d["ci95"][0] < d["ci95"][1]  # 2 epochs of two different models: some users differ
    for arm in ("raytower", "sasrec_plus"):
        ttq = result[arm]["time_to_quality"]
        assert 1 <= ttq["epoch"] <= 2 and ttq["cpu_s"] > 0


def test_weights_other_than_the_tested_ones_are_refused(arms, tmp_path):
    state = torch.load(arms / "sasrec" / "checkpoint.pt", weights_only=True)
    state["best"]["model"]["items.weight"] = torch.randn_like(state["best"]["model"]["items.weight"])
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(SystemExit, match="differ from the recorded ones"):
        compare_arms.compare(arms / "raytower", tmp_path / "checkpoint.pt", samples=10, seed=0)


def test_time_to_quality_counts_until_within_0_005_of_the_best():
    history = [{"epoch": e, "v": v, "c": 10.0} for e, v in enumerate([0.10, 0.196, 0.20, 0.199], 1)]
    assert compare_arms.time_to_quality(history, "v", "c", start_cpu=5.0)["cpu_s"] == 25.0  # epoch 2: 0.196


def test_inputs_that_are_not_the_two_runs_stop_in_one_line(arms, tmp_path, capsys):
    """A search's folder, a non-checkpoint and a raytower checkpoint given as SASRec+'s were tracebacks."""
    sasrec, run = str(arms / "sasrec" / "checkpoint.pt"), str(arms / "raytower")
    (tmp_path / "junk.pt").write_text("not torch")
    cases = [(["--raytower", str(tmp_path), "--sasrec", sasrec], "not a finished `raytower train` run"),
             (["--raytower", run, "--sasrec", str(tmp_path / "junk.pt")], "junk.pt: not a sasrec_plus.py checkpoint"),
             (["--raytower", run, "--sasrec", str(arms / "raytower" / "checkpoints" / "best.pt")],
              "it lacks fingerprint")]
    for argv, says in cases:
        with pytest.raises(SystemExit) as e:
            compare_arms.main(argv)
        assert isinstance(e.value.code, str) and says in e.value.code and "\n" not in e.value.code, e.value.code
