"""One training run, start to finish: what ``raytower train`` does.

Pretraining (cached) -> the curriculum, epoch by epoch -> the best validation epoch's checkpoint ->
test evaluated once on it -> ``metrics.json``. TensorBoard scalars go to the run directory.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from pathlib import Path

import torch

import raytower
from raytower._io import atomic_path, claim_output_dir, write_json
from raytower._progress import Progress
from raytower.errors import RaytowerError
from raytower.names import DEFAULT_METRIC, check_metric, label, val_key
from raytower.model.pretrain import PretrainConfig, pretrain
from raytower.train.config import TrainConfig
from raytower.train.evaluate import evaluate
from raytower.train.fit import fit
from raytower.train.loop import Curriculum, load_model

COLUMNS = [  # the per-epoch table: (header, row key, format)
    ("epoch", "epoch", "{:>5d}"), ("stage", "stage", "{:>5d}"), ("tau", "tau", "{:>6.3f}"),
    ("lambda", "lambda", "{:>6.3f}"), ("loss", "loss", "{:>7.3f}"), ("random", "loss_random", "{:>7.3f}"),
    ("ln#cand", "ln_candidates", "{:>7.3f}"), ("R@10", "val/recall@10", "{:>6.3f}"),
    ("R@100", "val/recall@100", "{:>6.3f}"), ("±SE", "val/recall@100_se", "{:>5.3f}"), ("gate", "gate_mean", "{:>5.2f}"),
    ("erank", "effective_rank", "{:>6.1f}"), ("sec", "epoch_time_s", "{:>5.1f}"),
]


def format_header() -> str:
    return " ".join(f"{h:>{len(f.format(0 if 'd' in f else 0.0))}}" for h, _, f in COLUMNS)


def format_row(row: dict) -> str:
    cells = []
    for _, key, fmt in COLUMNS:
        v = row.get(key, float("nan"))
        cells.append(fmt.format(v) if not (isinstance(v, float) and math.isnan(v)) else " " * len(fmt.format(0.0)))
    return " ".join(cells)


def versions() -> dict[str, str]:
    out = {"raytower": raytower.__version__, "torch": torch.__version__, "python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("ray", "optuna"):  # read from the metadata: importing Ray just for this costs seconds
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def train(cfg: TrainConfig, bundle, out_dir: str | Path, device: str = "cpu", threads: int | None = None,
          log=print, pretrain_cfg: PretrainConfig | None = None, force: bool = False,
          metric: str = DEFAULT_METRIC) -> dict:
    """Run the curriculum for ``cfg.epochs`` epochs; return (and write) the final metrics. The best
    epoch, the one tested, is chosen by validation ``metric`` (``raytower.names.METRICS``).

    ``out_dir`` is a new or empty directory, or (with ``force``) an earlier raytower run, which is
    replaced; anything else is refused before training starts."""
    check_metric(metric)
    out = claim_output_dir(out_dir, "run", force)
    if threads:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    pcfg = pretrain_cfg or PretrainConfig.for_train(cfg)
    log(f"pretraining (cached by data fingerprint {bundle.fingerprint})")
    artifacts = pretrain(bundle, pcfg, progress=log, device=device)  # --device cuda: pretraining too
    run = Curriculum.create(cfg, bundle, artifacts, device=device)
    pop = run.popularity
    log(f"popularity baseline: val Recall@100 {pop['val']['recall@100']:.3f}, "
        f"test Recall@100 {pop['test']['recall@100']:.3f}, Recall@10 {pop['test']['recall@10']:.3f}")
    log(format_header())
    kept: dict = {}

    def on_batch(done: int, total: int) -> None:  # a long epoch is never silent
        if done == 1:
            kept["bar"] = Progress(f"epoch {run.epoch + 1}", total, log=log)
        kept["bar"].update(done, f"batch {done}/{total}")
        if done == total:
            kept["bar"].close()

    run.on_batch = on_batch
    def on_epoch(row: dict, best: dict | None) -> None:
        log(format_row(row) + (f"   -> stage 2 ({row['stage_switch']})" if "stage_switch" in row else ""))
        if row["diverged"]:
            log(f"training diverged at epoch {row['epoch']} (loss {row['loss']}, val Recall@100 "
                f"{row['val/recall@100']}); stopping")
        elif best is row:
            kept["state"] = copy.deepcopy(run.state_dict())
            save_checkpoint(kept["state"], out / "checkpoints" / "best.pt")

    best = fit(run, on_epoch, tb_dir=str(out / "tensorboard"), metric=val_key(metric), hparams=cfg.to_dict())
    if best is None:
        raise RaytowerError(f"training diverged in its first epoch (loss {run.history[-1]['loss']}): no epoch has a "
                            "validation metric to choose; lower lr or raise temp_start", out)
    # Honest evaluation: test is touched once, on the epoch chosen by validation.
    test, _ = evaluate(load_model(kept["state"], bundle, artifacts, device), run.data, "test")
    result = {
        "config": cfg.to_dict(),
        "dataset": {"name": bundle.name, "fingerprint": bundle.fingerprint,
                    "n_users": bundle.n_users, "n_items": bundle.n_items, "bundle": str(bundle.path)},
        "best_epoch": best["epoch"],
        "selection_metric": metric,
        "stage_switch": run.switch,
        "val": {k[4:]: v for k, v in best.items() if k.startswith("val/")},
        "test": test,
        "popularity": pop,
        "wall_time_s": time.perf_counter() - t_start,
        "history": run.history,
        "pretraining": {"path": str(artifacts.path), **artifacts.stats},
        "versions": versions(),
    }
    write_json(out / "metrics.json", result)
    log(f"best epoch {best['epoch']} by val {label(metric)} {best[val_key(metric)]:.4f}: val Recall@100 "
        f"{best['val/recall@100']:.4f}; "
        f"test Recall@100 {test['recall@100']:.4f}, Recall@10 {test['recall@10']:.4f}, NDCG@10 {test['ndcg@10']:.4f}")
    return result


def save_checkpoint(state: dict, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        torch.save(state, tmp)
