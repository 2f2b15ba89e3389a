"""`raytower report` and `raytower compare`: a search's results as a leaderboard and pictures.

Reads what a search wrote (trials.parquet or the trial directories, best_config.json, optuna.db,
setup.json) and writes DIR/report/: PNG plots (matplotlib, Agg) and report.md tying them together.
Works on a finished or an interrupted search.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from raytower._io import atomic_path, read_json
from raytower.errors import ConfigError
from raytower.names import BEST_CONFIG, DEFAULT_METRIC, StopReason, best_key, label, title, val_key
from raytower.tune.record import SearchRecord
from raytower.tune.results import check_search_dir, read_trials, trial_rows

KNOBS = ("temp_start", "anneal_rate", "logq_warmup_epochs", "logq_max", "logq_ramp_epochs", "unfreeze_depth",
         "lr_ratio", "lr")
LOG_KNOBS = {"temp_start", "lr_ratio", "lr"}
REASON_STYLE = {  # stop reason -> (colour, marker at the last epoch)
    StopReason.COMPLETED: ("tab:green", "o"), StopReason.PLATEAU: ("tab:olive", "D"),
    StopReason.ASHA: ("tab:orange", "x"), StopReason.CHANCE: ("tab:gray", "v"), StopReason.COLLAPSED: ("tab:purple", "s"),
    StopReason.DIVERGED: ("tab:red", "*"), StopReason.UNFINISHED: ("tab:blue", ">"), StopReason.ERROR: ("black", "X"),
}
LEADERBOARD_COLUMNS = [
    ("trial", "trial_id"), ("fusion", "param/fusion"), ("temp_start", "param/temp_start"),
    ("anneal", "param/anneal_rate"), ("logq_max", "param/logq_max"), ("depth", "param/unfreeze_depth"),
    ("lr_ratio", "param/lr_ratio"), ("lr", "param/lr"), ("val R@10", "best/val/recall@10"), ("val R@100", "best/val/recall@100"),
    ("val NDCG@10", "best/val/ndcg@10"), ("best epoch", "best_epoch"), ("epochs run", "epochs"), ("status", "status"), ("stop", "stop_reason"),
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def leaderboard(df: pd.DataFrame, top: int = 15, metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """The trials by their best validation ``metric`` (the search's selection metric)."""
    board = df.sort_values(best_key(metric), ascending=False, na_position="last").head(top)
    columns = list(LEADERBOARD_COLUMNS)
    if best_key(metric) not in {key for _, key in columns}:
        columns.insert(columns.index(("best epoch", "best_epoch")), (f"val {label(metric)}", best_key(metric)))
    cols = {name: board[key] for name, key in columns if key in board}  # knobs the space searched
    return pd.DataFrame(cols).reset_index(drop=True)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"  # three significant digits: 0.689, 0.0935, 0.00082
    return str(v)


def markdown_table(board: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(board.columns) + " |", "|" + "---|" * len(board.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in board.itertuples(index=False)]
    return "\n".join(lines)


# --- at a glance: the pictures' main points, in words ------------------------------------------------


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


def at_a_glance(df: pd.DataFrame, best: dict | None, pop: dict | None, importance: dict,
                importance_basis: str = "", n_users: int = 0, metric: str = DEFAULT_METRIC) -> list[str]:
    """Bullet points a reader can check against the table and the pictures below them. ``pop``:
    popularity's figures ``{"val": ..}`` in ``metric``, the search's selection metric."""
    lines = []
    y = best_key(metric)
    name = title(metric)
    if best:
        lines.append(f"**Chosen:** trial `{best['trial_id']}`, {_schedule(best['params'])}.")
    searched = {c[len("param/"):] for c in df.columns if c.startswith("param/")}
    done = df[df["full_fidelity"] & df[y].notna()]
    if len(done):
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
        lines.append(f"**Trials that ran all {horizon} epochs"
                     + (f" or stopped on a plateau ({plateau})" if plateau else "") + f": {len(done)} of {len(df)}.** "
                     + (f"Their median best validation {name} {'; '.join(by)}." if by else ""))
        if {"temp_start", "anneal_rate"} <= searched:
            top = done.sort_values(y, ascending=False).head(3)
            lines.append("**The best finishers** " + ", ".join(
                f"`{t.trial_id}` (temperature {t['param/temp_start']:.3g}, annealed by {t['param/anneal_rate']:.3g} an epoch)"
                for _, t in top.iterrows()) + f"; the search tried temperatures {df['param/temp_start'].min():.3g} "
                f"to {df['param/temp_start'].max():.3g} and anneal rates {df['param/anneal_rate'].min():.3g} "
                f"to {df['param/anneal_rate'].max():.3g}.")
    stopped = df[df.stop_reason == StopReason.ASHA]
    if len(stopped):
        at = ", ".join(f"{n} at epoch {e}" for e, n in stopped["epochs"].value_counts().sort_index().items())
        kinds = ("; fusion " + ", ".join(f"{k} {v}" for k, v in stopped["param/fusion"].value_counts().items())
                 if "fusion" in searched else "")
        lines.append(f"**ASHA stopped {len(stopped)} trial(s)** ({at}{kinds}). An early-stopped trial's best is "
                     "a low-fidelity figure, so the choice is made among the finishers.")
    flat = df[df.stop_reason == StopReason.PLATEAU]
    if len(flat):
        lines.append(f"**{len(flat)} trial(s) stopped on a plateau** (no better validation {name} for the "
                     f"patience window) at epochs {', '.join(str(e) for e in sorted(flat['epochs']))}, their best "
                     f"epochs {', '.join(str(int(e)) for e in sorted(flat['best_epoch'].dropna()))}: converged, so "
                     "they compete for the choice.")
    for reason, meaning in ((StopReason.DIVERGED, "loss turned NaN or inf"),
                            (StopReason.CHANCE, "loss stayed at or above chance"),
                            (StopReason.COLLAPSED, "item vectors collapsed")):
        bad = df[df.stop_reason == reason]
        lines.append(f"**{reason.capitalize()}** ({meaning}): "
                     + (", ".join(f"`{t.trial_id}` at epoch {t.epochs}" for t in bad.itertuples()) or "none") + ".")
    if pop:
        above = (df[y].astype(float) > pop["val"]).sum()
        lines.append(f"**Against popularity** (validation {name} {pop['val']:.3f}): {above} of {len(df)} trials beat it.")
    if best and n_users and metric.startswith("recall@"):  # a hit rate: binomial SE
        p_ = best["selection"]["value"]
        se = math.sqrt(p_ * (1 - p_) / n_users)
        lines.append(f"**Noise:** one search, one seed, {n_users:,} validation users: a {name} near {p_:.2f} "
                     f"has a standard error of about {se:.3f}, so trials closer than about {2 * se:.2f} are not "
                     "told apart, and a knob's effect seen in one or two trials is a hint, not a finding.")
    if best and n_users:
        lines.append(_failure_region(best["params"], n_users))
    if importance:
        (k1, v1), *rest = importance.items()
        lines.append(f"**Most important knob** by Optuna's evaluator{f' ({importance_basis})' if importance_basis else ''}: "
                     f"`{k1}` ({v1:.2f} of the total)" + (f", then `{rest[0][0]}` ({rest[0][1]:.2f})" if rest else "") + ".")
    return lines


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


# --- pictures -------------------------------------------------------------------------------------


def plot_learning_curves(df, histories, path: Path, chosen: str | None = None, popularity: float | None = None,
                         metric: str = DEFAULT_METRIC) -> None:
    plt = _plt()
    key = val_key(metric)
    fig, ax = plt.subplots(figsize=(8, 5))
    for _, t in df.iterrows():
        h = histories.get(t.trial_id)
        if h is None or key not in h:
            continue
        colour, marker = REASON_STYLE.get(t.stop_reason, ("tab:blue", "."))
        ax.plot(h["epoch"], h[key], color=colour, alpha=1.0 if t.trial_id == chosen else 0.6,
                lw=2.6 if t.trial_id == chosen else 1.2)
        ax.plot(h["epoch"].iloc[-1], h[key].iloc[-1], marker=marker, color=colour, ms=7, ls="none")
        if t.stage_switch_epoch is not None and not pd.isna(t.stage_switch_epoch):
            at = h[h["epoch"] == t.stage_switch_epoch]
            if len(at):
                ax.plot(at["epoch"], at[key], marker="|", color="black", ms=12, ls="none")
    handles = [plt.Line2D([], [], color=c, marker=m, ls="-", label=r) for r, (c, m) in REASON_STYLE.items()
               if r in set(df.stop_reason)]
    handles.append(plt.Line2D([], [], color="black", marker="|", ls="none", ms=12, label="Stage 2 starts"))
    if chosen in set(df.trial_id):
        handles.append(plt.Line2D([], [], color="gray", lw=2.6, label=f"chosen: trial {chosen}"))
    if popularity:
        ax.axhline(popularity, color="gray", ls=":", lw=1)
        handles.append(plt.Line2D([], [], color="gray", ls=":", label=f"popularity ({popularity:.3f})"))
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=f"validation {label(metric)}", title="Learning curves (marker: where each trial ended)")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_loss_vs_random(df, histories, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    for _, t in df.iterrows():
        h = histories.get(t.trial_id)
        if h is None or "loss" not in h:
            continue
        colour, _ = REASON_STYLE.get(t.stop_reason, ("tab:blue", "."))
        ax.plot(h["epoch"], h["loss"], color=colour, alpha=0.7, lw=1.2)
        ax.plot(h["epoch"], h["loss_random"], color=colour, alpha=0.5, lw=1, ls="--")
    ax.plot([], [], color="black", label="train loss")
    ax.plot([], [], color="black", ls="--", label="random-guess loss: uniform scores over the batch's candidates")
    ax.legend(fontsize=8)
    ax.set(xlabel="epoch", ylabel="in-batch softmax loss", title="Loss against the random-guess loss, per trial")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_knobs(df, path: Path, popularity: float | None, metric: str = DEFAULT_METRIC) -> None:
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    # A panel per knob the space searched (a fixed knob has no param/ column): no empty panels.
    knobs = [k for k in KNOBS if f"param/{k}" in df] + (["fusion"] if "param/fusion" in df else [])
    if not knobs:
        return
    cols = min(3, len(knobs))
    rows = math.ceil(len(knobs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows + 0.6), sharey=True, squeeze=False)
    for ax in axes.flat[len(knobs):]:
        ax.set_visible(False)
    y = df[best_key(metric)].astype(float)
    for ax, knob in zip(axes.flat, knobs):
        if knob == "fusion":
            continue
        x = pd.to_numeric(df[f"param/{knob}"], errors="coerce")
        for reason, (colour, marker) in REASON_STYLE.items():
            sel = (df.stop_reason == reason) & x.notna()
            ax.scatter(x[sel], y[sel], c=colour, marker=marker, s=30, label=reason if sel.any() else None)
        if knob in LOG_KNOBS:
            ax.set_xscale("log")
        elif knob.endswith(("_epochs", "_depth")):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel=knob)
        ax.grid(alpha=0.3)
    if "fusion" in knobs:
        ax = axes.flat[len(knobs) - 1]
        kinds = sorted(df["param/fusion"].dropna().unique())  # the fusion types some trial used
        for i, k in enumerate(kinds):
            for reason, (colour, marker) in REASON_STYLE.items():
                sel = (df["param/fusion"] == k) & (df.stop_reason == reason)
                ax.scatter(np.full(int(sel.sum()), i), y[sel], c=colour, marker=marker, s=30)
        ax.set_xticks(range(len(kinds)), kinds)
        ax.set_xlim(-0.5, len(kinds) - 0.5)
        ax.set(xlabel="fusion")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel(f"best validation {label(metric)}")
    handles, labels = [], []
    for ax in axes.flat:  # the fusion panel draws without labels: take them from a knob's panel
        h, lab = ax.get_legend_handles_labels()
        if lab:
            handles, labels = h, lab
            break
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=9)
    pop = f"; popularity, off the scale: {popularity:.3f}" if popularity and popularity < y.min() else ""
    fig.suptitle(f"Effect of each knob: each trial's best validation {label(metric)} against its value\n"
                 "(a trial ASHA stopped shows its best before the stop, a lower-fidelity figure" + pop + ")")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _save(fig, path, tight=False)


def importance(exp: Path) -> tuple[dict, dict, str, int]:
    """Optuna's own evaluator on the stored study. It uses COMPLETE trials only and parameters present
    in all of them, so the conditional lr_ratio is evaluated apart, on trials with unfreeze_depth > 0."""
    import optuna

    from raytower.tune.results import own_trials, read_study

    study = read_study(exp)
    if study is None:
        return {}, {}, "the study could not be read (no optuna.db, or its --storage out of reach)", 0
    # This search's trials only: those --warm-start copied in are not in trials.parquet either.
    complete = [t for t in own_trials(study) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}, {}, f"{len(complete)} COMPLETE trial(s): importance needs at least 2", len(complete)
    common = set.intersection(*(set(t.params) for t in complete)) - {"lr_ratio"}
    unfrozen = [t for t in complete if "lr_ratio" in t.params]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        main = _importance(complete, sorted(common)) if common else {}
        sub = _importance(unfrozen, sorted(set.intersection(*(set(t.params) for t in unfrozen)))) \
            if len(unfrozen) >= 2 else {}
    return main, sub, f"{len(complete)} COMPLETE trials", len(complete)


def _importance(trials: list, params: list[str]) -> dict:
    import optuna

    study = optuna.create_study(direction="maximize")  # in memory: the stored study is only read
    study.add_trials(trials)
    return optuna.importance.get_param_importances(study, params=params)


def plot_importance(main: dict, sub: dict, note: str, path: Path) -> None:
    plt = _plt()
    panels = [(main, "all COMPLETE trials (lr_ratio left out)")]
    if sub:
        panels.append((sub, "COMPLETE trials with unfreeze_depth > 0"))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(8, 6 * len(panels)), 5), squeeze=False)
    for ax, (imp, caption) in zip(axes[0], panels):
        if imp:
            names = list(imp)[::-1]
            ax.barh(names, [imp[n] for n in names], color="tab:blue")
        else:
            ax.text(0.5, 0.5, "not enough trials", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=caption, xlabel="importance (Optuna's default evaluator)")
    fig.suptitle(f"Parameter importance from {note}\n(only parameters present in every one of them count"
                 + (")" if sub else "; lr_ratio: fewer than 2 of them unfroze the item tower)"), fontsize=10)
    _save(fig, path)


def plot_gates(df, histories, path: Path) -> bool:
    """Mean gate per stage, cold-start against warm users, for gated (and moe expert weights)."""
    plt = _plt()
    rows = []
    for _, t in df.iterrows():
        h = histories.get(t.trial_id)
        if h is None or t.get("param/fusion") != "gated" or "gate_mean" not in h:
            continue
        for stage, g in h.groupby("stage"):
            rows.append({"trial": t.trial_id, "stage": int(stage), "warm": g.get("gate_mean_warm", g["gate_mean"]).mean(),
                         "cold": g["gate_mean_cold"].mean(), "train": g["gate_mean_train"].mean()})
    moe = {t.trial_id: histories[t.trial_id] for _, t in df.iterrows()
           if t.get("param/fusion") == "moe" and t.trial_id in histories}
    if not rows and not moe:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    if rows:
        rows = pd.DataFrame(rows)
        g = rows.groupby("stage")[["train", "warm", "cold"]].mean()
        g.columns = ["training positions", "evaluation, warm users", "evaluation, cold-start users"]
        g.plot.bar(ax=ax, rot=0, color=["tab:gray", "tab:blue", "lightskyblue"])
        ax.set(ylabel="mean gate g (weight on the sequence vector)", xlabel="stage",
               title=f"Gated fusion, mean of {rows.trial.nunique()} trial(s)")
        ax.set_ylim(0, 1)
    else:
        ax.text(0.5, 0.5, "no gated trial", ha="center", va="center", transform=ax.transAxes)
    ax = axes[1]
    if moe:
        # one bar per (stage, users) for each expert: does the mixture route cold-start users elsewhere?
        hist = pd.concat(list(moe.values()))
        experts = sorted({int(c.split("_")[1]) for c in hist if c.startswith("expert_")})
        table = {}
        for stage, g in hist.groupby("stage"):
            for users in ("warm", "cold"):
                cols = [f"expert_{k}_{users}" for k in experts]
                if all(c in g for c in cols):
                    table[f"stage {int(stage)}, {users}"] = [g[c].mean() for c in cols]
            if not any(k.startswith(f"stage {int(stage)}") for k in table):  # runs before the cold/warm split
                table[f"stage {int(stage)}"] = [g[f"expert_{k}"].mean() for k in experts]
        palette = {"stage 1, warm": "tab:blue", "stage 1, cold": "lightskyblue", "stage 2, warm": "tab:green",
                   "stage 2, cold": "lightgreen", "stage 1": "tab:blue", "stage 2": "tab:green"}
        pd.DataFrame(table, index=[f"expert {k}" for k in experts]).plot.bar(
            ax=ax, rot=0, color=[palette.get(c, "tab:gray") for c in table])
        ax.set(ylabel="mean expert weight at evaluation", title=f"MoE fusion, mean of {len(moe)} trial(s)")
    else:
        ax.text(0.5, 0.5, "no moe trial", ha="center", va="center", transform=ax.transAxes)
    _save(fig, path)
    return True


def _save(fig, path: Path, tight: bool = True) -> None:
    with atomic_path(path) as tmp:
        if tight:
            fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)


# --- the report ----------------------------------------------------------------------------------


def write_report(exp: str | Path, top: int = 15, log=print) -> Path:
    exp = Path(exp)
    df, histories, best, record = load_experiment(exp)
    metric, name = record.metric, title(record.metric)
    out = exp / "report"
    out.mkdir(exist_ok=True)
    board = leaderboard(df, top, metric)
    pop = _popularity(record)
    pop_val = pop["val"].get(metric) if pop else None
    plot_learning_curves(df, histories, out / "learning_curves.png", best["trial_id"] if best else None,
                         pop_val, metric)
    plot_loss_vs_random(df, histories, out / "loss_vs_random.png")
    plot_knobs(df, out / "knobs.png", pop_val, metric)
    main, sub, note, n_complete = importance(exp)
    plot_importance(main, sub, note, out / "importance.png")
    has_gates = plot_gates(df, histories, out / "gates.png")
    log(board.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    data = record.dataset
    md = [f"# Search report: {exp.name}", "",
          f"Data: {data['name']} ({data['n_users']:,} users, {data['n_items']:,} items, "
          f"fingerprint {data['fingerprint']}). Space: `{record.settings['space']}`, "
          f"{len(df)} of {record.num_samples} trials, up to {record.max_epochs} epochs each; selected on "
          f"validation {name}. "
          f"Stop reasons: {', '.join(f'{k} {v}' for k, v in df.stop_reason.value_counts().items())}.", "",
          "## At a glance", ""] + [f"- {line}" for line in at_a_glance(
              df, best, {"val": pop_val} if pop_val is not None else None, main, note, data["n_users"], metric)] + [""]
    if best:
        t = best.get("test") or {}
        md += ["## Chosen configuration", "",
               f"Trial `{best['trial_id']}`: validation {name} {best['selection']['value']:.4f} at epoch "
               f"{best['selection']['epoch']} (chosen on validation); test, evaluated once after selection: "
               f"Recall@100 {t.get('recall@100', float('nan')):.4f}, Recall@10 {t.get('recall@10', float('nan')):.4f}, "
               f"NDCG@10 {t.get('ndcg@10', float('nan')):.4f}."]
        if pop:
            md += [f"Popularity, by the same code: validation {name} {pop_val:.4f}; test Recall@100 "
                   f"{pop['test']['recall@100']:.4f}, Recall@10 {pop['test']['recall@10']:.4f}."]
        params = dict(best["params"])
        idle = [k for k, unused in (("lr_ratio", not params.get("unfreeze_depth")),
                                    ("n_experts", params.get("fusion") != "moe")) if unused and k in params]
        md += ["", "Its configuration (`best_config.json`'s `params`, what `raytower train --config` reads)"
               + (f", less {' and '.join(f'`{k}`' for k in idle)}, which have no effect with this "
                  "unfreeze depth and fusion:" if idle else ":"),
               "", "```json", json.dumps({k: v for k, v in params.items() if k not in idle}, indent=1), "```", ""]
    md += ["## How to read this report", "",
           "- **Evaluation:** leave-last-out per user (last item test, second-to-last validation); every item is "
           "ranked, the user's earlier items masked. Trials are compared and chosen on validation; test is "
           "evaluated once, for the chosen trial, after the search.",
           "- **Stage 2** begins at the first of: validation Recall@100 reaching `stage2_min_recall` x "
           "popularity's, train loss falling to `stage2_max_loss` x the random-guess loss, or "
           "`stage1_max_epochs`. Stage 1 trains the sequence encoder and the fusion with the item tower and "
           "the LightGCN table frozen; Stage 2 unfreezes the top `unfreeze_depth` item-tower pieces at "
           "`lr_ratio` x the LR (with depth 0 nothing unfreezes, but the stage still switches).",
           "- **Temperature** `tau = max(temp_min, temp_start * anneal_rate ** epoch)`; **logQ**: logits minus "
           "`lambda * log p(item)`, lambda 0 for `logq_warmup_epochs`, then ramped to `logq_max` over "
           "`logq_ramp_epochs`.",
           "- **Random-guess loss:** the in-batch softmax loss of uniform scores, ln(number of distinct "
           "candidate items in the batch, over all its sequence positions) with the logQ term; a trial at "
           "or above it has learnt nothing.",
           "- **Cold-start users:** a seeded share of users kept out of the graph LightGCN trains on "
           "(`--cold-frac`), so their GNN vector is the learned cold-start vector.",
           "- **Stop reasons:** `completed` ran every epoch; `asha` was stopped by ASHA at a rung (PRUNED in the "
           f"Optuna study, with its per-epoch values); `plateau` had not improved its validation {name} for "
           "`--patience` epochs past the grace period (converged: COMPLETE, and a candidate for the choice); "
           "`chance`, `collapsed`, `diverged` by raytower's stopper.",
           "",
           "## Leaderboard (each trial at its best validation epoch)", "", markdown_table(board), "",
           "## Learning curves", "", f"Validation {name} per trial; the marker shows where and why each trial "
           "ended (ASHA's stops are crosses), the black tick where Stage 2 began.", "", "![](learning_curves.png)", "",
           "## Loss against the random-guess loss", "", "A trial whose solid line stays on or above its dashed "
           "line is doing no better than chance.", "", "![](loss_vs_random.png)", "",
           "## Effect of each knob", "", "![](knobs.png)", "",
           "## Parameter importance", "", f"Optuna's own evaluator on the stored study ({note}). It uses only "
           "COMPLETE trials and only parameters present in all of them, so the conditional `lr_ratio` is "
           "evaluated apart, on the trials that unfroze the item tower." + (
               " With fewer than 10 COMPLETE trials the ranking is a hint, not a finding: an ASHA search "
               "completes few trials, and the pruned ones do not count here." if n_complete < 10 else ""),
           "", "![](importance.png)", ""]
    if has_gates:
        md += ["## Gate behaviour", "", "Gated fusion: the mean gate (weight on the sequence vector against the "
               "GNN vector) per stage, at training positions and at evaluation for warm and cold-start users. "
               "MoE: each expert's mean weight per stage, for warm and cold-start users at evaluation.", "", "![](gates.png)", ""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(md))
    log(f"wrote {out / 'report.md'}")
    return out / "report.md"


def _popularity(record: SearchRecord) -> dict | None:
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
