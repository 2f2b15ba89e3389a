"""Every tensor the curriculum and its evaluation read, built once from a bundle.

    data = TrainData.build(bundle, max_len, device)
    data.train_seqs      (n_train_users, max_len + 1) left-padded item ids: inputs and targets
    data.eval_inputs     {"val": ..., "test": ...} (n_users, max_len): the history before the target
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raytower.train import metrics as M
from raytower.train.loss import log_sampling_prob

META_COLUMNS = ("age_bucket", "gender_idx", "occupation_idx")


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
    train_users: np.ndarray  # users with at least an input and a target
    train_seqs: torch.Tensor
    train_lens: np.ndarray  # each train user's sequence length, capped at max_len + 1
    meta: torch.Tensor  # (n_users + 1, len(META_COLUMNS)) feature bucket ids
    log_q: torch.Tensor  # log of each item's share of the train interactions
    tail: np.ndarray  # items outside the 20% most popular
    eval_sets: dict
    eval_inputs: dict[str, torch.Tensor]

    @classmethod
    def build(cls, bundle, max_len: int, device: str | torch.device = "cpu") -> "TrainData":
        off, items = bundle.train_sequences
        users = np.flatnonzero(np.diff(off) >= 2)  # a training example needs an input and a target
        eval_sets = {s: bundle.eval_set(s) for s in ("val", "test")}
        return cls(
            bundle=bundle,
            train_users=users,
            train_seqs=torch.as_tensor(left_padded(off, items, users, max_len + 1), device=device),
            train_lens=np.minimum(np.diff(off)[users], max_len + 1),
            meta=torch.as_tensor(np.stack([bundle.user_feature(c) for c in META_COLUMNS], 1), device=device),
            log_q=log_sampling_prob(torch.as_tensor(bundle.item_counts)).to(device),
            tail=M.tail_items(bundle.item_counts),
            eval_sets=eval_sets,
            eval_inputs={s: torch.as_tensor(left_padded(ev.hist_offsets, ev.hist_items, np.arange(len(ev)), max_len),
                                            device=device) for s, ev in eval_sets.items()},
        )
