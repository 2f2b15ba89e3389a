"""Artifacts that travel: published to the storage path once, fetched by name into the cache of a
node that lacks them (a cluster node whose disk is not the driver's)."""

import torch

from raytower._storage import ExperimentStore
from raytower._trial import local_copy
from raytower.data import Bundle
from raytower.model.pretrain import Artifacts
from raytower.tune.artifacts import publish


def test_a_node_with_an_empty_cache_fetches_the_bundle_and_artifacts(small_bundle, small_artifacts, tmp_path,
                                                                     monkeypatch):
    store = ExperimentStore(f"file://{tmp_path}/bucket/s1")
    key = f"{small_bundle.name}-{small_bundle.fingerprint}"
    publish(store, small_bundle.path, "bundles", key)
    publish(store, small_artifacts.path, "pretrain")
    assert store.is_file(f"artifacts/bundles/{key}/manifest.json")

    node_cache = tmp_path / "node-cache"  # another node: nothing cached, the driver's paths absent
    monkeypatch.setenv("RAYTOWER_CACHE", str(node_cache))
    gone_bundle, gone_artifacts = tmp_path / "driver" / "b", tmp_path / "driver" / small_artifacts.path.name
    bundle = Bundle(local_copy(str(gone_bundle), store.uri, "bundles", key))
    artifacts = Artifacts.load(local_copy(str(gone_artifacts), store.uri, "pretrain"))
    assert bundle.path == node_cache / "bundles" / key and bundle.fingerprint == small_bundle.fingerprint
    assert not (bundle.path / ".published").exists()
    assert torch.equal(artifacts.gnn_item, small_artifacts.gnn_item)
    # The second trial on the node reads the copy, without fetching it again.
    mtime = (bundle.path / "manifest.json").stat().st_mtime_ns
    assert local_copy(str(gone_bundle), store.uri, "bundles", key) == bundle.path
    assert (bundle.path / "manifest.json").stat().st_mtime_ns == mtime
    # The driver's node: the entry in its cache is the one it prepared. A local search: the path as given.
    monkeypatch.undo()
    assert local_copy(str(small_bundle.path), store.uri, "bundles", key) == small_bundle.path
    assert local_copy(str(gone_bundle), None, "bundles", key) == gone_bundle


def test_an_entry_is_published_once_and_never_fetched_half_written(small_artifacts, tmp_path, monkeypatch):
    store = ExperimentStore(f"file://{tmp_path}/bucket/s1")
    rel = publish(store, small_artifacts.path, "pretrain")
    (tmp_path / "bucket" / "s1" / rel / "manifest.json").write_text("{}")  # a copy nobody should make again
    publish(store, small_artifacts.path, "pretrain")
    assert (tmp_path / "bucket" / "s1" / rel / "manifest.json").read_text() == "{}"

    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "node-cache"))
    (tmp_path / "bucket" / "s1" / rel / ".published").unlink()  # as if the driver died mid-publish
    gone = tmp_path / "driver" / small_artifacts.path.name
    assert local_copy(str(gone), store.uri, "pretrain") == gone  # not fetched: the loader reports it missing
    assert not (tmp_path / "node-cache" / "pretrain").exists()
