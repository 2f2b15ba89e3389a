"""Full-ranking evaluation over every item, the user's history masked, batched over items.

A target's rank is the number of unmasked items that score higher than it (ties go to the lower
item id, as a stable sort would: popularity has many ties), so the memory
of one step is (user batch x item chunk) whatever the catalogue size; Recall@K and NDCG@K for
every K follow from the ranks. A running top-100 gives catalogue coverage.

A NaN or infinite score is never ranked: every comparison with NaN is false, so it would rank
its target first. A row whose user vector or target is not finite, and every row when some item
vector is not, gets a NaN rank, and any metric over a NaN rank is NaN: a diverged model's
recall is not a number a search can pick.
"""

from __future__ import annotations

import math

import numpy as np
import torch

KS = (10, 20, 50, 100)
TOPK = 100


@torch.no_grad()
def rank_targets(user_vecs: torch.Tensor, item_vecs: torch.Tensor, targets: np.ndarray,
                 hist_offsets: np.ndarray, hist_items: np.ndarray, item_chunk: int = 65536):
    """Ranks (0 = best) of each row's target among all items, and each row's top-100 items.

    user_vecs: (b, d); item_vecs: (n_items + 1, d), row 0 padding (never ranked);
    hist_offsets/hist_items: CSR of the items to mask per row (the history before the target).
    """
    device = user_vecs.device
    b = user_vecs.shape[0]
    n = item_vecs.shape[0]
    tgt = torch.as_tensor(targets, device=device)
    tgt_score = (user_vecs * item_vecs[tgt]).sum(-1)
    lens = np.diff(hist_offsets)
    rows_all = torch.as_tensor(np.repeat(np.arange(b), lens), device=device)
    cols_all = torch.as_tensor(hist_items, device=device)
    ranks = torch.zeros(b, dtype=torch.long, device=device)
    k = min(TOPK, n - 1)
    top_val = torch.full((b, 0), float("-inf"), device=device)
    top_idx = torch.zeros((b, 0), dtype=torch.long, device=device)
    broken = ~torch.isfinite(tgt_score)
    if not bool(torch.isfinite(item_vecs[1:]).all()):
        broken[:] = True
    for c0 in range(0, n, item_chunk):
        c1 = min(n, c0 + item_chunk)
        scores = user_vecs @ item_vecs[c0:c1].T
        if c0 == 0:
            scores[:, 0] = float("-inf")  # padding
        sel = (cols_all >= c0) & (cols_all < c1)
        scores[rows_all[sel], cols_all[sel] - c0] = float("-inf")
        ids = torch.arange(c0, c1, device=device)
        t = tgt_score[:, None]
        # The target never outranks itself (its score here and in tgt_score may differ by an ulp).
        others = ids[None, :] != tgt[:, None]
        ranks += ((scores > t) & others).sum(1) + ((scores == t) & (ids[None, :] < tgt[:, None])).sum(1)
        val, idx = torch.cat([top_val, scores], 1), torch.cat([top_idx, ids.expand(b, -1)], 1)
        top_val, pos = val.topk(min(k, val.shape[1]), dim=1)
        top_idx = idx.gather(1, pos)
    top_idx[torch.isinf(top_val)] = 0  # fewer unmasked items than k: no masked item sneaks in
    ranks = ranks.cpu().numpy().astype(np.float64)
    ranks[broken.cpu().numpy()] = np.nan
    return ranks, top_idx.cpu().numpy()


def ranking_metrics(ranks: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Recall@K and NDCG@K; NaN where any rank is NaN (a score that was not a number)."""
    out = {}
    if len(ranks) == 0:
        return out
    broken = bool(np.isnan(ranks).any())
    for k in KS:
        hit = ranks < k
        out[f"{prefix}recall@{k}"] = math.nan if broken else float(hit.mean())
        out[f"{prefix}ndcg@{k}"] = math.nan if broken else float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    return out


def summarize(ranks: np.ndarray, top: np.ndarray | None, users: np.ndarray, targets: np.ndarray,
              cold_mask: np.ndarray, tail_mask: np.ndarray, n_items: int,
              coverage: float | None = None) -> dict[str, float]:
    """All users, cold-start users apart, tail-target users apart, and coverage@100 (from the
    rows' ``top`` items, or given as ``coverage``)."""
    out = ranking_metrics(ranks)
    cold = cold_mask[users]
    out |= {k: v for k, v in ranking_metrics(ranks[cold], "cold/").items() if k.endswith(("@10", "@100"))}
    tail = tail_mask[targets]
    broken = bool(np.isnan(ranks).any())
    if tail.any():
        out["tail_recall@100"] = math.nan if broken else float((ranks[tail] < 100).mean())
    if coverage is None:
        # A mask, not np.unique: NumPy 2's hashing unique took seconds on a validation's 2M entries.
        seen = np.zeros(n_items + 1, dtype=bool)
        seen[top[:, :100].ravel()] = True
        coverage = float(seen[1:].sum() / n_items)
    out["coverage@100"] = math.nan if broken else coverage
    out["n_users"] = int(len(ranks))
    return out


def tail_items(counts: np.ndarray) -> np.ndarray:
    """Tail = every item outside the 20% most popular by train count (ties broken by id)."""
    n = len(counts) - 1
    order = np.argsort(-counts[1:], kind="stable") + 1
    tail = np.ones(len(counts), dtype=bool)
    tail[0] = False
    tail[order[: int(math.ceil(0.2 * n))]] = False
    return tail


@torch.no_grad()
def effective_rank(vecs: torch.Tensor) -> float:
    """Roy & Vetterli (2007): exp of the entropy of the normalised singular values.
    A collapsing item tower shows as a falling effective rank. NaN when a vector is not finite (a
    diverged tower: the SVD would raise, and the epoch must still be recorded as diverged)."""
    if not bool(torch.isfinite(vecs).all()):
        return float("nan")
    s = torch.linalg.svdvals(vecs.float())
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


@torch.no_grad()
def uniformity(vecs: torch.Tensor, sample: int = 2048, seed: int = 0) -> float:
    """Wang & Isola (2020): log E exp(-2 ||x - y||^2) over pairs; lower is more uniform."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randperm(vecs.shape[0], generator=g)[:sample].to(vecs.device)
    x = vecs[idx].float()
    d2 = torch.cdist(x, x).pow(2)
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    return float(torch.log(torch.exp(-2 * d2[off]).mean()))


def popularity_ranks(counts: np.ndarray, targets: np.ndarray, hist_offsets: np.ndarray,
                     hist_items: np.ndarray) -> tuple[np.ndarray, float]:
    """Ranks of a most-popular ranking in closed form, and its coverage@100, with the history masked.

    The same ranking ``rank_targets`` makes of the scores ``counts`` (ties to the lower item id),
    without scoring every item for every user: an item's place in the one global order, less the
    user's masked items placed before it. Time O(history entries x log), memory O(history entries):
    the ranked computation took 4.6 GB at 1M interactions.
    """
    n = len(counts) - 1
    order = np.lexsort((np.arange(1, n + 1), -counts[1:])) + 1  # items by count, ties by id
    pos = np.empty(n + 1, dtype=np.int64)
    pos[order] = np.arange(n)
    pos[0] = n  # padding: never ranked
    rows = np.repeat(np.arange(len(targets)), np.diff(hist_offsets))
    # Each masked item counts once per user, however often it is in the history; sorted by (row,
    # place), as the coverage wants. A sort, not np.unique: NumPy 2's hashing unique was 20 times
    # slower here, and superlinear (13 s for the 8M history entries of 10M interactions).
    rows, masked = _distinct_pairs(rows, pos[hist_items], n + 1)
    coverage = _popularity_coverage(rows, masked, len(targets), n)
    # Masked items placed before the target; the target itself never outranks itself.
    before = masked < pos[targets[rows]]
    ranks = pos[targets] - np.bincount(rows[before], minlength=len(targets))
    return ranks.astype(np.float64), coverage


def _distinct_pairs(rows: np.ndarray, cols: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (row, col) pairs, 0 <= col < width, sorted by row then col."""
    key = np.sort(rows.astype(np.int64) * width + cols)
    keep = np.ones(len(key), dtype=bool)
    keep[1:] = key[1:] != key[:-1]
    key = key[keep]
    return key // width, key % width


def _popularity_coverage(rows: np.ndarray, masked: np.ndarray, n_rows: int, n: int) -> float:
    """|union of every row's top-100 unmasked items| / n, rows' masked positions given (distinct,
    sorted by row then position).

    Row u's top TOPK are the global positions below c_u except its masked ones, where
    c_u = TOPK + #{masked p_i : p_i - i < TOPK} (p_i ascending, i from 0). Position j is covered
    when some row has c_u > j without masking j."""
    k = min(TOPK, n)
    starts = np.searchsorted(rows, np.arange(n_rows))
    i = np.arange(len(rows)) - starts[rows]
    cut = np.minimum(k + np.bincount(rows[masked - i < k], minlength=n_rows), n)
    reach = np.bincount(cut, minlength=n + 1)[::-1].cumsum()[::-1]  # reach[j] = #{u: cut_u >= j}
    reaching = reach[1:]  # #{u: cut_u > j}, j = 0..n-1
    hidden = np.bincount(masked[masked < cut[rows]], minlength=n)[:n]
    return float((reaching > hidden).sum() / n)
