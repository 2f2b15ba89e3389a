"""Shared fixtures: the real ml-100k release, and one small synthetic bundle + pretraining per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def reported_rows(exp: Path) -> dict[str, list[dict]]:
    """Every row each trial reported to Tune (its result.json under ``exp/tune``), duplicates
    included, in order; a line a kill cut short is skipped."""
    import json

    seen = {}
    for f in (exp / "tune").glob("trial_*/result.json"):
        rows = []
        for line in f.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
        seen[f.parent.name.removeprefix("trial_")] = rows
    return seen
ML100K_HINT = (
    "MovieLens 100K not found: set RAYTOWER_ML100K to an unpacked ml-100k directory, put it at "
    "../shared/data/ml-100k beside the checkout, or run `raytower data download ml-100k --dest DIR`"
)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's cache or config; one of each per test session (shared by its tests)."""
    if "RAYTOWER_CACHE" not in os.environ:
        os.environ["RAYTOWER_CACHE"] = str(_session_cache(tmp_path_factory))
    # nor the user's signing key (~/.config/raytower/key): every process the tests start inherits this
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    torch.set_num_threads(_threads_per_process())
    yield


def _session_cache(tmp_path_factory) -> Path:
    """One cache per test run. The pytest-xdist workers of a run (`make test-fast`) share one beside
    their base temporary directories: a cache entry's lock (raytower._lock.hold_cache_entry) makes
    the second worker to ask for an entry wait and reuse it, so each pretraining is made once a run."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return tmp_path_factory.mktemp("raytower-cache")
    shared = tmp_path_factory.getbasetemp().parent / "raytower-cache"  # the run's, not another run's
    shared.mkdir(exist_ok=True)
    return shared


def _threads_per_process() -> int:
    """2 torch threads in one pytest process; 1 in each pytest-xdist worker (`make test-fast`, -n 2),
    for this process and the processes it starts. Two workers of two threads on two cores spin: an
    OpenMP thread whose partner is descheduled busy-waits, and LightGCN's sparse steps then cost
    30 times the CPU of one thread (measured on the loaded 2-core machine: 36 CPU-s against 1.2)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return 2
    os.environ["OMP_NUM_THREADS"] = "1"  # what torch's default is in a `raytower train` a test starts
    return 1


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    env = os.environ.get("RAYTOWER_ML100K")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "ml-100k"
    if not (path / "u.data").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{ML100K_HINT} (required under CI)")
        pytest.skip(ML100K_HINT)
    return path


SMALL_SYNTHETIC = "synthetic:n_users=800,n_items=400,seed=7"


@pytest.fixture(scope="session")
def small_bundle():
    from raytower.data import load_bundle

    return load_bundle(SMALL_SYNTHETIC)


@pytest.fixture(scope="session")
def small_pretrain_config():
    from raytower.model.pretrain import PretrainConfig

    # 5 LightGCN passes: the session's tests need tables that beat popularity, not converged ones (15
    # passes cost the fast tier 26 more CPU-s)
    return PretrainConfig(dim=32, item_layers=2, gnn_epochs=5, tower_epochs=6)


@pytest.fixture(scope="session")
def small_artifacts(small_bundle, small_pretrain_config):
    from raytower.model.pretrain import pretrain

    return pretrain(small_bundle, small_pretrain_config, progress=None)


@pytest.fixture
def small_config():
    from raytower.train.config import TrainConfig

    return TrainConfig(dim=32, item_layers=2, max_len=30, n_heads=2, batch_size=64, epochs=4,
                       stage1_max_epochs=2, stage2_min_recall=0.0, stage2_max_loss=0.0)


# One real search (Ray on 127.0.0.1, Optuna in SQLite, ASHA) shared by the search and report tests.
SEARCH_SPACE = "search_spaces/quick.yaml"


@pytest.fixture(scope="session")
def search(tmp_path_factory):
    from raytower.cli import main

    out = tmp_path_factory.mktemp("search")
    rc = main(["tune", "--data", SMALL_SYNTHETIC, "--space", str(REPO / SEARCH_SPACE), "--num-samples", "8",
               "--max-epochs", "6", "--grace-period", "2", "--reduction-factor", "2", "--executor", "function",
               "--out", str(out), "--seed", "1"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def trials(search):
    import pandas as pd

    return pd.read_parquet(search / "trials.parquet")


# The ray marker is what keeps Ray out of `make test-fast` (-m "not slow and not ray"). A test that is
# not marked ray and starts Ray in this process, itself or through a fixture it asks for, fails where
# Ray spawns its first daemon. Tests that run Ray in a child process (`raytower tune` through
# subprocess) are marked by their modules' pytestmark.
_RAY_DAEMONS = frozenset({"gcs_server", "raylet"})
_unmarked_test: str | None = None  # the running test's id while it is not marked ray


def _refuse_ray_in_unmarked_tests(event: str, args: tuple) -> None:
    # An audit hook: it sees every subprocess.Popen (Ray's ConsolePopen too) and cannot be removed,
    # so it checks the flag, and returns at once for the other events.
    if event != "subprocess.Popen" or _unmarked_test is None:
        return
    argv = args[1]
    program = argv.split()[0] if isinstance(argv, (str, bytes)) else next(iter(argv or ()), "")
    if os.path.basename(os.fsdecode(program)) in _RAY_DAEMONS:
        raise RuntimeError(f"{_unmarked_test} starts Ray but is not marked ray: add @pytest.mark.ray")


sys.addaudithook(_refuse_ray_in_unmarked_tests)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _unmarked_test
    _unmarked_test = None if item.get_closest_marker("ray") else item.nodeid
    try:
        yield
    finally:
        _unmarked_test = None
