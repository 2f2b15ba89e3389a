"""`raytower submit`: run a search on a Ray cluster as a Ray Job and fetch its results back.

    raytower submit --address http://127.0.0.1:8265 --fetch-to results/ -- tune --data ml-100k --out /shared/runs/s1

The Jobs API runs the entrypoint on the head node (`raytower tune ... --address auto`), streams its
logs here, and has no file download: on success the results are copied from the experiment
directory, which must be on storage this machine sees too (a shared filesystem; on AWS, use
`ray rsync-down cluster.yaml /shared/runs/s1 results/`). The auth token is sent as a bearer header.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

from raytower.errors import RaytowerError
from raytower.names import BEST_CONFIG, FETCHED_CHECKPOINT, FETCHED_FILES

SUBMIT_RETRY_S = 300  # a freshly started head answers "No available agent" until its job agent is up
STATUS_WAIT_S = 60  # after the log stream ends, how long the job may take to report its final status


def auth_token() -> str | None:
    """The cluster's token: RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def _given(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _parse_tune(tune_args: list[str]):
    """The tune flags (after "tune"), read by the parser the job itself will use: a bad flag fails
    here, before submitting."""
    from raytower._flags import parse_tune

    _, settings = parse_tune(tune_args[1:])
    return settings


def entrypoint(tune_args: list[str]) -> tuple[str, Path]:
    """The job's command, joining the cluster (--address auto), and the experiment directory."""
    if not tune_args or tune_args[0] != "tune":
        raise RaytowerError("submit runs a search: give the tune command after --, e.g. -- tune --data ml-100k --out DIR")
    args = list(tune_args)
    if not _given(args, "--out"):
        raise RaytowerError("submit needs --out DIR (a directory on the head; with --storage-path URI the results "
                            "are fetched from URI/<name of DIR>)")
    flags = _parse_tune(args)
    if flags.address is None:
        args += ["--address", "auto"]
    return shlex.join(["raytower", *args]), Path(flags.out)


def results_location(tune_args: list[str], out: Path) -> str:
    """Where the finished search's results can be read from here: its storage path, else --out."""
    from raytower.tune import experiment_uri

    # only a storage path given on the command line: RAYTOWER_STORAGE here says nothing of the head's
    storage = _parse_tune(list(tune_args)).storage_path if _given(tune_args, "--storage-path") else None
    return experiment_uri(out, storage)


def _fetch_checkpoint(store, dest: Path) -> bool:
    """The chosen trial's best-epoch checkpoint, so `raytower export` works on the fetched folder."""
    import json

    import torch

    from raytower.tune.results import checkpoint_state

    best = json.loads((dest / BEST_CONFIG).read_text())
    state = checkpoint_state(store, best["trial_id"], int(best["selection"]["epoch"]))
    if state is None:
        return False
    torch.save(state, dest / FETCHED_CHECKPOINT)  # tensors and plain data: read back with weights_only
    return True


def check_address(address: str, insecure: bool = False) -> None:
    """The token goes in a header: over plain HTTP only to this machine (a `ray dashboard` tunnel)."""
    import ipaddress
    from urllib.parse import urlsplit

    url = urlsplit(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise RaytowerError(f"--address {address}: expected http(s)://HOST:PORT of the Ray Jobs API")
    if url.scheme == "https" or insecure:
        return
    host = url.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise RaytowerError(f"--address {address}: plain HTTP to another machine would send the cluster's token "
                            "unencrypted; use https://, or tunnel it (`ray dashboard cluster.yaml`, then "
                            "http://127.0.0.1:8265), or pass --insecure")


def submit(address: str, tune_args: list[str], fetch_to: str | None, working_dir: str | None = None,
           timeout_s: float | None = None, log=print, force: bool = False, insecure: bool = False) -> int:
    """Run ``raytower tune_args`` on the cluster as a Ray Job, stream its log here, and with
    ``fetch_to`` copy its results back; 0 once it succeeded, else a RaytowerError saying why."""
    from raytower._io import check_destination

    check_address(address, insecure)
    command, out = entrypoint(tune_args)
    if fetch_to:  # refused now, not after an hour of search
        check_destination(fetch_to, "results", force, "--out")
    client = _client(address)
    runtime_env = {"working_dir": working_dir, "excludes": [".venv", "runs", ".cache", ".git"]} if working_dir else None
    job_id = _submit_job(client, address, command, runtime_env)
    log(f"submitted {job_id}: {command}")
    _follow_log(client, job_id, timeout_s)
    _check_succeeded(client, job_id)
    if fetch_to:
        _fetch_results(results_location(tune_args, out), out, Path(fetch_to), force, log)
    return 0


def _client(address: str):
    """A Jobs API client that sends the cluster's token, if there is one."""
    from ray.job_submission import JobSubmissionClient

    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as e:  # unreachable, refused, 401
        raise RaytowerError(f"cannot reach the Ray Jobs API at {address} ({str(e).splitlines()[0][:200]})") from None


def _submit_job(client, address: str, command: str, runtime_env: dict | None) -> str:
    """The job's id, once the head takes it: a freshly started head answers 500 "No available
    agent" until its job agent is up, so that answer is retried for SUBMIT_RETRY_S."""
    deadline = time.time() + SUBMIT_RETRY_S
    while True:
        try:
            return client.submit_job(entrypoint=command, runtime_env=runtime_env)
        except RuntimeError as e:
            if "try again" not in str(e) or time.time() > deadline:
                raise RaytowerError(f"the Jobs API at {address} refused the job ({str(e).splitlines()[0][:200]})") from None
            time.sleep(2)


def _follow_log(client, job_id: str, timeout_s: float | None) -> None:
    """The job's log, streamed to stdout until it ends; past ``timeout_s`` the job is stopped."""
    async def follow():
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(asyncio.wait_for(follow(), timeout_s) if timeout_s else follow())
    except (asyncio.TimeoutError, TimeoutError):
        client.stop_job(job_id)
        raise RaytowerError(f"job {job_id} ran past {timeout_s:g} s and was stopped") from None


def _check_succeeded(client, job_id: str) -> None:
    """The job's final status (it may lag the end of its log by up to STATUS_WAIT_S): SUCCEEDED, or
    a RaytowerError with the job's own message."""
    from ray.job_submission import JobStatus

    deadline = time.time() + STATUS_WAIT_S
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.time() < deadline:
        time.sleep(1)
        status = client.get_job_status(job_id)
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        raise RaytowerError(f"job {job_id} ended {status}: {(info.message or '').splitlines()[0][:300] if info.message else ''}")


def _fetch_results(where: str, out: Path, dest: Path, force: bool, log) -> None:
    """FETCHED_FILES and the chosen trial's checkpoint from ``where`` into ``dest``, all or nothing."""
    from raytower._io import output_dir
    from raytower.tune import ExperimentStore

    with output_dir(dest, "results", force, "--out") as tmp:
        store = ExperimentStore(where)
        missing = store.fetch(FETCHED_FILES, tmp)
        if missing:  # nothing is left at --fetch-to
            raise RaytowerError(f"{', '.join(missing)} not visible here: give the search --storage-path on "
                                f"storage this machine reads (s3://...), or fetch with "
                                f"`ray rsync-down cluster.yaml {out} {dest}`", where)
        fetched = list(FETCHED_FILES)
        if _fetch_checkpoint(store, tmp):
            fetched.append(FETCHED_CHECKPOINT)
    log(f"fetched {', '.join(fetched)} from {where} into {dest}")
