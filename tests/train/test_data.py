"""TrainData: sequences in CSR form, padded per batch; nothing of size users x max_len."""

import numpy as np
import pytest
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


def test_validation_sample_is_seeded_the_same_for_every_trial_and_test_stays_whole(small_bundle):
    a = TrainData.build(small_bundle, 30, val_users=100)
    b = TrainData.build(small_bundle, 30, val_users=100)
    full = small_bundle.eval_set("val")
    assert len(a.eval_sets["val"]) == 100 and np.array_equal(a.eval_sets["val"].users, b.eval_sets["val"].users)
    assert len(a.eval_sets["test"]) == len(small_bundle.eval_set("test"))
    ev = a.eval_sets["val"]  # each sampled user keeps its own target and history
    k = int(np.searchsorted(full.users, ev.users[3]))
    assert ev.targets[3] == full.targets[k]
    assert np.array_equal(ev.hist_items[ev.hist_offsets[3]:ev.hist_offsets[4]],
                          full.hist_items[full.hist_offsets[k]:full.hist_offsets[k + 1]])
    assert len(TrainData.build(small_bundle, 30, val_users=0).eval_sets["val"]) == len(full)
    assert len(TrainData.build(small_bundle, 30, val_users=-1).eval_sets["val"]) == len(full)  # under the auto size


def test_an_epoch_reports_the_standard_error_of_its_validation_sample(small_bundle, small_artifacts, small_config):
    from raytower.train.loop import Curriculum

    rows = {}
    for seed in (1, 2):  # two trials' seeds: one validation sample
        run = Curriculum.create(small_config.replace(epochs=1, val_users=150, seed=seed), small_bundle, small_artifacts)
        rows[seed] = run.step()
        assert np.array_equal(run.data.eval_sets["val"].users, small_bundle.eval_set("val").sample(150).users)
    r = rows[1]
    assert r["val/n_users"] == 150
    p = r["val/recall@100"]
    assert r["val/recall@100_se"] == pytest.approx((p * (1 - p) / 150) ** 0.5)


def test_a_bundle_without_validation_users_is_one_line_before_training(small_bundle, monkeypatch):
    from raytower.data import EvalSet
    from raytower.errors import DataError

    empty = EvalSet(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64))
    real = small_bundle.eval_set
    monkeypatch.setattr(small_bundle, "eval_set", lambda split: empty if split == "val" else real(split))
    with pytest.raises(DataError, match="no validation users"):  # a temporal split can leave it empty
        TrainData.build(small_bundle, 30)


def test_padding_on_the_device_equals_padding_on_the_host():
    from raytower.train.data import left_padded, left_padded_torch

    rng = np.random.default_rng(0)
    lens = rng.integers(0, 12, size=50)
    lens[3] = 0  # a user with no history
    offsets = np.concatenate([[0], np.cumsum(lens)])
    items = rng.integers(1, 100, size=int(lens.sum()))
    rows = rng.permutation(50)[:20]
    for width in (1, 5, 12):
        want = left_padded(offsets, items, rows, width)
        got = left_padded_torch(torch.as_tensor(offsets), torch.as_tensor(items), torch.as_tensor(rows), width)
        assert np.array_equal(got.numpy(), want), width


def test_the_data_set_goes_to_a_gpu_only_within_its_budget(monkeypatch):
    from types import SimpleNamespace

    from raytower.train import data as D

    gpu = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=8 << 30))
    assert D.resident_on_device(gpu, 1 << 30)  # 1 GiB of 8: within a quarter
    assert not D.resident_on_device(gpu, 3 << 30)  # 3 GiB: streamed per batch
    assert not D.resident_on_device(torch.device("cpu"), 1)  # host memory already


def test_a_resident_data_set_gives_the_batches_a_streamed_one_gives(small_bundle, monkeypatch):
    from raytower.train import data as D

    streamed = D.TrainData.build(small_bundle, 20)
    monkeypatch.setattr(D, "resident_on_device", lambda device, nbytes: True)  # as on a GPU it fits
    resident = D.TrainData.build(small_bundle, 20)
    assert streamed.resident is None and set(resident.resident) == {"train", "val", "test"}
    rows = np.arange(0, len(streamed.train_users), 7)
    assert torch.equal(resident.train_batch(rows, 21), streamed.train_batch(rows, 21))
    for split in ("val", "test"):
        r = np.arange(0, len(streamed.eval_sets[split]), 5)
        assert torch.equal(resident.eval_batch(split, r, 20), streamed.eval_batch(split, r, 20))


def test_random_batches_mix_history_lengths_and_cover_every_user_once():
    """batches: random (SASRec+'s) draws each batch from the whole epoch's shuffle; by_length groups
    similar lengths (less padding). Both cover every train user exactly once, the same for a resume."""
    from raytower.train.data import epoch_batches

    lens = np.random.default_rng(0).integers(3, 400, size=5000)
    spread = {}
    for by_length in (True, False):
        batches = epoch_batches(lens, 128, seed=1, epoch=2, by_length=by_length)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(lens)))
        again = epoch_batches(lens, 128, seed=1, epoch=2, by_length=by_length)
        assert all(np.array_equal(a, b) for a, b in zip(batches, again))
        spread[by_length] = np.mean([lens[b].max() - lens[b].min() for b in batches])
    assert spread[True] < 30 < 300 < spread[False]  # the padding each batch is cropped to
