"""Does the long-term (GNN) vector help only in training? A leak would: a vector built from data that
saw a training sequence's later items lowers the train loss more than it lifts validation.

    python benchmarks/gnn_probe.py RUN_DIR [--batches 12] [--out benchmarks/results/gnn_probe.jsonl]

The run's chosen model (``raytower.export.load_chosen``), in evaluation mode, twice: as trained, and
with every GNN vector replaced by the learned cold-start vector (what ``gnn_dropout`` shows it in
training). For each, the full cross-entropy on the epoch's first training batches (at the run's last
temperature) and validation HR@10 / NDCG@10 over all users. One line appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from _stamp import ROOT, stamp
from tau_probe import training_scores
from raytower.export import load_chosen
from raytower.train.data import TrainData
from raytower.train.evaluate import evaluate
from raytower.train.schedules import temperature


@torch.no_grad()
def figures(model, cfg, data: TrainData, n_batches: int, tau: float) -> dict[str, float]:
    total, rows = 0.0, 0
    for scores, labels in training_scores(model, cfg, data, n_batches):
        total += F.cross_entropy(scores / tau, labels, reduction="sum").item()
        rows += len(labels)
    val = evaluate(model, data, "val", model.item_vectors())[0]
    return {"train_ce": total / rows, "val_hr@10": val["recall@10"], "val_ndcg@10": val["ndcg@10"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a raytower train run directory (built-in towers)")
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gnn_probe.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg, bundle, chosen = load_chosen(args.run)
    model.eval()
    data = TrainData.build(bundle, cfg.max_len)
    epoch = int(chosen["selection"]["epoch"])
    tau = temperature(epoch - 1, cfg.temp_start, cfg.anneal_rate, cfg.temp_min)  # the epoch trained at it
    tower = model.user_tower
    as_trained = figures(model, cfg, data, args.batches, tau)
    cold = F.normalize(tower.cold_vec, dim=-1)
    if cfg.gnn_vector == "history":
        tower.history_vectors = lambda seq: cold.expand(*seq.shape, -1)
    else:
        tower.graph_users = torch.zeros_like(tower.graph_users)  # every user read as outside the graph
    hidden = figures(model, cfg, data, args.batches, tau)
    row = {"run": args.run.name, "gnn_vector": cfg.gnn_vector, "epoch": epoch, "tau": tau,
           "as_trained": as_trained, "gnn_hidden": hidden, **stamp()}
    print(json.dumps({"as_trained": as_trained, "gnn_hidden": hidden}))
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
