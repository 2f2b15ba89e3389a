"""What the pretraining costs a run: LightGCN and the item tower, from nothing, in CPU seconds.

    python benchmarks/pretrain_time.py --data ../shared/data/ml-1m/ml-1m.txt --cold-frac 0 --threads 1

Issue 26 part 7 asks ML-1M's pretraining to fit in 360 CPU seconds. This runs the pretraining a
``raytower train`` of the default config would run (``PretrainConfig.for_train``), into a fresh
temporary cache (the data bundle comes from the usual cache: preparing it is not pretraining), and
appends its CPU seconds (this process's, as the artifacts' stats record them), wall time and quality
figures, with the stamp, to ``benchmarks/results/pretrain_time.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stamp import ROOT, stamp  # noqa: E402

from raytower.data import PrepareOptions, load_bundle  # noqa: E402
from raytower.model.pretrain import PretrainConfig, pretrain  # noqa: E402
from raytower.train.config import TrainConfig  # noqa: E402

GOAL_CPU_S = 360.0  # issue 26 part 7, on ML-1M
RESULTS = ROOT / "benchmarks" / "results" / "pretrain_time.jsonl"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a data source as `raytower train --data` takes it")
    p.add_argument("--cold-frac", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.data, PrepareOptions(cold_frac=args.cold_frac))
    pcfg = PretrainConfig.for_train(TrainConfig())
    with tempfile.TemporaryDirectory(prefix="raytower-pretrain-") as tmp:
        t0 = time.perf_counter()
        artifacts = pretrain(bundle, pcfg, dest=Path(tmp) / "artifacts", progress=print)
        wall = time.perf_counter() - t0
    row = {"data": bundle.name, "n_interactions": bundle.manifest["n_interactions"], "threads": args.threads,
           "cpu_s": artifacts.stats["cpu_s"], "wall_s": round(wall, 1), "nice": os.nice(0),
           "goal_cpu_s": GOAL_CPU_S if bundle.name == "ml-1m" else None, "stats": artifacts.stats,
           **stamp([__file__, *(argv if argv is not None else sys.argv[1:])])}
    with RESULTS.open("a") as f:  # one whole line per run
        f.write(json.dumps(row) + "\n")
    print(f"pretraining {bundle.name}: {row['cpu_s']:.1f} CPU s, {wall:.0f} s wall -> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
