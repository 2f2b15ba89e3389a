"""The curriculum's stage machine: when Stage 1 ends, and what Stage 2 unfreezes.

Stage 1 trains the user tower with the item tower and the GNN table frozen. It ends after the
first epoch at which one of these holds, checked in this order: validation Recall@100 reaches
``stage2_min_recall`` x popularity's, train loss falls to ``stage2_max_loss`` x the random-guess
loss, ``stage1_max_epochs`` epochs are done. Stage 2 then trains the top ``unfreeze_depth`` pieces
of the item tower in their own optimizer group at ``lr * lr_ratio`` and, with ``gnn_unfreeze``,
the GNN user table in another at ``lr * gnn_lr_ratio``.
"""

from __future__ import annotations

import torch

from raytower.train._towers import TrainedTowers
from raytower.train.config import TrainConfig


def switch_reason(cfg: TrainConfig, row: dict, epochs_done: int, popularity_recall: float) -> str | None:
    """Why Stage 1 ends after the epoch ``row`` reports, or None while it goes on.
    ``popularity_recall``: popularity's validation Recall@100."""
    if cfg.stage2_min_recall > 0 and row["val/recall@100"] >= cfg.stage2_min_recall * popularity_recall:
        return (f"val recall@100 {row['val/recall@100']:.3f} >= {cfg.stage2_min_recall:g} x popularity "
                f"{popularity_recall:.3f}")
    if cfg.stage2_max_loss > 0 and row["loss"] <= cfg.stage2_max_loss * row["loss_random"]:
        return f"loss {row['loss']:.3f} <= {cfg.stage2_max_loss:g} x random-guess {row['loss_random']:.3f}"
    if epochs_done >= cfg.stage1_max_epochs:
        return f"stage1_max_epochs ({cfg.stage1_max_epochs}) reached"
    return None


def unfreeze_for_stage2(cfg: TrainConfig, towers: TrainedTowers, optimizer: torch.optim.Optimizer) -> None:
    """What Stage 2 trains joins the optimizer, each part in its own group at its own LR."""
    if cfg.unfreeze_depth > 0:
        params = towers.unfreeze_item_top(cfg.unfreeze_depth)
        optimizer.add_param_group({"params": params, "lr": cfg.lr * cfg.lr_ratio})
    if cfg.gnn_unfreeze:
        table = towers.unfreeze_gnn(cfg.model)
        optimizer.add_param_group({"params": [table], "lr": cfg.lr * cfg.gnn_lr_ratio})
