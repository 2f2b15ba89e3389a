"""Where issue 17's failure study saw the seed's failure, as checks a chosen configuration can be read against.

The study (``benchmarks/study_curriculum.py``; figures in ``benchmarks/results/curriculum_study.md``
and docs/studies.md, "When the curriculum matters") ran the seed's recipe on the 1M-interaction synthetic
set, one factor at a time. It saw two failures, and the report's "At a glance" names each one when
a search's chosen configuration sits where it was seen:

* **A slow start.** Every run sat at the popularity baseline, its loss at the level of uniform logits
  (the seed's "worse than a random guess" at epoch 1), until the optimizer had taken about
  ``ESCAPE_LR_STEPS`` of LR x steps (0.04 to 0.07 in the study): with 25,000 users, 256 rows a step
  at LR 1e-3 (96 steps an epoch) left it in the first epoch, 1,024 rows in the third, 4,096 rows
  (6 steps an epoch) in the seventh, and LR 1e-4 in the sixth. Larger batches or a smaller LR give
  fewer or smaller steps an epoch, and a short search may never see the model leave popularity.
  All of this was with last-item targets (a step's rows are its users); trained on every position,
  the same 96 steps an epoch left popularity within the first epoch faster than the recipe did, so
  the check applies to ``targets: last`` only.
* **Item-tower collapse.** The whole item tower unfrozen from the first step at LR 1e-2: the item
  vectors' effective rank fell from 62 to 8.5 of 64 in one epoch and test Recall@100 ended at the
  popularity baseline's level, while at 1e-3 it stayed near 60.

It also saw a slower decline: at a fixed temperature of 0.3 (the recipe's is 0.07) under logQ at full
weight, the effective rank fell every epoch, 57.7 to 27.6 in 8, and test Recall@100 ended at 0.35
against the recipe's 0.50, tail recall at 0.15 against 0.39: with soft logits the -log p term
outweighs the scores and pushes popular right answers down. The report names that too.
"""

from __future__ import annotations

import math

from raytower.train.config import TrainConfig
from raytower.train.schedules import logq_weight, temperature

ESCAPE_LR_STEPS = 0.05  # cumulative LR x optimizer steps by which the study's runs had left popularity
SLOW_START_EPOCHS = 1.5  # runs that needed more epochs than this sat at popularity for at least two
STABLE_ITEM_LR, COLLAPSED_ITEM_LR = 1e-3, 1e-2  # the study's item-tower LRs: kept its rank, collapsed
ITEM_LR_WARNING = math.sqrt(STABLE_ITEM_LR * COLLAPSED_ITEM_LR)  # nearer the collapsing LR than the stable one
STUDY_EPOCHS = 8  # the study's runs were this long
SOFT_TAU, FULL_LOGQ = 0.3, 1.0  # the soft-temperature run: tau 0.3 at every epoch, lambda 1.0
SOFT_EPOCHS = 4  # by its fourth epoch its effective rank had fallen from 57.7 to 37.7


def steps_per_epoch(cfg: TrainConfig, n_users: int) -> int:
    """Optimizer steps an epoch: one training sequence per user, ``batch_size`` of them a step
    (with ``targets: last`` a sequence is one row; with ``all`` it is every position)."""
    return max(1, math.ceil(n_users / cfg.batch_size))


def epochs_to_leave_popularity(cfg: TrainConfig, n_users: int) -> float:
    return ESCAPE_LR_STEPS / (cfg.lr * steps_per_epoch(cfg, n_users))


def item_tower_lr(cfg: TrainConfig) -> float:
    """The LR the item tower trains at once unfrozen; 0 when it never is."""
    return cfg.lr * cfg.lr_ratio if cfg.unfreeze_depth > 0 else 0.0


def soft_logq_epochs(cfg: TrainConfig) -> int:
    """Epochs of the study's window with a temperature at least ``SOFT_TAU`` and logQ at full weight."""
    return sum(temperature(e, cfg.temp_start, cfg.anneal_rate, cfg.temp_min) >= SOFT_TAU
               and logq_weight(e, cfg.logq_warmup_epochs, cfg.logq_max, cfg.logq_ramp_epochs) >= FULL_LOGQ
               for e in range(STUDY_EPOCHS))


def warnings(cfg: TrainConfig, n_users: int) -> list[str]:
    """One sentence per failure of the study that ``cfg`` is in the region of; none when it is in none."""
    out = []
    epochs = epochs_to_leave_popularity(cfg, n_users)
    if cfg.targets == "last" and epochs > SLOW_START_EPOCHS:
        out.append(f"a slow start: {steps_per_epoch(cfg, n_users):,} steps an epoch ({n_users:,} users, batch "
                   f"{cfg.batch_size:,}) at LR {cfg.lr:.2g} reach the LR x steps of {ESCAPE_LR_STEPS:g} by which the "
                   f"study's runs had left the popularity baseline only after about {epochs:.1f} epochs; a larger "
                   "LR or smaller batches get there sooner")
    item_lr = item_tower_lr(cfg)
    if item_lr > ITEM_LR_WARNING:
        out.append(f"item-tower collapse: the item tower trains at LR {item_lr:.2g} once unfrozen, nearer the "
                   f"{COLLAPSED_ITEM_LR:g} at which the study saw the item vectors' effective rank fall from 62 to 8.5 "
                   f"of 64 in one epoch than the {STABLE_ITEM_LR:g} at which it held; a smaller lr_ratio keeps it")
    soft = soft_logq_epochs(cfg)
    if soft >= SOFT_EPOCHS:
        out.append(f"a soft temperature under full logQ: {soft} of the first {STUDY_EPOCHS} epochs have a temperature of "
                   f"at least {SOFT_TAU:g} with logQ weight {FULL_LOGQ:g} or more, where the study saw the item vectors' "
                   "effective rank fall every epoch (57.7 to 27.6 in 8) and tail recall halve; a sharper temperature "
                   "or a smaller logq_max avoids it")
    return out
