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

from raytower._io import atomic_path, read_json, write_json
from raytower._storage import ExperimentStore
from raytower._trial import TrialContext, local_copy
from raytower.errors import ConfigError
from raytower.names import (BEST_CONFIG, BROKEN, DEFAULT_METRIC, EXPERIMENT, OPTUNA_DB, SEARCH_RECORD, STOPS,
                            TRAIN_RUNS, TRIALS, TUNE_TRIAL_ID, WARM_START_FROM, StopReason, best_key, label,
                            train_run_name, trial_dirname, val_key)
from raytower.train.row import REPORT_KEYS
from raytower.train.config import TrainConfig
from raytower.tune.record import SearchRecord, store_of



def check_search_dir(exp: Path) -> None:
    """One line saying why ``exp`` is not a search raytower can read: no setup.json, a damaged
    one (named as such, not as missing), or no Tune experiment beside it."""
    if not (exp / SEARCH_RECORD).is_file():
        raise ConfigError("not a raytower search directory (no setup.json)", exp)
    if not store_of(exp).is_dir(EXPERIMENT):  # reads setup.json: damage is its own error
        raise ConfigError("not a raytower search directory (no tune/ beside its setup.json)", exp)


def is_best_config(path: Path) -> bool:
    """A best_config.json raytower wrote (``export_results``), by its shape."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"params", "selection", "trial_id", "dataset"} <= doc.keys()


def read_trials(exp: Path) -> list[dict[str, Any]]:
    """One record per trial directory: its config and its per-epoch results (deduplicated by epoch)."""
    store = store_of(exp)
    trials = []
    for name in store.subdirs(EXPERIMENT):
        params_text = store.read_text(f"{EXPERIMENT}/{name}/params.json")
        if params_text is None:
            continue
        rows = _result_rows(exp, store, name)
        try:
            params = json.loads(params_text)
            if not isinstance(params, dict):
                raise ValueError("not a mapping")
        except ValueError:
            if not rows:
                continue  # a kill cut its params.json short before its first epoch: it never ran
            # A trial that trained but whose config is unreadable could be the leader: choosing
            # without it would silently change the choice.
            raise ConfigError("damaged trial record (not a JSON mapping): restore it, or move the trial's directory "
                              "out of the search to choose without it", f"{exp}/{EXPERIMENT}/{name}/params.json") from None
        history = [rows[e] for e in sorted(rows)]
        trial_id = history[-1]["trial_id"] if history else name.removeprefix("trial_")
        trials.append({"dir": name, "trial_id": trial_id, "params": params, "history": history,
                       "error": store.is_file(f"{EXPERIMENT}/{name}/error.txt")})
    return trials


def _result_rows(exp: Path, store: ExperimentStore, name: str) -> dict[int, dict]:
    """A trial's result.json as {epoch: row}, the last report of an epoch kept (a resumed trial
    re-reports from its checkpoint on). A line a kill cut short is skipped; a damaged one is an error."""
    rel = f"{EXPERIMENT}/{name}/result.json"
    rows: dict[int, dict] = {}
    for line in (store.read_text(rel) or "").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(r, dict) and "epoch" in r:
            epoch = r["epoch"]
            if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or epoch != int(epoch):
                raise ConfigError(f"damaged trial record: epoch {str(epoch)[:40]!r} is not a whole number",
                                  f"{exp}/{rel}")
            rows[int(epoch)] = r
    return rows


def tune_statuses(exp: Path) -> dict[str, str]:
    """trial_id -> Tune's status (PENDING, RUNNING, PAUSED, TERMINATED, ERROR) as of Tune's last save.

    Read from the newest ``experiment_state-*.json``, which Tune also writes when it is interrupted,
    before it stops the running trials (so they show as RUNNING there, not TERMINATED)."""
    store = store_of(exp)
    # The newest by the start time in its name: on a local storage path Ray rewrites the older
    # session's file at the end too, so modification times do not tell them apart.
    states = sorted(rel for rel, _ in store.files(EXPERIMENT)
                    if rel.rsplit("/", 1)[-1].startswith("experiment_state-") and rel.endswith(".json"))
    if not states:
        return {}
    try:
        data = json.loads(store.read_text(states[-1]) or "")
        out = {}
        for entry in data["trial_data"]:
            t = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
            out[str(t["trial_id"])] = str(t["status"])
        return out
    except (ValueError, KeyError, IndexError, TypeError):
        return {}  # a state file cut short by a kill: fall back to what the trial files say


def trial_rows(exp: Path, trials: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per trial; ``trials`` is ``read_trials(exp)`` when the caller already has it. A
    trial's best epoch is its best by the search's selection metric."""
    record = SearchRecord.read(exp)
    max_epochs, metric = record.max_epochs, val_key(record.metric)
    stops = read_json(exp / STOPS, {})
    statuses = tune_statuses(exp)
    numbers = optuna_numbers(exp, record)
    rows = []
    for t in read_trials(exp) if trials is None else trials:
        h = t["history"]
        # optuna_number: the trial in the study (optuna-dashboard, OUT/optuna.db), by its user attribute
        row: dict[str, Any] = {"trial_id": t["trial_id"], "trial_dir": t["dir"], "optuna_number": numbers.get(t["trial_id"])}
        row |= {f"param/{k}": v for k, v in t["params"].items()}
        epochs = int(h[-1]["epoch"]) if h else 0
        row["epochs"] = epochs
        reason = stops.get(t["trial_id"], [None])[0]
        tune_status = statuses.get(t["trial_id"])
        if reason is None:
            # error.txt stays after a failure Tune restarted the trial from: its status says how it ended
            if tune_status == "ERROR" or (t["error"] and tune_status in (None, "RUNNING", "PENDING")):
                reason = StopReason.ERROR
            elif epochs >= max_epochs:
                reason = StopReason.COMPLETED
            elif tune_status == "TERMINATED":
                reason = StopReason.TIME_BUDGET  # Tune ended it, and neither ASHA nor the stopper did
            else:
                reason = StopReason.UNFINISHED
        row["stop_reason"] = reason
        row["status"] = {StopReason.COMPLETED: "COMPLETE", StopReason.PLATEAU: "COMPLETE", StopReason.UNFINISHED: "RUNNING",
                         StopReason.ERROR: "ERROR", StopReason.DIVERGED: "FAILED"}.get(reason, "PRUNED")
        row["reached_final_rung"] = epochs >= max_epochs
        # A trial stopped on a plateau had converged: its best is as trustworthy as a finisher's.
        row["full_fidelity"] = row["reached_final_rung"] or reason == StopReason.PLATEAU
        finite = [r for r in h if _finite(r.get(metric))]
        # of equal values the latest epoch: Ray keeps the latest checkpoints among equal scores
        best = max(finite, key=lambda r: (r[metric], r["epoch"])) if finite else None
        row["best_epoch"] = int(best["epoch"]) if best else None
        for k in REPORT_KEYS:
            row[f"best/{k}"] = best.get(k) if best else None
            row[f"final/{k}"] = h[-1].get(k) if h else None
        row["nodes"] = list(dict.fromkeys(r["node_id"] for r in h if r.get("node_id")))  # in the order used
        row["stage_switch_epoch"] = next((int(r["epoch"]) for r in h if r.get("stage") == 2), None)
        row["wall_time_s"] = float(sum(r.get("epoch_time_s", 0.0) for r in h))
        row["cpu_time_s"] = float(sum(r.get("epoch_cpu_s", 0.0) for r in h))
        row["trial_time_s"] = float(h[-1].get("time_total_s", math.nan)) if h else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def read_study(exp: Path, record: SearchRecord | None = None):
    """The search's Optuna study (OUT/optuna.db, or the --study-url it ran with); None when it
    cannot be read (an RDB server out of reach, a directory copied without it)."""
    import optuna

    from raytower.tune._study import missing_sqlite

    record = record or SearchRecord.read(exp)
    url = record.study_url or (f"sqlite:///{exp / OPTUNA_DB}" if (exp / OPTUNA_DB).is_file() else None)
    if url is None or missing_sqlite(url):  # opening a missing SQLite file would create it
        return None
    try:
        return optuna.load_study(study_name=record.study_name, storage=url)
    except Exception:
        return None


def own_trials(study) -> list:
    """The study's trials that this search ran: the ones --warm-start copied in are left out."""
    return [t for t in study.trials if WARM_START_FROM not in t.user_attrs]


def optuna_numbers(exp: Path, record: SearchRecord | None = None) -> dict[str, int]:
    """Tune trial id -> the Optuna trial number of the same trial."""
    study = read_study(exp, record)
    if study is None:
        return {}
    return {str(t.user_attrs[TUNE_TRIAL_ID]): t.number for t in own_trials(study) if TUNE_TRIAL_ID in t.user_attrs}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def choose(df: pd.DataFrame, metric: str = DEFAULT_METRIC) -> pd.Series:
    """The best validation ``metric`` at the trial's best epoch, among trials that reached the final
    rung or converged before it (``plateau``); an ASHA-stopped trial's best is a low-fidelity figure.
    All sound trials if none qualifies; a broken one (``raytower.names.BROKEN``) never."""
    key = best_key(metric)
    sound = df[~df["stop_reason"].isin(BROKEN) & df[key].notna()]
    pool = sound[sound["full_fidelity"]]
    if pool.empty:
        pool = sound
    if pool.empty:
        broken = df["stop_reason"][df["stop_reason"].isin(BROKEN)].value_counts()
        why = ", ".join(f"{n} {r}" for r, n in broken.items())
        raise ConfigError("no trial is eligible to be chosen: " + (f"every one that reported was stopped as broken ({why})"
                          if why else "none reported a validation metric yet"))
    return pool.loc[pool[key].astype(float).idxmax()]


def export_results(exp: str | Path, log=print, evaluate_test: bool = True, write: bool = True) -> dict:
    """Write trials.parquet and best_config.json (atomically); return the best config document.
    ``write=False`` (``raytower best``) only reads: nothing in ``exp`` changes."""
    exp = Path(exp)
    check_search_dir(exp)
    trials = read_trials(exp)
    df = trial_rows(exp, trials)
    if df.empty:
        raise ConfigError("no trial has started in this search", exp)
    if write:
        with atomic_path(exp / TRIALS) as tmp:
            df.to_parquet(tmp, index=False)
    record = SearchRecord.read(exp)
    metric = record.metric
    best = choose(df, metric)
    trial = next(t for t in trials if t["trial_id"] == best["trial_id"])
    # Every field, defaults included: a later change of a default cannot change the exported model.
    params = TrainConfig.from_dict(trial["params"]).to_dict()
    if best["stop_reason"] == StopReason.PLATEAU:  # retraining stops where the trial did, on the same path
        params["epochs"] = int(best["epochs"])
    if "patience" not in trial["params"]:  # retraining longer (--epochs) stops on a plateau as trials did
        params["patience"] = int(record.settings.get("patience") or 0)
    finished = search_finished(df, record)
    # Test is touched once, for the configuration the whole search chose: an interrupted search's
    # leader may still lose to a trial the resume finishes.
    test = (_test_once(exp, trial, int(best["best_epoch"]), record.shared, remember=write)
            if evaluate_test and finished else None)
    versions = _versions()
    doc = {
        "params": params,
        "selection": {"metric": val_key(metric), "value": float(best[best_key(metric)]), "split": "validation",
                      "epoch": int(best["best_epoch"]),
                      "rule": "best epoch of the best trial that reached the final rung or converged (plateau) before it"},
        "validation": {k[5:]: best[k] for k in best.index if k.startswith("best/") and best[k] is not None},
        "test": test,
        "trial_id": best["trial_id"],
        "epochs": int(best["epochs"]),
        "stop_reason": best["stop_reason"],
        "dataset": record.dataset,
        "search": {k: record.settings.get(k) for k in ("space", "num_samples", "max_epochs", "seed", "executor",
                                                         "scheduler", "searcher", "truthful_pruning", "grace_period",
                                                         "reduction_factor", "metric", "patience")},
        "finished": finished,
        "trials": {"total": int(len(df)), **{str(k): int(v) for k, v in df["stop_reason"].value_counts().items()}},
        "versions": versions,
    }
    if write:
        write_json(exp / BEST_CONFIG, doc)
    if not finished:
        log(f"the search is unfinished ({int((df['stop_reason'] != 'unfinished').sum())} of "
            f"{record.num_samples} trials ended): the leader so far is below; test figures "
            "come once, when the search ends")
    log(f"best trial {best['trial_id']}: val {label(metric)} {doc['selection']['value']:.4f} at epoch "
        f"{doc['selection']['epoch']}"
        + (f"; test {_test_figures(test, metric)}" if test else ""))
    return doc


def _test_figures(test: dict, metric: str) -> str:
    """The selection metric first, then the usual others: 'NDCG@10 0.18, R@100 0.51, R@10 0.31'."""
    keys = [metric, *(k for k in ("recall@100", "recall@10", "ndcg@10") if k != metric)]
    return ", ".join(f"{label(k)} {test[k]:.4f}" for k in keys if k in test)


def search_finished(df: pd.DataFrame, record: SearchRecord) -> bool:
    """Every trial ended, and all num_samples of them started (or the time budget ran out)."""
    if (df["stop_reason"] == StopReason.UNFINISHED).any():
        return False
    return len(df) >= record.num_samples or (df["stop_reason"] == StopReason.TIME_BUDGET).any() or record.time_budget_spent


def _test_once(exp: Path, trial: dict, epoch: int, shared: TrialContext, remember: bool = True) -> dict:
    """Test is touched once, for the chosen trial's best-epoch checkpoint; cached in test_eval.json
    (unless ``remember`` is False: then the same checkpoint gives the same figures again)."""
    cache = exp / "test_eval.json"
    key = f"{trial['trial_id']}@{epoch}"
    try:
        done = json.loads(cache.read_text())
        if done.get("key") == key:
            return done["test"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass  # not evaluated yet, or a damaged cache of it: evaluate (the same checkpoint, the same figures)
    from raytower.train.data import TrainData
    from raytower.train.evaluate import evaluate

    model, cfg, bundle = trial_model(exp, trial["trial_id"], epoch, shared)
    test, _ = evaluate(model, TrainData.build(bundle, cfg.max_len), "test")
    if remember:
        write_json(cache, {"key": key, "test": test})
    return test


def trial_model(exp: Path, trial_id: str, epoch: int, shared: TrialContext | None = None):
    """(model, config, bundle) of a trial at ``epoch``, rebuilt from its kept checkpoint and the
    search's shared artifacts."""
    state = checkpoint_state(store_of(exp), trial_id, epoch)
    if state is None:
        raise ConfigError(f"the checkpoint of trial {trial_id} at epoch {epoch} is missing", exp)
    return model_from_state(state, shared or SearchRecord.read(exp).shared)


def model_from_state(state: dict, shared: TrialContext):
    """(model, config, bundle) a checkpoint's state describes, on the search's bundle and artifacts.
    On a cluster they were made on another node: this one reads its own copy, fetched by name."""
    from raytower.data import Bundle
    from raytower.train.loop import load_model

    cfg = TrainConfig.from_dict(state["config"])
    bundle = Bundle(local_copy(shared.bundle, shared.artifact_store, "bundles", shared.bundle_key))
    model = load_model(state, bundle, shared.load_artifacts(cfg))
    return model, cfg, bundle


def checkpoint_state(store: ExperimentStore, trial_id: str, epoch: int) -> dict | None:
    """The kept checkpoint of a trial's ``epoch``: in the Tune trial (executor function) or its
    Train run (executor train). None when that epoch's checkpoint was not kept."""
    import io

    import torch

    dirs = [f"{EXPERIMENT}/{trial_dirname(trial_id)}", f"{TRAIN_RUNS}/{train_run_name(trial_id)}"]
    for rel in sorted(rel for d in dirs for rel, _ in store.files(d, recursive=True) if rel.endswith("/state.pt")):
        try:
            state = torch.load(io.BytesIO(store.read_bytes(rel) or b""), weights_only=True, map_location="cpu")
            found = int(state["epoch"])
        except Exception as e:  # truncated, tampered: refuse, never execute
            raise ConfigError(f"unreadable checkpoint ({type(e).__name__})", f"{store.uri}/{rel}") from None
        if found == epoch:
            return state
    return None


def _versions() -> dict:
    from raytower.train.run import versions

    return versions()
