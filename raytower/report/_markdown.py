"""report.md: the facts ``_facts`` computes and the pictures ``_figures`` draws, tied together in
sections, and ``write_report``, which runs the three."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from raytower._io import atomic_path
from raytower.names import title
from raytower.report._facts import (Importance, at_a_glance, importance, leaderboard, load_experiment,
                                    popularity_figures, searched_knobs)
from raytower.report._figures import draw_figures
from raytower.tune.record import SearchRecord


def write_report(exp: str | Path, top: int = 15, log=print) -> Path:
    """DIR/report/: the pictures and report.md of the search in ``exp``; the leaderboard to ``log``."""
    exp = Path(exp)
    df, histories, best, record = load_experiment(exp)
    metric = record.metric
    knobs = searched_knobs(df, record)
    pop = popularity_figures(record)
    pop_val = pop["val"].get(metric) if pop else None
    imp = importance(exp)
    out = exp / "report"
    out.mkdir(exist_ok=True)
    has_gates = draw_figures(out, df, histories, best["trial_id"] if best else None, knobs, imp, pop_val, metric)
    board = leaderboard(df, top, metric, knobs)
    log(board.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    glance = at_a_glance(df, best, {"val": pop_val} if pop_val is not None else None, imp.main, imp.note,
                         record.dataset["n_users"], metric, knobs)
    md = (_header(exp.name, df, record) + _glance(glance) + (_chosen(best, pop, pop_val, metric) if best else [])
          + _how_to_read(title(metric)) + _tables_and_pictures(board, title(metric), imp)
          + (_gates() if has_gates else []))
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(md))
    log(f"wrote {out / 'report.md'}")
    return out / "report.md"


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


# --- the sections, each a list of lines ----------------------------------------------------------


def _header(name: str, df: pd.DataFrame, record: SearchRecord) -> list[str]:
    data = record.dataset
    return [f"# Search report: {name}", "",
            f"Data: {data['name']} ({data['n_users']:,} users, {data['n_items']:,} items, "
            f"fingerprint {data['fingerprint']}). Space: `{record.settings['space']}`, "
            f"{len(df)} of {record.num_samples} trials, up to {record.max_epochs} epochs each; selected on "
            f"validation {title(record.metric)}. "
            f"Stop reasons: {', '.join(f'{k} {v}' for k, v in df.stop_reason.value_counts().items())}.", ""]


def _glance(lines: list[str]) -> list[str]:
    return ["## At a glance", "", *(f"- {line}" for line in lines), ""]


def _chosen(best: dict, pop: dict | None, pop_val: float | None, metric: str) -> list[str]:
    """The chosen trial's validation and test figures beside popularity's, and its configuration."""
    name, t = title(metric), best.get("test") or {}
    md = ["## Chosen configuration", "",
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
    return md + ["", "Its configuration (`best_config.json`'s `params`, what `raytower train --config` reads)"
                 + (f", less {' and '.join(f'`{k}`' for k in idle)}, which have no effect with this "
                    "unfreeze depth and fusion:" if idle else ":"),
                 "", "```json", json.dumps({k: v for k, v in params.items() if k not in idle}, indent=1), "```", ""]


def _how_to_read(name: str) -> list[str]:
    return [
        "## How to read this report", "",
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
    ]


def _tables_and_pictures(board: pd.DataFrame, name: str, imp: Importance) -> list[str]:
    return [
        "## Leaderboard (each trial at its best validation epoch)", "", markdown_table(board), "",
        "## Learning curves", "", f"Validation {name} per trial; the marker shows where and why each trial "
        "ended (ASHA's stops are crosses), the black tick where Stage 2 began.", "", "![](learning_curves.png)", "",
        "## Loss against the random-guess loss", "", "A trial whose solid line stays on or above its dashed "
        "line is doing no better than chance.", "", "![](loss_vs_random.png)", "",
        "## Effect of each knob", "", "![](knobs.png)", "",
        "## Parameter importance", "", *_importance_section(imp),
    ]


def _importance_section(imp: Importance) -> list[str]:
    if not imp.main:
        return [f"Not drawn: {imp.note}.", ""]
    return [f"Optuna's own evaluator on the stored study, every trial (ASHA-stopped ones included) at a common "
            f"rung: {imp.note}, each with its best validation value up to epoch {imp.rung}. Only parameters present "
            "in all of them count, so the conditional `lr_ratio` is evaluated apart, on the trials that unfroze the "
            "item tower." + (" With fewer than 10 trials the ranking is a hint, not a finding."
                             if imp.n_trials < 10 else ""), "", "![](importance.png)", ""]


def _gates() -> list[str]:
    return ["## Gate behaviour", "", "Gated fusion: the mean gate (weight on the sequence vector against the "
            "GNN vector) per stage, at training positions and at evaluation for warm and cold-start users. "
            "MoE: each expert's mean weight per stage, for warm and cold-start users at evaluation.", "",
            "![](gates.png)", ""]
