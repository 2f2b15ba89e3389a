"""prepare / load_bundle: the real ml-100k, hand-made logs for each filter and split rule, caching,
and failures that leave nothing behind.

Hand-made logs are tiny RawData built here (invented rows); the real ml-100k comes from the
``ml100k_dir`` fixture (tests/conftest.py) and the MovieLens/generic fixtures from fixtures/.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import raytower.data as data
from raytower.data import Bundle, PrepareOptions, load_bundle, summary_rows
from raytower.data._movielens import read_movielens
from raytower.data._prepare import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, fingerprint, prepare
from raytower.data._raw import RawData
from raytower.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


# ---------------------------------------------------------------- helpers


def raw_of(rows, rating: bool = False, name: str = "hand") -> RawData:
    """RawData from (user, item, timestamp[, rating]) tuples, in file order."""
    cols = ["user", "item", "timestamp"] + (["rating"] if rating else [])
    df = pd.DataFrame(rows, columns=cols)
    df["timestamp"] = df["timestamp"].astype("int64")
    if rating:
        df["rating"] = df["rating"].astype("float64")
    return RawData(name=name, interactions=df)


def prep(raw: RawData, tmp_path: Path, **options) -> Bundle:
    out = tmp_path / f"bundle-{len(list(tmp_path.iterdir()))}"
    prepare(raw, PrepareOptions(**options), "test", out)
    return Bundle(out)


def frame(b: Bundle) -> pd.DataFrame:
    """The bundle's interactions with the raw ids, in bundle order."""
    uid = b.users.set_index("user_idx")["user_id"]
    iid = b.items.set_index("item_idx")["item_id"]
    return pd.DataFrame({
        "user": uid.loc[b.user_idx].to_numpy(), "item": iid.loc[b.item_idx].to_numpy(),
        "timestamp": b.timestamp, "split": b.split,
    })


def items_of(b: Bundle, user: str, split: int | None = None) -> list[str]:
    f = frame(b)
    f = f[f["user"] == user]
    return f["item"].tolist() if split is None else f.loc[f["split"] == split, "item"].tolist()


def leftovers(root: Path) -> list[str]:
    """Everything under ``root`` (files and folders), relative: a failed run must leave none."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def check_leave_last_out(b: Bundle) -> None:
    """Exactly one val and one test per user, after every train row, in bundle order."""
    n = b.n_users
    u, s, ts = b.user_idx, b.split, b.timestamp
    assert np.all(np.diff(u) >= 0), "sorted by user"
    same_user = np.diff(u) == 0
    assert np.all(np.diff(ts)[same_user] >= 0), "time order within a user"
    for code in (SPLIT_VAL, SPLIT_TEST):
        assert np.array_equal(np.bincount(u[s == code], minlength=n + 1)[1:], np.ones(n, dtype=np.int64))
    assert np.all(np.bincount(u[s == SPLIT_TRAIN], minlength=n + 1)[1:] >= 1)
    # Within a user the splits read train..., val, test: rows are non-decreasing in split.
    assert np.all(np.diff(s.astype(np.int64))[same_user] >= 0)
    pos = np.arange(len(u))
    last_train = pd.Series(pos[s == SPLIT_TRAIN]).groupby(u[s == SPLIT_TRAIN]).max()
    val_pos = pd.Series(pos[s == SPLIT_VAL], index=u[s == SPLIT_VAL])
    test_pos = pd.Series(pos[s == SPLIT_TEST], index=u[s == SPLIT_TEST])
    assert (val_pos.loc[last_train.index] > last_train).all()
    assert (test_pos.loc[val_pos.index] == val_pos + 1).all()
    val_ts = pd.Series(ts[s == SPLIT_VAL], index=u[s == SPLIT_VAL])
    test_ts = pd.Series(ts[s == SPLIT_TEST], index=u[s == SPLIT_TEST])
    train_max_ts = pd.Series(ts[s == SPLIT_TRAIN]).groupby(u[s == SPLIT_TRAIN]).max()
    assert (val_ts <= test_ts.loc[val_ts.index]).all()
    assert (train_max_ts <= val_ts.loc[train_max_ts.index]).all()


# ---------------------------------------------------------------- the real ml-100k


@pytest.fixture(scope="module")
def ml100k_raw(ml100k_dir):
    return read_movielens(ml100k_dir)


@pytest.fixture(scope="module")
def ml100k_bundle(ml100k_dir):
    return load_bundle(str(ml100k_dir))


def test_ml100k_counts(ml100k_bundle):
    b, m = ml100k_bundle, ml100k_bundle.manifest
    assert (m["n_users"], m["n_items"], m["n_interactions"]) == (943, 1682, 100_000)
    assert (b.n_users, b.n_items, len(b.user_idx)) == (943, 1682, 100_000)
    assert m["n_train"] + m["n_val"] + m["n_test"] == 100_000 and m["n_val"] == m["n_test"] == 943
    assert m["filters"] == {"rows_read": 100_000, "duplicates_collapsed": 0, "short_users_dropped": 0}
    assert sorted(b.users["user_idx"]) == list(range(1, 944))
    assert sorted(b.items["item_idx"]) == list(range(1, 1683))
    assert m["options"]["split"] == "leave_last_out" and m["options"]["k_core"] == 0
    rows = dict(summary_rows(m))
    assert rows["users"] == "943" and rows["items"] == "1,682" and rows["interactions"] == "100,000"


def test_ml100k_leave_last_out(ml100k_bundle):
    check_leave_last_out(ml100k_bundle)


def test_ml100k_ties_keep_file_order(ml100k_bundle, ml100k_raw):
    """The test and validation items are the last two of u.data by time, ties in file order."""
    df = ml100k_raw.interactions
    assert df.duplicated(["user", "timestamp"]).any(), "ml-100k has same-second ratings: the case matters"
    ordered = df.sort_values(["user", "timestamp"], kind="stable")
    want_test = ordered.groupby("user")["item"].nth(-1)
    want_val = ordered.groupby("user")["item"].nth(-2)
    f = frame(ml100k_bundle)
    got_test = f[f["split"] == SPLIT_TEST].set_index("user")["item"]
    got_val = f[f["split"] == SPLIT_VAL].set_index("user")["item"]
    want_test = pd.Series(want_test.to_numpy(), index=ordered.groupby("user").size().index)
    want_val = pd.Series(want_val.to_numpy(), index=want_test.index)
    assert (got_test.loc[want_test.index.astype(str)].to_numpy() == want_test.astype(str).to_numpy()).all()
    assert (got_val.loc[want_val.index.astype(str)].to_numpy() == want_val.astype(str).to_numpy()).all()


def test_ml100k_item_features(ml100k_bundle):
    b = ml100k_bundle
    assert b.n_genres == 19 and len(set(b.manifest["genres"])) == 19
    g = b.item_genres
    assert g.shape[0] == 1683 and (g[0] == 0).all()
    assert (g[1:] > 0).any(axis=1).all(), "every ml-100k item has a genre ('unknown' included)"
    assert g.max() == 19
    items = b.items.set_index("item_id")
    no_date = items[items["year"].isna()]
    assert list(no_date.index) == ["267"]  # the one item with no release date
    assert no_date["year_bucket"].tolist() == [0]
    assert (items.drop(index="267")["year_bucket"] > 0).all()
    assert b.n_year_buckets == len(b.manifest["year_buckets"]) >= 5
    yb = b.item_year_bucket
    assert yb[0] == 0 and yb.max() == b.n_year_buckets


def test_ml100k_user_meta(ml100k_bundle):
    b = ml100k_bundle
    for col in ("age_bucket", "gender_idx", "occupation_idx"):
        v = b.user_feature(col)
        assert v[0] == 0 and (v[1:] > 0).all(), col
        assert v.max() < b.meta_cardinalities[col], col
    assert b.manifest["genders"] == ["F", "M"]
    assert len(b.manifest["occupations"]) == 21


def test_ml100k_train_counts(ml100k_bundle):
    b = ml100k_bundle
    counted = np.bincount(b.item_idx[b.split == SPLIT_TRAIN], minlength=b.n_items + 1)
    assert np.array_equal(b.item_counts, counted)
    assert np.array_equal(b.items.sort_values("item_idx")["train_count"].to_numpy(), counted[1:])
    per_user = np.bincount(b.user_idx[b.split == SPLIT_TRAIN], minlength=b.n_users + 1)[1:]
    assert np.array_equal(b.users.sort_values("user_idx")["n_train"].to_numpy(), per_user)
    offsets, seq = b.train_sequences
    assert offsets[-1] == len(seq) == b.manifest["n_train"]


def test_ml100k_cold_users_are_a_seeded_tenth(ml100k_raw, tmp_path):
    a = prep(ml100k_raw, tmp_path)
    again = prep(ml100k_raw, tmp_path)
    other = prep(ml100k_raw, tmp_path, seed=1)
    none = prep(ml100k_raw, tmp_path, cold_frac=0.0)
    assert a.manifest["n_cold_users"] == int(a.users["cold"].sum()) == round(0.1 * 943)
    assert np.array_equal(a.cold_mask, again.cold_mask)
    assert not np.array_equal(a.cold_mask, other.cold_mask) and other.cold_mask.sum() == 94
    assert not none.cold_mask.any()
    assert not a.cold_mask[0]
    u, _ = a.train_pairs(graph_only=True)
    assert not a.cold_mask[u].any() and len(u) < a.manifest["n_train"]


def test_ml100k_second_load_is_a_fast_cache_hit(ml100k_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "cache"))
    first = load_bundle(str(ml100k_dir))
    assert first.cache_hit is False
    assert first.path.parent == tmp_path / "cache" / "bundles"

    def boom(*a, **k):
        raise AssertionError("prepare ran on a cache hit")

    monkeypatch.setattr(data, "prepare", boom)
    t0 = time.perf_counter()
    second = load_bundle(str(ml100k_dir))
    elapsed = time.perf_counter() - t0
    assert second.cache_hit is True and second.path == first.path
    assert second.fingerprint == first.fingerprint
    assert np.array_equal(second.item_idx, first.item_idx)
    assert elapsed < 2.0, elapsed  # ~0.03 s: hash u.data & co and read three Parquet files
    # Only the bundle itself is in the cache: no temp folders beside it.
    assert [p.name for p in (tmp_path / "cache" / "bundles").iterdir()] == [first.path.name]
    # A prepared bundle directory is a source too, loaded as is.
    assert load_bundle(str(first.path)).cache_hit is True


def test_options_change_the_fingerprint(ml100k_dir, tmp_path, monkeypatch):
    key = {"file": {"u.data": "abc"}}
    base = fingerprint(key, PrepareOptions())
    assert base == fingerprint(key, PrepareOptions())  # deterministic
    variants = [PrepareOptions(cold_frac=0.2), PrepareOptions(seed=1), PrepareOptions(k_core=5),
                PrepareOptions(min_rating=4.0), PrepareOptions(split="temporal")]
    fps = {fingerprint(key, o) for o in variants}
    assert base not in fps and len(fps) == len(variants)
    assert fingerprint({"file": {"u.data": "abd"}}, PrepareOptions()) != base  # content too
    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "cache"))
    a = load_bundle(str(ml100k_dir))
    b = load_bundle(str(ml100k_dir), PrepareOptions(cold_frac=0.2))
    assert b.cache_hit is False and a.fingerprint != b.fingerprint and a.path != b.path
    assert b.manifest["n_cold_users"] == round(0.2 * 943)


# ---------------------------------------------------------------- hand-made logs: order, filters


def test_ties_keep_file_order(tmp_path):
    # u1's last three share a second; file order (5, 3, 9) must win over item order (3, 5, 9).
    raw = raw_of([(1, 1, 5), (2, 7, 100), (1, 5, 10), (2, 8, 100), (1, 3, 10), (2, 6, 100),
                  (1, 9, 10), (1, 4, 2)])
    b = prep(raw, tmp_path)
    assert items_of(b, "1") == ["4", "1", "5", "3", "9"]
    assert items_of(b, "1", SPLIT_VAL) == ["3"] and items_of(b, "1", SPLIT_TEST) == ["9"]
    assert items_of(b, "2") == ["7", "8", "6"]  # all three tied: pure file order
    assert items_of(b, "2", SPLIT_TRAIN) == ["7"]
    check_leave_last_out(b)


def test_ties_keep_file_order_with_timestamps_too_wide_for_one_sort_key(tmp_path):
    # A time span over 2**62 cannot share an int64 key with the user: the lexsort path.
    big = 2**62
    raw = raw_of([(2, 1, big), (1, 5, 0), (1, 3, 0), (2, 4, -big), (1, 9, 0), (2, 2, big), (1, 1, -big),
                  (2, 4, -big)])
    b = prep(raw, tmp_path)
    assert items_of(b, "1") == ["1", "5", "3", "9"]
    assert items_of(b, "2") == ["4", "1", "2"]  # the exact duplicate (2, 4, -2**62) collapsed
    assert b.manifest["filters"]["duplicates_collapsed"] == 1
    assert b.timestamp.tolist() == [-big, 0, 0, 0, -big, big, big]


def test_short_users_are_dropped_and_counted(tmp_path):
    raw = raw_of([(1, 1, 1), (1, 2, 2), (1, 3, 3), (2, 1, 1), (2, 2, 2), (3, 4, 9)])
    b = prep(raw, tmp_path)
    f = b.manifest["filters"]
    assert f["short_users_dropped"] == 2 and f["rows_read"] == 6
    assert b.users["user_id"].tolist() == ["1"] and b.n_items == 3  # item 4 went with user 3
    rows = dict(summary_rows(b.manifest))
    assert rows["users with < 3 interactions (dropped)"] == "2"


def test_exact_duplicates_collapse_repeats_stay(tmp_path):
    raw = raw_of([(1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2), (1, 3, 3),
                  (1, 1, 4),  # a re-watch at another time: kept
                  (2, 1, 5), (2, 1, 6), (2, 1, 7)])
    b = prep(raw, tmp_path)
    assert b.manifest["filters"]["duplicates_collapsed"] == 2
    assert items_of(b, "1") == ["1", "2", "3", "1"]
    assert items_of(b, "2") == ["1", "1", "1"]
    assert b.manifest["n_interactions"] == 7
    assert dict(summary_rows(b.manifest))["exact duplicates (collapsed)"] == "2"


def test_duplicates_within_a_tie_keep_the_first(tmp_path):
    raw = raw_of([(1, 5, 10), (1, 3, 10), (1, 5, 10), (1, 9, 10), (1, 3, 10)])
    b = prep(raw, tmp_path)
    assert items_of(b, "1") == ["5", "3", "9"]
    assert b.manifest["filters"]["duplicates_collapsed"] == 2


def _kcore_log():
    # Items 1-3 are seen by every user; item 9 once (by u1); u4 sees only items 1, 2 (2 rows).
    rows = [(u, i, 10 * u + i) for u in (1, 2, 3) for i in (1, 2, 3)]
    return raw_of(rows + [(1, 9, 99), (4, 1, 1), (4, 2, 2), (4, 9, 3)])


def test_k_core_is_off_by_default(tmp_path):
    b = prep(_kcore_log(), tmp_path)
    assert PrepareOptions().k_core == 0
    assert "k_core_items_dropped" not in b.manifest["filters"]
    assert b.n_items == 4 and b.n_users == 4  # item 9 (seen twice) and u4 (3 rows) stay


def test_k_core_drops_and_counts(tmp_path):
    b = prep(_kcore_log(), tmp_path, k_core=3)
    f = b.manifest["filters"]
    # Item 9 has 2 rows (< 3): dropped; then u4 has 2 rows: dropped too, by the k-core.
    assert f["k_core_items_dropped"] == 1 and f["k_core_users_dropped"] == 1
    assert f["short_users_dropped"] == 0
    assert sorted(b.items["item_id"]) == ["1", "2", "3"] and sorted(b.users["user_id"]) == ["1", "2", "3"]
    rows = dict(summary_rows(b.manifest))
    assert rows["items dropped by k-core"] == "1" and rows["users dropped by k-core"] == "1"


def test_min_rating(tmp_path):
    raw = raw_of([(1, 1, 1, 5.0), (1, 2, 2, 2.0), (1, 3, 3, 4.0), (1, 4, 4, 4.5), (1, 5, 5, 3.5),
                  (2, 1, 1, 1.0), (2, 2, 2, 5.0)], rating=True)
    b = prep(raw, tmp_path, min_rating=4.0)
    f = b.manifest["filters"]
    assert f["below_min_rating"] == 3 and f["short_users_dropped"] == 1
    assert items_of(b, "1") == ["1", "3", "4"]
    everything = prep(raw, tmp_path)
    assert "below_min_rating" not in everything.manifest["filters"]
    with pytest.raises(DataError, match="no rating column"):
        prep(raw_of([(1, 1, 1), (1, 2, 2), (1, 3, 3)]), tmp_path, min_rating=3.0)


def test_bad_options_are_data_errors():
    for bad in (dict(split="random"), dict(cold_frac=1.0), dict(min_user_interactions=2),
                dict(k_core=-1), dict(temporal_val_frac=0.0)):
        with pytest.raises(DataError):
            PrepareOptions(**bad)
    with pytest.raises(DataError, match="unknown preparation option"):
        PrepareOptions.from_dict({"cold_fraction": 0.1})


# ---------------------------------------------------------------- temporal split


def test_temporal_split_uses_global_cutoffs(tmp_path):
    from raytower.data._synthetic import generate

    raw = generate(n_users=300, n_items=200, seed=3)
    b = prep(raw, tmp_path, split="temporal")
    s, ts = b.split, b.timestamp
    assert b.manifest["options"]["split"] == "temporal"
    assert ts[s == SPLIT_TRAIN].max() < ts[s == SPLIT_VAL].min()
    assert ts[s == SPLIT_VAL].max() < ts[s == SPLIT_TEST].min()
    n = len(s)
    assert abs((s == SPLIT_TEST).sum() / n - 0.1) < 0.02 and abs((s == SPLIT_VAL).sum() / n - 0.1) < 0.02
    # Not one val/test item per user: many users have none, some several.
    assert len(np.unique(b.user_idx[s == SPLIT_TEST])) < b.n_users


def test_temporal_eval_set_leaves_out_users_without_history(tmp_path):
    early = [(u, i, 100 * u + i) for u in range(1, 9) for i in range(1, 9)]  # ts 101..808
    late = [(8, 20, 5000), (8, 21, 5001), (9, 30, 5002), (9, 31, 5003), (9, 32, 5004)]
    b = prep(raw_of(early + late), tmp_path, split="temporal", temporal_val_frac=0.1, temporal_test_frac=0.1)
    f = frame(b)
    assert set(f.loc[f["user"] == "9", "split"]) == {SPLIT_TEST}  # u9 exists only in the test period
    uid = dict(zip(b.users["user_id"], b.users["user_idx"]))
    test = b.eval_set("test")
    assert uid["9"] not in test.users and uid["8"] in test.users
    k = int(np.flatnonzero(test.users == uid["8"])[0])
    hist = test.hist_items[test.hist_offsets[k]:test.hist_offsets[k + 1]]
    target_row = f[(f["user"] == "8") & (f["split"] == SPLIT_TEST)].iloc[0]
    assert b.items.set_index("item_idx").loc[test.targets[k], "item_id"] == target_row["item"]
    before = f[(f["user"] == "8") & (f["split"] < SPLIT_TEST)]["item"].tolist()
    assert b.items.set_index("item_idx").loc[hist, "item_id"].tolist() == before
    assert len(test.hist_offsets) == len(test) + 1 and test.hist_offsets[-1] == len(test.hist_items)
    val = b.eval_set("val")
    for k, u in enumerate(val.users):  # validation history: train rows only
        h = val.hist_items[val.hist_offsets[k]:val.hist_offsets[k + 1]]
        assert len(h) > 0
        assert np.array_equal(h, b.item_idx[(b.user_idx == u) & (b.split == SPLIT_TRAIN)])


def test_eval_set_with_no_users_is_empty(tmp_path):
    # Everything in the validation and test periods belongs to users with no earlier rows.
    early = [(u, i, 100 * u + i) for u in range(1, 5) for i in range(1, 6)]  # 20 rows, ts 101..405
    late = [(8, 1, 900), (8, 2, 901), (8, 3, 902), (9, 1, 903), (9, 2, 904), (9, 3, 905)]
    b = prep(raw_of(early + late), tmp_path, split="temporal", temporal_val_frac=0.13,
             temporal_test_frac=0.1)
    f = frame(b)
    assert set(f.loc[f["user"] == "8", "split"]) == {SPLIT_VAL}
    assert set(f.loc[f["user"] == "9", "split"]) == {SPLIT_TEST}
    assert set(f.loc[~f["user"].isin(["8", "9"]), "split"]) == {SPLIT_TRAIN}
    for split in ("val", "test"):
        ev = b.eval_set(split)
        assert len(ev) == 0 and len(ev.targets) == 0 and len(ev.hist_items) == 0
        assert ev.hist_offsets.tolist() == [0] and ev.hist_offsets.dtype == np.int64


def test_leave_last_out_eval_sets(tmp_path):
    raw = raw_of([(1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 4, 4), (2, 3, 1), (2, 2, 2), (2, 1, 3)])
    b = prep(raw, tmp_path)
    val, test = b.eval_set("val"), b.eval_set("test")
    assert len(val) == len(test) == 2
    iid = b.items.set_index("item_idx")["item_id"]
    assert iid.loc[test.targets].tolist() == ["4", "1"] and iid.loc[val.targets].tolist() == ["3", "2"]
    assert iid.loc[test.hist_items[test.hist_offsets[0]:test.hist_offsets[1]]].tolist() == ["1", "2", "3"]
    assert iid.loc[val.hist_items[val.hist_offsets[1]:val.hist_offsets[2]]].tolist() == ["3"]
    with pytest.raises(ValueError):
        b.eval_set("train")


# ---------------------------------------------------------------- failures leave nothing behind


def test_empty_after_filtering_is_a_data_error_and_writes_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RAYTOWER_CACHE", str(cache))
    log = tmp_path / "in" / "log.csv"
    log.parent.mkdir()
    log.write_text("user,item,timestamp\n1,1,1\n1,2,2\n2,1,3\n2,3,4\n")  # everyone has 2 rows
    with pytest.raises(DataError) as e:
        load_bundle(str(log))
    msg = str(e.value)
    assert "no interactions left" in msg and str(log) in msg and "\n" not in msg
    assert leftovers(cache) == []
    out = tmp_path / "out" / "bundle"
    with pytest.raises(DataError):
        load_bundle(str(log), out=out)
    assert not out.exists() and leftovers(tmp_path / "out") == []
    log.write_text("user,item,timestamp,rating\n1,1,1,1\n1,2,2,2\n1,3,3,3\n")
    with pytest.raises(DataError, match="below_min_rating"):
        load_bundle(str(log), PrepareOptions(min_rating=99))
    assert leftovers(cache) == []
    assert sorted(p.name for p in log.parent.iterdir()) == ["log.csv"]


def test_failure_while_writing_leaves_no_half_bundle(tmp_path, monkeypatch):
    raw = raw_of([(1, 1, 1), (1, 2, 2), (1, 3, 3)])
    dest = tmp_path / "b"

    def fail(*a, **k):
        raise OSError("disk full (simulated)")

    import raytower.data._prepare as prep_mod

    with monkeypatch.context() as m:
        m.setattr(prep_mod, "write_json", fail)
        with pytest.raises(OSError, match="simulated"):
            prepare(raw, PrepareOptions(), "fp1", dest)
    assert leftovers(tmp_path) == []
    prepare(raw, PrepareOptions(), "fp1", dest)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    with monkeypatch.context() as m:  # a failed refresh keeps the old bundle whole
        m.setattr(prep_mod, "write_json", fail)
        with pytest.raises(OSError):
            prepare(raw, PrepareOptions(seed=5), "fp2", dest)
    assert leftovers(tmp_path) == sorted(["b"] + [f"b{os.sep}{n}" for n in before])
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert Bundle(dest).fingerprint == "fp1"


def test_missing_columns_in_raw_data(tmp_path):
    raw = RawData(name="x", interactions=pd.DataFrame({"user": [1], "item": [2]}))
    with pytest.raises(DataError, match=r"lack column\(s\) \['timestamp'\]"):
        prepare(raw, PrepareOptions(), "fp", tmp_path / "b")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- the other fixtures


def test_ml_latest_small_fixture_prepares_with_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "cache"))
    b = load_bundle(str(FIXTURES / "ml-latest-small"))
    m = b.manifest
    assert (m["n_users"], m["n_items"], m["n_interactions"]) == (3, 4, 9)
    assert m["n_train"] == m["n_val"] == m["n_test"] == 3
    check_leave_last_out(b)
    assert "(no genres listed)" not in m["genres"] and "Drama" in m["genres"]
    items = b.items.set_index("item_id")
    assert len(items.loc["4", "genre_ids"]) == 0  # "(no genres listed)"
    assert items.loc["3", "year_bucket"] == 0 and pd.isna(items.loc["3", "year"])  # no "(YYYY)"
    assert items.loc["1", "year"] == 1999 and items.loc["1", "year_bucket"] > 0
    # user 1: 964982703 (item 1), 964981247 (item 2), 964982710 (item 3) -> order 2, 1, 3
    assert items_of(b, "1") == ["2", "1", "3"]
    assert (b.user_feature("age_bucket")[1:] == 0).all()  # no user table in this release


def test_generic_fixture_with_side_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "cache"))
    g = FIXTURES / "generic"
    spec = (f"{g / 'log.csv'}:user=user_id,item=item_id,time=ts,rating=stars,"
            f"items={g / 'items.csv'},users={g / 'users.csv'}")
    b = load_bundle(spec)
    m = b.manifest
    assert b.cache_hit is False and m["name"] == "log-csv"  # the format in the name: log.parquet is another
    assert (m["n_users"], m["n_items"], m["n_interactions"]) == (3, 3, 9)
    check_leave_last_out(b)
    assert items_of(b, "u_ana") == ["sku-001", "sku-002", "sku-003"]
    assert m["genres"] == ["Home", "Kitchen", "Outdoor", "Sport"]
    items = b.items.set_index("item_id")
    assert items.loc["sku-002", "year_bucket"] == 0 and items.loc["sku-001", "year"] == 2019
    assert items.loc["sku-002", "title"] == "Lamp, Brass"
    users = b.users.set_index("user_id")
    assert users.loc["u_ana", "age_bucket"] == 3  # 34: in [25, 35)
    assert users.loc["u_ben", "age_bucket"] == 6  # 51: in [50, 56)
    assert (users.loc["u_cat", ["age_bucket", "gender_idx", "occupation_idx"]] == 0).all()
    assert m["genders"] == ["F", "M"] and m["occupations"] == ["engineer", "teacher"]
    assert load_bundle(spec).cache_hit is True
    # The options are part of the source: without rating= the stars column is not a rating.
    assert load_bundle(spec.replace("rating=stars,", "")).fingerprint != b.fingerprint


def test_synthetic_default_source(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "cache"))
    b = load_bundle("synthetic:n_users=200,n_items=100,seed=2")
    assert b.n_users == 200 and b.name == "synthetic"
    check_leave_last_out(b)
    assert load_bundle("synthetic:n_users=200,n_items=100,seed=2").cache_hit is True
    assert load_bundle("synthetic:n_users=200,n_items=100,seed=3").fingerprint != b.fingerprint


def test_a_temporal_split_with_an_empty_side_is_refused(tmp_path, monkeypatch):
    # Every timestamp equal: the cut-offs put every row in test. Training then hit ZeroDivisionError.
    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "cache"))
    log = tmp_path / "log.csv"
    log.write_text("user,item,timestamp\n" + "".join(f"{u},{i},5\n" for u in range(1, 6) for i in range(1, 5)))
    with pytest.raises(DataError, match="temporal split leaves no train interactions"):
        load_bundle(str(log), PrepareOptions(split="temporal"))


def test_a_damaged_cache_entry_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "cache"))
    first = load_bundle("synthetic:n_users=300,n_items=100,seed=2")
    (first.path / "interactions.parquet").write_bytes(b"PAR1 cut short by a full disk")
    again = load_bundle("synthetic:n_users=300,n_items=100,seed=2")
    assert again.path == first.path and not again.cache_hit
    assert len(again.user_idx) == first.manifest["n_interactions"]
