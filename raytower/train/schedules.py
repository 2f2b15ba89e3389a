"""The two schedules of the curriculum, as plain functions of the epoch (0-based)."""

from __future__ import annotations


def temperature(epoch: int, temp_start: float, anneal_rate: float, temp_min: float) -> float:
    """tau(epoch) = max(temp_min, temp_start * anneal_rate ** epoch).

    A high start keeps early misses from exploding the loss; annealing sharpens it later.
    """
    return max(temp_min, temp_start * anneal_rate**epoch)


def logq_weight(epoch: int, warmup_epochs: int, logq_max: float, ramp_epochs: int) -> float:
    """lambda(epoch): 0 for ``warmup_epochs``, then linear up to ``logq_max`` over ``ramp_epochs``.

    Early on the correction punishes right answers on popular items; it pays off only once the
    model has converged somewhat (Yi et al., RecSys 2019).
    """
    if epoch < warmup_epochs:
        return 0.0
    if ramp_epochs <= 0:
        return logq_max
    return logq_max * min(1.0, (epoch - warmup_epochs + 1) / ramp_epochs)
