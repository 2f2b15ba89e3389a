"""From an experiment directory to ``trials.parquet`` and ``best_config.json``.

Reads only plain files Tune and raytower wrote (per-trial ``params.json`` and ``result.json``,
``stops.json``, checkpoints' ``state.pt`` loaded with weights_only), so it works on a finished or
an interrupted search, without Ray running and without unpickling anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from raytower._io import atomic_path, write_json
from raytower.errors import ConfigError
from raytower.train.config import TrainConfig

METRIC = "val/recall@100"
REPORT_KEYS = ("val/recall@10", "val/recall@20", "val/recall@50", "val/recall@100", "val/ndcg@10",
               "val/cold/recall@100", "val/coverage@100", "val/tail_recall@100", "loss", "loss_random",
               "gate_mean", "effective_rank", "stage")


def read_trials(exp: Path) -> list[dict[str, Any]]:
    """One record per trial directory: its config and its per-epoch results (deduplicated by epoch)."""
    trials = []
    for d in sorted(p for p in (exp / "tune").glob("*") if p.is_dir() and (p / "params.json").is_file()):
        params = json.loads((d / "params.json").read_text())
        rows: dict[int, dict] = {}
        if (d / "result.json").is_file():
            for line in (d / "result.json").read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if "epoch" in r:
                    rows[int(r["epoch"])] = r  # a resumed trial re-reports from its checkpoint on
        history = [rows[e] for e in sorted(rows)]
        trial_id = history[-1]["trial_id"] if history else d.name.removeprefix("trial_")
        trials.append({"dir": d, "trial_id": trial_id, "params": params, "history": history,
                       "error": (d / "error.txt").is_file()})
    return trials


def trial_rows(exp: Path) -> pd.DataFrame:
    setup = json.loads((exp / "setup.json").read_text())
    max_epochs = setup["settings"]["max_epochs"]
    stops = json.loads((exp / "stops.json").read_text()) if (exp / "stops.json").is_file() else {}
    rows = []
    for t in read_trials(exp):
        h = t["history"]
        row: dict[str, Any] = {"trial_id": t["trial_id"], "trial_dir": t["dir"].name}
        row |= {f"param/{k}": v for k, v in t["params"].items()}
        epochs = int(h[-1]["epoch"]) if h else 0
        row["epochs"] = epochs
        reason = stops.get(t["trial_id"], [None])[0]
        if reason is None:
            reason = "error" if t["error"] else ("completed" if epochs >= max_epochs else "unfinished")
        row["stop_reason"] = reason
        row["status"] = {"completed": "COMPLETE", "unfinished": "RUNNING", "error": "ERROR",
                         "diverged": "FAILED"}.get(reason, "PRUNED")
        row["reached_final_rung"] = epochs >= max_epochs
        finite = [r for r in h if _finite(r.get(METRIC))]
        best = max(finite, key=lambda r: r[METRIC]) if finite else None
        row["best_epoch"] = int(best["epoch"]) if best else None
        for k in REPORT_KEYS:
            row[f"best/{k}"] = best.get(k) if best else None
            row[f"final/{k}"] = h[-1].get(k) if h else None
        row["stage_switch_epoch"] = next((int(r["epoch"]) for r in h if r.get("stage") == 2), None)
        row["wall_time_s"] = float(sum(r.get("epoch_time_s", 0.0) for r in h))
        row["cpu_time_s"] = float(sum(r.get("epoch_cpu_s", 0.0) for r in h))
        row["trial_time_s"] = float(h[-1].get("time_total_s", math.nan)) if h else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def choose(df: pd.DataFrame) -> pd.Series:
    """The best validation value at the trial's best epoch, among trials that reached the final rung
    (an early-stopped trial's best is a low-fidelity figure); all trials if none did."""
    pool = df[df["reached_final_rung"] & df[f"best/{METRIC}"].notna()]
    if pool.empty:
        pool = df[df[f"best/{METRIC}"].notna()]
    if pool.empty:
        raise ConfigError("no trial reported a validation metric yet")
    return pool.loc[pool[f"best/{METRIC}"].astype(float).idxmax()]


def export_results(exp: str | Path, log=print, evaluate_test: bool = True) -> dict:
    """Write trials.parquet and best_config.json (atomically); return the best config document."""
    exp = Path(exp)
    if not (exp / "setup.json").is_file() or not (exp / "tune").is_dir():
        raise ConfigError("not a raytower search directory (no setup.json and tune/)", exp)
    df = trial_rows(exp)
    if df.empty:
        raise ConfigError("no trial has started in this search", exp)
    with atomic_path(exp / "trials.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    best = choose(df)
    setup = json.loads((exp / "setup.json").read_text())
    trial = next(t for t in read_trials(exp) if t["trial_id"] == best["trial_id"])
    # Every field, defaults included: a later change of a default cannot change the exported model.
    params = TrainConfig.from_dict(trial["params"]).to_dict()
    test = _test_once(exp, trial, int(best["best_epoch"]), setup) if evaluate_test else None
    versions = _versions()
    doc = {
        "params": params,
        "selection": {"metric": METRIC, "value": float(best[f"best/{METRIC}"]), "split": "validation",
                      "epoch": int(best["best_epoch"]), "rule": "best epoch of the best trial that reached the final rung"},
        "validation": {k[5:]: best[k] for k in best.index if k.startswith("best/") and best[k] is not None},
        "test": test,
        "trial_id": best["trial_id"],
        "epochs": int(best["epochs"]),
        "stop_reason": best["stop_reason"],
        "dataset": setup["dataset"],
        "search": {k: setup["settings"][k] for k in ("space", "num_samples", "max_epochs", "seed", "executor",
                                                        "scheduler", "searcher", "truthful_pruning", "grace_period",
                                                        "reduction_factor")},
        "trials": {"total": int(len(df)), **{str(k): int(v) for k, v in df["stop_reason"].value_counts().items()}},
        "versions": versions,
    }
    write_json(exp / "best_config.json", doc)
    log(f"best trial {best['trial_id']}: val Recall@100 {doc['selection']['value']:.4f} at epoch {doc['selection']['epoch']}"
        + (f"; test Recall@100 {test['recall@100']:.4f}, Recall@10 {test['recall@10']:.4f}" if test else ""))
    return doc


def _test_once(exp: Path, trial: dict, epoch: int, setup: dict) -> dict:
    """Test is touched once, for the chosen trial's best-epoch checkpoint; cached in test_eval.json."""
    cache = exp / "test_eval.json"
    key = f"{trial['trial_id']}@{epoch}"
    if cache.is_file():
        done = json.loads(cache.read_text())
        if done.get("key") == key:
            return done["test"]
    import torch

    run = trial_model(exp, trial["trial_id"], epoch, setup["setup"])
    with torch.no_grad():
        test = {k: v for k, v in run.evaluate("test").items() if not k.startswith("_")}
    write_json(cache, {"key": key, "test": test})
    return test


def trial_model(exp: Path, trial_id: str, epoch: int, shared: dict):
    """A trial's model at ``epoch``, rebuilt from its kept checkpoint and the search's shared artifacts."""
    from raytower.data import Bundle
    from raytower.model.pretrain import Artifacts
    from raytower.train.loop import Curriculum

    state = _checkpoint_state([exp / "tune" / f"trial_{trial_id}", exp / "train" / f"train-{trial_id}"], epoch)
    if state is None:
        raise ConfigError(f"the checkpoint of trial {trial_id} at epoch {epoch} is missing", exp)
    cfg = TrainConfig.from_dict(state["config"])
    run = Curriculum(cfg, Bundle(shared["bundle"]), Artifacts.load(shared["artifacts"][f"{cfg.dim}-{cfg.item_layers}"]))
    run.load_state_dict(state)
    return run


def _checkpoint_state(dirs: list[Path], epoch: int) -> dict | None:
    """The kept checkpoint of ``epoch``: in the Tune trial (executor function) or its Train run."""
    import torch

    for state_file in sorted(f for d in dirs if d.is_dir() for f in d.rglob("state.pt")):
        state = torch.load(state_file, weights_only=True, map_location="cpu")
        if int(state["epoch"]) == epoch:
            return state
    return None


def _versions() -> dict:
    from raytower.train.run import versions

    return versions()
