"""Artifacts that travel: the data bundle and the pretraining artifacts of a search, published to its
storage path and fetched by name (which holds the fingerprint) on any node whose cache lacks them.

    published = publish(store, Path(bundle.path), "bundles")      # the driver, once per search
    path = local_copy(shared.bundle, shared.published, "bundles")   # a trial, on whatever node

A local search needs none of this: its trials run where the driver prepared everything. With
``--storage-path`` (a cluster) every node can read the storage path, but not the head's disk.
"""

from __future__ import annotations

from pathlib import Path

from raytower._io import atomic_dir, cache_root
from raytower._lock import hold_cache_entry
from raytower.tune._storage import ExperimentStore

ARTIFACTS = "artifacts"  # under the storage path: artifacts/bundles/<name>-<fingerprint>, artifacts/pretrain/...
COMPLETE = "manifest.json"  # both kinds of entry are complete once their manifest is there
PUBLISHED = ".published"  # written last: a half-published entry is never fetched


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


class _KeepExisting(Exception):
    pass


def local_copy(path: str, published: str | None, kind: str, key: str | None = None) -> Path:
    """Where this node reads an entry: ``path`` itself in a search that published nothing (a local
    one); else this node's own cache entry (on the driver's node, usually ``path`` itself), fetched
    from the search's storage path (``published``) the first time. A node never reads another
    node's cache, even on a disk they happen to share. Several trials on one node may ask at once:
    the first fetches, the others wait for it and use its copy."""
    here = Path(path)
    if not published:
        return here
    cached = cache_root() / kind / (key or here.name)
    if (cached / COMPLETE).is_file():
        return cached
    store = ExperimentStore(published)
    rel = f"{ARTIFACTS}/{kind}/{key or here.name}"
    if not store.is_file(f"{rel}/{PUBLISHED}"):
        return here

    def keep(existing: Path) -> None:
        if (existing / COMPLETE).is_file():
            raise _KeepExisting

    with hold_cache_entry(cached):  # another trial on this node fetching it: wait, then use its copy
        if (cached / COMPLETE).is_file():
            return cached
        try:
            with atomic_dir(cached, may_replace=keep) as tmp:
                store.copy_out(rel, tmp)
                (tmp / PUBLISHED).unlink(missing_ok=True)
        except _KeepExisting:
            pass
        except OSError:  # another trial's copy landed between the check and the rename: keep it
            if not (cached / COMPLETE).is_file():
                raise
    return cached


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
