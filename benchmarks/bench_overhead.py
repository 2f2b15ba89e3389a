"""Benchmark the search's overhead: one trial through Ray Tune against `raytower train`, same config.

    python benchmarks/bench_overhead.py --epochs 9,20 --out benchmarks/results/overhead.json

The goal (the issue): one trial through Tune with the ``function`` executor takes at most 1.15x the
wall time of the same config through ``raytower train`` at 20 epochs, same machine, same run.

For each E in ``--epochs`` and each repeat, three commands run as subprocesses, in this order, on
the same data and the same config (a small fixed model, ``--data`` a moderate synthetic set):

  train     raytower train --data D --config cfg.yaml --epochs E --seed 0 --threads T --out ...
  function  raytower tune --data D --space space.yaml --num-samples 1 --max-epochs E --scheduler none
            --executor function --cpus-per-trial T --out ...
  train-ex  the same with --executor train (a Ray Train TorchTrainer inside the trial)

``space.yaml`` fixes every field of ``cfg.yaml`` and searches only ``anneal_rate`` in [0.9, 0.91]
(Optuna needs one knob) with ``start_from: anneal_rate 0.9``, so the one trial runs exactly
``cfg.yaml``; the script checks the trial's params against it. ``--cpus-per-trial T`` gives the
trial T torch threads (a trial's threads default to its CPUs), the same as ``--threads T``.
Pretraining is computed and cached before any timed command (a warm-up ``raytower train`` of one
epoch), so both sides only load it: it is excluded from both.

Reported per command: whole-command wall time (process start to exit: imports, data, Ray start
and shutdown, the final test evaluation, everything), the sum of the per-epoch times inside
(``epoch_time_s`` of the loop: train + validation; from trials.parquet ``wall_time_s`` for tune,
from metrics.json for train), and for tune the split of the rest from the trial's result.json
timestamps: start-up (command start to the trial's first epoch starting: imports, bundle, Ray
start, trial scheduling, the trial's Curriculum), in-trial overhead (trial span minus the epochs:
per-epoch reporting and checkpointing), tear-down (last report to exit: trial end, Ray shutdown,
export with the test evaluation). Ratios are against ``train`` of the same repeat; with several
repeats the minimum of each command is used as well.

--ray-floor: the part of that gap no trainable can remove, the least a one-trial Tune search can
cost here: a local Ray started the way raytower starts it (dashboard on, on 127.0.0.1, token auth),
a Tuner running one function trial that imports nothing and reports once, and the shutdown. Each
phase is timed in the driver; repeats (default 3) run in fresh processes, so every one pays Ray's
cold start as `raytower tune` does.

    python benchmarks/bench_overhead.py --ray-floor --repeats 3 --out benchmarks/results/ray_floor.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _stamp import relative_command, stamp

GOAL_RATIO = 1.15
DEFAULT_DATA = "synthetic:n_users=2000,n_items=1000"  # ~1 s an epoch on a quiet 2-core machine
FIXED = {"dim": 32, "item_layers": 2, "max_len": 50, "batch_size": 128, "stage1_max_epochs": 2,
         "seed": 0, "temp_start": 0.5, "temp_min": 0.05, "logq_warmup_epochs": 1, "logq_max": 0.05,
         "logq_ramp_epochs": 2, "unfreeze_depth": 1, "lr_ratio": 0.01, "fusion": "gated"}
ANNEAL = 0.9
COMMANDS = ("train", "function", "train-ex")


def raytower_bin() -> str:
    exe = Path(sys.executable).with_name("raytower")
    return str(exe) if exe.exists() else "raytower"


def run_cmd(argv: list[str], log_path: Path, env: dict | None = None) -> dict:
    t_wall0 = time.time()
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    wall = time.perf_counter() - t0
    return {"argv": argv, "rc": proc.returncode, "wall_s": wall, "start_time": t_wall0, "end_time": t_wall0 + wall,
            "log": str(log_path)}


def children_cpu() -> float:
    r = os.times()
    return r.children_user + r.children_system


def parse_train(out_dir: Path, res: dict) -> None:
    m = json.loads((out_dir / "metrics.json").read_text())
    h = m["history"]
    res["epochs_run"] = len(h)
    res["epochs_sum_s"] = sum(r["epoch_time_s"] for r in h)
    res["epoch_s_median"] = statistics.median(r["epoch_time_s"] for r in h)
    res["epoch_s_min"] = min(r["epoch_time_s"] for r in h)
    res["train_fn_wall_s"] = m["wall_time_s"]  # train(): pretraining load .. test, inside the process
    res["outside_epochs_s"] = res["wall_s"] - res["epochs_sum_s"]
    res["val_recall@100_best"] = m["val"]["recall@100"]
    res["params"] = m["config"]


def parse_tune(out_dir: Path, res: dict) -> None:
    import pandas as pd

    df = pd.read_parquet(out_dir / "trials.parquet")
    row = df.iloc[0]
    res["epochs_run"] = int(row["epochs"])
    res["stop_reason"] = str(row["stop_reason"])
    res["epochs_sum_s"] = float(row["wall_time_s"])  # sum of epoch_time_s inside the trial
    res["trial_time_total_s"] = float(row["trial_time_s"])  # Tune's time_total_s
    res["val_recall@100_best"] = float(row["best/val/recall@100"])
    trial_dir = out_dir / "tune" / str(row["trial_dir"])
    res["params"] = json.loads((trial_dir / "params.json").read_text())
    reports = [json.loads(x) for x in (trial_dir / "result.json").read_text().splitlines() if x.strip()]
    reports = [r for r in reports if "epoch" in r]
    first, last = reports[0], reports[-1]
    res["epoch_s_median"] = statistics.median(r["epoch_time_s"] for r in reports)
    res["epoch_s_min"] = min(r["epoch_time_s"] for r in reports)
    # first report's timestamp minus its epoch time: when the first epoch started
    first_epoch_start = first["timestamp"] - first["epoch_time_s"]
    trial_start = first["timestamp"] - first.get("time_this_iter_s", first["epoch_time_s"])
    res["startup_s"] = first_epoch_start - res["start_time"]  # command start -> first epoch starts
    res["trial_setup_s"] = first_epoch_start - trial_start  # of which: the trial's own set-up (Curriculum)
    res["in_trial_span_s"] = last["timestamp"] - first_epoch_start
    res["in_trial_overhead_s"] = res["in_trial_span_s"] - res["epochs_sum_s"]  # reports, checkpoints
    res["teardown_s"] = res["end_time"] - last["timestamp"]  # trial end, Ray shutdown, export + test
    res["outside_epochs_s"] = res["wall_s"] - res["epochs_sum_s"]


def floor_once(storage: str) -> dict:
    """One cold Ray start, one no-op function trial through a Tuner, and the shutdown, each timed."""
    t0 = time.perf_counter()
    import ray
    from ray import tune

    from raytower.tune.search import SearchSettings, init_ray

    t_import = time.perf_counter()
    init_ray(SearchSettings())
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


def ray_floor(repeats: int, out: str | None) -> int:
    print("command:", relative_command())
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--ray-floor-child", d], capture_output=True, text=True,
                                  check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["process_s"] = time.perf_counter() - t0  # interpreter start and exit included
            runs.append(row)
            print(json.dumps({k: round(v, 2) for k, v in row.items()}))
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    print("min over repeats:", json.dumps({k: round(v, 2) for k, v in best.items()}))
    if out:
        write_json(Path(out), {**stamp(), "cpus": os.cpu_count(), "loadavg_end": os.getloadavg(), "runs": runs,
                               "min": best})
    return 0


def write_json(out: Path, doc: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # a reader never sees half a file
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="data source (default %(default)s)")
    p.add_argument("--model", choices=["small", "default"], default="small",
                   help="small: a fixed small config where Ray's fixed cost weighs most; default: the model of "
                        "search_spaces/default.yaml (its fixed fields) at the seed's prescription, its first "
                        "start point (default %(default)s)")
    p.add_argument("--epochs", default="9,20", help="comma-separated epoch counts E (default %(default)s)")
    p.add_argument("--repeats", type=int, default=None,
                   help="repeats of every (E, command) (default 1; with --ray-floor 3)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads of train and of the trial (--cpus-per-trial) (default %(default)s)")
    p.add_argument("--commands", default=",".join(COMMANDS), help=f"subset of {','.join(COMMANDS)}")
    p.add_argument("--ray-worker-niceness", type=int, default=None,
                   help="set RAY_worker_niceness for the tune commands (Ray's default is 15: its workers, the "
                        "trial included, run niced and lose the CPU to any other work on a shared machine, "
                        "while `raytower train` runs at the shell's priority); default: Ray's default")
    p.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--ray-floor", action="store_true",
                   help="measure only the floor: a local Ray started as a search starts it, one no-op trial "
                        "through a Tuner, the shutdown; each repeat in a fresh process")
    p.add_argument("--ray-floor-child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.ray_floor_child:
        print(json.dumps(floor_once(a.ray_floor_child)))
        return 0
    if a.ray_floor:
        return ray_floor(a.repeats or 3, a.out)
    a.repeats = a.repeats or 1
    command = relative_command()
    epochs_list = [int(x) for x in a.epochs.split(",") if x]
    commands = [c for c in a.commands.split(",") if c]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="raytower-bench-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    rt = raytower_bin()

    import yaml

    from raytower.train.config import TrainConfig
    from raytower.tune.search import default_grace_period
    from raytower.tune.space import load_space

    fixed = FIXED
    if a.model == "default":
        default = yaml.safe_load(Path("search_spaces/default.yaml").read_text())
        prescription = {k: v for k, v in default["start_from"][0].items() if k != "anneal_rate"}
        assert default["start_from"][0]["anneal_rate"] == ANNEAL
        fixed = {**default["fixed"], **prescription, "seed": 0}
    cfg = TrainConfig.from_dict({**fixed, "anneal_rate": ANNEAL})
    cfg_path = work / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({**fixed, "anneal_rate": ANNEAL}))
    space_path = work / "space.yaml"
    space_path.write_text(yaml.safe_dump({
        "description": "bench_overhead: one fixed config; anneal_rate searched over a tiny range for Optuna's sake",
        "fixed": fixed,
        "search": {"anneal_rate": {"distribution": "uniform", "low": ANNEAL, "high": ANNEAL + 0.01}},
        "start_from": [{"anneal_rate": ANNEAL}],
    }, sort_keys=False))
    grace_default = default_grace_period(load_space("search_spaces/default.yaml"), 30)
    grace_bench = default_grace_period(load_space(str(space_path)), max(epochs_list))

    results: dict = {**stamp(), "goal_ratio_function_over_train": GOAL_RATIO, "data": a.data, "model": a.model,
                     "threads": a.threads, "config": cfg.to_dict(), "ray_worker_niceness": a.ray_worker_niceness,
                     "grace_period_default_yaml_epochs": grace_default, "grace_period_bench_space_epochs": grace_bench,
                     "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                              "loadavg_start": os.getloadavg()},
                     "runs": []}
    print(f"grace period: {grace_default} epochs for search_spaces/default.yaml (max-epochs 30), "
          f"{grace_bench} for this benchmark's space", flush=True)

    # Warm-up, untimed: prepare the bundle and pretrain (cached) for this config.
    print("warm-up (untimed): prepare the data and pretrain once ...", flush=True)
    warm = run_cmd([rt, "train", "--data", a.data, "--config", str(cfg_path), "--epochs", "1", "--threads",
                    str(a.threads), "--out", str(work / "warmup")], work / "warmup.log")
    if warm["rc"] != 0:
        print(f"warm-up failed (rc {warm['rc']}); see {warm['log']}", file=sys.stderr)
        return 1

    def argv_for(kind: str, e: int, out: Path) -> list[str]:
        if kind == "train":
            return [rt, "train", "--data", a.data, "--config", str(cfg_path), "--epochs", str(e), "--seed", "0",
                    "--threads", str(a.threads), "--out", str(out)]
        return [rt, "tune", "--data", a.data, "--space", str(space_path), "--num-samples", "1", "--max-epochs",
                str(e), "--scheduler", "none", "--executor", "function" if kind == "function" else "train",
                "--cpus-per-trial", str(a.threads), "--out", str(out)]

    for e in epochs_list:
        for rep in range(a.repeats):
            for kind in commands:
                out = work / f"{kind}-e{e}-r{rep}"
                if out.exists():
                    shutil.rmtree(out)
                print(f"E={e} repeat {rep}: {kind} ...", flush=True)
                cpu0 = children_cpu()
                env = ({"RAY_worker_niceness": str(a.ray_worker_niceness)}
                       if kind != "train" and a.ray_worker_niceness is not None else None)
                res = run_cmd(argv_for(kind, e, out), work / f"{kind}-e{e}-r{rep}.log", env)
                res["env"] = env
                res["cpu_s"] = children_cpu() - cpu0  # the command's own process tree, as far as it is waited for
                res.update({"kind": kind, "epochs": e, "repeat": rep, "loadavg_after": os.getloadavg()})
                if res["rc"] == 0:
                    try:
                        (parse_train if kind == "train" else parse_tune)(out, res)
                    except Exception as ex:  # report what is there
                        res["parse_error"] = f"{type(ex).__name__}: {ex}"
                    if "params" in res:
                        want = {k: v for k, v in cfg.to_dict().items() if k not in ("epochs",)}
                        got = TrainConfig.from_dict({k: v for k, v in res["params"].items()
                                                     if k in want or k == "epochs"}).to_dict()
                        res["same_config"] = all(got[k] == v for k, v in want.items())
                        del res["params"]
                else:
                    res["error_tail"] = Path(res["log"]).read_text()[-2000:]
                print(f"  rc {res['rc']}, wall {res['wall_s']:.1f}s, epochs {res.get('epochs_run')}, "
                      f"sum of epochs {res.get('epochs_sum_s', float('nan')):.1f}s", flush=True)
                results["runs"].append(res)

    # --- summary -------------------------------------------------------------------------------------
    summary = []
    for e in epochs_list:
        by_kind = {k: [r for r in results["runs"] if r["epochs"] == e and r["kind"] == k and r["rc"] == 0]
                   for k in commands}
        base = by_kind.get("train") or []
        base_min = min((r["wall_s"] for r in base), default=None)
        for k, rs in by_kind.items():
            if not rs:
                summary.append({"epochs": e, "kind": k, "n": 0})
                continue
            best = min(rs, key=lambda r: r["wall_s"])
            ratios = []
            for r in rs:
                b = next((x for x in base if x["repeat"] == r["repeat"]), None)
                if b:
                    ratios.append(r["wall_s"] / b["wall_s"])
            s = {"epochs": e, "kind": k, "n": len(rs), "wall_s_min": best["wall_s"],
                 "wall_s_median": statistics.median(r["wall_s"] for r in rs),
                 "epochs_sum_s": best.get("epochs_sum_s"), "per_epoch_s": (best.get("epochs_sum_s") or 0) / max(1, best.get("epochs_run") or 1),
                 "epochs_run": best.get("epochs_run"), "outside_epochs_s": best.get("outside_epochs_s"),
                 "startup_s": best.get("startup_s"), "trial_setup_s": best.get("trial_setup_s"),
                 "in_trial_overhead_s": best.get("in_trial_overhead_s"), "teardown_s": best.get("teardown_s"),
                 "ratio_same_repeat": ratios, "ratio_of_mins": None if base_min is None else best["wall_s"] / base_min,
                 "ratio_epochs_only": (best.get("epochs_sum_s") / min(r["epochs_sum_s"] for r in base))
                 if base and best.get("epochs_sum_s") else None,
                 "same_config": all(r.get("same_config", False) for r in rs),
                 "stop_reason": best.get("stop_reason")}
            if k == "function":
                s["meets_goal"] = s["ratio_of_mins"] is not None and s["ratio_of_mins"] <= GOAL_RATIO
            summary.append(s)
    results["summary"] = summary
    results["host"]["loadavg_end"] = os.getloadavg()

    def f(v, fmt=".1f"):
        return "-" if v is None else format(v, fmt)

    print()
    print(f"one trial vs raytower train, data {a.data}, {a.threads} threads; pretraining cached beforehand "
          f"and excluded from both sides (load average {results['host']['loadavg_start'][0]:.1f} at start, "
          f"{results['host']['loadavg_end'][0]:.1f} at end on {os.cpu_count()} CPUs: shared machine, timings noisy)")
    hdr = (f"{'E':>3} {'command':<9} {'n':>2} {'wall s':>7} {'ratio':>6} {'epochs s':>8} {'s/epoch':>7} "
           f"{'outside':>7} {'startup':>7} {'trial set-up':>12} {'in-trial ovh':>12} {'teardown':>8} {'ran':>4}")
    print(hdr)
    for s in summary:
        if not s["n"]:
            print(f"{s['epochs']:>3} {s['kind']:<9}  0  (failed; see the JSON)")
            continue
        print(f"{s['epochs']:>3} {s['kind']:<9} {s['n']:>2} {s['wall_s_min']:>7.1f} {f(s['ratio_of_mins'], '.2f'):>6} "
              f"{f(s['epochs_sum_s']):>8} {f(s['per_epoch_s'], '.2f'):>7} {f(s['outside_epochs_s']):>7} "
              f"{f(s['startup_s']):>7} {f(s['trial_setup_s']):>12} {f(s['in_trial_overhead_s']):>12} "
              f"{f(s['teardown_s']):>8} {s['epochs_run']!s:>4}")
    print(f"goal: function / train <= {GOAL_RATIO} at 20 epochs; "
          f"ASHA grace period {grace_default} epochs for default.yaml")
    print(f"\ncommand: {command}")
    if a.out:
        write_json(Path(a.out), results)
        print(f"wrote {a.out}")
    if not a.keep and not a.work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
