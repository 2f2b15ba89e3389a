"""A real multi-node Ray cluster on 127.0.0.1: a head that only hosts drivers, two worker nodes, a
search submitted through the Jobs API, and a worker node killed mid-search.

Second tier: it starts its own cluster with `ray start` (token auth on, as cluster.yaml does).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.conftest import REPO, SMALL_SYNTHETIC, reported_rows
from tests._net import free_port
from tests.cluster.test_submit import RAY, stop_own_cluster

pytestmark = [pytest.mark.slow, pytest.mark.ray]
RAYTOWER = str(Path(sys.executable).with_name("raytower"))


def _node_ports() -> list[str]:
    # Several nodes share this host: every listener gets its own free port.
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]


class LocalCluster:
    def __init__(self, home: Path):
        (home / ".ray").mkdir()
        (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
        self.home = home
        self.env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("RAY_ADDRESS", None)
        self.token = (home / ".ray" / "auth_token").read_text().strip()
        self.gcs, self.dash = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.dash}"
        self.workers: dict[str, int] = {}  # node name -> its node manager port
        self.node_ids: dict[str, str] = {}  # node name -> Ray node id

    def cache(self, name: str) -> Path:
        """Each node's own RAYTOWER_CACHE, as on machines that share no disk but the storage path."""
        return self.home / f"cache-{name}"

    def _start(self, name: str, *args: str) -> None:
        subprocess.run([RAY, "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
                       env={**self.env, "RAYTOWER_CACHE": str(self.cache(name))}, check=True, capture_output=True,
                       timeout=120)

    def start_head(self) -> None:
        # As cluster.yaml's head: no CPUs for training, a custom resource that only drivers ask for.
        self._start("head", "--head", f"--port={self.gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}",
                    "--num-cpus=0", '--resources={"raytower_driver": 64}',
                    f"--ray-client-server-port={free_port()}", *_node_ports())

    def add_worker(self, name: str) -> None:
        ports = _node_ports()
        self._start(name, f"--address=127.0.0.1:{self.gcs}", "--num-cpus=1", *ports)
        self.workers[name] = int(ports[0].split("=")[1])
        cmd = self.raylet(name).cmdline()
        self.node_ids[name] = next(a.split("=", 1)[1] for a in cmd if a.startswith("--node_id="))

    def raylet(self, name: str) -> psutil.Process:
        flag = f"--node_manager_port={self.workers[name]}"
        (p,) = [p for p in psutil.process_iter(["cmdline"]) if "raylet" in " ".join(p.info["cmdline"] or [])[:300]
                and flag in (p.info["cmdline"] or [])]
        return p


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("home"))
    try:
        c.start_head()
        c.add_worker("a")
        c.add_worker("b")
        yield c
    finally:
        stop_own_cluster(c.home)  # not `ray stop`: that ends every Ray on the machine


def test_search_runs_on_workers_and_survives_losing_one(cluster, tmp_path):
    # --out on the head's disk (the study); trial state on storage every node sees, as S3 would be
    out, shared, fetched, epochs = tmp_path / "exp", tmp_path / "shared", tmp_path / "fetched", 12
    state = shared / "exp"
    env = {**cluster.env, "RAY_AUTH_TOKEN": cluster.token}
    submit = subprocess.Popen(
        [RAYTOWER, "submit", "--address", cluster.url, "--fetch-to", str(fetched), "--timeout", "900", "--",
         "tune", "--data", SMALL_SYNTHETIC, "--space", str(REPO / "search_spaces" / "quick.yaml"),
         "--executor", "train", "--num-samples", "2", "--max-epochs", str(epochs), "--scheduler", "none",
         "--out", str(out), "--storage-path", str(shared)],
        env=env, stdout=(tmp_path / "submit.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        name_of = {node_id: name for name, node_id in cluster.node_ids.items()}
        deadline = time.monotonic() + 600
        victim_trial = None
        while victim_trial is None:  # a trial two epochs into its run, on whichever worker Ray placed it
            assert time.monotonic() < deadline and submit.poll() is None, (tmp_path / "submit.log").read_text()[-3000:]
            for trial, rows in reported_rows(state).items() if (state / "tune").is_dir() else []:
                if len(rows) >= 2 and rows[-1]["node_id"] in name_of and rows[-1]["epoch"] < epochs - 3:
                    victim_trial, a = trial, rows[-1]["node_id"]
            time.sleep(0.2)
        cluster.raylet(name_of[a]).kill()  # the node is gone, as a reclaimed spot instance would be
        at_kill = [r["epoch"] for r in reported_rows(state)[victim_trial]]
        cluster.add_worker("c")  # what the autoscaler does for the pending work
        assert submit.wait(timeout=900) == 0, (tmp_path / "submit.log").read_text()[-3000:]
    finally:
        if submit.poll() is None:
            os.killpg(submit.pid, signal.SIGKILL)

    best = json.loads((fetched / "best_config.json").read_text())
    assert best["finished"] and best["params"]["epochs"] == epochs
    df = pd.read_parquet(fetched / "trials.parquet").set_index("trial_id")
    assert len(df) == 2 and (df["stop_reason"] == "completed").all()
    workers = set(cluster.node_ids.values())
    assert not (out / "tune").exists() and (state / "optuna.db").is_file()  # the study, copied at the end
    for trial, rows in reported_rows(state).items():
        assert {r["node_id"] for r in rows} <= workers  # no training on the head
    # The trial that lost its node went on elsewhere, from its checkpoint: no epoch lost or repeated.
    rows = reported_rows(state)[victim_trial]
    seen = [r["epoch"] for r in rows]
    assert at_kill[-1] < epochs and seen == list(range(1, epochs + 1)), (at_kill, seen)
    nodes = list(df.loc[victim_trial, "nodes"])
    assert nodes[0] == a and len(nodes) >= 2 and a not in nodes[1:]
    # Every node that trained fetched the bundle and the artifacts into its own cache, by name, from
    # the storage path; the head prepared them in its own.
    name_of = {node_id: name for name, node_id in cluster.node_ids.items()}
    key = f"{best['dataset']['name']}-{best['dataset']['fingerprint']}"
    assert (cluster.cache("head") / "bundles" / key / "manifest.json").is_file()
    # Pretraining ran as a Ray task on a worker (the head has no CPU for it), not in the driver.
    made_on = json.loads((out / "setup.json").read_text())["shared"]["artifacts"]
    assert all(str(cluster.cache("head")) not in path and "cache-" in path for path in made_on.values()), made_on
    assert (shared / "exp" / "artifacts" / "bundles" / key / ".published").is_file()
    for node in {n for ns in df["nodes"] for n in ns}:
        cache = cluster.cache(name_of[node])
        assert (cache / "bundles" / key / "manifest.json").is_file(), name_of[node]
        assert len(list((cache / "pretrain").glob("*/manifest.json"))) == 1, name_of[node]


def test_more_gpus_than_any_node_offers_fails_before_the_search(cluster, tmp_path):
    out = tmp_path / "never"
    # A fresh process, as a user's: this test process has run other Ray clients before.
    done = subprocess.run(
        [RAYTOWER, "tune", "--address", f"127.0.0.1:{cluster.gcs}", "--data", SMALL_SYNTHETIC,
         "--space", str(REPO / "search_spaces" / "quick.yaml"), "--executor", "train",
         "--gpus-per-trial", "1", "--num-samples", "1", "--max-epochs", "1", "--out", str(out)],
        env=cluster.env, capture_output=True, text=True, timeout=300)
    err = done.stderr
    last = err.strip().splitlines()[-1]  # Ray logs its connection above it
    assert done.returncode == 2 and last.startswith("raytower: error:") and "--gpus-per-trial 1" in last, err[-2000:]
    assert "no trial could ever start" in last and "Traceback" not in err and not out.exists()
