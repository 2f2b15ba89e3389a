"""What the trials of a search share, made once before the first trial, and the artifacts that travel.

    shared = prepare_shared(space, bundle, settings, uri)          # the driver: popularity, pretraining
    published = publish(store, Path(bundle.path), "bundles")      # the driver, once per search
    path = local_copy(shared.bundle, shared.artifact_store, "bundles")   # a trial, on whatever node (raytower._trial)

The data bundle and the pretraining artifacts are published to the search's storage path and
fetched by name (which holds the fingerprint) on any node whose cache lacks them. A local search
needs none of this: its trials run where the driver prepared everything. With ``--storage-path``
(a cluster) every node can read the storage path, but not the head's disk.
"""

from __future__ import annotations

from pathlib import Path

from raytower._storage import ExperimentStore, join_uri
from raytower._trial import ARTIFACTS, PUBLISHED, TrialContext, local_copy
from raytower.errors import ConfigError, RaytowerError
from raytower.model.towers import needs_pretraining
from raytower.names import TRAIN_RUNS
from raytower.tune.settings import SearchSettings
from raytower.tune.space import SearchSpace


def publish(store: ExperimentStore, local: Path, kind: str, key: str | None = None) -> str:
    """Copy the entry ``local`` to ``store`` under ``key`` (default: its directory's name, which for
    a cache entry holds the fingerprint), once: an entry already published is kept. Returns its
    path relative to the store."""
    rel = f"{ARTIFACTS}/{kind}/{key or local.name}"
    if store.is_file(f"{rel}/{PUBLISHED}"):
        return rel
    store.copy_in(local, rel)
    store.write_bytes(f"{rel}/{PUBLISHED}", b"")
    return rel


def pretrain_shapes(bundle_path: str, published: str | None, bundle_key: str, shapes: list[tuple[int, int]],
                    device: str = "cpu", threads: int | None = None, progress=print) -> dict[str, str]:
    """Pretrain (or find cached) the artifacts of each (dim, item_layers) on this node, publish them
    when the search publishes (``published``), and return their paths by "dim-item_layers".

    What the search's pretraining task runs on a cluster node with a trial's resources (a GPU worker
    when trials get GPUs); a local search calls it in the driver."""
    import torch

    from raytower.data import Bundle
    from raytower.model.pretrain import PretrainConfig, artifacts_dir, describe_estimate, pretrain

    # A trial's threads, not every core's: on a busy machine intra-op threads past the free cores
    # wait on each other. On the demo's data beside two other processes (2 cores), LightGCN took
    # 12.8 CPU-s with torch's 2 threads against 2.1 with 1, the item tower 5.1 against 0.6; the
    # demo paid 180 CPU-s before its header (issue 28 part 2). Put back after: an API caller keeps its own.
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        bundle = Bundle(local_copy(bundle_path, published, "bundles", bundle_key))
        paths = {}
        for dim, layers in shapes:
            pcfg = PretrainConfig(dim=dim, item_layers=layers)
            if published:  # made before (a resumed search, a retried task): fetched into this node's cache
                local_copy(str(artifacts_dir(bundle, pcfg)), published, "pretrain")
            progress(f"pretraining LightGCN + item tower on {device} (cached per data set), "
                     f"{describe_estimate(bundle, pcfg, device)}")
            art = pretrain(bundle, pcfg, progress=progress, device=device)
            if published:
                publish(ExperimentStore(published), art.path, "pretrain")
            paths[f"{dim}-{layers}"] = str(art.path)
        return paths
    finally:
        torch.set_num_threads(before)


def prepare_shared(space: SearchSpace, bundle, settings: SearchSettings, uri: str, log=print) -> TrialContext:
    """Popularity once, into the bundle; then the pretraining of each (dim, item_layers) the space
    can ask for: on a cluster as a Ray task with a trial's resources (a GPU worker when trials get
    GPUs), so the head needs no accelerator; on one machine in the driver, on the GPU when trials
    get one. With a storage path, the bundle and the artifacts are published there first."""
    from raytower.train.evaluate import popularity

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
        artifacts = pretrain_shapes(str(bundle.path), None, key, shapes, device, threads, progress=log)
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
    return TrialContext(
        bundle=str(bundle.path), artifacts=artifacts,
        # Only a storage path is recorded: a local search's Tune state is wherever its --out is now,
        # so a moved or rsync'ed directory still reads.
        experiment_uri=uri if settings.storage_path else None,
        train_storage=join_uri(uri, TRAIN_RUNS),
        threads=threads, workers=settings.workers_per_trial, use_gpu=settings.gpus_per_trial > 0,
        resources_per_worker=resources, metric=settings.metric, artifact_store=published, bundle_key=key,
    )


def _pretrain_as_task(settings: SearchSettings, bundle_path: str, published: str | None, key: str,
                      shapes: list[tuple[int, int]], device: str, threads: int, log=print) -> dict[str, str]:
    """pretrain_shapes as a Ray task with one trial worker's resources; its progress lines come
    back through a queue and are printed here as they arrive."""
    import ray
    from ray.util.queue import Queue

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
    """The values the space can give ``name``: the pretrained artifacts depend on them."""
    for k in space.knobs:
        if k.name == name:
            if k.distribution != "categorical":
                raise ConfigError(f"{name} changes the pretrained artifacts: search it as categorical", space.source)
            return list(k.choices)
    return [getattr(space.config({}), name)]
