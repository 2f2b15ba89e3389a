"""What a report says, computed: the trials of a search, the knobs it searched, the leaderboard,
the facts at a glance, parameter importance, popularity's figures and the comparison of searches.
Nothing here draws or writes; ``_figures`` and ``_markdown`` render what these return."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from raytower._io import read_json
from raytower.errors import ConfigError
from raytower.names import BEST_CONFIG, DEFAULT_METRIC, StopReason, best_key, label, title
from raytower.tune.record import SearchRecord
from raytower.tune.results import check_search_dir, read_trials, trial_rows
from raytower.tune.space import Knob, load_space

# The leaderboard's columns after the trial and its knobs: (header, trials.parquet column)
RESULT_COLUMNS = [
    ("val R@10", "best/val/recall@10"), ("val R@100", "best/val/recall@100"), ("val NDCG@10", "best/val/ndcg@10"),
    ("best epoch", "best_epoch"), ("epochs run", "epochs"), ("status", "status"), ("stop", "stop_reason"),
]


def load_experiment(exp: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict | None, SearchRecord]:
    exp = Path(exp)
    check_search_dir(exp)
    trials = read_trials(exp)
    df = trial_rows(exp, trials)  # from the trial directories: also right for an interrupted search
    if df.empty:
        raise ConfigError("no trial has reported yet", exp)
    histories = {t["trial_id"]: pd.DataFrame(t["history"]) for t in trials if t["history"]}
    best = read_json(exp / BEST_CONFIG, None)
    if best is not None:  # the report reads its params as a TrainConfig: a damaged one is one line, not a traceback
        from raytower.train.config import TrainConfig

        if not isinstance(best, dict) or not isinstance(best.get("params"), dict):
            raise ConfigError("damaged: no params object", exp / BEST_CONFIG)
        try:
            TrainConfig.from_dict(best["params"])
        except ConfigError as e:
            raise ConfigError(f"damaged params: {e}", exp / BEST_CONFIG) from None
    return df, histories, best, SearchRecord.read(exp)


# --- the knobs searched --------------------------------------------------------------------------


def searched_knobs(df: pd.DataFrame, record: SearchRecord) -> list[Knob]:
    """The knobs the search sampled, in its space's order and with their distributions. A trial's
    params also hold the space's fixed values, so the recorded space says which were searched; where
    it cannot be read from here (a path elsewhere), the params that vary among the trials do."""
    try:
        space = load_space(record.settings["space"])
    except (ConfigError, KeyError, TypeError, OSError):
        return varying_knobs(df)
    return [k for k in space.knobs if f"param/{k.name}" in df]


def varying_knobs(df: pd.DataFrame) -> list[Knob]:
    """The params that take more than one value (or are missing from some trials), in column order,
    with a distribution read from their values: text and flags categorical, whole numbers int, a
    positive range of more than a decade log-uniform."""
    knobs = []
    for column in (c for c in df.columns if c.startswith("param/")):
        values = df[column]
        if values.nunique(dropna=False) < 2:
            continue
        knobs.append(_knob_from_values(column[len("param/"):], values.dropna()))
    return knobs


def _knob_from_values(name: str, values: pd.Series) -> Knob:
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.isna().any() or values.map(lambda v: isinstance(v, (bool, np.bool_, str))).any():
        return Knob(name, "categorical", choices=tuple(values.unique()))
    low, high = float(numeric.min()), float(numeric.max())
    if (numeric == numeric.round()).all():
        return Knob(name, "int", low, high)
    return Knob(name, "log_uniform" if low > 0 and high > 10 * low else "uniform", low, high)


def leaderboard(df: pd.DataFrame, top: int = 15, metric: str = DEFAULT_METRIC,
                knobs: list[Knob] | None = None) -> pd.DataFrame:
    """The trials by their best validation ``metric`` (the search's selection metric), each with its
    value of every knob searched (``knobs``; default: the params that vary)."""
    knobs = varying_knobs(df) if knobs is None else knobs
    board = df.sort_values(best_key(metric), ascending=False, na_position="last").head(top)
    results = list(RESULT_COLUMNS)
    if best_key(metric) not in {key for _, key in results}:
        results.insert(results.index(("best epoch", "best_epoch")), (f"val {label(metric)}", best_key(metric)))
    columns = [("trial", "trial_id"), *((k.name, f"param/{k.name}") for k in knobs), *results]
    return pd.DataFrame({name: board[key] for name, key in columns if key in board}).reset_index(drop=True)


# --- at a glance: the pictures' main points, in words ------------------------------------------------


def at_a_glance(df: pd.DataFrame, best: dict | None, pop: dict | None, importance: dict,
                importance_basis: str = "", n_users: int = 0, metric: str = DEFAULT_METRIC,
                knobs: list[Knob] | None = None) -> list[str]:
    """Bullet points a reader can check against the table and the pictures below them. ``pop``:
    popularity's figures ``{"val": ..}`` in ``metric``, the search's selection metric; ``knobs``: the
    knobs searched (default: the params that vary)."""
    searched = {k.name for k in (varying_knobs(df) if knobs is None else knobs)}
    lines = [f"**Chosen:** trial `{best['trial_id']}`, {_schedule(best['params'])}."] if best else []
    lines += _finishers(df, best, searched, metric)
    lines += _early_stops(df, searched, metric)
    lines += _failures(df)
    if pop:
        above = (df[best_key(metric)].astype(float) > pop["val"]).sum()
        lines.append(f"**Against popularity** (validation {title(metric)} {pop['val']:.3f}): {above} of {len(df)} "
                     "trials beat it.")
    if best and n_users:
        if metric.startswith("recall@"):  # a hit rate: binomial SE
            lines.append(_noise(best["selection"]["value"], n_users, metric))
        lines.append(_failure_region(best["params"], n_users))
    if importance:
        (k1, v1), *rest = importance.items()
        lines.append(f"**Most important knob** by Optuna's evaluator{f' ({importance_basis})' if importance_basis else ''}: "
                     f"`{k1}` ({v1:.2f} of the total)" + (f", then `{rest[0][0]}` ({rest[0][1]:.2f})" if rest else "") + ".")
    return lines


def _schedule(params: dict) -> str:
    """The chosen curriculum in words, from its config (its defaults TrainConfig's, never spelled here)."""
    from raytower.train.config import TrainConfig

    params = TrainConfig.from_dict(params).to_dict()
    t0, rate, tmin = params["temp_start"], params["anneal_rate"], params["temp_min"]
    if rate < 1 and t0 > tmin:
        # reported epoch n trains at tau(n - 1): epochs are counted from 1 here, as in the table
        floor = math.ceil(math.log(tmin / t0) / math.log(rate)) + 1
        last = params["epochs"]
        temp = f"temperature {t0:.3g}, times {rate:.3g} each epoch, " + (
            f"down to its floor {tmin:g} by epoch {floor}" if floor <= last
            else f"{max(tmin, t0 * rate ** (last - 1)):.3g} at the last epoch ({last})")
    else:
        temp = f"temperature {t0:.3g}, held"
    w, q, r = params["logq_warmup_epochs"], params["logq_max"], params["logq_ramp_epochs"]
    logq = "no logQ correction" if q == 0 else \
        (f"logQ off for {w} epoch(s), then ramped to {q:.3g} over {r}" if w else f"logQ ramped from the start to {q:.3g} over {r} epoch(s)")
    d = params["unfreeze_depth"]
    stage2 = "the item tower kept frozen" if not d else \
        f"the top {d} item-tower piece(s) unfrozen in Stage 2 at {params['lr_ratio']:.3g} x the LR"
    return f"{params['fusion']} fusion; {temp}; {logq}; {stage2}; LR {params['lr']:.3g}"


def _median_by(done: pd.DataFrame, col: str, name, metric: str = DEFAULT_METRIC) -> str:
    parts = []
    for value, g in done.groupby(col):
        y = g[best_key(metric)].astype(float)
        parts.append(f"{name(value)} {y.median():.3f} (n={len(g)})")
    return ", ".join(parts)


def _finishers(df: pd.DataFrame, best: dict | None, searched: set[str], metric: str) -> list[str]:
    """The trials that ran to the horizon or converged: how many, their medians by fusion and by
    Stage 2 unfreezing, and the best of them with their temperature schedules."""
    y = best_key(metric)
    done = df[df["full_fidelity"] & df[y].notna()]
    if not len(done):
        return []
    by = []
    if "fusion" in searched:
        by.append(f"by fusion: {_median_by(done, 'param/fusion', str, metric)}")
    if "unfreeze_depth" in searched:
        unfrozen = done.assign(unfrozen=pd.to_numeric(done["param/unfreeze_depth"]) > 0)
        by.append("by Stage 2 unfreezing: " + _median_by(unfrozen, "unfrozen",
                                                         lambda u: "unfrozen" if u else "kept frozen", metric))
    plateau = int((done.stop_reason == StopReason.PLATEAU).sum())
    # the search's horizon, not the longest trial's: with plateau stops no trial may reach it
    horizon = int((best or {}).get("search", {}).get("max_epochs") or df["epochs"].max())
    lines = [f"**Trials that ran all {horizon} epochs"
             + (f" or stopped on a plateau ({plateau})" if plateau else "") + f": {len(done)} of {len(df)}.** "
             + (f"Their median best validation {title(metric)} {'; '.join(by)}." if by else "")]
    if {"temp_start", "anneal_rate"} <= searched:
        top = done.sort_values(y, ascending=False).head(3)
        lines.append("**The best finishers** " + ", ".join(
            f"`{t.trial_id}` (temperature {t['param/temp_start']:.3g}, annealed by {t['param/anneal_rate']:.3g} an epoch)"
            for _, t in top.iterrows()) + f"; the search tried temperatures {df['param/temp_start'].min():.3g} "
            f"to {df['param/temp_start'].max():.3g} and anneal rates {df['param/anneal_rate'].min():.3g} "
            f"to {df['param/anneal_rate'].max():.3g}.")
    return lines


def _early_stops(df: pd.DataFrame, searched: set[str], metric: str) -> list[str]:
    """The trials ASHA stopped (low-fidelity figures) and those that stopped on a plateau (converged)."""
    lines = []
    stopped = df[df.stop_reason == StopReason.ASHA]
    if len(stopped):
        at = ", ".join(f"{n} at epoch {e}" for e, n in stopped["epochs"].value_counts().sort_index().items())
        kinds = ("; fusion " + ", ".join(f"{k} {v}" for k, v in stopped["param/fusion"].value_counts().items())
                 if "fusion" in searched else "")
        lines.append(f"**ASHA stopped {len(stopped)} trial(s)** ({at}{kinds}). An early-stopped trial's best is "
                     "a low-fidelity figure, so the choice is made among the finishers.")
    flat = df[df.stop_reason == StopReason.PLATEAU]
    if len(flat):
        lines.append(f"**{len(flat)} trial(s) stopped on a plateau** (no better validation {title(metric)} for the "
                     f"patience window) at epochs {', '.join(str(e) for e in sorted(flat['epochs']))}, their best "
                     f"epochs {', '.join(str(int(e)) for e in sorted(flat['best_epoch'].dropna()))}: converged, so "
                     "they compete for the choice.")
    return lines


def _failures(df: pd.DataFrame) -> list[str]:
    """The trials raytower's stopper ended, by reason: none is said too."""
    lines = []
    for reason, meaning in ((StopReason.DIVERGED, "loss turned NaN or inf"),
                            (StopReason.CHANCE, "loss stayed at or above chance"),
                            (StopReason.COLLAPSED, "item vectors collapsed")):
        bad = df[df.stop_reason == reason]
        lines.append(f"**{reason.capitalize()}** ({meaning}): "
                     + (", ".join(f"`{t.trial_id}` at epoch {t.epochs}" for t in bad.itertuples()) or "none") + ".")
    return lines


def _noise(value: float, n_users: int, metric: str) -> str:
    se = math.sqrt(value * (1 - value) / n_users)
    return (f"**Noise:** one search, one seed, {n_users:,} validation users: a {title(metric)} near {value:.2f} "
            f"has a standard error of about {se:.3f}, so trials closer than about {2 * se:.2f} are not "
            "told apart, and a knob's effect seen in one or two trials is a hint, not a finding.")


def _failure_region(params: dict, n_users: int) -> str:
    """Whether the chosen settings sit where issue 17's curriculum study saw the seed's failure."""
    from raytower.train import failure_region
    from raytower.train.config import TrainConfig

    found = failure_region.warnings(TrainConfig.from_dict(params), n_users)
    if not found:
        return ("**Curriculum study:** the chosen settings are outside the regions where the study saw the seed's "
                "failures (a slow start at popularity's level, item-tower collapse, a soft temperature under full logQ; "
                "docs/studies.md, \"When the curriculum matters\").")
    return ("**Warning, in the curriculum study's failure region** (docs/studies.md, \"When the curriculum matters\"): "
            + "; ".join(found) + ".")


# --- importance, popularity, comparison ------------------------------------------------------------


class Importance(NamedTuple):
    main: dict  # knob -> importance over every trial's value at the rung (lr_ratio left out)
    sub: dict  # the same over the trials that unfroze the item tower, lr_ratio included
    note: str  # what they were computed from, or why there is none
    n_trials: int  # the trials that reached the rung
    rung: int | None = None  # the epoch the trials are compared at


# Fewer trials than this at a common epoch and importance is noise: nothing is drawn (issue 28 part 7).
MIN_TRIALS_AT_RUNG = 5


def importance(exp: Path) -> Importance:
    """Optuna's own evaluator on every trial of this search at a common rung: each trial's best
    validation value up to the highest epoch that at least MIN_TRIALS_AT_RUNG trials reached,
    whether ASHA stopped it there or later or it completed (COMPLETE trials alone left an ASHA
    search's stopped trials out: 2 of 8 trials once made the picture). Failed and diverged trials
    are left out; the conditional lr_ratio is evaluated apart, on trials with unfreeze_depth > 0."""
    import optuna

    from raytower.tune.results import own_trials, read_study

    study = read_study(exp)
    if study is None:
        return Importance({}, {}, "the study could not be read (no optuna.db, or its --study-url out of reach)", 0)
    # This search's trials only: those --warm-start copied in are not in trials.parquet either.
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    trials = [t for t in own_trials(study) if t.state in ended and t.intermediate_values]
    rung = common_rung([set(t.intermediate_values) for t in trials], MIN_TRIALS_AT_RUNG)
    if rung is None:
        return Importance({}, {}, f"no epoch was reached by {MIN_TRIALS_AT_RUNG} or more trials "
                          f"({len(trials)} trial(s) reported): too few to rank the knobs", len(trials))
    at_rung = [at_epoch(t, rung) for t in trials if rung in t.intermediate_values]
    common = set.intersection(*(set(t.params) for t in at_rung)) - {"lr_ratio"}
    unfrozen = [t for t in at_rung if "lr_ratio" in t.params]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        main = _importance(at_rung, sorted(common)) if common else {}
        sub = _importance(unfrozen, sorted(set.intersection(*(set(t.params) for t in unfrozen)))) \
            if len(unfrozen) >= MIN_TRIALS_AT_RUNG else {}
    return Importance(main, sub, f"{len(at_rung)} trials at epoch {rung}", len(at_rung), rung)


def common_rung(epochs_per_trial: list[set[int]], at_least: int) -> int | None:
    """The highest epoch that at least ``at_least`` trials reported, or None."""
    reached = sorted((e for epochs in epochs_per_trial for e in epochs), reverse=True)
    for epoch in dict.fromkeys(reached):
        if sum(epoch in epochs for epochs in epochs_per_trial) >= at_least:
            return epoch
    return None


def at_epoch(trial, rung: int):
    """``trial`` as a COMPLETE trial whose value is its best validation value up to epoch ``rung``."""
    import optuna

    value = max(v for e, v in trial.intermediate_values.items() if e <= rung)
    return optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=value, params=trial.params,
                                     distributions=trial.distributions)


def _importance(trials: list, params: list[str]) -> dict:
    import optuna

    study = optuna.create_study(direction="maximize")  # in memory: the stored study is only read
    study.add_trials(trials)
    return optuna.importance.get_param_importances(study, params=params)


def popularity_figures(record: SearchRecord) -> dict | None:
    """Popularity's validation and test figures (every metric), cached with the bundle."""
    try:
        from raytower.data import Bundle
        from raytower.train.evaluate import popularity

        return popularity(Bundle(record.shared.bundle))
    except Exception:  # the bundle may live on another machine (a cluster's head node)
        return None


def compare(dirs: list[str | Path]) -> pd.DataFrame:
    rows = []
    for d in dirs:
        d = Path(d)
        df, _, best, record = load_experiment(d)
        s = record.settings
        rows.append({
            "search": d.name, "data": record.dataset["name"], "trials": len(df),
            "scheduler": s["scheduler"], "searcher": s["searcher"], "truthful": s["truthful_pruning"],
            "metric": record.metric,
            "best val R@100": df["best/val/recall@100"].max(),
            "chosen val": best["selection"]["value"] if best else None,
            "test R@100": (best.get("test") or {}).get("recall@100") if best else None,
            "test R@10": (best.get("test") or {}).get("recall@10") if best else None,
            "trial-epochs": int(df["epochs"].sum()), "trial CPU s": float(df["cpu_time_s"].sum()),
            "stopped early": int((df.stop_reason != StopReason.COMPLETED).sum()),
        })
    return pd.DataFrame(rows)
