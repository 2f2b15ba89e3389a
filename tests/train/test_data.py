"""TrainData: sequences in CSR form, padded per batch; nothing of size users x max_len."""

import numpy as np
import torch

from raytower.train.data import TrainData, left_padded


def _held_bytes(data: TrainData) -> int:
    total = 0
    for v in vars(data).values():
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, np.ndarray):
            total += v.nbytes
    return total


def test_memory_does_not_grow_with_max_len(small_bundle):
    # The padded users x (max_len + 1) matrix it replaced was 64 MB here at max_len 10,000.
    assert _held_bytes(TrainData.build(small_bundle, 5)) == _held_bytes(TrainData.build(small_bundle, 10_000))


def test_a_batch_is_the_padded_matrix_cropped_to_its_longest_sequence(small_bundle):
    data = TrainData.build(small_bundle, max_len=30)
    off, items = small_bundle.train_sequences
    full = left_padded(off, items, data.train_users, 31)
    rows = np.array([5, 0, 17, 3])
    width = int(data.train_lens[rows].max())
    assert torch.equal(data.train_batch(rows, width), torch.as_tensor(full[rows, -width:]))
    ev = data.eval_sets["val"]
    hist = left_padded(ev.hist_offsets, ev.hist_items, np.arange(len(ev)), 30)
    assert torch.equal(data.eval_batch("val", rows, 7), torch.as_tensor(hist[rows, -7:]))
