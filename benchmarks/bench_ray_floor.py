"""The least a one-trial Tune search can cost here: Ray's start, one no-op trial, Ray's shutdown.

bench_overhead.py compares `raytower tune` (one trial) with `raytower train`. This script measures
the part of that gap no trainable can remove: a local Ray started the way raytower starts it
(dashboard on, on 127.0.0.1, token auth), a Tuner running one function trial that imports nothing
and reports once, and the shutdown. Each phase is timed in the driver; repeats run in fresh
processes, so every one pays Ray's cold start as `raytower tune` does.

    python benchmarks/bench_ray_floor.py --repeats 3 --out benchmarks/results/ray_floor.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time


def once(storage: str) -> dict:
    t0 = time.perf_counter()
    import ray
    from ray import tune

    from raytower.tune.search import SearchSettings, _init_ray

    t_import = time.perf_counter()
    _init_ray(SearchSettings())
    t_init = time.perf_counter()

    def noop(config):
        tune.report({"x": 1.0})

    tuner = tune.Tuner(tune.with_resources(noop, {"cpu": 1}), tune_config=tune.TuneConfig(num_samples=1),
                       run_config=tune.RunConfig(storage_path=storage, verbose=0))
    t_tuner = time.perf_counter()
    tuner.fit()
    t_fit = time.perf_counter()
    ray.shutdown()
    t_end = time.perf_counter()
    return {"import_s": t_import - t0, "ray_init_s": t_init - t_import, "tuner_s": t_tuner - t_init,
            "fit_one_noop_trial_s": t_fit - t_tuner, "shutdown_s": t_end - t_fit, "total_s": t_end - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(once(a.child)))
        return
    command = shlex.join([sys.executable, *sys.argv])
    print("command:", command)
    runs = []
    for i in range(a.repeats):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--child", d], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["process_s"] = time.perf_counter() - t0  # interpreter start and exit included
            runs.append(row)
            print(json.dumps({k: round(v, 2) for k, v in row.items()}))
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    print("min over repeats:", json.dumps({k: round(v, 2) for k, v in best.items()}))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"command": command, "cpus": os.cpu_count(), "loadavg_end": os.getloadavg(), "runs": runs,
                       "min": best}, f, indent=2)


if __name__ == "__main__":
    main()
