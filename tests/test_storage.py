"""The storage path layer: one search per folder under the storage URI, results published there and
fetched back, through pyarrow's filesystems (file:// here; s3:// and gs:// the same way)."""

import json

import pytest

from raytower._storage import PUBLISHED, ExperimentStore, experiment_uri
from raytower.errors import ConfigError


def test_search_lives_in_its_own_folder_of_the_storage_path(tmp_path):
    assert experiment_uri(tmp_path / "runs" / "s1", None) == str(tmp_path / "runs" / "s1")
    assert experiment_uri(tmp_path / "runs" / "s1", "s3://bucket/raytower/") == "s3://bucket/raytower/s1"


def test_publish_then_fetch_round_trips_the_results(tmp_path):
    out = tmp_path / "head" / "s1"
    out.mkdir(parents=True)
    (out / "best_config.json").write_text(json.dumps({"trial_id": "abc"}))
    (out / "optuna.db").write_bytes(b"SQLite format 3\x00" + bytes(100))
    store = ExperimentStore(f"file://{tmp_path}/bucket/s1")
    assert store.publish(out) == [n for n in PUBLISHED if (out / n).is_file()]
    assert store.is_file("optuna.db") and not store.is_file("trials.parquet")
    missing = store.fetch(("best_config.json", "trials.parquet"), tmp_path / "fetched")
    assert missing == ["trials.parquet"]
    assert json.loads((tmp_path / "fetched" / "best_config.json").read_text()) == {"trial_id": "abc"}


def test_an_unknown_scheme_is_a_one_line_error():
    with pytest.raises(ConfigError, match="cannot open it"):
        ExperimentStore("nosuchscheme://bucket/x")


def test_parts_join_before_a_query():
    from raytower._storage import join_uri

    assert join_uri("s3://b/p?endpoint_override=h:9000", "tune") == "s3://b/p/tune?endpoint_override=h:9000"
    assert join_uri("/runs/s1/", "train") == "/runs/s1/train"
