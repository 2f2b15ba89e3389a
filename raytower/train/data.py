"""What the curriculum and its evaluation read, built once from a bundle.

    data = TrainData.build(bundle, max_len, device)
    data.train_batch(rows, width)          (len(rows), width) left-padded items: inputs and targets
    data.eval_batch("val", rows, width)    (len(rows), width) the history before each target
    epoch_batches(data.train_lens, ...)    an epoch's batches of train-user positions
    training_targets(seqs, "all")          a batch's inputs, targets and which of them train

Sequences stay in CSR form (offsets, items): memory is linear in the interactions, and a batch
is padded only to its own longest sequence when it is drawn. On a GPU the CSR arrays are copied to
the device once when they fit DEVICE_DATA_BUDGET of its memory, and batches are padded there;
otherwise they stay in host memory and each padded batch is copied over (streamed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raytower import metrics
from raytower.errors import DataError
from raytower.names import META_COLUMNS
from raytower.train.config import VAL_USERS_AUTO
from raytower.train.loss import log_sampling_prob

SHUFFLE_POOL = 32  # batches sorted by length together: little padding, yet well shuffled
VAL_SAMPLE_SEED = 0  # one validation sample per data set, whatever the trial's seed
# The share of a GPU's memory the data set may take when it is copied there whole: the rest is the
# model's, its optimizer's and the in-batch logits' (positions x candidates), which grow with batches.
DEVICE_DATA_BUDGET = 0.25


def resident_on_device(device: torch.device, nbytes: int, budget: float = DEVICE_DATA_BUDGET) -> bool:
    """Whether the CSR arrays (``nbytes``) are copied to ``device`` once: only an accelerator, and
    only when they fit ``budget`` of its memory."""
    if device.type != "cuda":
        return False
    return nbytes <= budget * torch.cuda.get_device_properties(device).total_memory


def left_padded_torch(offsets: torch.Tensor, items: torch.Tensor, rows: torch.Tensor, width: int) -> torch.Tensor:
    """``left_padded`` with torch ops, on whatever device the tensors are (a resident data set)."""
    ends = offsets[rows + 1]
    lens = torch.clamp(ends - offsets[rows], max=width)
    out = torch.zeros((len(rows), width), dtype=torch.long, device=items.device)
    r = torch.repeat_interleave(torch.arange(len(rows), device=items.device), lens)
    starts = torch.cumsum(lens, 0) - lens
    within = torch.arange(int(lens.sum()), device=items.device) - torch.repeat_interleave(starts, lens)
    cols = width - torch.repeat_interleave(lens, lens) + within
    out[r, cols] = items[torch.repeat_interleave(ends - lens, lens) + within]
    return out


def left_padded(offsets: np.ndarray, items: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """The last ``width`` items of each CSR row in ``rows``, right-aligned, 0-padded on the left."""
    out = np.zeros((len(rows), width), dtype=np.int64)
    ends = offsets[rows + 1]
    lens = np.minimum(ends - offsets[rows], width)
    r = np.repeat(np.arange(len(rows)), lens)
    within = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    cols = width - np.repeat(lens, lens) + within
    out[r, cols] = items[np.repeat(ends - lens, lens) + within]
    return out


@dataclass
class TrainData:
    bundle: object
    max_len: int
    device: torch.device
    train_users: np.ndarray  # users with at least an input and a target
    train_lens: np.ndarray  # each train user's sequence length, capped at max_len + 1
    meta: torch.Tensor  # (n_users + 1, len(META_COLUMNS)) feature bucket ids
    log_q: torch.Tensor  # log of each item's share of the train interactions
    tail: np.ndarray  # items outside the 20% most popular
    eval_sets: dict
    resident: dict | None = None  # name -> (offsets, items) on the device, when the data set fits there

    @classmethod
    def build(cls, bundle, max_len: int, device: str | torch.device = "cpu", val_users: int = -1) -> "TrainData":
        """``val_users``: TrainConfig's (-1 auto, 0 all, else a seeded sample of that many)."""
        off, _ = bundle.train_sequences
        val, test = bundle.eval_set("val"), bundle.eval_set("test")
        if not len(val) or not len(test):  # a temporal split can leave one side empty
            raise DataError(f"no {'validation' if not len(val) else 'test'} users with a history in this bundle: "
                            "nothing to choose epochs by or to test on (try --split leave_last_out)", bundle.path)
        n_val = VAL_USERS_AUTO if val_users == -1 else val_users
        if n_val:
            val = val.sample(n_val, seed=VAL_SAMPLE_SEED)
        users = np.flatnonzero(np.diff(off) >= 2)  # a training example needs an input and a target
        return cls(
            bundle=bundle, max_len=max_len, device=torch.device(device),
            train_users=users,
            train_lens=np.minimum(np.diff(off)[users], max_len + 1),
            meta=torch.as_tensor(np.stack([bundle.user_feature(c) for c in META_COLUMNS], 1), device=device),
            log_q=log_sampling_prob(torch.as_tensor(bundle.item_counts)).to(device),
            tail=metrics.tail_items(bundle.item_counts),
            eval_sets={"val": val, "test": test},
            resident=_resident(bundle, {"val": val, "test": test}, torch.device(device)),
        )

    def train_batch(self, rows: np.ndarray, width: int) -> torch.Tensor:
        """The last ``width`` train items of the train users at positions ``rows`` (<= max_len + 1)."""
        if self.resident:
            off, items = self.resident["train"]
            users = torch.as_tensor(self.train_users[rows], device=self.device)
            return left_padded_torch(off, items, users, width)
        off, items = self.bundle.train_sequences
        return _to(left_padded(off, items, self.train_users[rows], width), self.device)

    def eval_batch(self, split: str, rows: np.ndarray, width: int) -> torch.Tensor:
        """The last ``width`` history items (<= max_len) of the evaluated users at positions ``rows``."""
        if self.resident:
            off, items = self.resident[split]
            return left_padded_torch(off, items, torch.as_tensor(rows, device=self.device), width)
        ev = self.eval_sets[split]
        return _to(left_padded(ev.hist_offsets, ev.hist_items, rows, width), self.device)


def _resident(bundle, eval_sets: dict, device: torch.device) -> dict | None:
    """The CSR arrays on ``device`` when resident_on_device says they fit; else None (streamed)."""
    off, items = bundle.train_sequences
    arrays = {"train": (off, items), **{k: (ev.hist_offsets, ev.hist_items) for k, ev in eval_sets.items()}}
    nbytes = sum(8 * (a.size + b.size) for a, b in arrays.values())  # as int64 on the device
    if not resident_on_device(device, nbytes):
        return None
    return {k: (torch.as_tensor(a, dtype=torch.long, device=device), torch.as_tensor(b, dtype=torch.long, device=device))
            for k, (a, b) in arrays.items()}


def _to(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """A padded batch from host memory to the device: pinned, so the copy can overlap (streamed)."""
    t = torch.from_numpy(batch)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def epoch_batches(lens: np.ndarray, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1, by_length: bool = True) -> list[np.ndarray]:
    """One rank's batches of one epoch, as positions into the train users (``lens``: their
    sequence lengths). Shuffled, then (``by_length``) grouped by sequence length within pools of
    SHUFFLE_POOL batches, so a batch is cropped to little padding; the batch order is shuffled.
    ``by_length=False``: each batch a random set of users, as SASRec+ draws them. A fresh
    generator per (seed, epoch) makes a resumed run draw the same batches.

    ``batch_size`` counts users; with ``targets = "last"`` each user is one training row, so it
    counts rows too. With "all" a batch trains every position of its users: its number of targets
    follows their lengths."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lens), generator=g)
    # Every DDP rank must take the same number of steps, or the last all-reduce hangs.
    order = order[: len(order) - len(order) % world_size][rank::world_size].numpy()
    if not by_length:
        return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    batches = []
    for p in range(0, len(order), SHUFFLE_POOL * batch_size):
        pool = order[p:p + SHUFFLE_POOL * batch_size]
        pool = pool[np.argsort(lens[pool], kind="stable")]
        batches += [pool[s:s + batch_size] for s in range(0, len(pool), batch_size)]
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[k] for k in perm]


def training_targets(seqs: torch.Tensor, targets: str = "all") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, valid) of a ``train_batch``: position t's target is item t + 1.

    "all": every position with an input and a target trains; targets and valid are (B, width - 1).
    "last": only each sequence's last item, in the last column of the left-padded batch (every
    train user has an input and a target): targets and valid are (B, 1), one row per user, and
    the user tower need only output its last position (``last_only``)."""
    inp, tgt = seqs[:, :-1], seqs[:, 1:]
    if targets == "last":
        tgt = tgt[:, -1:]
        return inp, tgt, (inp[:, -1:] > 0) & (tgt > 0)
    return inp, tgt, (inp > 0) & (tgt > 0)
