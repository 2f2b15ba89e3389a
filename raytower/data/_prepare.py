"""Turn a parsed log (RawData) into a bundle: the one format every trainer reads.

A bundle is a directory of three Parquet files and a JSON manifest:

  interactions.parquet  user_idx, item_idx, timestamp, split (0 train, 1 validation, 2 test),
                        sorted by user, then time, ties in source-file order
  items.parquet         item_idx (1..n_items; 0 is padding), item_id, title, genre_ids, year,
                        year_bucket, train_count (the logQ frequencies)
  users.parquet         user_idx (1..n_users), user_id, age_bucket, gender_idx, occupation_idx,
                        cold (held out of the graph LightGCN trains on), n_train
  manifest.json         name, fingerprint, options, counts, filters applied, vocabularies

Every filter is counted in the manifest and the summary: nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raytower._io import atomic_dir, write_json
from raytower.data._raw import RawData
from raytower.errors import DataError

BUNDLE_FORMAT = 1
# Lower bounds of the age buckets MovieLens 1M uses; ml-100k's exact ages fall into the same ones.
AGE_EDGES = (18, 25, 35, 45, 50, 56)
SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = 0, 1, 2


@dataclass(frozen=True)
class PrepareOptions:
    """How a log becomes a bundle. Part of the fingerprint: change one and you get a new bundle."""

    split: str = "leave_last_out"  # or "temporal": global time cut-offs
    temporal_val_frac: float = 0.1  # temporal split: the last fractions of all interactions by time
    temporal_test_frac: float = 0.1
    cold_frac: float = 0.1  # users kept out of the LightGCN graph, to report cold start apart
    seed: int = 0
    min_user_interactions: int = 3  # leave-last-out needs train + validation + test
    k_core: int = 0  # 0 = off; a 5-core filter would drop 333 of ml-100k's 1,682 items
    min_rating: float | None = None  # implicit feedback: keep rows with rating >= this

    def __post_init__(self) -> None:
        if self.split not in ("leave_last_out", "temporal"):
            raise DataError(f"unknown split {self.split!r}: use leave_last_out or temporal")
        if not 0.0 <= self.cold_frac < 1.0:
            raise DataError(f"cold_frac must be in [0, 1), got {self.cold_frac}")
        if self.min_user_interactions < 3:
            raise DataError("min_user_interactions must be at least 3 (train, validation, test)")
        if self.k_core < 0:
            raise DataError(f"k_core must be >= 0, got {self.k_core}")
        for name in ("temporal_val_frac", "temporal_test_frac"):
            if not 0.0 < getattr(self, name) < 0.5:
                raise DataError(f"{name} must be in (0, 0.5), got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PrepareOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"unknown preparation option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def fingerprint(source_key: dict[str, Any], options: PrepareOptions) -> str:
    """A content fingerprint: the source's identity (file hashes or generator params) + options."""
    payload = json.dumps(
        {"format": BUNDLE_FORMAT, "source": source_key, "options": asdict(options)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def hash_files(paths: list[Path]) -> dict[str, str]:
    """blake2b of each file's bytes, by file name (the directory may move; the content may not)."""
    out = {}
    for p in sorted(paths):
        h = hashlib.blake2b(digest_size=16)
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        out[p.name] = h.hexdigest()
    return out


def prepare(raw: RawData, options: PrepareOptions, fp: str, out_dir: Path, progress=None) -> dict:
    """Filter, split and index ``raw``; write the bundle to ``out_dir`` atomically; return the manifest."""
    step = progress or (lambda msg: None)
    src = raw.files[0] if raw.files else raw.name
    df = raw.interactions
    missing = [c for c in ("user", "item", "timestamp") if c not in df.columns]
    if missing:
        raise DataError(f"interactions lack column(s) {missing}", src)
    filters: dict[str, int] = {"rows_read": int(len(df))}

    step("filtering")
    user = df["user"].to_numpy()
    item = df["item"].to_numpy()
    ts = df["timestamp"].to_numpy(dtype=np.int64)
    keep = np.ones(len(df), dtype=bool)
    if options.min_rating is not None:
        if "rating" not in df.columns:
            raise DataError("min_rating is set but the interactions have no rating column", src)
        keep &= df["rating"].to_numpy(dtype=np.float64) >= options.min_rating
        filters["below_min_rating"] = int((~keep).sum())
    # Codes first: every later step works on small integer arrays, whatever the id type.
    ucode, uniq_users = pd.factorize(user, sort=True)
    icode, uniq_items = pd.factorize(item, sort=True)
    order = np.arange(len(df), dtype=np.int64)
    ucode, icode, ts, order = ucode[keep], icode[keep], ts[keep], order[keep]

    dup = pd.DataFrame({"u": ucode, "i": icode, "t": ts}).duplicated().to_numpy()
    filters["duplicates_collapsed"] = int(dup.sum())
    ucode, icode, ts, order = ucode[~dup], icode[~dup], ts[~dup], order[~dup]

    if options.k_core > 0:
        before_items = len(np.unique(icode))
        while True:
            u_ok = np.bincount(ucode, minlength=len(uniq_users))[ucode] >= options.k_core
            i_ok = np.bincount(icode, minlength=len(uniq_items))[icode] >= options.k_core
            ok = u_ok & i_ok
            if ok.all():
                break
            ucode, icode, ts, order = ucode[ok], icode[ok], ts[ok], order[ok]
        filters["k_core_items_dropped"] = int(before_items - len(np.unique(icode)))

    counts = np.bincount(ucode, minlength=len(uniq_users))
    short = counts[ucode] < options.min_user_interactions
    filters["short_users_dropped"] = int(((counts > 0) & (counts < options.min_user_interactions)).sum())
    ucode, icode, ts, order = ucode[~short], icode[~short], ts[~short], order[~short]
    if len(ucode) == 0:
        raise DataError(
            f"no interactions left after filtering ({filters}); "
            f"every user needs at least {options.min_user_interactions}",
            src,
        )

    step("indexing")
    # Contiguous ids in sorted raw-id order; 0 stays free for padding.
    used_u, uidx = np.unique(ucode, return_inverse=True)
    used_i, iidx = np.unique(icode, return_inverse=True)
    uidx = uidx.astype(np.int32) + 1
    iidx = iidx.astype(np.int32) + 1
    n_users, n_items = len(used_u), len(used_i)
    # Time order per user; ties keep the source file's order (ordering ties by item id instead
    # moves popularity's test Recall@100 on ml-100k from 0.317 to 0.231).
    perm = np.lexsort((order, ts, uidx))
    uidx, iidx, ts = uidx[perm], iidx[perm], ts[perm]

    step("splitting")
    lengths = np.bincount(uidx, minlength=n_users + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(len(uidx)) - np.repeat(starts, lengths)
    rank_from_end = np.repeat(lengths, lengths) - 1 - pos
    split = np.zeros(len(uidx), dtype=np.int8)
    if options.split == "leave_last_out":
        split[rank_from_end == 1] = SPLIT_VAL
        split[rank_from_end == 0] = SPLIT_TEST
    else:
        t_val, t_test = np.quantile(
            ts, [1 - options.temporal_val_frac - options.temporal_test_frac, 1 - options.temporal_test_frac]
        )
        split[ts >= t_val] = SPLIT_VAL
        split[ts >= t_test] = SPLIT_TEST
    n_train_per_user = np.bincount(uidx[split == SPLIT_TRAIN], minlength=n_users + 1)[1:]

    rng = np.random.default_rng(options.seed)
    cold = np.zeros(n_users, dtype=bool)
    cold[rng.choice(n_users, size=int(round(options.cold_frac * n_users)), replace=False)] = True

    step("features")
    train_count = np.bincount(iidx[split == SPLIT_TRAIN], minlength=n_items + 1).astype(np.int64)
    items, item_vocab = _item_table(raw.items, uniq_items[used_i], train_count)
    users, user_vocab = _user_table(raw.users, uniq_users[used_u], cold, n_train_per_user)

    step("writing")
    n_inter = int(len(uidx))
    pct = np.percentile(lengths, [5, 25, 50, 75, 95]).tolist()
    manifest = {
        "format": BUNDLE_FORMAT,
        "name": raw.name,
        "fingerprint": fp,
        "options": asdict(options),
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n_inter,
        "n_train": int((split == SPLIT_TRAIN).sum()),
        "n_val": int((split == SPLIT_VAL).sum()),
        "n_test": int((split == SPLIT_TEST).sum()),
        "density": n_inter / (n_users * n_items),
        "seq_len_percentiles": dict(zip(["p5", "p25", "p50", "p75", "p95"], pct)) | {"max": int(lengths.max())},
        "n_cold_users": int(cold.sum()),
        "filters": filters,
        **item_vocab,
        **user_vocab,
    }
    with atomic_dir(out_dir) as tmp:
        inter = pa.table({"user_idx": uidx, "item_idx": iidx, "timestamp": ts, "split": split})
        pq.write_table(inter, tmp / "interactions.parquet")
        pq.write_table(pa.Table.from_pandas(items, preserve_index=False), tmp / "items.parquet")
        pq.write_table(pa.Table.from_pandas(users, preserve_index=False), tmp / "users.parquet")
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _item_table(table: pd.DataFrame | None, ids: np.ndarray, train_count: np.ndarray):
    n = len(ids)
    out = pd.DataFrame({"item_idx": np.arange(1, n + 1, dtype=np.int32), "item_id": pd.Series(ids).astype(str)})
    meta = _align(table, "item", ids)
    out["title"] = meta["title"].fillna("").astype(str).to_numpy() if "title" in meta else ""
    genres = meta["genres"].fillna("").astype(str) if "genres" in meta else pd.Series([""] * n)
    # Vectorised for 100k+ items: explode to one row per (item, genre), code, then regroup.
    exploded = genres.str.split("|").explode()
    exploded = exploded[exploded.notna() & (exploded != "")]
    vocab = sorted(exploded.unique().tolist())
    codes = pd.Categorical(exploded, categories=vocab).codes.astype(np.int16) + 1  # 0 = padding
    per_item = np.bincount(exploded.index.to_numpy(), minlength=n)
    offsets = np.concatenate([[0], np.cumsum(per_item)]).astype(np.int32)
    out["genre_ids"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(codes)).to_pandas()
    year = pd.to_numeric(meta["year"], errors="coerce") if "year" in meta else pd.Series([np.nan] * n)
    year = year.to_numpy(dtype=np.float64)
    decade = np.floor(year / 10) * 10
    decades = sorted(np.unique(decade[~np.isnan(decade)]).astype(int).tolist())
    bucket = np.searchsorted(decades, np.nan_to_num(decade)) + 1  # 0 = unknown year
    out["year"] = pd.array(np.where(np.isnan(year), None, np.nan_to_num(year)), dtype="Int64")
    out["year_bucket"] = np.where(np.isnan(decade), 0, bucket).astype(np.int16)
    out["train_count"] = train_count[1:]
    return out, {"genres": vocab, "year_buckets": decades}


def _user_table(table: pd.DataFrame | None, ids: np.ndarray, cold: np.ndarray, n_train: np.ndarray):
    n = len(ids)
    out = pd.DataFrame({"user_idx": np.arange(1, n + 1, dtype=np.int32), "user_id": pd.Series(ids).astype(str)})
    meta = _align(table, "user", ids)
    age = pd.to_numeric(meta["age"], errors="coerce").to_numpy(dtype=np.float64) if "age" in meta else np.full(n, np.nan)
    out["age_bucket"] = np.where(np.isnan(age), 0, np.searchsorted(AGE_EDGES, np.nan_to_num(age), side="right") + 1).astype(np.int16)
    vocab = {}
    for col in ("gender", "occupation"):
        values = meta[col].fillna("").astype(str).to_numpy() if col in meta else np.array([""] * n)
        names = sorted(set(np.unique(values).tolist()) - {""})
        # Categorical codes are -1 for '' (unknown), so +1 makes 0 the unknown bucket.
        out[f"{col}_idx"] = (pd.Categorical(values, categories=names).codes + 1).astype(np.int16)
        vocab[f"{col}s"] = names
    out["cold"] = cold
    out["n_train"] = n_train.astype(np.int32)
    return out, vocab | {"age_edges": list(AGE_EDGES)}


def _align(table: pd.DataFrame | None, key: str, ids: np.ndarray) -> pd.DataFrame:
    """The feature table's rows in the order of ``ids`` (missing rows become NaN)."""
    if table is None or key not in table.columns:
        return pd.DataFrame(index=range(len(ids)))
    t = table.drop_duplicates(key).copy()
    # Ids may be int in one file and str in another (a generic log with a CSV feature table).
    t[key] = t[key].astype(str)
    return t.set_index(key).reindex(pd.Index(ids).astype(str)).reset_index(drop=True)


def is_bundle(path: Path, fp: str | None = None) -> bool:
    m = Path(path) / "manifest.json"
    if not m.is_file():
        return False
    try:
        manifest = json.loads(m.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return manifest.get("format") == BUNDLE_FORMAT and (fp is None or manifest.get("fingerprint") == fp)
