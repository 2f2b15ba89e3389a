"""`raytower export` and `raytower recommend`: the chosen model, ready to serve.

    MODEL_DIR/
      manifest.json        dims, max_len, meta columns, dataset fingerprint, the config, versions
      user_tower.pt2       torch.export: (user_idx[B], items[B, max_len] left-padded, meta[B, 3]) -> (B, dim)
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

from raytower._io import check_destination, output_dir, write_json, write_serialised
from raytower.data import Bundle
from raytower.errors import ConfigError
from raytower.model.build import TwoTower
from raytower.model.towers import user_forward
from raytower.model.pretrain import Artifacts
from raytower.names import BEST_CHECKPOINT, BEST_CONFIG, FETCHED_CHECKPOINT, RUN_METRICS
from raytower.train.config import TrainConfig
from raytower.train.data import META_COLUMNS, left_padded
from raytower.train.loop import load_model
from raytower.train.run import read_checkpoint

USER_TOWER = "user_tower.pt2"
MODEL_FORMAT = 2  # 2: the user tower as torch.export (1: TorchScript)


class ServingUserTower(nn.Module):
    """The user tower at evaluation: the last position's fused, normalised vector."""

    def __init__(self, user_tower):
        super().__init__()
        self.tower = user_tower

    def forward(self, users: torch.Tensor, seq: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return user_forward(self.tower, users, seq, meta, last_only=True)[:, 0]


def export_user_tower(tower: nn.Module, max_len: int):
    """The serving tower as a torch.export ExportedProgram, any batch size (TorchScript, which
    raytower used before, is deprecated from torch 2.13 on)."""
    import warnings

    example = (torch.tensor([1, 2]), torch.ones(2, max_len, dtype=torch.long),
               torch.zeros(2, len(META_COLUMNS), dtype=torch.long))
    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    with torch.no_grad(), warnings.catch_warnings():
        # The fusion keeps its last gate for the curriculum's diagnostics; serving never reads it.
        warnings.filterwarnings("ignore", message=".*was assigned during export.*")
        return torch.export.export(tower, example, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))


def load_checked_tower(path: str | Path) -> torch.nn.Module:
    """An exported ``user_tower.pt2`` as a module, loaded from a copy checked against an allow-list:
    never ``torch.export.load`` on the file itself, which may unpickle objects or run code. A crafted
    file is one line (ConfigError: "refused: ..."). For a server that has raytower installed."""
    from raytower._safe_pt2 import load_tower

    return load_tower(path)


def load_user_tower(model_dir: Path, fmt: int):
    if fmt >= 2:
        return load_checked_tower(model_dir / USER_TOWER)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load, for format-1 models
        return torch.jit.load(str(model_dir / "user_tower.pt"), map_location="cpu").eval()


def load_chosen(exp: str | Path) -> tuple[TwoTower, TrainConfig, object, dict]:
    """(model, config, bundle, what was chosen) from a search directory (its best_config.json), the
    folder ``raytower submit --fetch-to`` fills, or a ``raytower train`` run (its best epoch)."""
    exp = Path(exp)
    if (exp / RUN_METRICS).is_file() and (exp / BEST_CHECKPOINT).is_file():
        return _from_train_run(exp)
    best_file = exp / BEST_CONFIG
    if not best_file.is_file():
        raise ConfigError("no best_config.json: not a finished search, a fetched results folder or a "
                          "`raytower train` run (run `raytower best DIR -o FILE` on an interrupted search)", exp)
    best = _read_json(best_file)
    if (exp / FETCHED_CHECKPOINT).is_file():  # raytower submit --fetch-to: no Tune state, one checkpoint
        from raytower.tune.record import SearchRecord
        from raytower.tune.results import model_from_state

        return (*model_from_state(read_checkpoint(exp / FETCHED_CHECKPOINT), SearchRecord.read(exp).shared), best)
    from raytower.tune.results import trial_model

    model, cfg, bundle = trial_model(exp, best["trial_id"], int(best["selection"]["epoch"]))
    return model, cfg, bundle, best


def _from_train_run(run: Path):
    metrics = _read_json(run / RUN_METRICS)
    try:
        bundle_path, artifacts_path = metrics["dataset"]["bundle"], metrics["pretraining"]["path"]
    except (KeyError, TypeError):
        raise ConfigError("a `raytower train` run from before runs recorded their bundle's path: train it again",
                          run) from None
    if not isinstance(bundle_path, str) or not isinstance(artifacts_path, (str, type(None))):
        raise ConfigError("its dataset's bundle and pretraining's path must be paths (strings)", run / RUN_METRICS)
    if type(metrics.get("best_epoch")) is not int:  # it goes into the manifest
        raise ConfigError(f"its best_epoch must be an int, got {metrics.get('best_epoch')!r}", run / RUN_METRICS)
    state = read_checkpoint(run / BEST_CHECKPOINT)
    cfg = TrainConfig.from_dict(state["config"], source=str(run / BEST_CHECKPOINT))  # a bad field names the file
    bundle, artifacts = Bundle(bundle_path), Artifacts.load(artifacts_path) if artifacts_path else None
    chosen = {"trial_id": None, "selection": {"epoch": metrics["best_epoch"],
                                              "metric": metrics.get("selection_metric")},
              "versions": metrics.get("versions", {})}
    return load_model(state, bundle, artifacts), cfg, bundle, chosen


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"not valid JSON ({e})", path) from None


def export_model(exp: str | Path, model_dir: str | Path, force: bool = False) -> Path:
    """Write the chosen model to ``model_dir``: a new or empty directory, or (with ``force``) an
    earlier raytower export. Nothing else there is ever replaced."""
    exp, model_dir = Path(exp), Path(model_dir)
    check_destination(model_dir, "model", force)  # before the model is built
    model, cfg, bundle, best = load_chosen(exp)
    model.eval()
    tower = ServingUserTower(model.user_tower).eval()
    exported = export_user_tower(tower, cfg.max_len)
    # Every known item of a user, in time order: what a serving system would hold as the history.
    counts = np.bincount(bundle.user_idx, minlength=bundle.n_users + 1)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    users = bundle.users[["user_idx", "user_id", *META_COLUMNS]].copy()
    users["history"] = [bundle.item_idx[offsets[u]:offsets[u + 1]] for u in users["user_idx"]]
    with output_dir(model_dir, "model", force) as tmp:
        write_serialised(tmp / USER_TOWER, lambda buffer: torch.export.save(exported, buffer))
        item_vectors = model.item_vectors().cpu().numpy().astype(np.float32)
        np.save(tmp / "item_vectors.npy", item_vectors)
        bundle.items[["item_idx", "item_id", "title"]].to_parquet(tmp / "items.parquet", index=False)
        users.to_parquet(tmp / "users.parquet", index=False)
        write_json(tmp / "manifest.json", {
            "format": MODEL_FORMAT, "dim": int(item_vectors.shape[1]), "max_len": cfg.max_len,
            "meta_columns": list(META_COLUMNS),
            "padding_item": 0, "n_items": bundle.n_items, "n_users": bundle.n_users,
            "dataset": {"name": bundle.name, "fingerprint": bundle.fingerprint},
            "trial_id": best["trial_id"], "epoch": best["selection"]["epoch"], "config": cfg.to_dict(),
            "score": "dot product of L2-normalised vectors" if cfg.score == "cosine" else "dot product",
            "versions": best.get("versions", {}),
            "meta_encoders": meta_encoders(bundle.manifest),
        })
    return model_dir


def meta_encoders(bundle_manifest: dict) -> dict:
    """How each meta column is computed from a user's raw features, so a server can encode a
    brand-new user (examples/serve.py). 0 is always the unknown bucket."""
    return {
        "age_bucket": {"from": "age", "edges": list(bundle_manifest.get("age_edges", [])),
                       "rule": "0 when unknown, else 1 + the number of edges <= age"},
        "gender_idx": {"from": "gender", "values": list(bundle_manifest.get("genders", [])),
                       "rule": "0 when unknown, else 1 + the value's position in values"},
        "occupation_idx": {"from": "occupation", "values": list(bundle_manifest.get("occupations", [])),
                           "rule": "0 when unknown, else 1 + the value's position in values"},
    }


def check_manifest(doc, path: Path) -> dict:
    """An exported model's manifest, its values checked as TrainConfig checks a config: a tampered
    one is one line, not a 74 GiB allocation (max_len 1e10) or a KeyError (meta_columns ["nope"])."""
    from raytower.train.config import LIMITS

    def bad(msg: str):
        raise ConfigError(f"a damaged exported model: {msg}", path)

    if not isinstance(doc, dict):
        bad("manifest.json is not a mapping")
    doc = {"format": 1, **doc}
    if doc["format"] not in (1, MODEL_FORMAT) or isinstance(doc["format"], bool):
        bad(f"format must be 1 or {MODEL_FORMAT}, got {doc['format']!r}")
    for key, most in (("max_len", LIMITS["max_len"]), ("dim", LIMITS["dim"])):
        value = doc.get(key)
        if key == "dim" and value is None:
            continue  # not needed to serve: the item vectors' own width is used
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
            bad(f"{key} must be a whole number in [1, {most:,}], got {str(value)[:40]!r}")
    if doc.get("meta_columns") != list(META_COLUMNS):
        bad(f"meta_columns must be {list(META_COLUMNS)}, got {str(doc.get('meta_columns'))[:80]}")
    return doc


def _check_tables(model: "ServedModel", d: Path) -> None:
    """The arrays and tables agree with the manifest (a KeyError or a shape error later is a traceback)."""
    dim, n = model.manifest.get("dim"), len(model.item_vectors)
    if model.item_vectors.ndim != 2 or (dim is not None and model.item_vectors.shape[1] != dim):
        raise ConfigError(f"a damaged exported model: item_vectors.npy is {tuple(model.item_vectors.shape)}, "
                          f"the manifest says {dim} wide", d)
    missing = {"user_idx", "user_id", "history", *META_COLUMNS} - set(model.users.columns)
    if missing or not {"item_id", "title"} <= set(model.items.columns):
        raise ConfigError(f"a damaged exported model: users.parquet or items.parquet lacks "
                          f"{sorted(missing) or ['item_id/title']}", d)
    if len(model.items) and (model.items.index.max() >= n or model.items.index.min() < 1):
        raise ConfigError(f"a damaged exported model: items.parquet names rows outside item_vectors.npy's {n}", d)


class ServedModel:
    """What `raytower recommend` loads: no training code, no pickles (torch.export, NumPy, Parquet).
    The torch.export archive is checked before torch reads it (raytower._safe_pt2): one that asks to
    unpickle objects or run code is refused. A format-1 model (TorchScript ``user_tower.pt``,
    raytower before torch.export) still loads."""

    def __init__(self, model_dir: str | Path):
        d = Path(model_dir)
        if not (d / "manifest.json").is_file():
            raise ConfigError("not an exported model (no manifest.json)", d)
        try:
            self.manifest = check_manifest(json.loads((d / "manifest.json").read_text()), d / "manifest.json")
            self.tower = load_user_tower(d, self.manifest["format"])
            self.item_vectors = torch.from_numpy(np.load(d / "item_vectors.npy", allow_pickle=False))
            self.items = pd.read_parquet(d / "items.parquet").set_index("item_idx")
            self.users = pd.read_parquet(d / "users.parquet")
            _check_tables(self, d)
        except ConfigError:  # refused, or damaged: already one line naming the file
            raise
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
