"""LightGCN's growth exponent with both sizes measured under the same conditions, at the same time.

    .venv/bin/python benchmarks/bench_growth_beside.py --out benchmarks/results/lightgcn_beside.json

Why: this 2-core machine's speed drifts with its host's load, by up to 1.7x within an hour, so a
large and a small phase timed an hour apart give an exponent that measures the drift as much as the
method. Here the large size's LightGCN phase runs once on one core while the small size's runs again
and again on the other, until the large one ends: both see the same host. The small runs tile the
large one's window, so the mean of their phase times is what the small phase costs at the window's
average speed, and

    exponent = log(t_large / mean(t_small in the window)) / log(n_large / n_small)

in interactions. Each run is `bench_scale.py --child SIZE --until lightgcn` in its own process with
an empty cache (it generates and prepares its data first; only the LightGCN phase is compared). A
small run counts when at least half of its phase lies inside the large phase's window.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCALE = Path(__file__).resolve().parent / "bench_scale.py"


def _start(size: str, epochs: int, cache: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCALE), "--child", size, "--threads", "1", "--out", "-",
                             "--until", "lightgcn", "--gnn-epochs", str(epochs)],
                            env={**os.environ, "RAYTOWER_CACHE": cache}, stdout=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    """The child's result, with the LightGCN phase's window in epoch seconds (it is the last phase)."""
    out, _ = proc.communicate()
    end = time.time()
    if proc.returncode:
        raise SystemExit(f"bench_scale child exited {proc.returncode}")
    run = json.loads(out.strip().splitlines()[-1])
    wall = run["phases"]["lightgcn"]["wall_s"]
    return {**run, "lightgcn_window": [round(end - wall, 1), round(end, 1)]}


def _inside(window: list[float], of: list[float]) -> bool:
    overlap = min(window[1], of[1]) - max(window[0], of[0])
    return overlap >= 0.5 * (window[1] - window[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", default="25000x10000")
    ap.add_argument("--large", default="250000x50000")
    ap.add_argument("--gnn-epochs", type=int, default=10,
                    help="LightGCN's epochs in both (the phase is linear in them; 10 keeps the large one near 20 min)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    if out.is_dir() or not out.parent.is_dir():  # say so now, not after half an hour of measuring
        print(f"{out}: --out must be a file in an existing folder", file=sys.stderr)
        raise SystemExit(2)
    # SIGTERM unwinds like Ctrl-C, so the children are stopped and the temporary caches removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    smalls, running = [], []
    try:
        with tempfile.TemporaryDirectory() as large_cache:
            running.append(_start(a.large, a.gnn_epochs, large_cache))
            # the large one's end is taken when it ends, not when the small run beside it does
            waiter = concurrent.futures.ThreadPoolExecutor(1).submit(_finish, running[0])
            while not waiter.done():
                with tempfile.TemporaryDirectory() as small_cache:
                    running.append(_start(a.small, a.gnn_epochs, small_cache))
                    smalls.append(_finish(running[-1]))
                    running.pop()
                print(f"[{a.small}] lightgcn {smalls[-1]['phases']['lightgcn']['wall_s']} s", flush=True)
            large = waiter.result()
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"[{a.large}] lightgcn {large['phases']['lightgcn']['wall_s']} s", flush=True)

    counted = [s for s in smalls if _inside(s["lightgcn_window"], large["lightgcn_window"])]
    if not counted:
        raise SystemExit("no small run fell inside the large phase: make the large one longer (--gnn-epochs)")
    t_small = statistics.mean(s["phases"]["lightgcn"]["wall_s"] for s in counted)
    t_large = large["phases"]["lightgcn"]["wall_s"]
    exponent = math.log(t_large / t_small) / math.log(large["n_interactions"] / counted[0]["n_interactions"])
    doc = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "gnn_epochs": a.gnn_epochs, "large": large, "small_runs": smalls,
           "small_runs_counted": len(counted), "small_mean_s": round(t_small, 2),
           "small_spread_s": [min(s["phases"]["lightgcn"]["wall_s"] for s in counted),
                              max(s["phases"]["lightgcn"]["wall_s"] for s in counted)],
           "exponent": round(exponent, 3), "goal": 1.15}
    tmp = out.with_name(out.name + ".tmp")  # a reader never sees half a file
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)
    print(f"exponent {exponent:.3f} ({len(counted)} small runs, mean {t_small:.1f} s, large {t_large:.1f} s)")


if __name__ == "__main__":
    main()
