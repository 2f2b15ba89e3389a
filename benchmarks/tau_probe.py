"""Is the temperature's floor what caps a cosine-scored run? Its chosen model's full cross-entropy on
training batches, its scores divided by each of several temperatures after the fact.

    python benchmarks/tau_probe.py RUN_DIR [--batches 12] [--out benchmarks/results/tau_probe.jsonl]

A model held back by its floor (the softmax wanting to be sharper than 1 / temp_min) would show a lower
loss below the floor; one whose loss is lowest at the floor it trained at has adapted its cosines to
it, and a lower floor would not by itself fit the data better. Evaluation mode (no dropout), the
model of the run's best epoch (``raytower.export.load_chosen``), the epoch's first batches as
training draws them. One line appended to ``--out`` per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from _stamp import ROOT, stamp
from raytower.export import load_chosen
from raytower.model.towers import user_forward
from raytower.train.data import TrainData, epoch_batches, training_targets

TEMPERATURES = (0.1, 0.07, 0.05, 0.04, 0.03, 0.02, 0.01)


@torch.no_grad()
def training_scores(model, cfg, data: TrainData, n_batches: int):
    """(scores over every item, target column) of the first ``n_batches`` training batches of epoch 0,
    drawn as the run's training drew them; ``model`` in evaluation mode. gnn_probe reads these too."""
    items = model.item_vectors()[1:]
    users = torch.as_tensor(data.train_users)
    for batch in epoch_batches(data.train_lens, cfg.batch_size, cfg.seed, 0,
                               by_length=cfg.batches == "by_length")[:n_batches]:
        b = torch.as_tensor(batch)
        inp, tgt, valid = training_targets(data.train_batch(batch, int(data.train_lens[batch].max())), "all")
        u = user_forward(model.user_tower, users[b], inp, data.meta[users[b]], last_only=False)[valid]
        yield u @ items.T, tgt[valid] - 1


def probe(run: Path, n_batches: int) -> dict[float, float]:
    model, cfg, bundle, chosen = load_chosen(run)
    model.eval()
    data = TrainData.build(bundle, cfg.max_len)
    sums, rows = {t: 0.0 for t in TEMPERATURES}, 0
    for scores, labels in training_scores(model, cfg, data, n_batches):
        for t in TEMPERATURES:
            sums[t] += F.cross_entropy(scores / t, labels, reduction="sum").item()
        rows += len(labels)
    return {t: s / rows for t, s in sums.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a raytower train run directory")
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tau_probe.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loss = probe(args.run, args.batches)
    cfg = json.loads((args.run / "run.json").read_text())["config"]
    row = {"run": args.run.name, "temp_min": cfg["temp_min"], "score": cfg["score"], "batches": args.batches,
           "train_loss_at_temperature": {str(t): round(v, 4) for t, v in loss.items()}, **stamp()}
    print(json.dumps(row["train_loss_at_temperature"]))
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
