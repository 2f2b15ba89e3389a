"""The search: prepare once, build the Tuner, run it, export the best configuration.

    settings = SearchSettings(space="quick", num_samples=8, max_epochs=6, out="runs/s")  # tune/settings.py
    result = run_search(settings, data="synthetic")

Layout of the experiment directory (``out``):

    setup.json            the search's record (raytower.tune.record): settings, data, what every trial shares
    optuna.db             the Optuna study (SQLite; any RDB URL with --storage)
    stops.json            why each early-stopped trial ended (asha, plateau, chance, collapsed, diverged)
    driver_memory.json    the search driver's resident memory each time a trial ended
    tune/                 Ray Tune's experiment: one directory per trial (checkpoints, TensorBoard)
    train/                Ray Train runs (executor "train" only)
    trials.parquet        one row per trial
    best_config.json      the chosen configuration, its validation and (once) test figures
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from raytower._io import check_destination, claim_output_dir, output_kind, writing_in_place
from raytower._lock import refuse_if_held
from raytower._storage import ExperimentStore, experiment_uri, join_uri
from raytower._trial import Shared
from raytower.errors import ConfigError, RaytowerError
from raytower.model.towers import needs_pretraining
from raytower.names import (DRIVER_MEMORY, EXPERIMENT, OPTUNA_DB, RAY_LOG, SETUP, STOPS, STUDY, TRAIN_RUNS, WARM_START_FROM,
                            WARM_START_NUMBER, trial_dirname, val_key)
from raytower.tune.record import SearchRecord
from raytower.tune.settings import SearchSettings
from raytower.tune.space import SearchSpace, load_space


class SearchInterrupted(Exception):
    """Ctrl-C (or SIGUSR1) stopped the search; Tune saved it, and ``--resume`` continues it."""

    def __init__(self, out: Path, ended: int, total: int):
        self.out, self.ended, self.total = out, ended, total
        super().__init__(f"interrupted: {ended} of {total} trials ended; the search is saved in {out}")


def default_grace_period(space: SearchSpace, max_epochs: int) -> int:
    """ASHA's first rung must come after the latest possible Stage 2 switch and the logQ ramp's
    start, plus a few epochs, or the Stage 2 and logQ knobs cannot change which trials survive."""
    stage1, warmup = (space.largest(name) for name in ("stage1_max_epochs", "logq_warmup_epochs"))
    return max(1, min(max_epochs, int(max(stage1, warmup)) + 3))


# --- setup: everything the trials share, done once before the first trial -----------------------


def prepare_shared(space: SearchSpace, bundle, settings: SearchSettings, uri: str, log=print) -> Shared:
    """Popularity once, into the bundle; then the pretraining of each (dim, item_layers) the space
    can ask for: on a cluster as a Ray task with a trial's resources (a GPU worker when trials get
    GPUs), so the head needs no accelerator; on one machine in the driver, on the GPU when trials
    get one. With a storage path, the bundle and the artifacts are published there first."""
    from raytower.train.evaluate import popularity
    from raytower.tune.artifacts import pretrain_shapes, publish

    popularity(bundle)  # once, here, into the bundle: every trial reads it
    key = f"{bundle.name}-{bundle.fingerprint}"
    published = uri if settings.storage_path else None  # a cluster: nodes read the storage path, not this disk
    if published:
        publish(ExperimentStore(uri), Path(bundle.path), "bundles", key)
    shapes = sorted({(int(d), int(l)) for d in _values(space, "dim") for l in _values(space, "item_layers")})
    if not any(needs_pretraining(m) for m in _values(space, "model")):
        shapes = []  # a team's own towers that need no pretraining: nothing to compute
    device = "cuda" if settings.gpus_per_trial > 0 else "cpu"
    threads = settings.threads_per_trial or max(1, int(settings.cpus_per_trial))
    if settings.address:
        artifacts = _pretrain_as_task(settings, str(bundle.path), published, key, shapes, device, threads, log)
    else:
        artifacts = pretrain_shapes(str(bundle.path), None, key, shapes, device, progress=log)
        if published:
            for path in artifacts.values():
                publish(ExperimentStore(uri), Path(path), "pretrain")
    if published:
        log(f"published the data bundle and the pretraining artifacts to {uri}/artifacts")
    resources = None
    if settings.resolved_executor == "train":
        resources = {"CPU": settings.cpus_per_trial}
        if settings.gpus_per_trial:
            resources["GPU"] = settings.gpus_per_trial / settings.workers_per_trial
    return Shared(
        bundle=str(bundle.path), artifacts=artifacts,
        # Only a storage path is recorded: a local search's Tune state is wherever its --out is now,
        # so a moved or rsync'ed directory still reads.
        experiment_uri=uri if settings.storage_path else None,
        train_storage=join_uri(uri, TRAIN_RUNS),
        threads=threads, workers=settings.workers_per_trial, use_gpu=settings.gpus_per_trial > 0,
        resources_per_worker=resources, metric=settings.metric, published=published, bundle_key=key,
    )


def _pretrain_as_task(settings: SearchSettings, bundle_path: str, published: str | None, key: str,
                      shapes: list[tuple[int, int]], device: str, threads: int, log=print) -> dict[str, str]:
    """pretrain_shapes as a Ray task with one trial worker's resources; its progress lines come
    back through a queue and are printed here as they arrive."""
    import ray
    from ray.util.queue import Queue

    from raytower.tune.artifacts import pretrain_shapes

    lines = Queue(actor_options={"num_cpus": 0})
    task = ray.remote(pretrain_shapes).options(
        num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial / settings.workers_per_trial,
        max_retries=1)  # a lost node: once more elsewhere (finished shapes are cached there or published)
    ref = task.remote(bundle_path, published, key, shapes, device, threads, progress=lines.put)
    try:
        while True:
            done, _ = ray.wait([ref], timeout=1.0)
            for line in lines.get_nowait_batch(lines.qsize()):
                log(line)
            if done:
                return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, RaytowerError):
            raise e.cause from None  # a bad bundle or artifact entry: its one line, not Ray's traceback
        raise
    finally:
        lines.shutdown()


def _values(space: SearchSpace, name: str) -> list:
    for k in space.knobs:
        if k.name == name:
            if k.distribution != "categorical":
                raise ConfigError(f"{name} changes the pretrained artifacts: search it as categorical", space.source)
            return list(k.choices)
    return [getattr(space.config({}), name)]


# --- the search ------------------------------------------------------------------------------------


def run_search(settings: SearchSettings, data: str = "synthetic", prepare_options=None, log=print,
               given: frozenset[str] | None = None) -> dict:
    """Preflight, reconcile with an earlier session (``--resume``), prepare what the trials share
    and write the record, fit, finish. ``settings`` is never changed. ``given``: the settings the
    caller named (``settings.given_fields``); on --resume each must equal the recorded value.

    One search writes an --out at a time: another is refused, naming its PID. --resume of a killed
    search first stops the Ray processes that search left running."""
    out = Path(settings.out).resolve()
    refuse_if_held(out)  # a search already writing there: said first
    space = _preflight(settings, log)
    with writing_in_place(out, "search", "--out"):
        _check_output_dir(out, settings.resume, settings.min_free_gb)  # again, now that no other search can start
        if settings.resume:
            from raytower.tune._leftovers import stop_leftover_ray

            stop_leftover_ray(out, log)
        return _search(settings, space, out, data, prepare_options, log, given)


def _search(settings: SearchSettings, space: SearchSpace, out: Path, data: str, prepare_options, log,
            given: frozenset[str] | None) -> dict:
    previous = _previous_record(settings, out)
    if previous:  # the search goes on as it was started: Tune restores its own state from it too
        settings = _as_recorded(settings, previous, given)
        space = load_space(settings.space)  # the recorded space, when --space was left off
    # The resolved grace period is what the record (and best_config.json) says, never null.
    settings = dataclasses.replace(settings, grace_period=settings.grace_period
                                   or default_grace_period(space, settings.max_epochs))
    uri = experiment_uri(out, settings.storage_path)
    _check_where_it_runs(settings, uri)
    if settings.resume:  # before anything is written: Tuner.restore would unpickle tune/tuner.pkl
        from raytower.tune._tuner_state import verify_tuner_state

        verify_tuner_state(uri)
    import ray

    if settings.address:
        _join_cluster(settings, log)  # first: a trial the cluster can never place fails now, not later
    from raytower.data import load_bundle

    bundle = load_bundle(data, prepare_options, progress=True)
    if previous and previous.dataset.get("fingerprint") != bundle.fingerprint:
        raise ConfigError(f"--resume: this search ran on data with fingerprint {previous.dataset.get('fingerprint')} "
                          f"({previous.data}), but --data {data} prepares to {bundle.fingerprint}: give the same "
                          "--data and preparation flags", out / SETUP)
    record = SearchRecord(settings=asdict(settings), data=data, dataset=_dataset_info(bundle),
                          shared=prepare_shared(space, bundle, settings, uri, log),
                          elapsed_s=previous.elapsed_s if previous else 0.0)
    if not settings.resume:  # --out is created only now: a start that failed before left it untouched
        claim_output_dir(out, "search", force=output_kind(out) == "search")
    record.write(out)
    _log_header(settings, space, record, out, log)

    from raytower.tune._console import ray_logs_to

    with contextlib.nullcontext() if settings.verbose else ray_logs_to(out / RAY_LOG):
        if not settings.address:
            _init_ray(settings)
            from raytower.tune._leftovers import record_ray_processes

            record_ray_processes(out)  # what --resume stops if this driver is killed
        start = time.monotonic()
        try:
            _fit(settings, space, record.shared, out, uri)
        finally:
            ray.shutdown()
    return _finish(settings, record, out, uri, record.elapsed_s + time.monotonic() - start, log)


def _preflight(settings: SearchSettings, log=print) -> SearchSpace:
    """Every check that needs neither Ray nor the data: a bad flag, space or --out fails here."""
    settings.validate()
    from raytower.tune._adapter import check_dashboard, check_versions

    check_versions()  # raytower reads Ray's and Optuna's internals: a version it was not tested on fails now
    check_dashboard()  # ray[default]: without it ray.init fails only after pretraining
    space = load_space(settings.space)  # a malformed space fails here, before Ray starts
    for line in space.advice():
        log(f"raytower: warning: {settings.space}: {line}")
    _check_output_dir(Path(settings.out).resolve(), settings.resume, settings.min_free_gb)
    if settings.warm_start:
        _check_warm_start(Path(settings.warm_start))
    if settings.storage:
        _check_storage(settings.storage)
    if settings.address:
        _check_reachable(settings.address)
    return space


def _previous_record(settings: SearchSettings, out: Path) -> SearchRecord | None:
    """The record of the session a --resume continues; its storage path must be the one given."""
    if not (settings.resume and (out / SETUP).is_file()):
        return None
    previous = SearchRecord.read(out)
    recorded = previous.settings.get("storage_path")
    if settings.storage_path and settings.storage_path != recorded:
        how = (f"in {recorded}; resume it with that storage path" if recorded else
               "in its --out directory; resume it without --storage-path (and with RAYTOWER_STORAGE unset)")
        raise ConfigError(f"--storage-path {settings.storage_path}: this search keeps its Tune state {how}",
                          out / SETUP)
    return previous


# What --resume may change; every other setting is the recorded one (Tune restores the scheduler,
# the searcher and the trials from the first session, so a new value would only skew the record).
RESUME_MAY_CHANGE = ("resume", "verbose", "address", "min_free_gb", "out")


def _as_recorded(settings: SearchSettings, previous: SearchRecord,
                 named: frozenset[str] | None = None) -> SearchSettings:
    """The recorded settings, with this session's RESUME_MAY_CHANGE. A flag given (``named``) with
    another value than the recorded one is refused in one line, even when that value is the
    default; one left off takes the recorded value. Without ``named``, a value other than the
    default counts as given."""
    from raytower.tune.settings import flag_of

    defaults, kept = SearchSettings(), {}
    for f in dataclasses.fields(SearchSettings):
        if f.name in RESUME_MAY_CHANGE or f.name not in previous.settings:  # (a record older than the field)
            continue
        given, recorded = getattr(settings, f.name), previous.settings[f.name]
        named_here = f.name in named if named is not None else given != getattr(defaults, f.name)
        if named_here and given != recorded:
            raise ConfigError(f"{flag_of(f.name)} {given}: this search ran with {recorded}; --resume continues it "
                              "as it was started (leave the flag off)", Path(settings.out).resolve() / SETUP)
        kept[f.name] = recorded
    return dataclasses.replace(settings, **kept)


def _check_where_it_runs(settings: SearchSettings, uri: str) -> None:
    """The storage path is usable and new, and a local machine has what one trial asks for."""
    if settings.storage_path:
        store = ExperimentStore(uri)  # an unknown scheme fails now
        if not settings.resume and store.is_dir(EXPERIMENT):
            raise ConfigError(f"already holds a search named {Path(settings.out).name!r}: choose another --out name",
                              uri)
    if settings.address:
        return  # a cluster's nodes are judged once joined (_join_cluster)
    if settings.gpus_per_trial > 0:
        import torch

        if settings.gpus_per_trial > torch.cuda.device_count():
            raise ConfigError(f"--gpus-per-trial {settings.gpus_per_trial:g}: this machine has "
                              f"{torch.cuda.device_count()} GPU(s), so no trial could ever start")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if settings.cpus_per_trial * settings.workers_per_trial > cpus:
        raise ConfigError(f"--cpus-per-trial {settings.cpus_per_trial:g} x --workers-per-trial "
                          f"{settings.workers_per_trial}: this machine has {cpus} CPU(s), so no trial could ever start")


def _join_cluster(settings: SearchSettings, log=print) -> None:
    import ray

    _init_ray(settings)
    try:
        offers = _cluster_offers()
        if offers is None:
            log("the resources of this cluster's autoscaler node types are unknown here (KubeRay keeps them in "
                "its RayCluster): whether a trial fits is not checked, and one that fits no node will wait")
        _check_cluster_fits(settings, offers)
    except BaseException:
        ray.shutdown()
        raise


def _log_header(settings: SearchSettings, space: SearchSpace, record: SearchRecord, out: Path, log=print) -> None:
    info = record.dataset
    stopping = (f"ASHA grace period {settings.grace_period} epochs, reduction factor {settings.reduction_factor}"
                if settings.scheduler == "asha" else "no early stopping")
    log(f"search: {settings.num_samples} trials of up to {settings.max_epochs} epochs on {info['name']} "
        f"({info['n_users']:,} users, {info['n_items']:,} items, {info['n_interactions']:,} interactions); "
        f"space {settings.space} ({len(space.knobs)} knobs); {settings.searcher.upper()} on validation "
        f"{settings.metric}, {stopping}; results in {out}"
        + ("" if settings.verbose else f" (Ray's own log: {out / RAY_LOG})"))


def _finish(settings: SearchSettings, record: SearchRecord, out: Path, uri: str, elapsed: float, log=print) -> dict:
    """Record the session's time; export the results, or raise SearchInterrupted when trials are left.

    Wall time is summed over sessions: whether Tune restarts the budget on --resume or not, a
    search that ended short of num_samples after the budget was spent ended for the budget."""
    from raytower.tune.results import export_results, tune_statuses

    statuses = tune_statuses(out)
    budget_spent = settings.time_budget_s is not None and elapsed >= settings.time_budget_s
    record.finish(out, elapsed, budget_spent)
    ended = sum(s in ("TERMINATED", "ERROR") for s in statuses.values())
    if ended < len(statuses) or (len(statuses) < settings.num_samples and not budget_spent):
        # Tune catches the first Ctrl-C itself, saves the experiment and returns: what ended is
        # exported (without test figures), and --resume picks up the rest.
        try:
            export_results(out, log=log)
        except ConfigError:
            pass  # no trial had reported yet
        raise SearchInterrupted(out, ended, settings.num_samples)
    _close_study(settings.storage or f"sqlite:///{out / OPTUNA_DB}", log)
    doc = export_results(out, log=log)
    if settings.storage_path:
        # The SQLite study lived on the driver's disk (never on object storage or a network
        # filesystem); a copy goes beside the Tune state now that nothing writes to it.
        copied = ExperimentStore(uri).publish(out)
        log(f"copied {', '.join(copied)} to {uri}")
    return doc


def _close_study(storage_url: str, log=print) -> None:
    """No trial stays RUNNING in the study once the search has ended.

    A driver killed just after the searcher asked Optuna for a trial, and before Tune saved that
    trial, leaves it RUNNING in the study with no Tune trial behind it. The resumed searcher reuses
    such trials (TruthfulOptunaSearch.restore); any left over are closed as FAIL here."""
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=optuna.storages.RDBStorage(storage_url))
    left = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in left:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    if left:
        log(f"closed {len(left)} Optuna trial(s) left RUNNING by an earlier interruption as FAIL")


def _dataset_info(bundle) -> dict:
    return {"name": bundle.name, "fingerprint": bundle.fingerprint, "n_users": bundle.n_users,
            "n_items": bundle.n_items, "n_interactions": bundle.manifest["n_interactions"]}


def _check_output_dir(out: Path, resume: bool, min_free_gb: float = 0.0) -> None:
    """Every check before anything is created: a bad --out fails now, not after an hour."""
    if out == Path("/dev/shm") or Path("/dev/shm") in out.parents:
        raise ConfigError("--out is in /dev/shm, which holds Ray's object store: checkpoints there would "
                          "starve it; choose a directory on disk", out)
    exists = (out / EXPERIMENT).exists() or (out / SETUP).exists()
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


def _init_ray(settings: SearchSettings) -> None:
    import signal

    # ray.init installs its C++ failure handler for SIGTERM (a stack dump, then abort): a Python
    # handler set before it (the CLI's: stop like Ctrl-C) is put back afterwards.
    on_term = signal.getsignal(signal.SIGTERM)
    if not settings.address and callable(on_term) and not sys.stdin.isatty():
        # Off a terminal, SIGTERM often comes to the whole process group (timeout, job schedulers):
        # the local Ray's processes, started below, must not die with it before Tune has saved the
        # search. A group of our own keeps them out of it; on a terminal the group stays, so Ctrl-C
        # still reaches the driver (Ray shields its processes from SIGINT itself).
        try:
            os.setpgid(0, 0)
        except OSError:
            pass  # a session leader (PID 1 in a container) already has its own group
    try:
        _start_ray(settings)
    finally:
        if callable(on_term):
            signal.signal(signal.SIGTERM, on_term)


init_ray = _init_ray  # public: how Ray starts for a search, for benchmarks/bench_overhead.py --ray-floor


def _start_ray(settings: SearchSettings) -> None:
    import ray

    # The Train V2 placement-group cleaner talks to the State API: keep the dashboard on,
    # bound to loopback. address="local" so a stray RAY_ADDRESS is not joined by accident.
    if settings.address:
        try:
            ray.init(address=settings.address, log_to_driver=bool(settings.verbose))
        except ConnectionError as e:
            raise ConfigError(f"--address {settings.address}: {str(e).strip().splitlines()[0][:200]}") from None
    else:
        # Train V2's placement-group cleaner finds the State API through RAY_API_SERVER_ADDRESS;
        # pinning it to our own dashboard keeps it working when another Ray runs on the host.
        port = _free_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                 # No _node_ip_address: ray.init rewrites 127.0.0.1 to the host's address anyway
                 # (services.resolve_ip_for_localhost), and GCS and raylet listen on every
                 # interface. Token authentication (Ray's default) is what guards those ports.
                 # The trials' own output ("Checkpoint successfully created", ...) stays in Ray's
                 # session logs unless -v: the console gets raytower's lines.
                 resources={"raytower_driver": 1000}, log_to_driver=bool(settings.verbose))


BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the cluster's config on the head


def _cluster_offers() -> list[dict[str, float]] | None:
    """The resources of each live node and of each node type the autoscaler may add; None when
    some node type's resources are unknown, so nothing may be refused."""
    import ray

    live = [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]
    return _offers(live, _bootstrap_node_types(), _gcs_node_groups(), kuberay=bool(os.environ.get("RAY_CLUSTER_NAME")))


def _offers(live: list[dict], bootstrap: list[dict] | None | bool, gcs_groups: list[dict] | None,
            kuberay: bool) -> list[dict[str, float]] | None:
    """Live nodes plus the node types an autoscaler may add, from the first source that has them:
    the config `ray up` leaves on the head (``bootstrap``: False when absent, None when a type's
    resources are unknown), the cluster config an autoscaler may publish in GCS, and otherwise
    nothing. KubeRay keeps its worker groups in the RayCluster object, out of a driver's sight: a
    group scaled to zero may be the one that fits, so without a published config a KubeRay cluster
    is not judged."""
    if bootstrap is None:
        return None
    if bootstrap is not False:
        return live + bootstrap
    if gcs_groups is not None:
        return live + gcs_groups
    return None if kuberay else live


def _bootstrap_node_types() -> list[dict] | None | bool:
    bootstrap = Path(os.path.expanduser(BOOTSTRAP_CONFIG))
    if not bootstrap.is_file():
        return False
    import yaml

    offers = []
    try:
        types = (yaml.safe_load(bootstrap.read_text()) or {}).get("available_node_types") or {}
        for t in types.values():
            res = t.get("resources") or {}
            if "CPU" not in res and "GPU" not in res:
                return None  # `ray up` could not detect this type's resources: it might fit
            offers.append({"CPU": math.inf, **res})
    except (yaml.YAMLError, AttributeError):
        pass  # not ours to judge; the live nodes still count
    return offers


def _gcs_node_groups() -> list[dict] | None:
    """Node groups from the cluster config an autoscaler may publish in GCS; None when absent,
    unreadable, or when some group's resources are unknown."""
    from raytower.tune._adapter import published_node_groups

    groups = published_node_groups()
    return None if groups is None or any("CPU" not in g and "GPU" not in g for g in groups) else groups


def _check_cluster_fits(settings: SearchSettings, offers: list[dict[str, float]] | None) -> None:
    """A trial's worker must fit on some node, and with the train executor its driver too (the
    raytower_driver resource). Otherwise its trials would pend forever."""
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_warm_start(earlier: Path) -> None:
    if not (earlier / OPTUNA_DB).is_file():
        raise ConfigError("--warm-start: no optuna.db there (expected an earlier search's --out)", earlier)


def _check_storage(url: str) -> None:
    """A --storage URL that Optuna cannot open fails before anything is written."""
    import optuna

    try:
        optuna.storages.RDBStorage(url)
    except Exception as e:  # a bad URL, an unknown dialect, a refused connection
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"--storage {url}: cannot open it ({first})") from None


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


def _warm_trials(earlier: Path) -> list:
    """The earlier study's finished trials (values and pruned histories), each marked with where it
    came from, so the new study tells them apart from its own trials."""
    import optuna

    db = earlier / OPTUNA_DB
    try:
        old = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    except Exception as e:  # not a raytower study
        raise ConfigError(f"--warm-start: cannot read the study ({type(e).__name__})", db) from None
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [optuna.trial.create_trial(
        state=t.state, value=t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
        params=t.params, distributions=t.distributions, intermediate_values=t.intermediate_values,
        user_attrs={**t.user_attrs, WARM_START_FROM: str(earlier.resolve()), WARM_START_NUMBER: t.number},
    ) for t in old.trials if t.state in done]


def _not_run_yet(points: list[dict], trials: list) -> list[dict]:
    """Start points that no warm-start trial has already run (they would only be run again)."""
    return [p for p in points if not any(t.params == p for t in trials)]


def _trainable(settings: SearchSettings, shared: Shared):
    from ray import tune

    from raytower.trainables.curriculum import function_trainable, train_driver

    setup = asdict(shared)  # plain data to the trials: they need not import this module
    if settings.resolved_executor == "function":
        return tune.with_resources(tune.with_parameters(function_trainable, setup=setup),
                                   {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    # The trial is only the Train run's driver: it holds a raytower_driver slot, no CPU. Its
    # workers get their own placement group; reserving their CPUs in the trial too deadlocks.
    return tune.with_resources(tune.with_parameters(train_driver, setup=setup), {"cpu": 0, "raytower_driver": 1})


def startup_trials(num_samples: int) -> int:
    """TPE's random start-up trials: a quarter of the search, at least 4, at most Optuna's 10."""
    return min(10, max(4, num_samples // 4))


def make_sampler(settings: SearchSettings):
    """Optuna's sampler for ``--searcher``. tpe-mv is TPE over the joint distribution of knobs that
    are sampled together (Falkner et al.'s multivariate TPE); ``group=True`` splits the space by which
    knobs each trial has, so the conditional ``lr_ratio`` (only with unfreeze_depth > 0) is modelled
    jointly where present instead of falling back to independent sampling."""
    import warnings

    import optuna

    if settings.searcher == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    # Both spelled out: Optuna 5 made multivariate (None -> True for one objective) and the constant
    # liar (penalise configurations near running trials) the defaults, Optuna 4 had neither; "tpe"
    # means the same, independent TPE on every supported version.
    multivariate = settings.searcher == "tpe-mv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate, group, liar
        return optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=startup_trials(settings.num_samples),
                                          multivariate=multivariate, group=multivariate, constant_liar=True)


def _trial_dirname(trial) -> str:
    return trial_dirname(trial.trial_id)


def _fit(settings: SearchSettings, space: SearchSpace, shared: Shared, out: Path, uri: str):
    import optuna
    from ray import tune

    from raytower.tune._callbacks import CurriculumStopper, DriverMemory, RecordingASHA, StopLog, TruthfulOptunaSearch
    from raytower.tune._console import ConsoleReporter
    from raytower.tune._tuner_state import sign_tuner_state, verify_tuner_state

    metric = val_key(settings.metric)
    stops = StopLog(str(out / STOPS))
    trainable = _trainable(settings, shared)
    experiment = join_uri(uri, EXPERIMENT)
    if settings.resume and tune.Tuner.can_restore(experiment):
        # Restores the searcher (TPE state, the study's trial map), the stopper and every unfinished
        # trial from its newest checkpoint. Building a new OptunaSearch here would enqueue the start
        # points into the study a second time. Tune keeps this state as pickles: resume only
        # directories raytower wrote, and tuner.pkl only as this user's key signed it.
        verify_tuner_state(uri)  # again, just before Ray unpickles it
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
        sign_tuner_state(uri)
        return _fit_then_sign(tuner, uri), stops
    # A fresh search, or a resumed one whose start failed before Tune saved anything: it starts now.
    storage_url = settings.storage or f"sqlite:///{out / OPTUNA_DB}"
    storage = optuna.storages.RDBStorage(storage_url)
    # Optuna's 10 random start-up trials are half of a 20-trial search; a quarter of the budget
    # (the start points among them) leaves TPE most of it.
    sampler = make_sampler(settings)
    warm = _warm_trials(Path(settings.warm_start)) if settings.warm_start else []
    searcher = TruthfulOptunaSearch(
        space=space.define_by_run, metric=metric, mode="max", sampler=sampler, storage=storage,
        study_name=STUDY, points_to_evaluate=_not_run_yet(list(space.start_from), warm) or None,
        log=stops, truthful=settings.truthful_pruning,
    )
    scheduler = (RecordingASHA(stops, max_t=settings.max_epochs, grace_period=settings.grace_period,
                               reduction_factor=settings.reduction_factor)
                 if settings.scheduler == "asha" else None)
    param_space = {"epochs": settings.max_epochs, "val_users": settings.val_users}
    stopper = CurriculumStopper(stops, settings.chance_patience, settings.collapse_frac,
                                patience=settings.patience, grace=settings.grace_period, metric=metric)
    # The trainable writes the curriculum's scalars to TensorBoard under stable names; Tune's own
    # TBX logger would write a second copy of every metric. Keep its JSON and CSV loggers only.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    run_config = tune.RunConfig(
        name=EXPERIMENT, storage_path=uri, stop=stopper, verbose=1 if settings.verbose else 0,
        # Trial directories (TensorBoard files) go to the storage path too, not only checkpoints.
        sync_config=tune.SyncConfig(sync_artifacts=bool(settings.storage_path)),
        callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), DriverMemory(str(out / DRIVER_MEMORY))]
        + ([] if settings.verbose else [ConsoleReporter(settings.num_samples, space.names, stops, settings.max_epochs,
                                                       settings.metric)]),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=metric,
                                                checkpoint_score_order="max"),
        failure_config=tune.FailureConfig(max_failures=2),
    )
    if warm:
        from raytower.tune._adapter import add_trials

        add_trials(searcher, warm)
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=settings.num_samples,
                                    max_concurrent_trials=settings.max_concurrent,
                                    time_budget_s=settings.time_budget_s,
                                    # metric/mode here (not on ASHA) so the progress table shows the best trial
                                    metric=metric, mode="max", trial_dirname_creator=_trial_dirname),
        run_config=run_config,
    )
    sign_tuner_state(uri)  # Tuner() wrote tune/tuner.pkl: Ray's only write of it
    return _fit_then_sign(tuner, uri), stops


def _fit_then_sign(tuner, uri: str):
    from raytower.tune._tuner_state import sign_tuner_state

    try:
        return tuner.fit()
    finally:  # however fit ended (done, interrupted, failed), the file is as Ray left it: sign that
        sign_tuner_state(uri)
