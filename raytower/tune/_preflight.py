"""Every check a search makes before it starts Ray or reads its data: a bad flag, space, --out,
study URL or cluster address is one line here, before anything is written.

    space = preflight(settings, log, study)       # settings, space, --out, --warm-start, --study-url, --address
    check_output_dir(out, resume, min_free_gb)    # again, once the search holds --out
    check_where_it_runs(settings, uri)            # the storage path; what this machine has for one trial
    check_cluster_fits(settings, offers)          # what a cluster's nodes offer (raytower.tune._session)
"""

from __future__ import annotations

import os
from pathlib import Path

from raytower._io import check_destination, output_kind
from raytower._storage import ExperimentStore
from raytower.errors import ConfigError
from raytower.names import EXPERIMENT, OPTUNA_DB, SEARCH_RECORD
from raytower.tune._study import StudyRef, check_study_owner
from raytower.tune.settings import SearchSettings
from raytower.tune.space import SearchSpace, load_space


def preflight(settings: SearchSettings, log=print, study: StudyRef | None = None) -> SearchSpace:
    """Every check that needs neither Ray nor the data: a bad flag, space or --out fails here, and a
    study (raytower.tune._study) that another search recorded."""
    settings.validate()
    from raytower.tune._adapter import check_dashboard, check_versions

    check_versions()  # raytower reads Ray's and Optuna's internals: a version it was not tested on fails now
    check_dashboard()  # ray[default]: without it ray.init fails only after pretraining
    space = load_space(settings.space)  # a malformed space fails here, before Ray starts
    for line in space.advice():
        log(f"raytower: warning: {settings.space}: {line}")
    check_output_dir(Path(settings.out).resolve(), settings.resume, settings.min_free_gb)
    if settings.warm_start:
        _check_warm_start(Path(settings.warm_start))
    if settings.study_url:
        _check_study_url(settings.study_url)
    if study is not None:
        check_study_owner(study)
    if settings.address:
        _check_reachable(settings.address)
    return space


def check_output_dir(out: Path, resume: bool, min_free_gb: float = 0.0) -> None:
    """Every check before anything is created: a bad --out fails now, not after an hour."""
    if out == Path("/dev/shm") or Path("/dev/shm") in out.parents:
        raise ConfigError("--out is in /dev/shm, which holds Ray's object store: checkpoints there would "
                          "starve it; choose a directory on disk", out)
    exists = (out / EXPERIMENT).exists() or (out / SEARCH_RECORD).exists()
    if resume and not exists:
        raise ConfigError("--resume: no search to resume here (no tune/ directory written by raytower)", out)
    if exists and not resume:
        raise ConfigError("a search already ran here: pass --resume to continue it, or choose another --out", out)
    if resume:
        _check_trusted(out)
    if not exists:
        # A search start that failed before setup.json leaves only its marker: that is reusable.
        check_destination(out, "search", force=output_kind(out) == "search")
    elif not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError("--out: the directory is not writable (permission denied)", out)
    existing = out
    while not existing.exists():
        existing = existing.parent
    import shutil

    usage = shutil.disk_usage(existing)
    if usage.total == 0:  # root may "write" there, but nothing it writes is kept
        raise ConfigError(f"--out: {existing} is a virtual file system (like /proc or /sys), not a disk", out)
    free_gb = usage.free / 2**30
    if free_gb < min_free_gb:
        raise ConfigError(f"only {free_gb:.2f} GiB free on {existing}, --min-free-gb is {min_free_gb:g}: "
                          "checkpoints would fill the disk", out)


def _check_trusted(out: Path) -> None:
    """--resume unpickles Tune's state (tune/tuner.pkl): code. Only from a directory this user owns
    and nobody else can write to, all the way to that file."""
    import stat

    for p in (out, out / EXPERIMENT, out / EXPERIMENT / "tuner.pkl"):
        if not p.exists():
            continue
        st = p.stat()
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise ConfigError("--resume: owned by another user; resuming would run code (Tune's pickles) "
                              "that you did not write", p)
        if st.st_mode & stat.S_IWOTH:  # (group-writable is left alone: a umask of 002 makes that common)
            raise ConfigError("--resume: writable by every user; resuming would run code (Tune's pickles) "
                              f"others could have changed (chmod o-w {p} if that is safe)", p)


def _check_warm_start(earlier: Path) -> None:
    """The earlier study is opened and read now, before Ray starts or setup.json is written: a junk or
    foreign optuna.db found later left an --out that could be neither re-run nor resumed."""
    from raytower.tune._tuner import warm_trials
    from raytower.tune.record import SearchRecord

    recorded_url = (earlier / SEARCH_RECORD).is_file() and SearchRecord.read(earlier).study_url
    if not (earlier / OPTUNA_DB).is_file() and not recorded_url:
        raise ConfigError("--warm-start: no optuna.db there (expected an earlier search's --out)", earlier)
    warm_trials(earlier)


def _check_study_url(url: str) -> None:
    """A --study-url that Optuna cannot open fails before anything is written."""
    import optuna

    from sqlalchemy.engine import make_url

    from raytower.tune._study import in_memory_sqlite, missing_sqlite

    if in_memory_sqlite(url):  # each connection its own database: the search ran, then its study was gone
        raise ConfigError(f"--study-url {url}: an in-memory SQLite database lives in one connection, and the "
                          "search's trials and its end open others; name a file (sqlite:///PATH) or leave it off")
    if missing_sqlite(url):  # opening it would create it, before a later check refuses the search
        folder = Path(make_url(url).database).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"--study-url {url}: cannot create the database there ({folder} is not a writable "
                              "directory)")
        return
    try:
        optuna.storages.RDBStorage(url)
    except Exception as e:  # a bad URL, an unknown dialect, a refused connection
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"--study-url {url}: cannot open it ({first})") from None


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """host:port must answer within seconds: ray.init would retry an unreachable one for minutes."""
    import socket

    if address == "auto" or "://" in address:
        return  # auto: Ray finds the local cluster's address file, or says at once that there is none
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address}: expected 'auto' or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None


def check_where_it_runs(settings: SearchSettings, uri: str) -> None:
    """The storage path is usable and new, and a local machine has what one trial asks for."""
    if settings.storage_path:
        store = ExperimentStore(uri)  # an unknown scheme fails now
        if not settings.resume and store.is_dir(EXPERIMENT):
            raise ConfigError(f"already holds a search named {Path(settings.out).name!r}: choose another --out name",
                              uri)
    if settings.address:
        return  # a cluster's nodes are judged once joined (raytower.tune._session.join_cluster)
    if settings.gpus_per_trial > 0:
        import torch

        if settings.gpus_per_trial > torch.cuda.device_count():
            raise ConfigError(f"--gpus-per-trial {settings.gpus_per_trial:g}: this machine has "
                              f"{torch.cuda.device_count()} GPU(s), so no trial could ever start")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if settings.cpus_per_trial * settings.workers_per_trial > cpus:
        raise ConfigError(f"--cpus-per-trial {settings.cpus_per_trial:g} x --workers-per-trial "
                          f"{settings.workers_per_trial}: this machine has {cpus} CPU(s), so no trial could ever start")


def check_cluster_fits(settings: SearchSettings, offers: list[dict[str, float]] | None) -> None:
    """A trial's worker must fit on some node, and with the train executor its driver too (the
    raytower_driver resource). Otherwise its trials would pend forever. ``offers``: what each node
    offers (raytower.tune._session.offers); None when unknown, and then nothing is refused."""
    if offers is None:
        return
    where = f"no node of the cluster at {settings.address} (live, or a node type its autoscaler may add)"
    need_gpu = settings.gpus_per_trial / settings.workers_per_trial
    need_cpu = settings.cpus_per_trial
    if not any(o.get("CPU", 0) >= need_cpu and o.get("GPU", 0) >= need_gpu for o in offers):
        most_gpu = max((o.get("GPU", 0) for o in offers), default=0)
        raise ConfigError(f"--gpus-per-trial {settings.gpus_per_trial:g} --cpus-per-trial {need_cpu:g}: {where} "
                          f"offers {need_cpu:g} CPU and {need_gpu:g} GPU per worker (most GPUs on a node: "
                          f"{most_gpu:g}), so no trial could ever start")
    if settings.resolved_executor == "train" and not any(o.get("raytower_driver", 0) >= 1 for o in offers):
        raise ConfigError(f"--executor train: {where} offers the raytower_driver resource its trial drivers run "
                          "on; start the head with --resources='{\"raytower_driver\": 64}' as cluster.yaml does")
