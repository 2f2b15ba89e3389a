"""The report's pictures (matplotlib, Agg): learning curves, loss against the random guess, a
panel per knob searched, parameter importance, and the gates of gated and MoE fusion. Each is
written by rename, as a PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from raytower._io import atomic_path
from raytower.names import DEFAULT_METRIC, StopReason, best_key, label, val_key
from raytower.report._facts import Importance, varying_knobs
from raytower.tune.space import Knob

REASON_STYLE = {  # stop reason -> (colour, marker at the last epoch)
    StopReason.COMPLETED: ("tab:green", "o"), StopReason.PLATEAU: ("tab:olive", "D"),
    StopReason.ASHA: ("tab:orange", "x"), StopReason.CHANCE: ("tab:gray", "v"), StopReason.COLLAPSED: ("tab:purple", "s"),
    StopReason.DIVERGED: ("tab:red", "*"), StopReason.UNFINISHED: ("tab:blue", ">"), StopReason.ERROR: ("black", "X"),
}


def draw_figures(out: Path, df: pd.DataFrame, histories: dict[str, pd.DataFrame], chosen: str | None,
                 knobs: list[Knob], imp: Importance, popularity: float | None, metric: str) -> bool:
    """Every picture of the report into ``out``; whether there was a gated or MoE trial to draw."""
    plot_learning_curves(df, histories, out / "learning_curves.png", chosen, popularity, metric)
    plot_loss_vs_random(df, histories, out / "loss_vs_random.png")
    plot_knobs(df, out / "knobs.png", popularity, metric, knobs)
    if imp.main:
        plot_importance(imp.main, imp.sub, imp.note, out / "importance.png")
    else:  # nothing to rank: no picture (report.md says why), and none left from an earlier report
        (out / "importance.png").unlink(missing_ok=True)
    return plot_gates(df, histories, out / "gates.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def plot_knobs(df, path: Path, popularity: float | None, metric: str = DEFAULT_METRIC,
               knobs: list[Knob] | None = None) -> None:
    """A panel per knob searched (``knobs``; default: the params that vary), each trial's best
    validation ``metric`` against its value; no panel, no picture."""
    knobs = [k for k in (varying_knobs(df) if knobs is None else knobs) if f"param/{k.name}" in df]
    if not knobs:
        return
    plt = _plt()
    cols = min(3, len(knobs))
    rows = math.ceil(len(knobs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows + 0.6), sharey=True, squeeze=False)
    for ax in axes.flat[len(knobs):]:
        ax.set_visible(False)
    y = df[best_key(metric)].astype(float)
    for ax, knob in zip(axes.flat, knobs):
        if knob.distribution == "categorical":
            _categorical_panel(ax, df[f"param/{knob.name}"], df.stop_reason, y)
        else:
            _numeric_panel(ax, knob, pd.to_numeric(df[f"param/{knob.name}"], errors="coerce"), df.stop_reason, y)
        ax.set(xlabel=knob.name)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel(f"best validation {label(metric)}")
    handles = [plt.Line2D([], [], color=c, marker=m, ls="none", ms=math.sqrt(30), label=r)  # the scatters' size
               for r, (c, m) in REASON_STYLE.items() if r in set(df.stop_reason)]
    fig.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)), fontsize=9)
    pop = f"; popularity, off the scale: {popularity:.3f}" if popularity and popularity < y.min() else ""
    fig.suptitle(f"Effect of each knob: each trial's best validation {label(metric)} against its value\n"
                 "(a trial ASHA stopped shows its best before the stop, a lower-fidelity figure" + pop + ")")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _save(fig, path, tight=False)


def _numeric_panel(ax, knob: Knob, x: pd.Series, stop_reason: pd.Series, y: pd.Series) -> None:
    from matplotlib.ticker import MaxNLocator

    for reason, (colour, marker) in REASON_STYLE.items():
        sel = (stop_reason == reason) & x.notna()  # a conditional knob is missing from some trials
        ax.scatter(x[sel], y[sel], c=colour, marker=marker, s=30)
    if knob.distribution.startswith("log"):
        ax.set_xscale("log")
    elif knob.distribution == "int":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _categorical_panel(ax, values: pd.Series, stop_reason: pd.Series, y: pd.Series) -> None:
    """The trials in a column per choice some trial made."""
    kinds = list(values.dropna().unique())
    try:
        kinds.sort()
    except TypeError:  # choices of mixed types: in the order of their text
        kinds.sort(key=str)
    for i, k in enumerate(kinds):
        for reason, (colour, marker) in REASON_STYLE.items():
            sel = (values == k) & (stop_reason == reason)
            ax.scatter(np.full(int(sel.sum()), i), y[sel], c=colour, marker=marker, s=30)
    ax.set_xticks(range(len(kinds)), [str(k) for k in kinds])
    ax.set_xlim(-0.5, len(kinds) - 0.5)


def plot_importance(main: dict, sub: dict, note: str, path: Path) -> None:
    plt = _plt()
    panels = [(main, "every trial at the rung (lr_ratio left out)")]
    if sub:
        panels.append((sub, "trials at the rung with unfreeze_depth > 0"))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(8, 6 * len(panels)), 5), squeeze=False)
    for ax, (imp, caption) in zip(axes[0], panels):
        if imp:
            names = list(imp)[::-1]
            ax.barh(names, [imp[n] for n in names], color="tab:blue")
        else:
            ax.text(0.5, 0.5, "not enough trials", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=caption, xlabel="importance (Optuna's default evaluator)")
    fig.suptitle(f"Parameter importance from {note}\n(only parameters present in every one of them count"
                 + (")" if sub else "; lr_ratio: too few of them unfroze the item tower)"), fontsize=10)
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
    _gate_panel(axes[0], pd.DataFrame(rows))
    _expert_panel(axes[1], moe)
    _save(fig, path)
    return True


def _gate_panel(ax, rows: pd.DataFrame) -> None:
    if rows.empty:
        ax.text(0.5, 0.5, "no gated trial", ha="center", va="center", transform=ax.transAxes)
        return
    g = rows.groupby("stage")[["train", "warm", "cold"]].mean()
    g.columns = ["training positions", "evaluation, warm users", "evaluation, cold-start users"]
    g.plot.bar(ax=ax, rot=0, color=["tab:gray", "tab:blue", "lightskyblue"])
    ax.set(ylabel="mean gate g (weight on the sequence vector)", xlabel="stage",
           title=f"Gated fusion, mean of {rows.trial.nunique()} trial(s)")
    ax.set_ylim(0, 1)


def _expert_panel(ax, moe: dict[str, pd.DataFrame]) -> None:
    """One bar per (stage, users) for each expert: does the mixture route cold-start users elsewhere?"""
    if not moe:
        ax.text(0.5, 0.5, "no moe trial", ha="center", va="center", transform=ax.transAxes)
        return
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


def _save(fig, path: Path, tight: bool = True) -> None:
    with atomic_path(path) as tmp:
        if tight:
            fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
