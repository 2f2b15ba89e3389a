"""When does the curriculum matter? Issue 17's failure study on the 1M-interaction synthetic set.

Phase ``sweep``: the seed's recipe (``configs/seed_recipe.yaml``: temperature 0.07, logQ 1.0 from the
first step, everything unfrozen at one LR, concat fusion, last-item targets, batches of rows), one
factor varied at a time, seed 0:

    python benchmarks/study_curriculum.py sweep --epochs 8 --threads 1

Phase ``compare``: at one point of the sweep, three arms over seeds 0-2: the seed's recipe, raytower's
default curriculum, and a searched configuration (a best_config.json), each with the point's factor:

    python benchmarks/study_curriculum.py compare --point rows4096 --searched runs/study-search/best_config.json \
        --epochs 8 --seeds 0 1 2 --threads 1

Each run is one ``raytower train`` command (written to the JSONL with its result the moment it ends,
so an interrupted study loses nothing and a rerun skips what is there). A run *fails the seed's way*
when, for two epochs or more, its training loss is at or above its random-guess loss ("chance") or
its validation Recall@100 is within 25% of popularity's ("at popularity": it has learnt no more than
the counts), or when the item vectors' effective rank falls below a quarter of the dimension
("collapsed", the search's stop rule). ``summarize`` prints the tables and draws the plot of the
README; ``refresh`` reads every run's figures again from its metrics.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _stamp import ROOT, relative_command, stamp

from raytower.tune.settings import SearchSettings

DATA = "synthetic:n_users=25000,n_items=10000"  # issue 8's 1M-interaction set
RECIPE = ROOT / "configs" / "seed_recipe.yaml"
# The conditions a team trains under (its data pipeline's targets and batch rows), held fixed in every
# arm of a comparison; the rest (temperature, logQ, what is frozen when, fusion, the LR) is the cure
# each arm brings, except at an LR point, where the LR is the condition.
CONDITIONS = ("targets", "batch_size")
COLLAPSE_FRAC = SearchSettings.collapse_frac  # the search's --collapse-frac: a quarter of dim
AT_POPULARITY = 1.25  # validation Recall@100 within 25% of popularity's: the model has not left it

# One factor at a time from the seed's recipe (issue 17 part 3): batch rows, the LR of the unfrozen
# towers (the recipe trains everything at one LR), the starting temperature (fixed: no anneal in the
# recipe), and the training targets.
SWEEP = {
    "recipe": {},
    "rows1024": {"batch_size": 1024},
    "rows4096": {"batch_size": 4096},
    "lr1e-4": {"lr": 1e-4},
    "lr1e-2": {"lr": 1e-2},
    "temp0.02": {"temp_start": 0.02, "temp_min": 0.02},
    "temp0.3": {"temp_start": 0.3, "temp_min": 0.3},
    "targets_all": {"targets": "all"},
}


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by an interruption
    return rows


KEPT = ("epoch", "stage", "tau", "lambda", "loss", "loss_random", "ln_candidates", "val/recall@10",
        "val/recall@100", "effective_rank", "epoch_time_s")


def failure_signs(history: list[dict], dim: int, popularity_val: float) -> dict:
    """The seed's symptoms in one run's per-epoch history. raytower's random-guess loss is that of
    all-equal scores under the run's logQ term; the seed compared with ln(#candidates), the loss of
    all-equal logits (no correction), which a logQ of 1.0 puts below raytower's. Both are kept."""
    ratio = [h["loss"] / h["loss_random"] if h["loss_random"] else math.nan for h in history]
    naive = [h["loss"] / h["ln_candidates"] if h["ln_candidates"] else math.nan for h in history]
    erank = [h.get("effective_rank", math.nan) for h in history]
    chance = [h["epoch"] for h, r in zip(history, ratio) if not r < 1.0]  # NaN counts
    over_uniform = [h["epoch"] for h, r in zip(history, naive) if not r < 1.0]
    collapsed = [h["epoch"] for h, e in zip(history, erank) if e < COLLAPSE_FRAC * dim]
    at_popularity = [h["epoch"] for h in history if not h["val/recall@100"] > AT_POPULARITY * popularity_val]
    return {"loss_over_random": [round(r, 4) for r in ratio], "loss_over_ln_candidates": [round(r, 4) for r in naive],
            "effective_rank": [round(e, 1) for e in erank], "chance_epochs": chance, "over_uniform_epochs": over_uniform,
            "at_popularity_epochs": at_popularity, "collapsed_epochs": collapsed,
            "failed": bool(len(chance) >= 2 or len(at_popularity) >= 2 or collapsed)}


def figures(res: dict) -> dict:
    """What the study keeps of a run's metrics.json."""
    hist = res["history"]
    return {
        "best_epoch": res["best_epoch"], "val_recall@100": res["val"]["recall@100"],
        "test_recall@100": res["test"]["recall@100"], "test_recall@10": res["test"]["recall@10"],
        "stage_switch": res["stage_switch"], "popularity_val_recall@100": res["popularity"]["val"]["recall@100"],
        "popularity_test_recall@100": res["popularity"]["test"]["recall@100"],
        "history": [{k: (round(h[k], 5) if isinstance(h[k], float) else h[k]) for k in KEPT if k in h} for h in hist],
        **failure_signs(hist, res["config"]["dim"], res["popularity"]["val"]["recall@100"]),
    }


def conditions_at(point: str, recipe: dict) -> dict:
    at = {**recipe, **SWEEP[point]}
    return {k: at[k] for k in CONDITIONS} | ({"lr": at["lr"]} if "lr" in SWEEP[point] else {})


def run_one(name: str, base: dict, overrides: dict, seed: int, epochs: int, args) -> dict:
    """One ``raytower train`` on ``base`` + ``overrides``; its command, figures and failure signs."""
    root = Path(args.run_root)
    root.mkdir(parents=True, exist_ok=True)
    cfg_path = root / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump({**base, **overrides}, sort_keys=False))
    out = root / f"{name}-s{seed}-e{epochs}"
    cmd = [sys.executable, "-m", "raytower.cli", "train", "--config", str(cfg_path), "--data", args.data,
           "--epochs", str(epochs), "--seed", str(seed), "--threads", str(args.threads), "--force", "--out", str(out)]
    t0 = time.perf_counter()
    with open(root / f"{out.name}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    row = {"name": name, "seed": seed, "epochs": epochs, "data": args.data, "overrides": overrides,
           "command": relative_command(cmd[1:]), "config": {**base, **overrides},
           "wall_s": round(time.perf_counter() - t0, 1), "rc": proc.returncode,
           "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "stamp": stamp()}
    if proc.returncode != 0:
        row["error"] = (root / f"{out.name}.log").read_text().strip().splitlines()[-1:]
        return row
    row.update(figures(json.loads((out / "metrics.json").read_text())))
    return row


def run_all(specs: list[tuple[str, dict, dict, int]], args) -> None:
    path = Path(args.jsonl)
    done = {(r["name"], r["seed"], r["epochs"], r["data"]) for r in read_jsonl(path) if r.get("rc") == 0}
    for name, base, overrides, seed in specs:
        if (name, seed, args.epochs, args.data) in done:
            print(f"{name} seed {seed}: in {path} already")
            continue
        row = run_one(name, base, overrides, seed, args.epochs, args)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{name} seed {seed}: rc {row['rc']}, test R@100 {row.get('test_recall@100', '-')}, "
              f"chance {row.get('chance_epochs')}, collapsed {row.get('collapsed_epochs')}, {row['wall_s']} s", flush=True)


def refreshed(rows: list[dict], always: bool = False) -> list[dict]:
    """Rows with their figures read again from their runs' metrics.json, where the run directory is
    still there: all of them, or only those recorded before the figures were kept."""
    for r in rows:
        out = Path(shlex.split(r["command"])[-1]) / "metrics.json"
        if r["rc"] == 0 and (always or "history" not in r) and out.is_file():
            r.update(figures(json.loads(out.read_text())))
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def searched_config(path: str) -> dict:
    """The knobs of a best_config.json (the config it hands ``raytower train``)."""
    cfg = json.loads(Path(path).read_text())["params"]
    return {k: v for k, v in cfg.items() if k not in ("epochs", "seed")}


def run_search(point: str, recipe: dict, args) -> None:
    """A short ``raytower tune`` over the default space's knobs, the point's conditions fixed."""
    from raytower.tune.space import resolve_space

    space = yaml.safe_load(resolve_space("default").read_text())
    conditions = conditions_at(point, recipe)
    space["fixed"] = {**space.get("fixed", {}), **conditions}
    space["search"] = {k: v for k, v in space["search"].items() if k not in conditions}
    space["start_from"] = [{k: v for k, v in p.items() if k not in conditions} for p in space.get("start_from", [])]
    root = Path(args.run_root)
    root.mkdir(parents=True, exist_ok=True)
    space_path = root / f"space-{point}.yaml"
    space_path.write_text(yaml.safe_dump(space, sort_keys=False))
    out = root / f"search-{point}"
    cmd = [sys.executable, "-m", "raytower.cli", "tune", "--data", args.data, "--space", str(space_path),
           "--num-samples", str(args.num_samples), "--max-epochs", str(args.epochs), "--seed", "0",
           "--threads-per-trial", str(args.threads), "--out", str(out)]
    t0 = time.perf_counter()
    with open(root / f"{out.name}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    row = {"name": f"{point}:search", "seed": 0, "epochs": args.epochs, "data": args.data,
           "command": relative_command(cmd[1:]), "space": space, "wall_s": round(time.perf_counter() - t0, 1),
           "rc": proc.returncode, "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "stamp": stamp()}
    if proc.returncode == 0:
        best = json.loads((out / "best_config.json").read_text())
        row.update({"best_config": str(out / "best_config.json"), "params": searched_config(out / "best_config.json"),
                    "val_recall@100": best["selection"]["value"]})
    with open(args.jsonl, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"search at {point}: rc {proc.returncode}, {row.get('val_recall@100', '-')}, {row['wall_s']} s", flush=True)


def _epochs(epochs: list[int]) -> str:
    return ",".join(map(str, epochs)) or "-"


def _ms(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:.4f}" if xs else "-"
    m = sum(xs) / len(xs)
    return f"{m:.4f} ± {math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)):.4f}"


def summarize(rows: list[dict], plot: str | None) -> str:
    """The sweep's table (one run per point), the comparison's table (mean ± sd over seeds), the plot."""
    latest = {}
    for r in rows:  # a rerun of the same run replaces it
        latest[(r["name"], r["seed"], r["epochs"], r["data"])] = r
    rows = list(latest.values())
    sweep = [r for r in rows if ":" not in r["name"]]
    lines = ["| point | factor | epochs | loss / random-guess: epoch 1, last (epochs >= 1) | loss / ln(#cand): "
             "epoch 1 | epochs at popularity | effective rank: epoch 1, min | best val R@100 (epoch) | test R@100 | "
             "test R@10 | fails |", "|---" * 11 + "|"]
    for r in sweep:
        if r["rc"] != 0:
            lines.append(f"| {r['name']} | {r['overrides']} | {r['epochs']} | failed to run: {r.get('error')} |||||||||")
            continue
        ratio, naive, er = r["loss_over_random"], r["loss_over_ln_candidates"], r["effective_rank"]
        lines.append(f"| {r['name']} | {json.dumps(r['overrides']) if r['overrides'] else 'the recipe'} | "
                     f"{len(ratio)} | {ratio[0]:.3f}, {ratio[-1]:.3f} ({_epochs(r['chance_epochs'])}) | {naive[0]:.3f} | "
                     f"{_epochs(r['at_popularity_epochs'])} | {er[0]:.1f}, {min(er):.1f} | "
                     f"{r['val_recall@100']:.4f} ({r['best_epoch']}) | {r['test_recall@100']:.4f} | "
                     f"{r['test_recall@10']:.4f} | {'yes' if r['failed'] else 'no'} |")
    arms: dict[str, list[dict]] = {}
    for r in rows:
        if ":" in r["name"] and r["rc"] == 0 and "test_recall@100" in r:
            arms.setdefault(r["name"], []).append(r)
    for r in rows:
        if r["name"].endswith(":search"):
            lines += ["", f"Search at {r['name'][:-7]} ({r['wall_s']:.0f} s, rc {r['rc']}): best validation Recall@100 "
                      f"{r.get('val_recall@100', float('nan')):.4f}, knobs {json.dumps(r.get('params', {}))}"]
    if arms:
        lines += ["", "| point:arm | seeds | test R@100 | test R@10 | best val R@100 | epochs at popularity, per seed | "
                  "min effective rank, per seed | runs failing the seed's way |", "|---" * 8 + "|"]
        for name, rs in arms.items():
            rs = sorted(rs, key=lambda r: r["seed"])
            lines.append(f"| {name} | {','.join(str(r['seed']) for r in rs)} | {_ms([r['test_recall@100'] for r in rs])} | "
                         f"{_ms([r['test_recall@10'] for r in rs])} | {_ms([r['val_recall@100'] for r in rs])} | "
                         f"{'; '.join(_epochs(r['at_popularity_epochs']) for r in rs)} | "
                         f"{', '.join(format(min(r['effective_rank']), '.1f') for r in rs)} | "
                         f"{sum(r['failed'] for r in rs)} of {len(rs)} |")
    if plot and sweep:
        _plot([r for r in sweep if r["rc"] == 0], plot)
        lines.append(f"\nplot: {plot}")
    return "\n".join(lines)


def _plot(sweep: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for r in sweep:
        epochs = [h["epoch"] for h in r["history"]]
        style = "-" if r["name"] == "recipe" else "--"
        axes[0].plot(epochs, r["loss_over_random"], style, marker="o", ms=3, label=r["name"])
        axes[1].plot(epochs, r["effective_rank"], style, marker="o", ms=3, label=r["name"])
        axes[2].plot(epochs, [h["val/recall@100"] for h in r["history"]], style, marker="o", ms=3, label=r["name"])
    axes[0].axhline(1.0, color="gray", lw=1)
    axes[0].set(title="training loss / random-guess loss", xlabel="epoch", ylabel="ratio (>= 1: chance)")
    dim = sweep[0]["config"].get("dim", 64)
    axes[1].axhline(COLLAPSE_FRAC * dim, color="gray", lw=1)
    axes[1].set_ylim(0, dim)
    axes[2].axhline(sweep[0]["popularity_val_recall@100"], color="gray", lw=1)
    axes[1].set(title="item vectors' effective rank", xlabel="epoch", ylabel=f"of {dim} (gray: collapse line)")
    axes[2].set(title="validation Recall@100", xlabel="epoch", ylabel="(gray: popularity)")
    axes[2].legend(fontsize=7)
    fig.suptitle("The seed's recipe on the 1M synthetic set, one factor varied at a time")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["sweep", "search", "compare", "summarize", "refresh"])
    p.add_argument("--data", default=DATA)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--points", nargs="+", default=list(SWEEP), choices=list(SWEEP), help="sweep points to run")
    p.add_argument("--point", default="recipe", choices=list(SWEEP), help="compare: the sweep point compared at")
    p.add_argument("--searched", help="compare: a best_config.json whose knobs are the third arm")
    p.add_argument("--num-samples", type=int, default=6, help="search: trials")
    p.add_argument("--jsonl", default="benchmarks/results/curriculum_study.jsonl")
    p.add_argument("--run-root", default="/tmp/raytower-study")
    p.add_argument("--plot", default="docs/curriculum_study.png")
    args = p.parse_args(argv)
    recipe = yaml.safe_load(RECIPE.read_text())
    print("command:", relative_command(), flush=True)
    if args.phase == "sweep":
        run_all([(name, recipe, SWEEP[name], seed) for name in args.points for seed in args.seeds], args)
    elif args.phase == "refresh":  # the figures again from each finished run's metrics.json
        write_jsonl(Path(args.jsonl), refreshed(read_jsonl(Path(args.jsonl)), always=True))
    elif args.phase == "search":
        run_search(args.point, recipe, args)
    elif args.phase == "compare":
        conditions = conditions_at(args.point, recipe)
        arms = [(f"{args.point}:recipe", recipe, SWEEP[args.point]), (f"{args.point}:curriculum", {}, conditions)]
        if args.searched:
            arms.append((f"{args.point}:searched", searched_config(args.searched), conditions))
        run_all([(name, base, over, seed) for seed in args.seeds for name, base, over in arms], args)
    print(summarize(refreshed(read_jsonl(Path(args.jsonl)), always=True), args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
