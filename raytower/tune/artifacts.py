"""Artifacts that travel: the data bundle and the pretraining artifacts of a search, published to its
storage path and fetched by name (which holds the fingerprint) on any node whose cache lacks them.

    published = publish(store, Path(bundle.path), "bundles")      # the driver, once per search
    path = local_copy(shared.bundle, shared.published, "bundles")   # a trial, on whatever node (raytower._trial)

A local search needs none of this: its trials run where the driver prepared everything. With
``--storage-path`` (a cluster) every node can read the storage path, but not the head's disk.
"""

from __future__ import annotations

from pathlib import Path

from raytower._storage import ExperimentStore
from raytower._trial import ARTIFACTS, PUBLISHED, local_copy


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
    from raytower.model.pretrain import PretrainConfig, artifacts_dir, pretrain

    if threads:
        torch.set_num_threads(threads)
    bundle = Bundle(local_copy(bundle_path, published, "bundles", bundle_key))
    paths = {}
    for dim, layers in shapes:
        progress(f"pretraining LightGCN + item tower for dim={dim}, item_layers={layers} on {device} "
                 "(cached per data set)")
        pcfg = PretrainConfig(dim=dim, item_layers=layers)
        if published:  # made before (a resumed search, a retried task): fetched into this node's cache
            local_copy(str(artifacts_dir(bundle, pcfg)), published, "pretrain")
        art = pretrain(bundle, pcfg, progress=progress, device=device)
        if published:
            publish(ExperimentStore(published), art.path, "pretrain")
        paths[f"{dim}-{layers}"] = str(art.path)
    return paths
