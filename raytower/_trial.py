"""What every trial of a search is handed, and how a trial on any node reads it.

    context = TrialContext.from_dict(doc)    # the trainable's ``context``, made by the search
    bundle = Bundle(local_copy(context.bundle, context.artifact_store, "bundles", context.bundle_key))
    artifacts = context.load_artifacts(cfg)    # None for towers that need no pretraining

The search (``raytower.tune``) makes it and publishes the entries (``raytower.tune.artifacts``); the
trainable (``raytower.trainables``) reads it. It lies below both, so neither imports the other back:
plain data and files, no Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from raytower._io import atomic_dir, cache_root
from raytower._lock import hold_cache_entry
from raytower._storage import ExperimentStore
from raytower.names import DEFAULT_METRIC

ARTIFACTS = "artifacts"  # under the storage path: artifacts/bundles/<name>-<fingerprint>, artifacts/pretrain/...
COMPLETE = "manifest.json"  # both kinds of entry are complete once their manifest is there
PUBLISHED = ".published"  # written last: a half-published entry is never fetched


@dataclass
class TrialContext:
    """What every trial of the search is handed besides its config: the data, the pretraining
    artifacts and the resources, by path (bound to the trainable with ``tune.with_parameters``, so it
    stays out of the trial's config). A search's record keeps it under "shared"."""

    bundle: str
    artifacts: dict[str, str]  # "dim-item_layers" -> pretraining artifacts directory
    experiment_uri: str | None = None  # only with --storage-path: else OUT, wherever it is now
    train_storage: str = ""  # where executor "train" keeps its Ray Train runs
    threads: int = 1  # torch threads per trial
    workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None  # executor "train"
    metric: str = DEFAULT_METRIC  # what a trial's best epoch and kept checkpoints are chosen by
    # With --storage-path: the store the bundle and artifacts are published to (raytower.tune.artifacts),
    # so a node whose cache lacks them fetches them by name.
    artifact_store: str | None = None
    bundle_key: str | None = None  # the bundle's name there: <dataset>-<fingerprint>

    def artifact_path(self, cfg) -> str:
        return self.artifacts[f"{cfg.dim}-{cfg.item_layers}"]

    def load_artifacts(self, cfg):
        """The pretraining artifacts a model of ``cfg`` builds on (this node's copy, fetched by name
        on a cluster), or None for towers that need no pretraining (``raytower.model.towers``)."""
        from raytower.model.pretrain import Artifacts
        from raytower.model.towers import needs_pretraining

        if not needs_pretraining(cfg.model):
            return None
        return Artifacts.load(local_copy(self.artifact_path(cfg), self.artifact_store, "pretrain"))

    @classmethod
    def from_dict(cls, doc: dict) -> "TrialContext":
        """From ``asdict`` or a search's record; a record written before a field's rename has its old name."""
        known = {f.name for f in dataclasses.fields(cls)}
        doc = {_RENAMED.get(k, k): v for k, v in doc.items()}
        return cls(**{k: v for k, v in doc.items() if k in known})


_RENAMED = {"published": "artifact_store"}  # raytower 0.x's names in a record's "shared"


class _KeepExisting(Exception):
    pass


def local_copy(path: str, store_uri: str | None, kind: str, key: str | None = None) -> Path:
    """Where this node reads an entry: ``path`` itself in a search that published nothing (a local
    one); else this node's own cache entry (on the driver's node, usually ``path`` itself), fetched
    from the search's storage path (``store_uri``) the first time. A node never reads another
    node's cache, even on a disk they happen to share. Several trials on one node may ask at once:
    the first fetches, the others wait for it and use its copy."""
    here = Path(path)
    if not store_uri:
        return here
    cached = cache_root() / kind / (key or here.name)
    if (cached / COMPLETE).is_file():
        return cached
    store = ExperimentStore(store_uri)
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
