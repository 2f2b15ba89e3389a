"""In-batch sampled softmax with temperature and logQ correction, and its random-guess reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def candidates(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's distinct positives are the candidates of every row.

    Taking each item once masks in-batch duplicates of a row's positive (they would otherwise
    count as negatives of themselves). Returns (candidate item ids, each row's label column).
    """
    return targets.unique(return_inverse=True)


def inbatch_softmax(u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor, log_q: torch.Tensor,
                    tau: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logits = <u, v_j> / tau - lambda * log p_j for every candidate, the positive included.

    u: (N, d) user vectors, v: (C, d) candidate vectors, labels: (N,) column of each positive,
    log_q: (C,) log sampling probability of each candidate (train frequency).
    Returns (loss, random-guess loss). The random-guess loss is that of a model whose scores are
    all equal, on the same candidates with the same correction: ln(C) when lambda = 0.
    """
    correction = lam * log_q
    logits = u @ v.T / tau - correction
    loss = F.cross_entropy(logits, labels)
    with torch.no_grad():
        flat = -correction
        random_loss = (torch.logsumexp(flat, 0) - flat[labels]).mean()
    return loss, random_loss


def log_sampling_prob(counts: torch.Tensor) -> torch.Tensor:
    """log p_j from train counts, add-one smoothed so an unseen item has a finite correction."""
    counts = counts.double() + 1.0
    return (counts / counts.sum()).log().float()
