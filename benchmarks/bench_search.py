"""Search efficiency: ASHA + TPE (truthful pruning on and off) against random search without early
stopping, the same number of trials, the same data, the same seeds.

For each arm and seed it runs a real `raytower tune` and reads its trials.parquet: the best
validation Recall@100 reached, the trial-epochs spent, and the wall and CPU time (per-trial
overhead hides in trial-epochs, so all three are reported).

    python benchmarks/bench_search.py --data ../shared/data/ml-100k --num-samples 16 --max-epochs 20 \
        --seeds 0 1 --out benchmarks/results/search.json

Goal (issue 4): ASHA + TPE within one standard error (about 0.016 validation Recall@100 on ml-100k)
of random search's best for at most a third of its trial-epochs, over at least 2 seeds.

--extend SEARCH: a finished search's trials continued from each one's last checkpoint to
--max-epochs, the reference of a long random search without running it again.

    python benchmarks/bench_search.py --extend /work/runs/bench-search/random_no_stopping-seed0 \
        --max-epochs 60 --out benchmarks/results/extend_seed0.json

At a long horizon (60 epochs) random search without stopping costs an hour a seed on 2 cores. When
a shorter one has already run, its trials are the longer one's first epochs exactly: the same
seeded sampler proposes the same configurations, and a trial's checkpoint holds its optimizer, its
RNG state and its epoch, with each epoch's shuffling drawn from its own seeded generator; nothing in
the curriculum depends on the epoch count except when it ends. So continuing each trial from its
last checkpoint with the plain-PyTorch core is what the longer trial would have done (it is the
path a restored Tune trial takes), and costs only the extra epochs. --parallel trials run side by
side, one torch thread each, like the search's trials on 2 cores. The output has each trial's
per-epoch validation Recall@100 over all its epochs, the best, and the wall and CPU time of the
original and the added epochs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _stamp import relative_command, stamp

ARMS = {
    "asha_tpe_truthful": ["--scheduler", "asha", "--searcher", "tpe"],
    "asha_tpe_ray_default": ["--scheduler", "asha", "--searcher", "tpe", "--no-truthful-pruning"],
    # multivariate TPE over groups of knobs (issue #15 part 6): the default only if at least as good
    "asha_tpe_mv": ["--scheduler", "asha", "--searcher", "tpe-mv"],
    "random_no_stopping": ["--scheduler", "none", "--searcher", "random", "--patience", "0"],
}
METRIC = "val/recall@100"


def run_arm(arm: str, seed: int, args, work: Path) -> dict:
    import pandas as pd

    out = work / f"{arm}-seed{seed}"
    cmd = [sys.executable, "-m", "raytower.cli", "tune", "--data", args.data, "--space", args.space,
           "--num-samples", str(args.num_samples), "--max-epochs", str(args.max_epochs), "--seed", str(seed),
           "--executor", "function", "--cpus-per-trial", str(args.cpus_per_trial), "--out", str(out), *ARMS[arm]]
    if args.grace_period:
        cmd += ["--grace-period", str(args.grace_period)]
    if args.reduction_factor and "asha" in arm:
        cmd += ["--reduction-factor", str(args.reduction_factor)]
    if args.max_concurrent:
        cmd += ["--max-concurrent", str(args.max_concurrent)]
    if args.patience is not None and "asha" in arm:
        cmd += ["--patience", str(args.patience)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    trials = pd.read_parquet(out / "trials.parquet")
    best = json.loads((out / "best_config.json").read_text())
    return {
        "arm": arm, "seed": seed, "best_val_recall@100": float(trials["best/val/recall@100"].max()),
        "chosen_val_recall@100": best["selection"]["value"], "chosen_test_recall@100": best["test"]["recall@100"],
        "trial_epochs": int(trials["epochs"].sum()), "trials": int(len(trials)),
        "stopped_early": int((trials["stop_reason"] != "completed").sum()),
        "stops": {str(k): int(v) for k, v in trials["stop_reason"].value_counts().items()},
        "search_wall_s": wall, "trial_wall_s": float(trials["wall_time_s"].sum()),
        "trial_cpu_s": float(trials["cpu_time_s"].sum()), "command": relative_command(cmd[1:]),
        "stamp": stamp(),  # this benchmark's own command, commit, versions, and the load as the arm ended
    }


def compare(args) -> None:
    import pandas as pd

    out = Path(args.out or "benchmarks/results/search.json")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            rows.append(run_arm(arm, seed, args, work))
            print(json.dumps(rows[-1]))
            write_json(out, rows)
    df = pd.DataFrame(rows)
    summary = df.groupby("arm")[["best_val_recall@100", "trial_epochs", "search_wall_s", "trial_cpu_s"]].mean()
    if "random_no_stopping" in summary.index:
        ref = summary.loc["random_no_stopping"]
        summary["recall_gap_to_random"] = summary["best_val_recall@100"] - ref["best_val_recall@100"]
        summary["epochs_vs_random"] = summary["trial_epochs"] / ref["trial_epochs"]
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))


def extend_trial(trial_dir: str, shared, epochs: int) -> dict:
    """One trial continued from its last kept checkpoint to ``epochs``, in this process."""
    import torch

    from raytower.data import Bundle
    from raytower.train.config import TrainConfig
    from raytower.train.loop import Curriculum

    torch.set_num_threads(1)
    trial = Path(trial_dir)
    last = max(trial.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    state = torch.load(last / "state.pt", weights_only=True, map_location="cpu")
    cfg = TrainConfig.from_dict({**json.loads((trial / "params.json").read_text()), "epochs": epochs})
    run = Curriculum.create(cfg, Bundle(shared.bundle), shared.load_artifacts(cfg))
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


def extend(args) -> None:
    from raytower.names import EXPERIMENT
    from raytower.tune import SearchRecord

    exp = Path(args.extend)
    shared = SearchRecord.read(exp).shared
    trials = sorted(str(d) for d in (exp / EXPERIMENT).glob("trial_*") if d.is_dir())
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(extend_trial, trials, [shared] * len(trials), [args.max_epochs] * len(trials)))
    for r in rows:
        print(f"{r['trial']}: best {r['best']:.4f} at epoch {r['best_epoch']} (first {r['from_epoch']}: {r['best_first']:.4f})")
    doc = {**stamp(), "search": str(exp), "epochs": args.max_epochs, "trials": rows,
           "best_val_recall@100": max(r["best"] for r in rows),
           "best_val_recall@100_first_epochs": max(r["best_first"] for r in rows),
           "trial_epochs": sum(r["epochs"] for r in rows), "added_wall_s": time.perf_counter() - t0,
           "trial_cpu_s": sum(r["first_cpu_s"] + r["added_cpu_s"] for r in rows)}
    write_json(Path(args.out), doc)
    print(f"best val Recall@100 over {args.max_epochs} epochs: {doc['best_val_recall@100']:.4f} "
          f"(over the first epochs: {doc['best_val_recall@100_first_epochs']:.4f}); trial-epochs {doc['trial_epochs']}")


def write_json(out: Path, doc) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # a reader never sees half a file
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="the data source of every arm (required unless --extend)")
    p.add_argument("--space", default="search_spaces/default.yaml")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--max-epochs", type=int, default=None,
                   help="epochs per trial (default 20); with --extend, the horizon to continue each trial to")
    p.add_argument("--grace-period", type=int, default=None)
    p.add_argument("--reduction-factor", type=int, default=None, help="ASHA's (default: raytower tune's)")
    p.add_argument("--patience", type=int, default=None,
                   help="plateau stop for the ASHA arms (default: raytower tune's); random search never stops early")
    # On 2 cores two 1-thread trials side by side spend 4.4 s a trial-epoch (8.7 s an epoch each,
    # ml-100k, default space); one 2-thread trial at a time spends 7 s.
    p.add_argument("--cpus-per-trial", type=int, default=1, help="CPUs (and torch threads) per trial")
    # One trial at a time leaves the other core to a job beside the benchmark, and takes the constant
    # liar out of a sampler comparison (each trial sees every earlier one finished).
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as CPUs allow)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--arms", nargs="+", default=[a for a in ARMS if a != "asha_tpe_mv"], choices=list(ARMS))
    p.add_argument("--work", default="/tmp/raytower-bench-search")
    p.add_argument("--out", default=None,
                   help="the result JSON (default benchmarks/results/search.json; required with --extend)")
    p.add_argument("--extend", metavar="SEARCH",
                   help="continue a finished search's trials (scheduler none: every trial ran to the end) "
                        "to --max-epochs, from each one's last checkpoint")
    p.add_argument("--parallel", type=int, default=2, help="--extend: trials continued side by side")
    args = p.parse_args()
    print("command:", relative_command())
    if args.extend:
        if not args.out or not args.max_epochs:
            p.error("--extend needs --max-epochs (the longer horizon) and --out")
        extend(args)
    else:
        if not args.data:
            p.error("--data is required")
        args.max_epochs = args.max_epochs or 20
        compare(args)


if __name__ == "__main__":
    main()
