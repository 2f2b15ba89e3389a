"""The one outer loop: epochs until the last one or a diverged one, the best epoch tracked.

    best = run_epochs(run, on_epoch, tb_dir)

``raytower train`` (``on_epoch`` prints the row and keeps the best checkpoint) and every search
trial (``on_epoch`` reports the row and a checkpoint to Ray) share it, so the best epoch, the
divergence stop and the TensorBoard curves mean the same thing in both.
"""

from __future__ import annotations

import math
from typing import Callable

from raytower.names import val_key
from raytower.train.row import SCALARS
from raytower.train.loop import Curriculum

__all__ = ["SCALARS", "best_epoch", "plateaued", "run_epochs", "tensorboard_scalars"]  # SCALARS: the schema's tags


def tensorboard_scalars(row: dict) -> dict[str, float]:
    out = {name: float(row[key]) for name, key in SCALARS.items() if key in row and row[key] == row[key]}
    out |= {f"fusion/{k}": float(v) for k, v in row.items() if k.startswith("expert_")}
    return out


def best_epoch(history: list[dict], metric: str = val_key()) -> dict | None:
    """The epoch with the highest validation ``metric`` (a row key), among epochs that did not diverge;
    of equal values the latest, as Ray keeps the latest checkpoints among equal scores."""
    finite = [r for r in history if not r.get("diverged") and math.isfinite(r.get(metric, math.nan))]
    return max(finite, key=lambda r: (r[metric], r["epoch"]), default=None)


def tag(key: str) -> str:
    """A row key as a TensorBoard tag ([A-Za-z0-9_./-] only): val/recall@100 -> val/recall_at_100."""
    return key.replace("@", "_at_")


def best_tag(metric: str) -> str:
    """The scalar TensorBoard's HPARAMS tab compares runs by: the best validation metric so far."""
    return "hparams/best_" + tag(metric).replace("/", "_")


def _start_hparams_session(writer, hparams: dict, metric: str) -> None:
    """Each run's (trial's) knobs as an HPARAMS session. Only the session's start is written: a trial
    ASHA stops never reaches an end, and TensorBoard builds the experiment from the runs' sessions,
    taking the metric's value from the ``best_tag`` scalar written every epoch."""
    from tensorboardX.summary import hparams as hparams_summary

    values = {k: v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}
    _, session_start, _ = hparams_summary(values, {best_tag(metric): 0.0})
    writer.file_writer.add_summary(session_start)


def plateaued(run: Curriculum, metric: str) -> bool:
    """``cfg.patience`` epochs without a better validation ``metric`` (a tie is not better), counted
    from the later of the Stage 2 switch and the start of the logQ ramp: the search's plateau stop,
    for one run."""
    patience = run.cfg.patience
    best = best_epoch(run.history, metric)
    if not patience or best is None or run.switch is None:
        return False
    improved = next(r["epoch"] for r in run.history if r.get(metric, -math.inf) >= best[metric])
    start = max(run.switch["epoch"], run.cfg.logq_warmup_epochs, improved)
    return run.epoch - start >= patience


def run_epochs(run: Curriculum, on_epoch: Callable[[dict, dict | None], None], tb_dir: str | None = None,
               metric: str = val_key(), hparams: dict | None = None) -> dict | None:
    """Step ``run`` to its last epoch, to the first diverged one (nothing past a NaN counts), or to a
    plateau of ``cfg.patience`` epochs.

    After each epoch: its TensorBoard scalars go to ``tb_dir`` (flushed, so TensorBoard shows a
    running trial), then ``on_epoch(row, best)``, ``best`` being the best epoch's row so far (``row``
    itself when this epoch is the new best by ``metric``; None before any). Returns the best epoch's
    row, or None when no epoch had a finite metric. ``hparams`` (the run's config) go to
    TensorBoard's HPARAMS tab, with the best ``metric`` so far."""
    best = best_epoch(run.history, metric)  # a resumed run keeps the best of its earlier epochs
    writer = None
    if tb_dir:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(tb_dir)
        if hparams:
            _start_hparams_session(writer, hparams, metric)
    try:
        while not run.done:
            row = run.step()
            if not row["diverged"] and (best is None or row[metric] >= best[metric]):  # ties: the later
                best = row
            if writer:
                for name, value in tensorboard_scalars(row).items():
                    writer.add_scalar(name, value, row["epoch"])
                if hparams and best is not None:
                    writer.add_scalar(best_tag(metric), float(best[metric]), row["epoch"])
                writer.flush()
            on_epoch(row, best)
            if row["diverged"] or plateaued(run, metric):
                break
    finally:
        if writer:
            writer.close()
    return best
