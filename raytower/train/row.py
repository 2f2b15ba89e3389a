"""The epoch row: what one epoch of the curriculum reports, in one schema.

Every consumer reads its columns from here: the console table of ``raytower train`` (``CONSOLE``),
TensorBoard (``SCALARS``), the per-trial figures of trials.parquet (``REPORT_KEYS``), the report's
leaderboard (``LEADERBOARD``). A row is still a plain dict (it crosses Ray's reports as one), keyed
by ``Column.key``. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

from raytower.names import METRICS, label, val_key


@dataclass(frozen=True)
class Column:
    key: str  # the row's key: "val/recall@100"
    tag: str | None = None  # its TensorBoard tag ([A-Za-z0-9_./-] only), None when not plotted
    short: str | None = None  # its header in the console table, None when not shown there
    fmt: str = "{:.4f}"  # its cell in that table
    report: int = 0  # its place among trials.parquet's per-trial figures (best/, final/); 0: not there


def _tag(key: str) -> str:
    return key.replace("@", "_at_")


_VAL = tuple(Column(val_key(m), _tag(val_key(m)), label(m) if m in ("recall@10", "recall@100") else None,
                    "{:>6.3f}", report=1 + k) for k, m in enumerate(METRICS))
_R = len(METRICS) + 1  # the diagnostics follow the selectable metrics in trials.parquet

ROW: tuple[Column, ...] = (
    Column("epoch", None, "epoch", "{:>5d}"),
    Column("stage", "curriculum/stage", "stage", "{:>5d}", report=_R + 7),
    Column("tau", "curriculum/tau", "tau", "{:>6.3f}"),
    Column("lambda", "curriculum/lambda", "lambda", "{:>6.3f}"),
    Column("loss", "loss/train", "loss", "{:>7.3f}", report=_R + 3),
    Column("loss_random", "loss/random_guess", "random", "{:>7.3f}", report=_R + 4),
    Column("ln_candidates", None, "ln#cand", "{:>7.3f}"),
    *_VAL,
    # its standard error: validation may be a sample of users (val_users)
    Column("val/recall@100_se", None, "±SE", "{:>5.3f}"),
    Column("val/cold/recall@100", "val/cold_recall_at_100", report=_R),
    Column("val/coverage@100", "val/coverage_at_100", report=_R + 1),
    Column("val/tail_recall@100", "val/tail_recall_at_100", report=_R + 2),
    Column("gate_mean", "fusion/gate_mean", "gate", "{:>5.2f}", report=_R + 5),
    Column("gate_mean_train", "fusion/gate_mean_train"),
    Column("gate_mean_cold", "fusion/gate_mean_cold"),
    Column("gate_mean_warm", "fusion/gate_mean_warm"),
    Column("effective_rank", "collapse/effective_rank", "erank", "{:>6.1f}", report=_R + 6),
    Column("uniformity", "collapse/uniformity"),
    Column("epoch_time_s", None, "sec", "{:>5.1f}"),
)

CONSOLE = tuple(c for c in ROW if c.short)  # raytower train's per-epoch table, in this order
SCALARS = {c.tag: c.key for c in ROW if c.tag}  # TensorBoard tag -> row key, the same in train and trials
REPORT_KEYS = tuple(c.key for c in sorted((c for c in ROW if c.report), key=lambda c: c.report))
