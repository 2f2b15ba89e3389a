"""A real Ray head on 127.0.0.1 with token auth: Jobs API submission, 401 without the token,
dashboards bound to loopback. Second tier: it starts its own cluster."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from raytower.cli import main
from tests._net import free_port
from tests.conftest import REPO, SMALL_SYNTHETIC

pytestmark = [pytest.mark.slow, pytest.mark.ray]
RAY = str(Path(sys.executable).with_name("ray"))


def stop_own_cluster(home: Path) -> None:
    """End the processes of the cluster started with HOME=home, and only those. `ray stop` would end
    every Ray on the machine, a developer's running search included; every process of a test's cluster
    (GCS, raylets, dashboard, agents, monitors, workers) inherits the HOME its `ray start` was given."""
    def ours(p: psutil.Process) -> bool:
        try:
            return p.environ().get("HOME") == str(home)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    procs = [p for p in psutil.process_iter() if ours(p)]
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    left = [p.pid for p in psutil.process_iter() if ours(p)]
    assert not left, f"processes of the test cluster at {home} outlived its stop: {left}"


def _listen_ips(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    # As on a real cluster (cluster.yaml mounts it): the token exists before `ray start`.
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    # As cluster.yaml's setup does: the environment with raytower in it is on the nodes' PATH, so a
    # job's `raytower tune ...` entrypoint resolves.
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    dash, gcs = free_port(), free_port()
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                    # free ports, not Ray's fixed defaults, for everything else that listens
                    f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                    f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                    '--resources={"raytower_driver": 100}', "--disable-usage-stats"], env=env, check=True,
                   capture_output=True)
    token = (home / ".ray" / "auth_token").read_text().strip()
    yield {"env": env, "url": f"http://127.0.0.1:{dash}", "port": dash, "token": token, "home": home}
    # Not `ray stop`, which ends every Ray on the machine. Killing this cluster's processes by port
    # missed some (monitors, agents), whose ports then broke the next cluster's job agent; by HOME
    # every one of them is found.
    stop_own_cluster(home)


def _get(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_jobs_api_refuses_requests_without_the_token(head):
    assert _get(f"{head['url']}/api/jobs/") == 401
    assert _get(f"{head['url']}/api/jobs/", token="not-the-token") in (401, 403)
    assert _get(f"{head['url']}/api/jobs/", token=head["token"]) == 200


def test_cluster_dashboard_listens_on_loopback_only(head):
    assert _listen_ips(head["port"]) == {"127.0.0.1"}


def test_submit_runs_the_search_as_a_job_and_fetches_best_config(head, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(head["home"]))  # the token file ~/.ray/auth_token
    out, fetched = tmp_path / "exp", tmp_path / "fetched"
    rc = main(["submit", "--address", head["url"], "--fetch-to", str(fetched), "--timeout", "600", "--",
               "tune", "--data", SMALL_SYNTHETIC, "--space", str(REPO / "search_spaces" / "quick.yaml"),
               "--num-samples", "2", "--max-epochs", "2", "--scheduler", "none", "--out", str(out)])
    assert rc == 0
    best = json.loads((fetched / "best_config.json").read_text())
    assert best["params"]["epochs"] == 2 and (fetched / "trials.parquet").is_file()


def test_ray_job_submit_cli_works_too(head, tmp_path):
    out = tmp_path / "exp2"
    cmd = [RAY, "job", "submit", "--address", head["url"], "--",
           shutil.which("raytower") or str(Path(sys.executable).with_name("raytower")), "tune", "--address", "auto",
           "--data", SMALL_SYNTHETIC, "--space", str(REPO / "search_spaces" / "quick.yaml"),
           "--num-samples", "1", "--max-epochs", "1", "--scheduler", "none", "--out", str(out)]
    done = subprocess.run(cmd, env={**head["env"], "RAY_AUTH_TOKEN": head["token"]}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (out / "best_config.json").is_file()


def test_local_mode_binds_its_dashboard_to_loopback(monkeypatch):
    import ray

    from raytower.tune.search import init_ray
    from raytower.tune.settings import SearchSettings

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(SearchSettings())
    try:
        port = int(os.environ["RAY_API_SERVER_ADDRESS"].rsplit(":", 1)[1])
        assert _listen_ips(port) == {"127.0.0.1"}
    finally:
        ray.shutdown()
