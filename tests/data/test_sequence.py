"""The literature's `user item` sequence files (raytower/data/_sequence.py): read as they are, split
by the published protocol, metadata mapped through a row-aligned ids file, and bad input a one-line
DataError.

Hand-made files (invented rows) in the default tier; SASRec's real ml-1m.txt, read from
../shared/data/ml-1m beside the checkout (never copied here), in the slow tier.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raytower.data import Bundle, PrepareOptions, load_bundle
from raytower.data._prepare import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL
from raytower.data._sequence import is_sequence_file, read_sequence_file
from raytower.errors import DataError
from tests.conftest import REPO

ALL_USERS = PrepareOptions(cold_frac=0.0)  # the published protocol evaluates every user

# Three users, their lines interleaved in places (a file need not group users), in time order.
PAIRS = [(1, 10), (1, 11), (2, 12), (1, 12), (2, 10), (3, 11), (2, 13), (3, 12), (1, 13), (3, 10), (2, 11)]
# The same interactions in original ids: user 1 -> 501, 2 -> 502, 3 -> 503; item 10 -> 7, 11 -> 3, 12 -> 9, 13 -> 1.
USER_KEY = {1: 501, 2: 502, 3: 503}
ITEM_KEY = {10: 7, 11: 3, 12: 9, 13: 1}
TITLES = {7: "Seven (1995)", 3: "Three (1990)", 9: "Nine (2009)", 1: "One (1981)", 99: "Unrated (1970)"}


def write_pairs(path: Path, pairs=PAIRS, sep: str = " ") -> Path:
    path.write_text("".join(f"{u}{sep}{i}\n" for u, i in pairs))
    return path


def write_original(d: Path) -> None:
    """interactions.csv (row-aligned, original ids), items.csv and users.csv keyed by original ids."""
    rows = [f"{USER_KEY[u]},{ITEM_KEY[i]},{k}" for k, (u, i) in enumerate(PAIRS)]
    (d / "interactions.csv").write_text("user,item,time\n" + "\n".join(rows) + "\n")
    (d / "items.csv").write_text("item,title,genres\n" + "".join(f"{i},{t},Drama\n" for i, t in TITLES.items()))
    (d / "users.csv").write_text("user,age,gender,occupation\n501,25,F,1\n502,35,M,2\n503,18,M,3\n")


def by_user(b: Bundle) -> dict[str, dict[str, list[str]]]:
    """Each raw user id's items per split (train, val, test), in order, as raw item ids."""
    uid = b.users.set_index("user_idx")["user_id"]
    iid = b.items.set_index("item_idx")["item_id"]
    out: dict[str, dict[str, list[str]]] = {}
    for u, i, s in zip(uid.loc[b.user_idx], iid.loc[b.item_idx], b.split):
        out.setdefault(u, {"train": [], "val": [], "test": []})[("train", "val", "test")[s]].append(i)
    return out


def one_line_error(fn, *args, file: str, match: str, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and file in message and re.search(match, message), message
    return message


# ---------------------------------------------------------------- reading


def test_reads_pairs_in_file_order_with_position_as_time(tmp_path):
    raw = read_sequence_file(write_pairs(tmp_path / "seq.txt", sep="\t"))
    inter = raw.interactions
    assert list(inter.columns) == ["user", "item", "timestamp"]
    assert list(zip(inter["user"], inter["item"])) == PAIRS
    assert inter["timestamp"].tolist() == list(range(len(PAIRS)))
    assert inter["user"].dtype == "int64" and raw.items is None and raw.users is None


def test_detection_tells_sequence_files_from_headed_logs(tmp_path):
    assert is_sequence_file(write_pairs(tmp_path / "a.txt"))
    assert is_sequence_file(write_pairs(tmp_path / "b.dat", sep="  \t"))
    (tmp_path / "c.txt").write_text("user item\n1 10\n")
    (tmp_path / "d.csv").write_text("1,10\n1,11\n")
    (tmp_path / "e.txt").write_text("1 10 4.0\n")
    assert not any(is_sequence_file(tmp_path / n) for n in ("c.txt", "d.csv", "e.txt"))


def test_split_is_the_published_protocol(tmp_path):
    """Last line test, second-to-last validation, the test input holds the validation item, every
    user evaluated (cold_frac 0)."""
    b = load_bundle(str(write_pairs(tmp_path / "seq.txt")), ALL_USERS, out=tmp_path / "b")
    seqs = {u: [str(i) for v, i in PAIRS if v == u] for u in (1, 2, 3)}
    assert by_user(b) == {str(u): {"train": s[:-2], "val": [s[-2]], "test": [s[-1]]} for u, s in seqs.items()}
    assert not b.cold_mask.any()
    val, test = b.eval_set("val"), b.eval_set("test")
    assert len(val) == len(test) == b.n_users == 3
    iid = b.items.set_index("item_idx")["item_id"]
    for k, u in enumerate(test.users):
        s = seqs[int(b.users.set_index("user_idx").loc[u, "user_id"])]
        hist = iid.loc[test.hist_items[test.hist_offsets[k]:test.hist_offsets[k + 1]]].tolist()
        assert hist == s[:-1] and iid.loc[test.targets[k]] == s[-1]  # validation item in the input


# ---------------------------------------------------------------- metadata


def test_metadata_beside_is_mapped_through_the_ids_file(tmp_path):
    write_original(tmp_path)
    b = load_bundle(str(write_pairs(tmp_path / "seq.txt")), ALL_USERS, out=tmp_path / "b")
    items = b.items.set_index("item_id")
    assert {i: items.loc[str(i), "title"] for i in ITEM_KEY} == {i: TITLES[k] for i, k in ITEM_KEY.items()}
    assert set(b.items["item_id"]) == {"10", "11", "12", "13"}  # the file's own ids stay
    assert b.manifest["genders"] == ["F", "M"]
    users = b.users.set_index("user_id")
    assert users.loc["1", "gender_idx"] == 1 and users.loc["2", "gender_idx"] == 2


def test_same_split_as_the_generic_csv_user_by_user(tmp_path):
    write_original(tmp_path)
    seq = load_bundle(str(write_pairs(tmp_path / "seq.txt")), ALL_USERS, out=tmp_path / "a")
    csv = load_bundle(f"{tmp_path / 'interactions.csv'}:time=time,items={tmp_path / 'items.csv'},"
                      f"users={tmp_path / 'users.csv'}", ALL_USERS, out=tmp_path / "b")
    ours, theirs = by_user(seq), by_user(csv)
    relabel = {str(k): str(v) for k, v in ITEM_KEY.items()}
    assert {str(USER_KEY[int(u)]): {s: [relabel[i] for i in v] for s, v in d.items()} for u, d in ours.items()} == theirs


def test_ids_none_keys_metadata_by_the_files_own_ids(tmp_path):
    (tmp_path / "items.csv").write_text("item,title\n10,Ten (2010)\n13,Thirteen (2013)\n")
    (tmp_path / "interactions.csv").write_text("user,item,time\n1,1,1\n")  # ignored
    b = load_bundle(f"{write_pairs(tmp_path / 'seq.txt')}:ids=none,users=none", ALL_USERS, out=tmp_path / "b")
    titles = b.items.set_index("item_id")["title"]
    assert titles["10"] == "Ten (2010)" and titles["11"] == "" and b.items["year"].notna().sum() == 2


def test_options_change_the_fingerprint(tmp_path):
    write_original(tmp_path)
    spec = str(write_pairs(tmp_path / "seq.txt"))
    with_meta, without = (load_bundle(s, ALL_USERS).fingerprint for s in (spec, f"{spec}:items=none,users=none"))
    assert with_meta != without


# ---------------------------------------------------------------- bad input


def test_ids_file_of_another_length_is_refused(tmp_path):
    write_original(tmp_path)
    seq = write_pairs(tmp_path / "seq.txt", PAIRS[:-1])
    one_line_error(load_bundle, str(seq), file="interactions.csv", match=r"has 11 rows but seq.txt has 10")


def test_ids_file_that_is_not_one_to_one_is_refused(tmp_path):
    write_original(tmp_path)
    text = (tmp_path / "interactions.csv").read_text().replace("503,7,9", "501,7,9")  # user 3's line -> 501
    (tmp_path / "interactions.csv").write_text(text)
    one_line_error(load_bundle, str(write_pairs(tmp_path / "seq.txt")), file="interactions.csv",
                   match=r"user 3 of seq.txt matches 2 different users \(503, 501\)")


@pytest.mark.parametrize("spec_suffix, match", [(":user=u", r"unknown option\(s\) \['user'\]"),
                                                (":items=missing.csv", r"no such file")])
def test_bad_options(tmp_path, spec_suffix, match):
    one_line_error(load_bundle, f"{write_pairs(tmp_path / 'seq.txt')}{spec_suffix}",
                   file="seq.txt" if "user" in spec_suffix else "missing.csv", match=match)


def test_a_line_without_an_item_names_its_line(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 10\n1 11\n2\n2 12\n")
    one_line_error(read_sequence_file, path, file="seq.txt", match=r"no id \(first at line 3")


# ---------------------------------------------------------------- SASRec's ml-1m.txt


@pytest.fixture(scope="module")
def ml1m_dir() -> Path:
    env = os.environ.get("RAYTOWER_ML1M")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "ml-1m"
    if not (path / "ml-1m.txt").is_file():
        pytest.skip("SASRec's ml-1m.txt not found: set RAYTOWER_ML1M or put it at ../shared/data/ml-1m")
    return path


@pytest.mark.slow
def test_ml1m_split_is_the_published_protocol_and_matches_the_csv(ml1m_dir, tmp_path):
    lines = pd.read_csv(ml1m_dir / "ml-1m.txt", sep=" ", header=None, names=["user", "item"])
    seq = load_bundle(str(ml1m_dir / "ml-1m.txt"), ALL_USERS, out=tmp_path / "seq")
    m = seq.manifest
    assert (m["n_users"], m["n_items"], m["n_interactions"], m["n_cold_users"]) == (6040, 3416, 999_611, 0)
    assert m["n_val"] == m["n_test"] == 6040 and sum(m["filters"].values()) == 999_611  # only rows_read
    # The file's ids are 1..n, so they are the bundle's indices; each user's rows keep file order.
    assert (seq.users["user_id"].astype(int) == seq.users["user_idx"]).all()
    assert (seq.items["item_id"].astype(int) == seq.items["item_idx"]).all()
    order = np.argsort(lines["user"].to_numpy(), kind="stable")
    assert (seq.user_idx == lines["user"].to_numpy()[order]).all() and (seq.item_idx == lines["item"].to_numpy()[order]).all()
    last = np.r_[seq.user_idx[1:] != seq.user_idx[:-1], True]
    second = np.r_[last[1:], False]
    expected = np.where(last, SPLIT_TEST, np.where(second, SPLIT_VAL, SPLIT_TRAIN))
    assert (seq.split == expected).all()
    test = seq.eval_set("test")
    assert len(test) == 6040 and (np.diff(test.hist_offsets) == np.bincount(seq.user_idx)[test.users] - 1).all()
    assert (test.hist_items[test.hist_offsets[1:] - 1] == seq.item_idx[second]).all()  # the validation item

    csv = load_bundle(f"{ml1m_dir / 'interactions.csv'}:time=time,items={ml1m_dir / 'items.csv'},"
                      f"users={ml1m_dir / 'users.csv'}", ALL_USERS, out=tmp_path / "csv")
    # Row i of both files is one interaction: relabel the sequence bundle into MovieLens ids.
    keys = pd.read_csv(ml1m_dir / "interactions.csv")
    user_key = dict(zip(lines["user"], keys["user"]))
    item_key = dict(zip(lines["item"], keys["item"]))
    ours = pd.DataFrame({"user": pd.Series(seq.user_idx).map(user_key), "item": pd.Series(seq.item_idx).map(item_key),
                         "split": seq.split})
    uid = csv.users.set_index("user_idx")["user_id"].astype(int)
    iid = csv.items.set_index("item_idx")["item_id"].astype(int)
    theirs = pd.DataFrame({"user": uid.loc[csv.user_idx].to_numpy(), "item": iid.loc[csv.item_idx].to_numpy(),
                           "split": csv.split})
    ours, theirs = (f.sort_values("user", kind="stable").reset_index(drop=True) for f in (ours, theirs))
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
    # The metadata came through the row correspondence: the same title on both sides of each item.
    titles = csv.items.set_index(csv.items["item_id"].astype(int))["title"]
    mapped = seq.items["item_idx"].map(item_key).map(titles)
    assert (mapped.to_numpy() == seq.items["title"].to_numpy()).all() and (seq.items["title"] != "").all()
