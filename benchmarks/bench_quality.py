"""Benchmark model quality: test Recall@100 / Recall@10 of `raytower train`-style runs, per arm.

    python benchmarks/bench_quality.py --arms default --seeds 0-2 --epochs 40 \
        --jsonl benchmarks/results/quality_runs.jsonl --out benchmarks/results/quality.json

Each (arm, seed) is one ``raytower.train.run.train(cfg, bundle, out_dir, threads=..., log=...)``
call on the data set (default: the real MovieLens 100K): pretraining (cached per data set),
the curriculum for ``--epochs`` epochs, the best validation epoch's checkpoint, test evaluated
once on it. One JSON line per finished run is appended to ``--jsonl`` as soon as the run ends, so
partial results survive an interruption; a run already in the JSONL (same arm, seed, epochs, data)
is not repeated. ``--summarize`` only reads the JSONL and prints the table.

Arms (every other field is the TrainConfig default):

  default              TrainConfig defaults (gated fusion, head unfrozen at lr x 0.01 in Stage 2)
  concat               fusion=concat
  moe                  fusion=moe
  end_to_end           no curriculum: stage1_max_epochs=1, stage2_min_recall=0, stage2_max_loss=0,
                       unfreeze_depth=item_layers+2 (the whole item tower, embeddings included),
                       lr_ratio=1.0. The loop decides the Stage 2 switch after an epoch, so the item
                       tower is frozen for the FIRST epoch and everything trains at full LR from
                       epoch 2 on.
  seed_failing_recipe  the seed's failing recipe: temp_start=temp_min=0.07, anneal_rate=1.0 (fixed
                       sharp temperature), logQ at full weight 1.0 from epoch 1 (no warm-up, no
                       ramp), everything unfrozen at full LR as in end_to_end, fusion=concat.

References (ml-100k, leave-last-out, the same ranking code): popularity test Recall@100 0.317,
Recall@10 0.086; SASRec+ (benchmarks/sasrec_plus.py) 0.638 / 0.205. One standard error of a
single run's test Recall@100 is ~0.016 (Recall@10 ~0.011): 943 test users.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _stamp import ROOT, relative_command, stamp

DEFAULT_DATA = str(ROOT.parent / "shared" / "data" / "ml-100k")  # beside the checkout, as the tests find it
REFERENCES = {"popularity": (0.317, 0.086), "SASRec+": (0.638, 0.205)}  # results/sasrec_plus_ml-100k.json
SE = {"recall@100": 0.016, "recall@10": 0.011}


def arm_overrides(arm: str, item_layers: int) -> dict:
    everything_unfrozen = {"stage1_max_epochs": 1, "stage2_min_recall": 0.0, "stage2_max_loss": 0.0,
                           "unfreeze_depth": item_layers + 2, "lr_ratio": 1.0}
    arms = {
        "default": {},
        "concat": {"fusion": "concat"},
        "moe": {"fusion": "moe"},
        "end_to_end": everything_unfrozen,
        "seed_failing_recipe": {**everything_unfrozen, "temp_start": 0.07, "anneal_rate": 1.0, "temp_min": 0.07,
                                "logq_warmup_epochs": 0, "logq_max": 1.0, "logq_ramp_epochs": 0,
                                "fusion": "concat"},
    }
    if arm not in arms:
        raise SystemExit(f"unknown arm {arm!r}; choose from {', '.join(arms)}")
    return arms[arm]


ARMS = ("default", "concat", "moe", "end_to_end", "seed_failing_recipe")


def parse_seeds(text: str) -> list[int]:
    """'0,1,2', '0-2' (= 0,1,2) or a single seed '4'."""
    out = []
    for part in text.split(","):
        if "-" in part[1:]:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by an interruption
    return rows


def one_run(arm: str, seed: int, epochs: int, bundle, data: str, threads: int, run_root: Path, device: str) -> dict:
    import torch

    from raytower.train.config import TrainConfig
    from raytower.train.run import train

    base = TrainConfig()
    cfg = base.replace(epochs=epochs, seed=seed, **arm_overrides(arm, base.item_layers))
    out_dir = run_root / f"{arm}-s{seed}-e{epochs}"
    log_path = out_dir.with_suffix(".log")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        def log(msg):
            fh.write(str(msg) + "\n")
            fh.flush()

        try:
            res = train(cfg, bundle, out_dir, device=device, threads=threads, log=log)
            error = None
        except Exception as e:  # a run that breaks is a result too
            res, error = None, f"{type(e).__name__}: {e}"
            log(error)
    wall = time.perf_counter() - t0
    row = {"arm": arm, "seed": seed, "epochs": epochs, "data": data, "threads": threads,
           "torch_threads": torch.get_num_threads(), "wall_s": wall, "run_dir": str(out_dir), "log": str(log_path),
           "overrides": arm_overrides(arm, base.item_layers), "error": error}
    if res is None:
        return row
    hist = res["history"]
    losses = [h["loss"] for h in hist]
    row.update({
        "test_recall@100": res["test"]["recall@100"], "test_recall@10": res["test"]["recall@10"],
        "test_ndcg@10": res["test"].get("ndcg@10"),
        "test_cold_recall@100": res["test"].get("cold/recall@100"),
        "val_recall@100_best": res["val"]["recall@100"], "best_epoch": res["best_epoch"],
        "epochs_run": len(hist), "stage_switch": res["stage_switch"],
        "diverged": any(not math.isfinite(x) for x in losses),
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "loss_random_last": hist[-1]["loss_random"] if hist else None,
        "val_recall@100_per_epoch": [round(h["val/recall@100"], 4) for h in hist],
        "epoch_time_s_median": statistics.median(h["epoch_time_s"] for h in hist) if hist else None,
        "epoch_time_s_min": min(h["epoch_time_s"] for h in hist) if hist else None,
        "gate_mean_last": hist[-1].get("gate_mean") if hist else None,
        "effective_rank_last": hist[-1].get("effective_rank") if hist else None,
        "popularity_test": res["popularity"]["test"]["recall@100"],
    })
    return row


def _ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def summarize(rows: list[dict], epochs: int | None = None) -> tuple[list[dict], str]:
    arms: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if epochs is not None and r["epochs"] != epochs:
            continue
        arms.setdefault((r["arm"], r["epochs"]), []).append(r)
    order = {a: i for i, a in enumerate(ARMS)}
    table = []
    for (arm, ep), rs in sorted(arms.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 99))):
        ok = [r for r in rs if r.get("error") is None and "test_recall@100" in r]
        r100 = [r["test_recall@100"] for r in ok]
        r10 = [r["test_recall@10"] for r in ok]
        table.append({
            "arm": arm, "epochs": ep, "seeds": sorted(r["seed"] for r in ok), "n": len(ok),
            "errors": [r["error"] for r in rs if r.get("error")],
            "test_recall@100_mean": statistics.mean(r100) if r100 else None,
            "test_recall@100_sd": statistics.stdev(r100) if len(r100) > 1 else None,
            "test_recall@10_mean": statistics.mean(r10) if r10 else None,
            "test_recall@10_sd": statistics.stdev(r10) if len(r10) > 1 else None,
            "best_epochs": [r["best_epoch"] for r in sorted(ok, key=lambda r: r["seed"])],
            "val_recall@100_best": [round(r["val_recall@100_best"], 4) for r in sorted(ok, key=lambda r: r["seed"])],
            "diverged": [r["seed"] for r in ok if r["diverged"]],
            "epoch_time_s_median": statistics.median(r["epoch_time_s_median"] for r in ok) if ok else None,
            "_r100": r100, "_r10": r10,
        })
    lines = ["| arm | epochs | seeds | test R@100 (mean ± sd) | test R@10 (mean ± sd) | best epoch(s) | "
             "ΔR@100 vs pop | ΔR@100 vs SASRec+ | median epoch s* |",
             "|---|---|---|---|---|---|---|---|---|"]
    pop, sas = REFERENCES["popularity"][0], REFERENCES["SASRec+"][0]
    for t in table:
        m = t["test_recall@100_mean"]
        div = f" (DIVERGED seeds {t['diverged']})" if t["diverged"] else ""
        d_pop = "-" if m is None else format(m - pop, "+.3f")
        d_sas = "-" if m is None else format(m - sas, "+.3f")
        et = "-" if t["epoch_time_s_median"] is None else format(t["epoch_time_s_median"], ".1f")
        seeds = ",".join(map(str, t["seeds"])) or "-"
        best = ",".join(map(str, t["best_epochs"])) or "-"
        lines.append(f"| {t['arm']}{div} | {t['epochs']} | {seeds} | {_ms(t['_r100'])} | {_ms(t['_r10'])} | "
                     f"{best} | {d_pop} | {d_sas} | {et} |")
    for name, (a, b) in REFERENCES.items():
        lines.append(f"| _{name} (reference)_ | | | {a:.3f} | {b:.3f} | | | | |")
    for t in table:
        t.pop("_r100"), t.pop("_r10")
    return table, "\n".join(lines)


def write_json(out: Path, doc: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # a reader never sees half a file
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="data source for load_bundle (default %(default)s)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arms (default: all: {','.join(ARMS)})")
    p.add_argument("--seeds", default="0,1,2", help="'0,1,2', '0-2' or one seed '4' (default %(default)s)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jsonl", default="benchmarks/results/quality_runs.jsonl",
                   help="one JSON line per finished run, appended as runs end (default %(default)s)")
    p.add_argument("--run-root", default="/tmp/raytower-bench-quality", help="run directories and logs")
    p.add_argument("--out", default=None, help="JSON summary of every run in the JSONL at these epochs")
    p.add_argument("--summarize", action="store_true", help="only summarize the JSONL; train nothing")
    p.add_argument("--all-epochs", action="store_true", help="summarize runs of every epoch count, not just --epochs")
    a = p.parse_args(argv)
    command = relative_command()
    jsonl = Path(a.jsonl)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    arms = [x for x in a.arms.split(",") if x]
    for arm in arms:
        arm_overrides(arm, 3)
    seeds = parse_seeds(a.seeds)
    if not a.summarize:
        import torch

        from raytower.data import load_bundle

        torch.set_num_threads(a.threads)
        bundle = load_bundle(a.data)
        done = {(r["arm"], r["seed"], r["epochs"], r["data"]) for r in read_jsonl(jsonl) if r.get("error") is None}
        for seed in seeds:  # seed-major: every arm gets its first seed before any arm its second
            for arm in arms:
                if (arm, seed, a.epochs, a.data) in done:
                    print(f"skip {arm} seed {seed} (in {jsonl})", flush=True)
                    continue
                print(f"run {arm} seed {seed} epochs {a.epochs} ...", flush=True)
                row = one_run(arm, seed, a.epochs, bundle, a.data, a.threads, Path(a.run_root), a.device)
                row.update(stamp())
                row["host"] = {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "python": platform.python_version()}
                with open(jsonl, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"  done in {row['wall_s']:.0f}s: " + (
                    f"test R@100 {row['test_recall@100']:.4f} R@10 {row['test_recall@10']:.4f} "
                    f"best epoch {row['best_epoch']}/{row['epochs_run']}" if row.get("error") is None
                    else f"ERROR {row['error']}"), flush=True)
    rows = [r for r in read_jsonl(jsonl) if r["data"] == a.data]
    table, md = summarize(rows, None if a.all_epochs else a.epochs)
    print(md)
    print(f"\ncommand: {command}")
    if a.out:
        write_json(Path(a.out), {**stamp(), "data": a.data, "references": REFERENCES,
                                 "standard_error_single_run": SE, "summary": table,
                                 "runs": [r for r in rows if a.all_epochs or r["epochs"] == a.epochs]})
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
