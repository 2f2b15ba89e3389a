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


# --- the inclusion-probability correction and the uncorrected positive --------------------------

from raytower.train.loss import log_inclusion_prob, random_guess_loss  # noqa: E402


def test_inclusion_probability_is_exact_and_stable():
    p = torch.tensor([1e-12, 1e-6, 0.01, 0.5, 1 - 1e-9], dtype=torch.float64)
    for T in (1, 37, 20_000):
        got = log_inclusion_prob(p.log(), T)
        # 1 - (1 - p)^T by the binomial sum: no cancellation for small p, exact for T = 1
        want = torch.tensor([math.log(-math.expm1(T * math.log1p(-x))) for x in p.tolist()], dtype=torch.float64)
        assert torch.allclose(got, want, rtol=1e-12, atol=0), T
    assert torch.allclose(log_inclusion_prob(p.log(), 1), p.log())  # one target: inclusion = p
    # For a tiny p it is T p (the frequency form up to log T); a popular item saturates at 1.
    tiny = log_inclusion_prob(torch.tensor([-30.0]), 1000)
    assert math.isclose(tiny.item(), math.log(1000) - 30.0, rel_tol=1e-6)
    assert log_inclusion_prob(torch.tensor([math.log(0.5)]), 10_000).item() == 0.0


def _rowwise_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (torch.logsumexp(logits, 1) - logits[torch.arange(len(labels)), labels]).mean()


def test_an_uncorrected_positive_keeps_its_score_and_stays_corrected_as_a_negative():
    torch.manual_seed(0)
    u, v = torch.randn(5, 4), torch.randn(3, 4)
    labels = torch.tensor([0, 1, 2, 0, 2])
    log_q = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    tau, lam = 0.5, 0.8
    loss, _ = inbatch_softmax(u, v, labels, log_q, tau, lam, correct_positive=False)
    # By hand: row r's logits are corrected everywhere except at its own label.
    logits = u @ v.T / tau - lam * log_q
    for r, l in enumerate(labels.tolist()):
        logits[r, l] = u[r] @ v[l] / tau
    assert torch.allclose(loss, _rowwise_loss(logits, labels))
    # Column 0 is row 0's positive (uncorrected) and a negative of row 1 (corrected): not the
    # same as correcting nothing, nor as correcting everything.
    none, _ = inbatch_softmax(u, v, labels, log_q, tau, 0.0)
    every, _ = inbatch_softmax(u, v, labels, log_q, tau, lam, correct_positive=True)
    assert not torch.allclose(loss, none) and not torch.allclose(loss, every)


def test_the_uncorrected_positive_trains_through_autograd():
    u = torch.randn(4, 3, requires_grad=True)
    v = torch.randn(2, 3)
    loss, _ = inbatch_softmax(u, v, torch.tensor([0, 1, 1, 0]), torch.log(torch.tensor([0.9, 0.1])), 0.2, 1.0,
                              correct_positive=False)
    loss.backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0


def test_random_guess_loss_is_that_of_a_zero_score_model_under_each_correction():
    torch.manual_seed(1)
    C, N = 7, 40
    labels = torch.randint(0, C, (N,))
    log_p = torch.log_softmax(torch.randn(C) * 2, 0)
    for log_q in (log_p, log_inclusion_prob(log_p, N)):
        for lam in (0.0, 0.3, 1.0):
            for positive in (True, False):
                zero = torch.zeros(N, 5)  # every score 0: all equal
                loss, rnd = inbatch_softmax(zero, torch.randn(C, 5), labels, log_q, 0.05, lam, positive)
                assert torch.allclose(rnd, loss, rtol=1e-5), (lam, positive)
                if lam == 0:
                    assert math.isclose(rnd.item(), math.log(C), rel_tol=1e-6)


def test_random_guess_loss_without_positive_correction_is_per_row():
    log_q = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    labels = torch.tensor([0, 2])
    rnd = random_guess_loss(log_q, labels, correct_positive=False)
    # row with label l: log(1 + sum_{j != l} 1 / q_j)
    inv = 1 / log_q.exp()
    want = torch.stack([torch.log(1 + inv.sum() - inv[l]) for l in labels]).mean()
    assert torch.allclose(rnd, want)
    # A single candidate, its own positive: nothing to confuse it with, loss 0.
    assert random_guess_loss(torch.tensor([-5.0]), torch.tensor([0, 0]), correct_positive=False).item() == 0.0
