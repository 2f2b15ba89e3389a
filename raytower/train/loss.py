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
                    tau: float, lam: float, correct_positive: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """logits = <u, v_j> / tau - lambda * log q_j for every candidate j.

    u: (N, d) user vectors, v: (C, d) candidate vectors, labels: (N,) column of each positive,
    log_q: (C,) log of each candidate's sampling probability (``log_sampling_prob``, or
    ``log_inclusion_prob`` of it). With ``correct_positive`` False a row's own positive keeps its
    plain score: the correction is meant for the negatives, and the positive is in the batch
    because it is that row's target, not because it was sampled (Khrylchenko et al., RecSys 2025).
    The same column is still corrected where it is a negative of another row.

    Returns (loss, random-guess loss). The random-guess loss is that of a model whose scores are
    all equal, on the same candidates with the same correction: ln(C) when lambda = 0.
    """
    correction = lam * log_q
    logits = u @ v.T / tau - correction
    rows = torch.arange(len(labels), device=labels.device)
    if not correct_positive and lam != 0:
        # Add the correction back at each row's own positive only (out of place: autograd).
        logits = logits.index_put((rows, labels), correction[labels], accumulate=True)
    loss = F.cross_entropy(logits, labels)
    with torch.no_grad():
        random_loss = random_guess_loss(correction, labels, correct_positive)
    return loss, random_loss


def random_guess_loss(correction: torch.Tensor, labels: torch.Tensor, correct_positive: bool = True) -> torch.Tensor:
    """The mean cross-entropy of all-equal scores under ``correction`` (C,) for rows ``labels``.

    Corrected positive: row r's loss is logsumexp_j(-c_j) + c_{l_r}. Uncorrected positive: its
    logit is 0, so the loss is log(1 + sum_{j != l_r} exp(-c_j)), computed from the total in
    closed form (an (N, C) matrix for this would double the step's memory). Every correction is
    lambda * a log probability, so -c_j >= 0 and each term is at least 1: the difference below
    loses no meaningful precision in float64.
    """
    if correct_positive:  # in the correction's own dtype, as before this option existed
        flat = -correction
        return (torch.logsumexp(flat, 0) - flat[labels]).mean()
    flat = -correction.double()
    top = flat.max()
    terms = (flat - top).exp()
    others = (terms.sum() - terms[labels]).clamp_min(0)
    # log(exp(top) * others + 1); log(0) = -inf where the positive is the only candidate: loss 0.
    per_row = torch.logaddexp(top + others.log(), torch.zeros((), dtype=flat.dtype, device=flat.device))
    return per_row.mean().to(correction.dtype)


def log_sampling_prob(counts: torch.Tensor) -> torch.Tensor:
    """log p_j from train counts, add-one smoothed so an unseen item has a finite correction."""
    counts = counts.double() + 1.0
    return (counts / counts.sum()).log().float()


def log_inclusion_prob(log_p: torch.Tensor, n_targets: int) -> torch.Tensor:
    """log(1 - (1 - p_j)^T): the log probability that item j is among the distinct candidates of a
    batch of ``n_targets`` targets drawn independently with probabilities p_j.

    The candidates are the batch's distinct positives, so a negative's chance to be there is this
    inclusion probability, not p_j: a popular item is in nearly every batch (log ~ 0), a rare one
    in about T p_j of them (log ~ log T + log p_j). Evaluated as log(-expm1(T log1p(-p))) in
    float64, exact for tiny p (where 1 - p rounds to 1) and for p near 1.
    """
    p = log_p.double().exp()
    return torch.log(-torch.expm1(n_targets * torch.log1p(-p))).to(log_p.dtype)
