"""Every phase from raw data to the first epoch, at growing data sizes: wall time, CPU time, peak RSS.

    .venv/bin/python benchmarks/bench_scale.py --out benchmarks/results/scale.json
    .venv/bin/python benchmarks/bench_scale.py --sizes 2500x1000 --out /tmp/smoke.json     # a smoke run
    .venv/bin/python benchmarks/bench_scale.py --beside --out benchmarks/results/lightgcn_beside.json

Sizes are synthetic data sets, USERSxITEMS (about 40 interactions a user): 2500x1000 ~0.1M,
25000x10000 ~1M, 250000x50000 ~10M interactions. Each size runs in a fresh process with an empty
cache, so its memory peak is its own; the phases run in order:

  prepare      load_bundle(synthetic:...) into the empty cache (generating the raw log included)
  lightgcn     train_lightgcn: BPR with sparse gradients, then the propagation
  item_tower   train_item_tower
  popularity   the closed-form popularity baseline of val and test, written into the bundle
  setup        Curriculum.create: the towers and the data holder (default TrainConfig)
  epoch        one training epoch (Stage 1), Curriculum.train_epoch
  validation   one validation (the --val-users default: a 20,000-user sample above that size)
  checkpoint   the size of one checkpoint (torch.save of Curriculum.state_dict)

peak_rss_gib is the process's peak resident memory after the phase. The report gives each phase's
growth exponent from the second-largest size to the largest: log(t_large / t_small) /
log(n_large / n_small) in interactions, so 1.0 is linear.

--beside: LightGCN's growth exponent with the two sizes measured at the same time, one a core.
This 2-core machine's speed drifts with its host's load, by up to 1.7x within an hour, so a large
and a small phase timed an hour apart give an exponent that measures the drift as much as the
method. Here the large size (the last of --sizes) runs its LightGCN phase once on one core while
the small size (the one before it) runs again and again on the other, until the large one ends:
both see the same host. The small runs tile the large one's window, so the mean of their phase
times is what the small phase costs at the window's average speed, and

    exponent = log(t_large / mean(t_small in the window)) / log(n_large / n_small)

in interactions. Each run is a child of this script stopped after the LightGCN phase, with one
thread and an empty cache (it generates and prepares its data first; only the LightGCN phase is
compared). A small run counts when at least half of its phase lies inside the large phase's window.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _stamp import ROOT, stamp

GOALS = {"1M_to_first_epoch_s": 600, "10M_to_first_epoch_s": 5400, "peak_rss_gib": 8.0, "exponent": 1.15}
SIZES = ["2500x1000", "25000x10000", "250000x50000"]
BESIDE_GNN_EPOCHS = 10  # the LightGCN phase is linear in them; 10 keeps the 10M one near 20 min


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(size: str, threads: int, until: str | None = None, gnn_epochs: int | None = None) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(threads)
    from raytower.data import load_bundle
    from raytower.model.pretrain import Artifacts, PretrainConfig, train_item_tower, train_lightgcn
    from raytower.train.config import TrainConfig
    from raytower.train.evaluate import popularity
    from raytower.train.loop import Curriculum

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
    timed("epoch", run.train_epoch)
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


def child_argv(size: str, threads: int, until: str | None, gnn_epochs: int | None) -> list[str]:
    return ([sys.executable, __file__, "--child", size, "--threads", str(threads), "--out", "-"]
            + (["--until", until] if until else []) + (["--gnn-epochs", str(gnn_epochs)] if gnn_epochs else []))


def write_json(out: Path, doc: dict) -> None:
    tmp = out.with_name(out.name + ".tmp")  # a reader never sees half a file
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores"


def every_phase(a: argparse.Namespace, out: Path) -> None:
    results = []
    for size in a.sizes:
        with tempfile.TemporaryDirectory() as cache:  # an empty cache: nothing is reused
            done = subprocess.run(child_argv(size, a.threads, a.until, a.gnn_epochs),
                                  env={**os.environ, "RAYTOWER_CACHE": cache}, stdout=subprocess.PIPE, text=True,
                                  check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        doc = {**stamp(), "machine": machine(), "threads": a.threads, "goals": GOALS, "sizes": results}
        if len(results) >= 2 and results[-1]["n_interactions"] != results[-2]["n_interactions"]:
            doc["exponents_last_two_sizes"] = exponents(results[-2], results[-1])
        write_json(out, doc)
        print(json.dumps(results[-1]), flush=True)


def _start(size: str, epochs: int, cache: str) -> subprocess.Popen:
    return subprocess.Popen(child_argv(size, 1, "lightgcn", epochs), env={**os.environ, "RAYTOWER_CACHE": cache},
                            stdout=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    """The child's result, with the LightGCN phase's window in epoch seconds (it is the last phase)."""
    stdout, _ = proc.communicate()
    end = time.time()
    if proc.returncode:
        raise SystemExit(f"bench_scale child exited {proc.returncode}")
    run = json.loads(stdout.strip().splitlines()[-1])
    wall = run["phases"]["lightgcn"]["wall_s"]
    return {**run, "lightgcn_window": [round(end - wall, 1), round(end, 1)]}


def _inside(window: list[float], of: list[float]) -> bool:
    overlap = min(window[1], of[1]) - max(window[0], of[0])
    return overlap >= 0.5 * (window[1] - window[0])


def beside(small: str, large: str, gnn_epochs: int, out: Path) -> None:
    # SIGTERM unwinds like Ctrl-C, so the children are stopped and the temporary caches removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    smalls, running = [], []
    try:
        with tempfile.TemporaryDirectory() as large_cache:
            running.append(_start(large, gnn_epochs, large_cache))
            # the large one's end is taken when it ends, not when the small run beside it does
            waiter = concurrent.futures.ThreadPoolExecutor(1).submit(_finish, running[0])
            while not waiter.done():
                with tempfile.TemporaryDirectory() as small_cache:
                    running.append(_start(small, gnn_epochs, small_cache))
                    smalls.append(_finish(running[-1]))
                    running.pop()
                print(f"[{small}] lightgcn {smalls[-1]['phases']['lightgcn']['wall_s']} s", flush=True)
            large_run = waiter.result()
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"[{large}] lightgcn {large_run['phases']['lightgcn']['wall_s']} s", flush=True)

    counted = [s for s in smalls if _inside(s["lightgcn_window"], large_run["lightgcn_window"])]
    if not counted:
        raise SystemExit("no small run fell inside the large phase: make the large one longer (--gnn-epochs)")
    t_small = statistics.mean(s["phases"]["lightgcn"]["wall_s"] for s in counted)
    t_large = large_run["phases"]["lightgcn"]["wall_s"]
    exponent = math.log(t_large / t_small) / math.log(large_run["n_interactions"] / counted[0]["n_interactions"])
    doc = {**stamp(), "machine": machine(), "gnn_epochs": gnn_epochs, "large": large_run, "small_runs": smalls,
           "small_runs_counted": len(counted), "small_mean_s": round(t_small, 2),
           "small_spread_s": [min(s["phases"]["lightgcn"]["wall_s"] for s in counted),
                              max(s["phases"]["lightgcn"]["wall_s"] for s in counted)],
           "exponent": round(exponent, 3), "goal": GOALS["exponent"]}
    write_json(out, doc)
    print(f"exponent {exponent:.3f} ({len(counted)} small runs, mean {t_small:.1f} s, large {t_large:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=SIZES, help="USERSxITEMS, smallest first (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--until", choices=["lightgcn"],
                    help="stop each size after this phase (the others are not measured)")
    ap.add_argument("--gnn-epochs", type=int,
                    help=f"LightGCN's epochs (default: PretrainConfig's; with --beside {BESIDE_GNN_EPOCHS})")
    ap.add_argument("--beside", action="store_true",
                    help="LightGCN's growth exponent from the last two --sizes run at the same time, one a core")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.threads, a.until, a.gnn_epochs)))
        return
    out = Path(a.out)
    try:  # say so now, not after half an hour of measuring
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir() or not os.access(out.parent, os.W_OK):
            raise OSError("not a file in a folder this process can write")
    except OSError as e:
        print(f"{out}: --out: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(2)
    if a.beside:
        if len(a.sizes) < 2:
            ap.error("--beside needs two --sizes: SMALL LARGE")
        beside(a.sizes[-2], a.sizes[-1], a.gnn_epochs or BESIDE_GNN_EPOCHS, out)
    else:
        every_phase(a, out)


if __name__ == "__main__":
    main()
