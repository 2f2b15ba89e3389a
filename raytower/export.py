"""`raytower export` and `raytower recommend`: the chosen model, ready to serve.

    MODEL_DIR/
      manifest.json        dims, max_len, meta columns, dataset fingerprint, the config, versions
      user_tower.pt        TorchScript: (user_idx[B], items[B, max_len] left-padded, meta[B, 3]) -> (B, dim)
      item_vectors.npy     (n_items + 1, dim) float32, L2-normalised; row 0 is padding
      items.parquet        item_idx, item_id, title: the row of each item in item_vectors.npy
      users.parquet        user_idx, user_id, meta features, history (every known item, in time order)

Scores are dot products of unit vectors, so any inner-product ANN index serves the item vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from raytower._io import check_destination, output_dir, write_json
from raytower.errors import ConfigError
from raytower.model.build import TwoTower
from raytower.train.config import TrainConfig
from raytower.train.data import META_COLUMNS, left_padded


class ServingUserTower(nn.Module):
    """The user tower at evaluation: the last position's fused, normalised vector."""

    def __init__(self, user_tower):
        super().__init__()
        self.tower = user_tower

    def forward(self, users: torch.Tensor, seq: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.tower(users, seq, meta, last_only=True)[:, 0]


def load_chosen(exp: Path) -> tuple[TwoTower, TrainConfig, object, dict]:
    """(model, config, bundle, best_config) of the chosen trial's best epoch, from a search
    directory's best_config.json."""
    from raytower.tune.results import trial_model

    best_file = exp / "best_config.json"
    if not best_file.is_file():
        raise ConfigError("no best_config.json: run `raytower best DIR` first", exp)
    best = json.loads(best_file.read_text())
    model, cfg, bundle = trial_model(exp, best["trial_id"], int(best["selection"]["epoch"]))
    return model, cfg, bundle, best


def export_model(exp: str | Path, model_dir: str | Path, force: bool = False) -> Path:
    """Write the chosen model to ``model_dir``: a new or empty directory, or (with ``force``) an
    earlier raytower export. Nothing else there is ever replaced."""
    exp, model_dir = Path(exp), Path(model_dir)
    check_destination(model_dir, "model", force)  # before the model is built
    model, cfg, bundle, best = load_chosen(exp)
    model.eval()
    tower = ServingUserTower(model.user_tower).eval()
    example = (torch.tensor([1, 2]), torch.ones(2, cfg.max_len, dtype=torch.long), torch.zeros(2, len(META_COLUMNS), dtype=torch.long))
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # "Iterating over a tensor": q, k, v are always three; the test compares traced and eager.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        scripted = torch.jit.trace(tower, example, check_trace=False)
    # Every known item of a user, in time order: what a serving system would hold as the history.
    counts = np.bincount(bundle.user_idx, minlength=bundle.n_users + 1)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    users = bundle.users[["user_idx", "user_id", *META_COLUMNS]].copy()
    users["history"] = [bundle.item_idx[offsets[u]:offsets[u + 1]] for u in users["user_idx"]]
    with output_dir(model_dir, "model", force) as tmp:
        scripted.save(str(tmp / "user_tower.pt"))
        np.save(tmp / "item_vectors.npy", model.item_vectors().cpu().numpy().astype(np.float32))
        bundle.items[["item_idx", "item_id", "title"]].to_parquet(tmp / "items.parquet", index=False)
        users.to_parquet(tmp / "users.parquet", index=False)
        write_json(tmp / "manifest.json", {
            "format": 1, "dim": cfg.dim, "max_len": cfg.max_len, "meta_columns": list(META_COLUMNS),
            "padding_item": 0, "n_items": bundle.n_items, "n_users": bundle.n_users,
            "dataset": {"name": bundle.name, "fingerprint": bundle.fingerprint},
            "trial_id": best["trial_id"], "epoch": best["selection"]["epoch"], "config": cfg.to_dict(),
            "score": "dot product of L2-normalised vectors", "versions": best.get("versions", {}),
        })
    return model_dir


class ServedModel:
    """What `raytower recommend` loads: no training code, no pickles (TorchScript, NumPy, Parquet)."""

    def __init__(self, model_dir: str | Path):
        d = Path(model_dir)
        if not (d / "manifest.json").is_file():
            raise ConfigError("not an exported model (no manifest.json)", d)
        try:
            self.manifest = json.loads((d / "manifest.json").read_text())
            self.tower = torch.jit.load(str(d / "user_tower.pt"), map_location="cpu").eval()
            self.item_vectors = torch.from_numpy(np.load(d / "item_vectors.npy", allow_pickle=False))
            self.items = pd.read_parquet(d / "items.parquet").set_index("item_idx")
            self.users = pd.read_parquet(d / "users.parquet")
            self.manifest["max_len"], self.manifest["meta_columns"]  # noqa: B018 - present, or damaged
        except Exception as e:  # a file missing, truncated or tampered: refuse it in one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ConfigError(f"a damaged exported model ({type(e).__name__}: {first})", d) from None
        self._by_id = dict(zip(self.users["user_id"].astype(str), range(len(self.users))))

    @torch.no_grad()
    def user_vector(self, user_idx: np.ndarray, histories: list[np.ndarray], meta: np.ndarray) -> torch.Tensor:
        lens = np.array([len(h) for h in histories])
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        flat = np.concatenate(histories) if len(histories) else np.zeros(0, dtype=np.int64)
        seq = left_padded(offsets, flat, np.arange(len(histories)), self.manifest["max_len"])
        return self.tower(torch.as_tensor(user_idx, dtype=torch.long), torch.as_tensor(seq),
                          torch.as_tensor(meta, dtype=torch.long))

    def recommend(self, user_id: str, k: int = 10) -> pd.DataFrame:
        row = self._by_id.get(str(user_id))
        if row is None:
            raise ConfigError(f"unknown user {user_id!r}")
        u = self.users.iloc[row]
        hist = np.asarray(u["history"], dtype=np.int64)
        vec = self.user_vector(np.array([u["user_idx"]]), [hist], np.array([[u[c] for c in self.manifest["meta_columns"]]]))
        scores = (vec @ self.item_vectors.T)[0]
        scores[0] = float("-inf")
        scores[torch.as_tensor(hist)] = float("-inf")  # recommend what the user has not seen
        top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum()))).indices.numpy()
        out = self.items.loc[top, ["item_id", "title"]].reset_index()
        out.insert(0, "rank", np.arange(1, len(out) + 1))
        out["score"] = scores[top].numpy()
        return out
