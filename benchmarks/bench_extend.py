"""Extend a finished search's trials to more epochs, from each trial's last checkpoint.

The search-efficiency benchmark compares ASHA + TPE with random search *without early stopping*.
At a long horizon (60 epochs) that reference costs an hour a seed on 2 cores. When a shorter random
search has already run, its trials are the reference's first epochs exactly: the same seeded
sampler proposes the same configurations, and a trial's checkpoint holds its optimizer, its RNG
state and its epoch, with each epoch's shuffling drawn from its own seeded generator; nothing in
the curriculum depends on the epoch count except when it ends. So continuing each trial from its
last checkpoint with the plain-PyTorch core is what the longer trial would have done (it is the
path a restored Tune trial takes), and costs only the extra epochs.

    python benchmarks/bench_extend.py /work/runs/bench-search/random_no_stopping-seed0 --epochs 60 \
        --out benchmarks/results/extend_seed0.json

Two trials run side by side, one torch thread each, like the search's trials on 2 cores. The
output has each trial's per-epoch validation Recall@100 over all its epochs, the best, and the
wall and CPU time of the original and the added epochs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

METRIC = "val/recall@100"


def extend(trial_dir: str, setup: dict, epochs: int) -> dict:
    import torch

    from raytower.data import Bundle
    from raytower.model.pretrain import Artifacts
    from raytower.train.config import TrainConfig
    from raytower.train.loop import Curriculum

    torch.set_num_threads(1)
    trial = Path(trial_dir)
    last = max(trial.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    state = torch.load(last / "state.pt", weights_only=True, map_location="cpu")
    cfg = TrainConfig.from_dict({**json.loads((trial / "params.json").read_text()), "epochs": epochs})
    run = Curriculum.create(cfg, Bundle(setup["bundle"]), Artifacts.load(setup["artifacts"][f"{cfg.dim}-{cfg.item_layers}"]))
    run.load_state_dict(state)
    start_epoch = run.epoch
    t0, c0 = time.perf_counter(), time.process_time()
    while not run.done:
        run.step()
    rows = run.history
    best = max(rows, key=lambda r: r[METRIC])
    return {"trial": trial.name, "params": cfg.to_dict(),
            "from_epoch": start_epoch, "epochs": len(rows), "curve": [round(r[METRIC], 5) for r in rows],
            "best": best[METRIC], "best_epoch": int(best["epoch"]),
            "best_first": max(r[METRIC] for r in rows[:start_epoch]),
            "first_wall_s": sum(r.get("epoch_time_s", 0.0) for r in rows[:start_epoch]),
            "first_cpu_s": sum(r.get("epoch_cpu_s", 0.0) for r in rows[:start_epoch]),
            "added_wall_s": time.perf_counter() - t0, "added_cpu_s": time.process_time() - c0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("search", help="a finished raytower search directory (scheduler none: every trial ran to the end)")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    print("command:", command)
    exp = Path(args.search)
    setup = json.loads((exp / "setup.json").read_text())["setup"]
    trials = sorted(str(d) for d in (exp / "tune").glob("trial_*") if d.is_dir())
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(extend, trials, [setup] * len(trials), [args.epochs] * len(trials)))
    for r in rows:
        print(f"{r['trial']}: best {r['best']:.4f} at epoch {r['best_epoch']} (first {r['from_epoch']}: {r['best_first']:.4f})")
    doc = {"command": command, "search": str(exp), "epochs": args.epochs, "trials": rows,
           "best_val_recall@100": max(r["best"] for r in rows),
           "best_val_recall@100_first_epochs": max(r["best_first"] for r in rows),
           "trial_epochs": sum(r["epochs"] for r in rows), "added_wall_s": time.perf_counter() - t0,
           "trial_cpu_s": sum(r["first_cpu_s"] + r["added_cpu_s"] for r in rows)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"best val Recall@100 over {args.epochs} epochs: {doc['best_val_recall@100']:.4f} "
          f"(over the first epochs: {doc['best_val_recall@100_first_epochs']:.4f}); trial-epochs {doc['trial_epochs']}")


if __name__ == "__main__":
    main()
