import math

import torch
import torch.nn.functional as F

from raytower.train.loss import candidates, inbatch_softmax, log_sampling_prob


def test_duplicate_positives_become_one_candidate_column():
    cand, labels = candidates(torch.tensor([5, 3, 5, 9, 3]))
    assert cand.tolist() == [3, 5, 9]
    assert cand[labels].tolist() == [5, 3, 5, 9, 3]


def test_random_guess_loss_is_ln_candidates_without_logq():
    u = F.normalize(torch.randn(6, 8), dim=-1)
    v = F.normalize(torch.randn(4, 8), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    _, rnd = inbatch_softmax(u, v, labels, torch.randn(4), tau=0.1, lam=0.0)
    assert math.isclose(rnd.item(), math.log(4), rel_tol=1e-6)


def test_random_guess_loss_carries_the_logq_correction():
    log_q = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    labels = torch.tensor([0, 2])
    _, rnd = inbatch_softmax(torch.zeros(2, 3), torch.zeros(3, 3), labels, log_q, tau=1.0, lam=1.0)
    # equal scores, logits = -log p: the loss of each row is logsumexp(-log p) + log p_label
    expected = torch.logsumexp(-log_q, 0) + log_q[labels]
    assert torch.allclose(rnd, expected.mean())
    assert rnd.item() != math.log(3)


def test_logq_correction_enters_the_logits():
    u = torch.eye(3)
    v = torch.eye(3)
    labels = torch.arange(3)
    log_q = torch.log(torch.tensor([0.8, 0.1, 0.1]))
    loss0, _ = inbatch_softmax(u, v, labels, log_q, tau=0.5, lam=0.0)
    loss1, _ = inbatch_softmax(u, v, labels, log_q, tau=0.5, lam=1.0)
    manual = F.cross_entropy(u @ v.T / 0.5 - log_q, labels)
    assert torch.allclose(loss1, manual)
    assert not torch.allclose(loss0, loss1)


def test_a_perfect_model_beats_random_guess():
    u = torch.eye(5)
    loss, rnd = inbatch_softmax(u, torch.eye(5), torch.arange(5), torch.zeros(5), tau=0.05, lam=0.0)
    assert loss.item() < 0.01 < rnd.item()


def test_sampling_prob_is_smoothed_and_normalised():
    lq = log_sampling_prob(torch.tensor([0, 3, 6]))
    assert torch.isfinite(lq).all()
    assert math.isclose(lq.exp().sum().item(), 1.0, rel_tol=1e-6)
