"""Benchmark data preparation at scale: wall time and peak memory of each phase.

    python benchmarks/bench_prepare.py --out bench_prepare.json                      # 1M x 100k, ~50M
    python benchmarks/bench_prepare.py --users 10000 --items 2000 --out smoke.json    # a smoke run

Phases, each in a fresh Python process so that their memory peaks are measured apart
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of that process, interpreter and imports included):

  generate     raytower.data.generate(n_users, n_items, mean_len, seed): the in-memory
               RawData; then (``--order``) reordered, untimed, and written to Parquet (log.parquet,
               items.parquet, users.parquet; the write timed apart)
  prepare      prepare() on the RawData in memory (the process first reads the Parquet files back
               into the same RawData, untimed; its memory is in the peak, as it would be after
               generating, and is reported as "baseline")
  load_bundle  end to end: load_bundle("log.parquet:items=items.parquet,users=users.parquet") into an
               empty cache: hashing, reading and checking the files, prepare, writing, loading
  cached       the same load_bundle call again: a cache hit (hash the files, load the bundle)

The goal (the issue): 1M users x 100k items x ~50M interactions prepared in under 10 minutes and
8 GiB on 2 cores. Results are printed as a table and written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _stamp import stamp

GOAL_S = 600
GOAL_GIB = 8.0
PHASES = ("generate", "prepare", "load_bundle", "cached")


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _spec(work: Path) -> str:
    return f"{work / 'log.parquet'}:items={work / 'items.parquet'},users={work / 'users.parquet'}"


# --------------------------------------------------------------------------- phases (child side)


def phase_generate(a) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raytower.data import generate

    t0 = time.perf_counter()
    raw = generate(n_users=a.users, n_items=a.items, mean_len=a.mean_len, seed=a.seed)
    gen_s = time.perf_counter() - t0
    gen_peak = _peak_gib()
    inter = raw.interactions
    if a.order != "generated":  # real logs come in time order (or none), not grouped by user
        import numpy as np

        rng = np.random.default_rng(a.seed)
        perm = (np.argsort(inter["timestamp"].to_numpy(), kind="stable") if a.order == "time"
                else rng.permutation(len(inter)))
        inter = inter.take(perm).reset_index(drop=True)
        raw.interactions = inter
        del perm
    t0 = time.perf_counter()
    for name, df in (("log", inter), ("items", raw.items), ("users", raw.users)):
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), a.work / f"{name}.parquet")
    write_s = time.perf_counter() - t0
    return {
        "wall_s": gen_s, "peak_gib": gen_peak, "write_parquet_s": write_s,
        "peak_gib_with_write": _peak_gib(), "rows": len(raw.interactions),
        "parquet_mib": sum((a.work / f"{n}.parquet").stat().st_size for n in ("log", "items", "users")) / 2**20,
    }


def phase_prepare(a) -> dict:
    import pyarrow.parquet as pq

    from raytower.data import PrepareOptions, RawData, prepare

    raw = RawData(
        name="synthetic",
        interactions=pq.read_table(a.work / "log.parquet").to_pandas(),
        items=pq.read_table(a.work / "items.parquet").to_pandas(),
        users=pq.read_table(a.work / "users.parquet").to_pandas(),
    )
    baseline = _peak_gib()
    t0 = time.perf_counter()
    m = prepare(raw, PrepareOptions(), "bench", a.work / "bundle-direct")
    return {"wall_s": time.perf_counter() - t0, "peak_gib": _peak_gib(), "baseline_gib": baseline,
            **{k: m[k] for k in ("n_users", "n_items", "n_interactions", "n_train", "n_val", "n_test")}}


def phase_load(a, expect_hit: bool) -> dict:
    from raytower.data import load_bundle

    t0 = time.perf_counter()
    b = load_bundle(_spec(a.work))
    wall = time.perf_counter() - t0
    if b.cache_hit != expect_hit:
        raise SystemExit(f"expected cache_hit={expect_hit}, got {b.cache_hit}")
    bundle_mib = sum(p.stat().st_size for p in b.path.iterdir()) / 2**20
    return {"wall_s": wall, "peak_gib": _peak_gib(), "cache_hit": b.cache_hit,
            "n_interactions": int(b.manifest["n_interactions"]), "bundle_mib": bundle_mib}


def run_phase(a) -> None:
    os.environ["RAYTOWER_CACHE"] = str(a.work / "cache")
    fn = {"generate": phase_generate, "prepare": phase_prepare,
          "load_bundle": lambda a: phase_load(a, False), "cached": lambda a: phase_load(a, True)}[a.phase]
    print("RESULT " + json.dumps(fn(a)), flush=True)


# --------------------------------------------------------------------------- driver (parent side)


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
        info["mem_gib"] = round(int(mem) / 2**20, 1)
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    import numpy, pandas, pyarrow  # noqa: E401

    info.update(numpy=numpy.__version__, pandas=pandas.__version__, pyarrow=pyarrow.__version__)
    return info


def child(a, phase: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--work", str(a.work), "--users", str(a.users),
           "--items", str(a.items), "--mean-len", str(a.mean_len), "--seed", str(a.seed), "--order", a.order]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed (exit {proc.returncode}):\n{proc.stdout}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]) | {"process_s": elapsed}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--mean-len", type=float, default=57.0, help="generate()'s mean_len (57 -> ~50M rows at 1M users)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--order", choices=["generated", "time", "random"], default="generated",
                   help="row order of the Parquet log: as generated (grouped by user), by timestamp "
                        "(an event log), or shuffled (default %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # internal: run one phase
    a = p.parse_args(argv)
    if a.phase:
        run_phase(a)
        return 0

    tmp = a.work is None
    a.work = Path(a.work or tempfile.mkdtemp(prefix="raytower-bench-")).resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    for old in ("cache", "bundle-direct"):  # a reused --work must not turn the first load into a hit
        shutil.rmtree(a.work / old, ignore_errors=True)
    results = {**stamp(), "params": {"users": a.users, "items": a.items, "mean_len": a.mean_len, "seed": a.seed,
                          "order": a.order},
               "machine": machine(), "goal": {"wall_s": GOAL_S, "peak_gib": GOAL_GIB}, "phases": {}}
    try:
        for phase in PHASES:
            print(f"running {phase} ...", file=sys.stderr, flush=True)
            results["phases"][phase] = child(a, phase)
            r = results["phases"][phase]
            print(f"  {phase}: {r['wall_s']:.1f} s, peak {r['peak_gib']:.2f} GiB", file=sys.stderr, flush=True)
    finally:
        if tmp and not a.keep:
            shutil.rmtree(a.work, ignore_errors=True)
    try:  # the machine may be shared: say how busy it was
        results["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    e2e = results["phases"]["load_bundle"]
    results["meets_goal"] = e2e["wall_s"] < GOAL_S and e2e["peak_gib"] < GOAL_GIB

    ph = results["phases"]
    rows = [
        ("generate (RawData in memory)", ph["generate"]["wall_s"], ph["generate"]["peak_gib"]),
        ("write Parquet (log, items, users)", ph["generate"]["write_parquet_s"], ph["generate"]["peak_gib_with_write"]),
        ("prepare() on the in-memory RawData", ph["prepare"]["wall_s"], ph["prepare"]["peak_gib"]),
        ("load_bundle from Parquet (end to end)", e2e["wall_s"], e2e["peak_gib"]),
        ("load_bundle again (cache hit)", ph["cached"]["wall_s"], ph["cached"]["peak_gib"]),
    ]
    print(f"{a.users:,} users x {a.items:,} items, {ph['generate']['rows']:,} interactions "
          f"({ph['prepare']['n_interactions']:,} after filtering), rows in {a.order} order; "
          f"{results['machine'].get('cpus')} CPUs")
    print(f"{'phase':<40} {'wall s':>8} {'peak RSS GiB':>13}")
    for name, s, g in rows:
        print(f"{name:<40} {s:>8.1f} {g:>13.2f}")
    print(f"(prepare's process held {ph['prepare']['baseline_gib']:.2f} GiB before prepare started: the RawData)")
    print(f"goal: end to end < {GOAL_S} s and < {GOAL_GIB} GiB -> {'met' if results['meets_goal'] else 'NOT met'}")
    m = results["machine"]
    if "loadavg_at_start" in m and "loadavg_at_end" in m:
        print(f"load average (1/5/15 min) at start {'/'.join(m['loadavg_at_start'])}, "
              f"at end {'/'.join(m['loadavg_at_end'])}: above {m.get('cpus')} the timings are inflated")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_name(a.out.name + ".tmp")  # a reader never sees half a file
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(a.out)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
