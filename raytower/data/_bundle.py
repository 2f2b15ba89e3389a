"""A prepared bundle in memory: numpy arrays indexed by the contiguous ids (0 = padding)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from raytower.data._prepare import BUNDLE_FORMAT, SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL
from raytower.errors import DataError

SPLITS = {"train": SPLIT_TRAIN, "val": SPLIT_VAL, "test": SPLIT_TEST}


@dataclass
class EvalSet:
    """Next-item evaluation on one split: for each user, the history before the target (the
    sequence input and the mask of full ranking) and the first item of the split (the target)."""

    users: np.ndarray  # user_idx, shape (U,)
    targets: np.ndarray  # item_idx, shape (U,)
    hist_offsets: np.ndarray  # CSR over users: history of users[k] is hist_items[o[k]:o[k+1]]
    hist_items: np.ndarray  # in time order

    def __len__(self) -> int:
        return len(self.users)

    def sample(self, n: int, seed: int = 0) -> "EvalSet":
        """A seeded sample of ``n`` users (all when there are no more), in the original order:
        the same sample for the same data, whatever the trial."""
        if n >= len(self):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        lens = self.hist_offsets[rows + 1] - self.hist_offsets[rows]
        idx = np.repeat(self.hist_offsets[rows] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())
        return EvalSet(self.users[rows], self.targets[rows], np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                       self.hist_items[idx])


class Bundle:
    """Read-only view of a bundle directory written by ``prepare``."""

    cache_hit = False  # load_bundle sets it: True when nothing had to be prepared

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mfile = self.path / "manifest.json"
        try:
            self.manifest = json.loads(mfile.read_text())
        except FileNotFoundError:
            raise DataError("not a raytower data bundle (no manifest.json)", self.path) from None
        except json.JSONDecodeError as e:
            raise DataError(f"manifest is not valid JSON ({e.msg} at line {e.lineno})", mfile) from None
        if self.manifest.get("format") != BUNDLE_FORMAT:
            raise DataError(f"bundle format {self.manifest.get('format')} is not {BUNDLE_FORMAT}", mfile)
        try:
            t = pq.read_table(self.path / "interactions.parquet")
            self.user_idx = t.column("user_idx").to_numpy()
            self.item_idx = t.column("item_idx").to_numpy()
            self.timestamp = t.column("timestamp").to_numpy()
            self.split = t.column("split").to_numpy()
            self.items = pq.read_table(self.path / "items.parquet").to_pandas()
            self.users = pq.read_table(self.path / "users.parquet").to_pandas()
        except (OSError, KeyError, ValueError) as e:  # a file missing, truncated or not Parquet
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise DataError(f"a damaged data bundle ({first})", self.path) from None

    # --- sizes and identity -------------------------------------------------------------
    name = property(lambda self: self.manifest["name"])
    fingerprint = property(lambda self: self.manifest["fingerprint"])
    n_users = property(lambda self: int(self.manifest["n_users"]))
    n_items = property(lambda self: int(self.manifest["n_items"]))

    # --- interactions ---------------------------------------------------------------------
    def _csr(self, rows: np.ndarray):
        counts = np.bincount(self.user_idx[rows], minlength=self.n_users + 1)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), self.item_idx[rows]

    @cached_property
    def train_sequences(self):
        """(offsets, items): user u's train items, in time order, are items[offsets[u]:offsets[u+1]]."""
        return self._csr(self.split == SPLIT_TRAIN)

    def train_pairs(self, graph_only: bool = False):
        """(user_idx, item_idx) of the train interactions; ``graph_only`` leaves cold users out."""
        rows = self.split == SPLIT_TRAIN
        if graph_only:
            rows &= ~self.cold_mask[self.user_idx]
        return self.user_idx[rows], self.item_idx[rows]

    def eval_set(self, split: str) -> EvalSet:
        s = SPLITS[split]
        if s == SPLIT_TRAIN:
            raise ValueError("evaluate on 'val' or 'test'")
        rows = np.flatnonzero(self.split == s)
        users, first = np.unique(self.user_idx[rows], return_index=True)
        targets = self.item_idx[rows[first]]
        # Splits are time-ordered within a user, so the history is every earlier split's rows.
        offsets, items = self._csr(self.split < s)
        has_hist = offsets[users + 1] > offsets[users]  # temporal splits can leave a user without one
        users, targets = users[has_hist], targets[has_hist]
        lens = (offsets[users + 1] - offsets[users])
        starts = offsets[users]
        idx = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())
        return EvalSet(users, targets, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), items[idx])

    # --- features ------------------------------------------------------------------------
    @cached_property
    def cold_mask(self) -> np.ndarray:
        m = np.zeros(self.n_users + 1, dtype=bool)
        m[self.users["user_idx"].to_numpy()] = self.users["cold"].to_numpy()
        return m

    @cached_property
    def item_counts(self) -> np.ndarray:
        """Train frequency per item_idx (index 0 = padding, count 0)."""
        c = np.zeros(self.n_items + 1, dtype=np.int64)
        c[self.items["item_idx"].to_numpy()] = self.items["train_count"].to_numpy()
        return c

    @cached_property
    def item_genres(self) -> np.ndarray:
        """(n_items + 1, max_genres) genre ids padded with 0, for an EmbeddingBag."""
        lists = self.items["genre_ids"].to_list()
        width = max(1, max((len(g) for g in lists), default=1))
        out = np.zeros((self.n_items + 1, width), dtype=np.int64)
        lens = np.array([len(g) for g in lists])
        if lens.sum():
            rows = np.repeat(self.items["item_idx"].to_numpy(), lens)
            cols = np.concatenate([np.arange(k) for k in lens])
            out[rows, cols] = np.concatenate([np.asarray(g) for g in lists if len(g)])
        return out

    @cached_property
    def item_year_bucket(self) -> np.ndarray:
        out = np.zeros(self.n_items + 1, dtype=np.int64)
        out[self.items["item_idx"].to_numpy()] = self.items["year_bucket"].to_numpy()
        return out

    def user_feature(self, col: str) -> np.ndarray:
        out = np.zeros(self.n_users + 1, dtype=np.int64)
        out[self.users["user_idx"].to_numpy()] = self.users[col].to_numpy()
        return out

    @property
    def n_genres(self) -> int:
        return len(self.manifest["genres"])

    @property
    def n_year_buckets(self) -> int:
        return len(self.manifest["year_buckets"])

    @property
    def meta_cardinalities(self) -> dict[str, int]:
        """Embedding sizes of the user meta features, unknown (0) included."""
        return {
            "age_bucket": len(self.manifest["age_edges"]) + 2,
            "gender_idx": len(self.manifest["genders"]) + 1,
            "occupation_idx": len(self.manifest["occupations"]) + 1,
        }
