"""raytower against SASRec+ on one split: the paired per-user difference and the time to quality.

    python benchmarks/compare_arms.py --raytower RUN_DIR --sasrec CHECKPOINT [--out RESULT.json]

    RUN_DIR      a finished ``raytower train`` run (its metrics.json and checkpoints/best.pt)
    CHECKPOINT   a finished ``benchmarks/sasrec_plus.py`` run's checkpoint.pt (its best weights)

Issue 26 part 5: a single test run near equality is a coin flip, so the comparison is paired. Both
models rank the same test users with raytower's own ranking code (``evaluate.rank_split``: full
ranking, the input's items masked); each user's HR@10 and NDCG@10 difference is resampled (users
drawn with replacement) for a bootstrap 95% interval of the mean difference. The ranks are recomputed
from the two chosen models, which touches nothing new: each run's recorded test figures must come out
again exactly, and the script stops if they do not.

Issue 26 part 7: the time to quality is the CPU time an arm took to first reach a validation
NDCG@10 within 0.005 of its own best, counting its epochs' CPU seconds as each run recorded them
(raytower's pretraining too, where its manifest records it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stamp import stamp  # noqa: E402
from sasrec_plus import SASRec, LastPosition, SharedItems  # noqa: E402

from raytower.errors import RaytowerError  # noqa: E402
from raytower.export import load_chosen  # noqa: E402
from raytower.model.build import TwoTower  # noqa: E402
from raytower.train.data import TrainData  # noqa: E402
from raytower.train.evaluate import rank_split  # noqa: E402

WITHIN = 0.005  # "within 0.005 of the arm's own best validation NDCG@10" (issue 26 part 7)
K = 10


def per_user(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Each user's HR@10 (0/1) and NDCG@10 from the target's rank (0 = best)."""
    hit = ranks < K
    return {"recall@10": hit.astype(np.float64), "ndcg@10": np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, samples: int, seed: int) -> dict[str, float]:
    """Mean of a - b over users and its percentile 95% interval, users resampled with replacement."""
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(samples)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "ci95": [float(lo), float(hi)], "se": float(means.std(ddof=1))}


def time_to_quality(history: list[dict], key: str, cpu_key: str, start_cpu: float = 0.0) -> dict:
    """CPU seconds until validation ``key`` first came within WITHIN of its best, and at which epoch."""
    best = max(r[key] for r in history)
    cpu = start_cpu
    for r in history:
        cpu += r[cpu_key]
        if r[key] >= best - WITHIN:
            return {"cpu_s": round(cpu, 1), "epoch": r["epoch"], "best_val": best, "start_cpu_s": start_cpu}
    raise AssertionError("unreachable: the best epoch is within WITHIN of itself")


def raytower_arm(run: Path) -> tuple[TwoTower, object, dict, dict]:
    if not (run / "metrics.json").is_file():  # a search's folder loads too, but records no epoch CPU times
        sys.exit(f"--raytower {run}: not a finished `raytower train` run (no metrics.json)")
    model, cfg, bundle, _ = load_chosen(run)
    metrics = json.loads((run / "metrics.json").read_text())
    pretraining_cpu = float(metrics["pretraining"].get("cpu_s") or 0.0)  # recorded by newer artifacts only
    ttq = time_to_quality(metrics["history"], "val/ndcg@10", "epoch_cpu_s", pretraining_cpu)
    ttq["pretraining_recorded"] = "cpu_s" in metrics["pretraining"]
    return model, TrainData.build(bundle, cfg.max_len, val_users=0), metrics["test"], ttq


def sasrec_checkpoint(checkpoint: Path) -> dict:
    """A sasrec_plus.py checkpoint's state, or the script stops in one line (a traceback before)."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file, a pickle weights_only refuses, a directory
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        sys.exit(f"{checkpoint}: not a sasrec_plus.py checkpoint.pt ({why})")
    wanted = ("fingerprint", "test", "config", "best", "history")
    if not isinstance(state, dict) or any(k not in state for k in wanted):
        sys.exit(f"{checkpoint}: not a sasrec_plus.py checkpoint.pt (it lacks {', '.join(wanted)})")
    return state


def sasrec_arm(checkpoint: Path, bundle) -> tuple[TwoTower, TrainData, dict, dict]:
    state = sasrec_checkpoint(checkpoint)
    if state["fingerprint"] != bundle.fingerprint:
        sys.exit(f"{checkpoint}: trained on data {state['fingerprint']}, the raytower run on {bundle.fingerprint}")
    if state["test"] is None:
        sys.exit(f"{checkpoint}: the SASRec+ run has not finished (no test figures yet)")
    c = state["config"]
    net = SASRec(bundle.n_items, c["dim"], c["blocks"], c["heads"], c["dropout"], c["max_len"])
    net.load_state_dict(state["best"]["model"])
    net.eval()
    ttq = time_to_quality(state["history"], "val/ndcg@10", "epoch_cpu_s")
    return (TwoTower(LastPosition(net), SharedItems(net), bundle.n_items),
            TrainData.build(bundle, c["max_len"], val_users=0), state["test"], ttq)


def test_ranks(model: TwoTower, data: TrainData, recorded: dict, name: str) -> np.ndarray:
    """The test ranks of a chosen model, checked against the figures its run recorded."""
    ranks, _, _ = rank_split(model, data, "test", model.item_vectors())
    again = {k: float(v.mean()) for k, v in per_user(ranks).items()}
    off = {k: (again[k], recorded[k]) for k in again if not math.isclose(again[k], recorded[k], abs_tol=1e-9)}
    if off:
        sys.exit(f"{name}: the recomputed test figures differ from the recorded ones {off}: not the same model")
    return ranks


def compare(run: Path, checkpoint: Path, samples: int, seed: int) -> dict:
    torch.set_num_threads(1)
    rt_model, rt_data, rt_test, rt_ttq = raytower_arm(run)
    sr_model, sr_data, sr_test, sr_ttq = sasrec_arm(checkpoint, rt_data.bundle)
    rt = per_user(test_ranks(rt_model, rt_data, rt_test, "raytower"))
    sr = per_user(test_ranks(sr_model, sr_data, sr_test, "SASRec+"))
    return {
        "raytower": {"run": str(run), "test": {k: rt_test[k] for k in rt}, "time_to_quality": rt_ttq},
        "sasrec_plus": {"checkpoint": str(checkpoint), "test": {k: sr_test[k] for k in sr},
                        "time_to_quality": sr_ttq},
        "n_users": int(len(rt["recall@10"])),
        "raytower_minus_sasrec_plus": {k: paired_bootstrap(rt[k], sr[k], samples, seed) for k in rt},
        "bootstrap": {"samples": samples, "seed": seed},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--raytower", type=Path, required=True, help="a finished `raytower train` run directory")
    p.add_argument("--sasrec", type=Path, required=True, help="a finished sasrec_plus.py run's checkpoint.pt")
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the result as JSON here (with the stamp)")
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error("--samples must be >= 1")
    try:
        result = compare(args.raytower, args.sasrec, args.samples, args.seed)
    except RaytowerError as e:  # --raytower not a finished run: raytower's own one-line error
        sys.exit(f"--raytower: {e}")
    for k, d in result["raytower_minus_sasrec_plus"].items():
        print(f"{k}: raytower {result['raytower']['test'][k]:.4f}, SASRec+ {result['sasrec_plus']['test'][k]:.4f}, "
              f"paired difference {d['mean']:+.4f} (95% CI {d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f})")
    for arm in ("raytower", "sasrec_plus"):
        t = result[arm]["time_to_quality"]
        print(f"{arm}: {t['cpu_s']:.0f} CPU s to within {WITHIN} of its best validation NDCG@10 (epoch {t['epoch']})")
    if args.out:
        args.out.write_text(json.dumps({**result, **stamp([__file__, *(argv or sys.argv[1:])])}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
