"""Every phase from raw data to the first epoch, at growing data sizes: wall time, CPU time, peak RSS.

    .venv/bin/python benchmarks/bench_scale.py --out benchmarks/results/scale.json
    .venv/bin/python benchmarks/bench_scale.py --sizes 2500x1000 --out /tmp/smoke.json     # a smoke run

Sizes are synthetic data sets, USERSxITEMS (about 40 interactions a user): 2500x1000 ~0.1M,
25000x10000 ~1M, 250000x50000 ~10M interactions. Each size runs in a fresh process with an empty
cache, so its memory peak is its own; the phases run in order:

  prepare      load_bundle(synthetic:...) into the empty cache (generating the raw log included)
  lightgcn     train_lightgcn: BPR with sparse gradients, then the propagation
  item_tower   train_item_tower
  popularity   the closed-form popularity baseline of val and test, written into the bundle
  setup        Curriculum.create: the towers and the data holder (default TrainConfig)
  epoch        one training epoch (Stage 1)
  validation   one validation (the --val-users default: a 20,000-user sample above that size)
  checkpoint   the size of one checkpoint (torch.save of Curriculum.state_dict)

peak_rss_gib is the process's peak resident memory after the phase. The report gives each phase's
growth exponent from the second-largest size to the largest: log(t_large / t_small) /
log(n_large / n_small) in interactions, so 1.0 is linear.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOALS = {"1M_to_first_epoch_s": 600, "10M_to_first_epoch_s": 5400, "peak_rss_gib": 8.0, "exponent": 1.15}


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(size: str, threads: int, until: str | None = None, gnn_epochs: int | None = None) -> dict:
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(threads)
    from raytower.data import load_bundle
    from raytower.model.pretrain import PretrainConfig, train_item_tower, train_lightgcn
    from raytower.train.config import TrainConfig
    from raytower.train.evaluate import popularity
    from raytower.train.loop import Curriculum
    from raytower.model.pretrain import Artifacts

    users, items = (int(x) for x in size.split("x"))
    phases: dict[str, dict] = {}

    def timed(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        phases[name] = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2),
                        "peak_rss_gib": round(_peak_gib(), 3)}
        print(f"[{size}] {name}: {phases[name]}", file=sys.stderr, flush=True)
        return out

    quiet = None
    bundle = timed("prepare", lambda: load_bundle(f"synthetic:n_users={users},n_items={items}"))
    pcfg = PretrainConfig(**({"gnn_epochs": gnn_epochs} if gnn_epochs else {}))
    torch.manual_seed(pcfg.seed)
    gnn_user, gnn_item, gnn_stats = timed("lightgcn", lambda: train_lightgcn(bundle, pcfg, quiet))
    if until == "lightgcn":
        return {"size": size, "n_interactions": bundle.manifest["n_interactions"], "phases": phases}
    tower, _ = timed("item_tower", lambda: train_item_tower(bundle, pcfg, gnn_user, gnn_item, quiet))
    timed("popularity", lambda: popularity(bundle))
    artifacts = Artifacts(Path("."), gnn_user, gnn_item, tower.state_dict(), pcfg, gnn_stats)
    cfg = TrainConfig()
    run = timed("setup", lambda: Curriculum.create(cfg, bundle, artifacts))
    timed("epoch", lambda: run._train_epoch(run.tau(), run.lam()))
    timed("validation", lambda: run.evaluate("val"))
    buf = io.BytesIO()
    torch.save(run.state_dict(), buf)
    return {"size": size, "n_interactions": bundle.manifest["n_interactions"], "n_users": bundle.n_users,
            "n_items": bundle.n_items, "phases": phases, "checkpoint_mb": round(buf.tell() / 2**20, 2),
            "to_first_epoch_s": round(sum(phases[p]["wall_s"] for p in
                                          ("prepare", "lightgcn", "item_tower", "popularity", "setup", "epoch")), 1)}


def exponents(small: dict, large: dict) -> dict[str, float]:
    ratio = math.log(large["n_interactions"] / small["n_interactions"])
    out = {}
    for p, v in large["phases"].items():
        a, b = small["phases"][p]["wall_s"], v["wall_s"]
        out[p] = round(math.log(max(b, 1e-3) / max(a, 1e-3)) / ratio, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["2500x1000", "25000x10000", "250000x50000"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--until", choices=["lightgcn"],
                    help="stop each size after this phase (the others are not measured)")
    ap.add_argument("--gnn-epochs", type=int, help="LightGCN's epochs (default: PretrainConfig's)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.threads, a.until, a.gnn_epochs)))
        return
    results = []
    for size in a.sizes:
        with tempfile.TemporaryDirectory() as cache:  # an empty cache: nothing is reused
            env = {**os.environ, "RAYTOWER_CACHE": cache}
            done = subprocess.run([sys.executable, __file__, "--child", size, "--threads", str(a.threads), "--out", "-"]
                                  + (["--until", a.until] if a.until else [])
                                  + (["--gnn-epochs", str(a.gnn_epochs)] if a.gnn_epochs else []),
                                  env=env, stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        doc = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "threads": a.threads, "goals": GOALS, "sizes": results}
        if len(results) >= 2 and results[-1]["n_interactions"] != results[-2]["n_interactions"]:
            doc["exponents_last_two_sizes"] = exponents(results[-2], results[-1])
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
