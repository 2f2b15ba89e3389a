"""Full-ranking evaluation of a model on the validation or test users (see ``metrics``).

    metrics, diagnostics = evaluate(model, data, "val")

``metrics`` are the ranking figures (Recall@K, NDCG@K, cold, tail, coverage); ``diagnostics`` what
the run logs beside them: the item vectors' effective rank and uniformity, the fusion's gate.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from raytower import metrics
from raytower._io import write_json
from raytower.model.build import TwoTower
from raytower.model.towers import user_forward
from raytower.train.data import TrainData

USER_BATCH = 256  # users per forward pass of the user tower
RANK_BATCH = 1024  # users per full-ranking pass: memory is RANK_BATCH x item chunk scores


@torch.no_grad()
def user_vectors(model: TwoTower, data: TrainData, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One user vector per evaluated user (the history's last position); the fusion gate too."""
    tower = model.user_tower
    tower.eval()
    ev, device = data.eval_sets[split], data.device
    # Users in order of history length, each batch padded to its longest history: most
    # histories are far shorter than max_len, and attention costs grow with its square.
    lens = np.minimum(np.diff(ev.hist_offsets), data.max_len)
    order = np.argsort(lens, kind="stable")
    users = torch.as_tensor(ev.users, device=device)
    vecs, gates = None, None
    for s in range(0, len(ev), USER_BATCH):
        batch = order[s:s + USER_BATCH]
        rows = torch.as_tensor(batch, device=device)
        u = users[rows]
        seq = data.eval_batch(split, batch, max(1, int(lens[batch].max())))
        out = user_forward(tower, u, seq, data.meta[u], last_only=True)[:, 0]
        vecs = vecs if vecs is not None else torch.empty(len(ev), out.shape[-1], device=device, dtype=out.dtype)
        vecs[rows] = out
        g = getattr(getattr(tower, "fusion", None), "last_gate", None)
        if g is not None:
            gates = gates if gates is not None else torch.empty(len(ev), g.shape[-1], device=device)
            gates[rows] = g[:, 0]
    return vecs, gates


@torch.no_grad()
def evaluate(model: TwoTower, data: TrainData, split: str,
             item_vecs: torch.Tensor | None = None) -> tuple[dict, dict]:
    """(metrics, diagnostics) of ``split``; ``item_vecs`` when the caller already holds them."""
    ev = data.eval_sets[split]
    item_vecs = model.item_vectors() if item_vecs is None else item_vecs
    ranks, top, gate = rank_split(model, data, split, item_vecs)
    bundle = data.bundle
    figures = metrics.summarize(ranks, top, ev.users, ev.targets, bundle.cold_mask, data.tail, bundle.n_items)
    # vector_dim: what the effective rank is out of (a team's towers need not have cfg.dim)
    diagnostics = {"effective_rank": metrics.effective_rank(item_vecs[1:]),
                   "uniformity": metrics.uniformity(item_vecs[1:]), "vector_dim": int(item_vecs.shape[1])}
    if gate is not None:
        diagnostics |= _gate_means(gate, torch.as_tensor(bundle.cold_mask[ev.users], device=gate.device),
                                   model.user_tower.fusion.kind)
    return figures, diagnostics


@torch.no_grad()
def rank_split(model: TwoTower, data: TrainData, split: str, item_vecs: torch.Tensor) -> tuple:
    """(ranks, top, gate): each evaluated user's target rank (0 = best, in ``eval_sets[split]``'s
    order), their top-100 items, and the fusion gate (or None). A paired comparison of two models
    reads the ranks (benchmarks/paired.py)."""
    ev = data.eval_sets[split]
    u, gate = user_vectors(model, data, split)
    ranks, top = [], []
    for s in range(0, len(ev), RANK_BATCH):
        o = ev.hist_offsets[s:s + RANK_BATCH + 1]
        r, t = metrics.rank_targets(u[s:s + RANK_BATCH], item_vecs, ev.targets[s:s + RANK_BATCH], o - o[0],
                                    ev.hist_items[o[0]:o[-1]])
        ranks.append(r)
        top.append(t)
    return np.concatenate(ranks), np.concatenate(top), gate


def _gate_means(gate: torch.Tensor, cold: torch.Tensor, kind: str) -> dict[str, float]:
    """gated: the gate's mean, over all users and apart for cold and warm ones; moe: each expert's."""
    def means(w: torch.Tensor, name: str) -> dict[str, float]:
        nan = float("nan")
        return {name: float(w.mean()), f"{name}_cold": float(w[cold].mean()) if cold.any() else nan,
                f"{name}_warm": float(w[~cold].mean()) if (~cold).any() else nan}

    if kind == "gated":
        return means(gate, "gate_mean")
    out = {}
    for k in range(gate.shape[1]):
        out |= means(gate[:, k], f"expert_{k}")
    return out


POPULARITY_FILE = "popularity.json"  # beside the bundle's files: computed once per bundle


def popularity(bundle) -> dict[str, dict[str, float]]:
    """The popularity baseline of ``val`` and ``test``, computed once per bundle and cached with it."""
    path = bundle.path / POPULARITY_FILE
    key = {"bundle": bundle.fingerprint, "method": "closed-form/1"}
    try:
        doc = json.loads(path.read_text())
        if doc.get("key") == key:
            return doc["metrics"]
    except (OSError, ValueError, AttributeError):
        pass  # not computed yet, or damaged: compute it again
    figures = {s: popularity_metrics(bundle, s) for s in ("val", "test")}
    try:
        write_json(path, {"key": key, "metrics": figures})
    except OSError:
        pass  # a read-only bundle: the figures are still right, only not kept
    return figures


def popularity_metrics(bundle, split: str) -> dict[str, float]:
    """The popularity baseline of ``split``: the most-counted train items first, history masked,
    in closed form (``metrics.popularity_ranks``), no item scored per user."""
    ev = bundle.eval_set(split)
    ranks, coverage = metrics.popularity_ranks(bundle.item_counts, ev.targets, ev.hist_offsets, ev.hist_items)
    return metrics.summarize(ranks, None, ev.users, ev.targets, bundle.cold_mask,
                             metrics.tail_items(bundle.item_counts), bundle.n_items, coverage=coverage)
