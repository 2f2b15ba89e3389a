"""Search efficiency: ASHA + TPE (truthful pruning on and off) against random search without early
stopping, the same number of trials, the same data, the same seeds.

For each arm and seed it runs a real `raytower tune` and reads its trials.parquet: the best
validation Recall@100 reached, the trial-epochs spent, and the wall and CPU time (per-trial
overhead hides in trial-epochs, so all three are reported).

    python benchmarks/bench_search.py --data /path/to/ml-100k --num-samples 16 --max-epochs 20 \
        --seeds 0 1 --out benchmarks/results/search.json

Goal (issue 4): ASHA + TPE within one standard error (about 0.016 validation Recall@100 on ml-100k)
of random search's best for at most a third of its trial-epochs, over at least 2 seeds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ARMS = {
    "asha_tpe_truthful": ["--scheduler", "asha", "--searcher", "tpe"],
    "asha_tpe_ray_default": ["--scheduler", "asha", "--searcher", "tpe", "--no-truthful-pruning"],
    # multivariate TPE over groups of knobs (issue #15 part 6): the default only if at least as good
    "asha_tpe_mv": ["--scheduler", "asha", "--searcher", "tpe-mv"],
    "random_no_stopping": ["--scheduler", "none", "--searcher", "random", "--patience", "0"],
}


def run_arm(arm: str, seed: int, args, work: Path) -> dict:
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
        "trial_cpu_s": float(trials["cpu_time_s"].sum()), "command": shlex.join(cmd),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--space", default="search_spaces/default.yaml")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--max-epochs", type=int, default=20)
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
    p.add_argument("--out", default="benchmarks/results/search.json")
    args = p.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            rows.append(run_arm(arm, seed, args, work))
            print(json.dumps(rows[-1]))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(rows, indent=2))
    df = pd.DataFrame(rows)
    summary = df.groupby("arm")[["best_val_recall@100", "trial_epochs", "search_wall_s", "trial_cpu_s"]].mean()
    if "random_no_stopping" in summary.index:
        ref = summary.loc["random_no_stopping"]
        summary["recall_gap_to_random"] = summary["best_val_recall@100"] - ref["best_val_recall@100"]
        summary["epochs_vs_random"] = summary["trial_epochs"] / ref["trial_epochs"]
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
