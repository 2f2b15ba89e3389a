"""The one outer loop: epochs until the last one or a diverged one, the best epoch tracked.

    best = fit(run, on_epoch, tb_dir)

``raytower train`` (``on_epoch`` prints the row and keeps the best checkpoint) and every search
trial (``on_epoch`` reports the row and a checkpoint to Ray) share it, so the best epoch, the
divergence stop and the TensorBoard curves mean the same thing in both.
"""

from __future__ import annotations

import math
from typing import Callable

from raytower.train.loop import Curriculum

METRIC = "val/recall@100"  # what the best epoch is chosen by

# Stable TensorBoard names: the same in `raytower train` and in every search trial. TensorBoard
# tags allow [A-Za-z0-9_./-] only, hence "recall_at_100" for the metric "val/recall@100".
SCALARS = {
    "curriculum/stage": "stage",
    "curriculum/tau": "tau",
    "curriculum/lambda": "lambda",
    "loss/train": "loss",
    "loss/random_guess": "loss_random",
    "val/recall_at_10": "val/recall@10",
    "val/recall_at_100": "val/recall@100",
    "val/ndcg_at_10": "val/ndcg@10",
    "val/cold_recall_at_100": "val/cold/recall@100",
    "val/coverage_at_100": "val/coverage@100",
    "val/tail_recall_at_100": "val/tail_recall@100",
    "fusion/gate_mean": "gate_mean",
    "fusion/gate_mean_train": "gate_mean_train",
    "fusion/gate_mean_cold": "gate_mean_cold",
    "fusion/gate_mean_warm": "gate_mean_warm",
    "collapse/effective_rank": "effective_rank",
    "collapse/uniformity": "uniformity",
}


def tensorboard_scalars(row: dict) -> dict[str, float]:
    out = {name: float(row[key]) for name, key in SCALARS.items() if key in row and row[key] == row[key]}
    out |= {f"fusion/{k}": float(v) for k, v in row.items() if k.startswith("expert_")}
    return out


def best_epoch(history: list[dict]) -> dict | None:
    """The epoch with the highest validation metric, among epochs that did not diverge."""
    finite = [r for r in history if not r.get("diverged") and math.isfinite(r.get(METRIC, math.nan))]
    return max(finite, key=lambda r: r[METRIC], default=None)


def fit(run: Curriculum, on_epoch: Callable[[dict, dict | None], None], tb_dir: str | None = None) -> dict | None:
    """Step ``run`` to its last epoch, or to the first diverged one (nothing past a NaN counts).

    After each epoch: its TensorBoard scalars go to ``tb_dir`` (flushed, so TensorBoard shows a
    running trial), then ``on_epoch(row, best)``, ``best`` being the best epoch's row so far (``row``
    itself when this epoch is the new best; None before any). Returns the best epoch's row, or
    None when no epoch had a finite metric."""
    best = best_epoch(run.history)  # a resumed run keeps the best of its earlier epochs
    writer = None
    if tb_dir:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(tb_dir)
    try:
        while not run.done:
            row = run.step()
            if not row["diverged"] and (best is None or row[METRIC] > best[METRIC]):
                best = row
            if writer:
                for name, value in tensorboard_scalars(row).items():
                    writer.add_scalar(name, value, row["epoch"])
                writer.flush()
            on_epoch(row, best)
            if row["diverged"]:
                break
    finally:
        if writer:
            writer.close()
    return best
