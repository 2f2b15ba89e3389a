"""What holds the two-tower back on ML-1M? Issue 26's study, one factor at a time from the default.

    python benchmarks/study_ml1m.py run --epochs 20 --threads 1                 # every arm, in order
    python benchmarks/study_ml1m.py run --arms default full_softmax --epochs 20  # some of them
    python benchmarks/study_ml1m.py summarize                                   # the table
    python benchmarks/study_ml1m.py curves --runs ~/raytower-runs/study-ml1m      # at equal epochs, so far

Each arm is one ``raytower train`` run on the literature's protocol (``--cold-frac 0``: every user
evaluated; ``--metric ndcg@10`` chooses the epoch tested) in ``runs/study-ml1m/ARM``. Runs checkpoint
every epoch, so a study stopped at any point goes on where it was with the same command: a finished
arm is skipped, an interrupted one resumed (``raytower train --resume``). Each arm's command, its
per-epoch validation figures, its test figures and the CPU seconds of its process tree are appended to
``benchmarks/results/ml1m_study.jsonl`` the moment it ends.

The arms are the issue's hypotheses (what may cap the two-tower against SASRec+, which trains its
output embeddings with a full softmax over raw dot products):
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from _stamp import ROOT, stamp
from raytower.train.config import TrainConfig

DATA = str(ROOT.parent / "shared" / "data" / "ml-1m" / "ml-1m.txt")
RESULTS = ROOT / "benchmarks" / "results" / "ml1m_study.jsonl"
RUNS = ROOT / "runs" / "study-ml1m"
WHOLE_TOWER = TrainConfig().item_layers + 2  # unfreeze_depth that trains the id table too
HELD_T1 = {"temp_start": 1.0, "temp_min": 1.0, "anneal_rate": 1.0}  # a plain dot product's scale
FAST_TAU = {"temp_start": 0.2, "anneal_rate": 0.7}  # tau at its 0.05 floor by epoch 5 instead of 15
DROPOUT_01 = {"dropout": 0.1, "gnn_dropout": 0.1}  # SASRec+'s dropout, the GNN vector hidden as rarely
# the leak-free history vector, the whole item tower at the user tower's LR, a softmax over every item
HISTORY_WHOLE_FULL = {"gnn_vector": "history", "unfreeze_depth": WHOLE_TOWER, "lr_ratio": 1.0, "loss": "full"}

ARMS: dict[str, dict] = {
    "default": {},
    # the item side: the whole tower with its id table, at the user tower's LR, from Stage 2
    "item_tower_all": {"unfreeze_depth": WHOLE_TOWER, "lr_ratio": 1.0},
    # the candidates: every item, no sampling, no logQ
    "full_softmax": {"loss": "full"},
    # the scores: raw dot products at a held temperature of 1
    "dot": {"score": "dot", **HELD_T1},
    # no logQ at all (the in-batch candidates are most of ML-1M's 3,416 items)
    "no_logq": {"logq_max": 0.0},
    # SASRec+'s regularisation and attention
    "dropout_0.1": DROPOUT_01,
    # the curriculum's switch from the first epoch
    "no_stage1": {"stage1_max_epochs": 0},
    # the temperature alone: at its floor by epoch 5 (tau 0.2 x 0.7^epoch) instead of epoch 15
    "fast_tau": FAST_TAU,
    # the leak: the GNN vector from the history's LightGCN item vectors, causally (no target seen)
    "gnn_history": {"gnn_vector": "history"},
    # what the study points at, the cosine scores and their temperature schedule kept
    "history_whole_full": HISTORY_WHOLE_FULL,
    # the same, its temperature at the floor by epoch 5 instead of 15 (tau 0.2 x 0.7^epoch, floor 0.05)
    "history_whole_full_fast_tau": {**HISTORY_WHOLE_FULL, **FAST_TAU},
    # SASRec's tied embeddings: the sequence encoder reads the item tower's vectors (seq_items: tied)
    "history_whole_full_tied": {**HISTORY_WHOLE_FULL, "seq_items": "tied"},
    # SASRec+'s batches: random sets of users instead of similar history lengths
    "history_whole_full_random": {**HISTORY_WHOLE_FULL, "batches": "random"},
    "history_whole_full_tied_random": {**HISTORY_WHOLE_FULL, "seq_items": "tied", "batches": "random"},
    # tied, with SASRec+'s dropout 0.1 (and the GNN vector hidden as rarely)
    "history_whole_full_tied_dropout_0.1": {**HISTORY_WHOLE_FULL, "seq_items": "tied", **DROPOUT_01},
    # the same, its temperature at the floor by epoch 5 (the early epochs, and so the time to quality)
    "history_whole_full_tied_dropout_0.1_fast_tau": {**HISTORY_WHOLE_FULL, "seq_items": "tied", **DROPOUT_01,
                                                     **FAST_TAU},
    # every factor that helped on ml-100k or in ML-1M's early epochs, together (the study's candidate)
    "history_whole_full_tied_random_dropout_0.1_fast_tau": {**HISTORY_WHOLE_FULL, "seq_items": "tied",
                                                             "batches": "random", **DROPOUT_01, **FAST_TAU},
    # everything the single factors point at, together, the curriculum kept
    "combined": {"loss": "full", "score": "dot", **HELD_T1, "unfreeze_depth": WHOLE_TOWER, "lr_ratio": 1.0,
                 "dropout": 0.1},
}
__doc__ += "".join(f"\n    {name:<15} {json.dumps(o)}" for name, o in ARMS.items()) + "\n"

KEEP = ("epoch", "stage", "tau", "lambda", "loss", "loss_random", "val/recall@10", "val/ndcg@10",
        "val/recall@100", "effective_rank", "gate_mean", "epoch_time_s", "epoch_cpu_s")


def _done(out: Path) -> bool:
    path = out / "metrics.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("complete"))


def _rows(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.is_file() else []


def command(arm: str, args) -> list[str]:
    out = args.runs / arm
    raytower = [sys.executable, "-m", "raytower.cli", "train"]
    if (out / "run.json").is_file():
        return [*raytower, "--resume", str(out), "--threads", str(args.threads)]
    cfg = args.runs / f"{arm}.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump({**ARMS[arm], "epochs": args.epochs, "patience": args.patience,
                                   "seed": args.seed}))
    return [*raytower, "--data", args.data, "--cold-frac", "0", "--metric", "ndcg@10", "--config", str(cfg),
            "--out", str(out), "--threads", str(args.threads)]


def run_arm(arm: str, args) -> None:
    out = args.runs / arm
    if not _done(out):
        cmd = command(arm, args)
        print(f"[{arm}] {shlex.join(cmd)}", flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        rc = subprocess.call(cmd, cwd=ROOT)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if rc != 0:
            sys.exit(f"[{arm}] raytower train exited {rc}; run the same command again to resume it")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    else:
        cpu = None  # finished in an earlier session: its CPU seconds were recorded then, if at all
    if arm in {r["arm"] for r in _rows(args.results)}:
        return
    m = json.loads((out / "metrics.json").read_text())
    row = {"arm": arm, "overrides": ARMS[arm], "data": args.data, "best_epoch": m["best_epoch"],
           "epochs_run": m["epochs_run"], "stop": m["stop"], "val": m["val"], "test": m["test"],
           "cpu_s_this_session": cpu, "epoch_cpu_s_total": sum(r.get("epoch_cpu_s", 0.0) for r in m["history"]),
           "pretraining": m["pretraining"], "history": [{k: r.get(k) for k in KEEP} for r in m["history"]],
           **stamp()}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:  # one line per arm, appended whole
        f.write(json.dumps(row) + "\n")


def _named_run(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, Path(path).expanduser()


def curves(args) -> None:
    """Every arm's validation figures so far, epoch by epoch, beside SASRec+'s: the comparison at equal
    epochs, for arms still running too. Read from each run's last checkpoint (raytower's own checked
    reader) and SASRec+'s JSONL; written whole to ``args.curves`` (a snapshot, replaced)."""
    from raytower.names import LAST_CHECKPOINT
    from raytower.train.run import read_checkpoint

    rows = []
    runs = {arm: args.runs / arm for arm in ARMS} | dict(args.run)
    for arm, out in runs.items():
        last = out / LAST_CHECKPOINT
        if last.is_file():
            history = read_checkpoint(last)["history"]
            rows += [{"arm": arm, **{k: r.get(k) for k in KEEP}} for r in history]
    rows += [{"arm": "sasrec_plus", **{k: r.get(k) for k in KEEP}} for r in _rows(args.sasrec)]
    tmp = args.curves.with_name(args.curves.name + ".tmp")
    tmp.write_text("".join(json.dumps({**r, "snapshot": stamp()["date"]}) + "\n" for r in rows))
    tmp.replace(args.curves)
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    by = {(r["arm"], r["epoch"]): r for r in rows}
    print("validation HR@10 / NDCG@10 by epoch (markdown)\n\n| epoch | " + " | ".join(arms) + " |")
    print("|---" * (len(arms) + 1) + "|")
    for e in range(1, max(r["epoch"] for r in rows) + 1):
        cells = [by.get((a, e)) for a in arms]
        print(f"| {e} | " + " | ".join(f"{c['val/recall@10']:.3f} / {c['val/ndcg@10']:.3f}" if c else ""
                                     for c in cells) + " |")


def summarize(results: Path) -> None:
    print(f"{'arm':<15} {'epochs':>6} {'best':>4} {'val NDCG@10':>11} {'test HR@10':>10} {'test NDCG@10':>12}")
    for r in _rows(results):
        print(f"{r['arm']:<15} {r['epochs_run']:>6} {r['best_epoch']:>4} {r['val']['ndcg@10']:>11.4f} "
              f"{r['test']['recall@10']:>10.4f} {r['test']['ndcg@10']:>12.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="phase", required=True)
    r = sub.add_parser("run")
    r.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    r.add_argument("--data", default=DATA)
    r.add_argument("--epochs", type=int, default=20, help="the same for every arm: compared at equal epochs")
    r.add_argument("--patience", type=int, default=10, help="as SASRec+'s early stop (0: off)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--runs", type=Path, default=RUNS, help="where the arms' run directories go")
    c = sub.add_parser("curves", help="every arm's validation curve so far beside SASRec+'s, at equal epochs")
    c.add_argument("--runs", type=Path, default=RUNS)
    c.add_argument("--run", action="append", default=[], metavar="NAME=DIR", type=_named_run,
                   help="another raytower train run to show beside the arms (e.g. the search's choice)")
    c.add_argument("--sasrec", type=Path, default=ROOT / "benchmarks" / "results" / "sasrec_plus_ml-1m.jsonl")
    c.add_argument("--curves", type=Path, default=ROOT / "benchmarks" / "results" / "ml1m_study_curves.jsonl")
    s = sub.add_parser("summarize")
    for q in (r, s):
        q.add_argument("--results", type=Path, default=RESULTS, help="the JSONL, one line per finished arm")
    args = p.parse_args()
    if args.phase == "curves":
        return curves(args)
    if args.phase == "run":
        for arm in args.arms:
            run_arm(arm, args)
    summarize(args.results)


if __name__ == "__main__":
    main()
