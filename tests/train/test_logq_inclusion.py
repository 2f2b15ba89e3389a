"""The inclusion-probability logQ correction against the real batch sampler on MovieLens 100K.

An i.i.d. simulation would only confirm the formula's own assumption. Here the batches are the
ones training draws (``epoch_batches``: shuffled, sorted by length within pools, every position
of each user's sequence a target), and what is counted is what the loss sees: whether item j is
among a step's distinct candidates. The prediction is the mean over the same batches of
1 - (1 - p_j)^T_b, T_b that batch's number of targets, p_j the smoothed train share the loop uses.
"""

import numpy as np
import pytest

from raytower.train.config import TrainConfig
from raytower.train.data import TrainData, epoch_batches, training_targets
from raytower.train.loss import log_inclusion_prob

EPOCHS = 5  # 40 steps at 128 users; batches recur nearly unchanged across epochs (sorted by length)


@pytest.fixture(scope="module")
def ml100k_data(ml100k_dir):
    from raytower.data import load_bundle

    return TrainData.build(load_bundle(str(ml100k_dir)), TrainConfig().max_len)


def _measure(data: TrainData, batch_size: int):
    """(measured inclusion rate, predicted inclusion, p) per item 1..n, over EPOCHS epochs."""
    n = len(data.log_q)
    hits, pred, steps = np.zeros(n), np.zeros(n), 0
    log_p = data.log_q.double()
    for epoch in range(EPOCHS):
        for rows in epoch_batches(data.train_lens, batch_size, seed=0, epoch=epoch):
            _, tgt, valid = training_targets(data.train_batch(rows, int(data.train_lens[rows].max())))
            targets = tgt[valid]
            hits[targets.unique().numpy()] += 1
            pred += log_inclusion_prob(log_p, len(targets)).exp().numpy()
            steps += 1
    return hits[1:] / steps, pred[1:] / steps, log_p.exp().numpy()[1:]


def _log_residual_sd(measured: np.ndarray, predicted: np.ndarray) -> float:
    """Spread of log(measured / predicted) once its mean is removed: a correction constant over
    the candidates shifts every logit of a row alike and leaves the softmax as it was, so only the
    shape matters. Items never seen as a target (measured 0) are left out of the log."""
    seen = measured > 0
    r = np.log(measured[seen]) - np.log(predicted[seen])
    return float((r - r.mean()).std())


@pytest.mark.parametrize("batch_size", [TrainConfig().batch_size, 32])
def test_inclusion_probability_matches_the_real_batch_sampler(ml100k_data, batch_size):
    measured, incl, p = _measure(ml100k_data, batch_size)
    # Observed on ml-100k (seed 0, 5 epochs), 128 / 32 users a batch: correlation 0.905 / 0.954
    # (frequency form 0.658 / 0.806), log residual sd 0.257 / 0.241 (frequency 0.920 / 0.579),
    # mean relative error 0.166 / 0.164 where the prediction is >= 0.5. Thresholds leave a margin
    # of about 0.03-0.05 over those and still fail the plausible mistakes: T = users in the batch
    # (correlation 0.69, residual 0.88) or T = distinct candidates (0.82, relative error 0.30).
    corr_incl = np.corrcoef(measured, incl)[0, 1]
    corr_freq = np.corrcoef(measured, p)[0, 1]  # the frequency form's implied rate, up to scale
    assert corr_incl >= 0.88
    assert corr_incl >= corr_freq + 0.1
    sd_incl, sd_freq = _log_residual_sd(measured, incl), _log_residual_sd(measured, p)
    assert sd_incl <= 0.3
    assert sd_freq >= 2 * sd_incl  # log p_j is not the shape of the candidates' inclusion
    frequent = incl >= 0.5
    assert frequent.sum() > 200
    assert np.abs(measured[frequent] / incl[frequent] - 1).mean() <= 0.2
    # The i.i.d. formula overstates inclusion by about 13-15% on average: a batch holds users of
    # similar length, a user never repeats an item and similar users share items, so targets
    # cluster on fewer distinct items than independent draws would. Bounded, not hidden.
    assert 0.8 <= measured.mean() / incl.mean() <= 1.0
