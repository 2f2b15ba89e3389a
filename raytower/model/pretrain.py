"""Pretraining, once per data set: LightGCN embeddings, then the item tower on top of them.

Both are cached by (bundle fingerprint, pretraining config, method) and loaded read-only by every
trial: a search pays for them once, before its first trial.

Both cost time linear in the interactions. LightGCN (He et al. 2020) is trained the post-training
way (``train_lightgcn``): BPR with several sampled negatives per positive on plain embedding lookups
with sparse gradients, then the graph propagation once, mixed into the trained table. Training through the propagation, as raytower did up to artifact format 1,
propagated over the whole graph at every step: about 85 minutes at 1M interactions, days at 10M
(``benchmarks/bench_pretrain.py`` keeps that method as the reference of the quality gate).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raytower._io import atomic_dir, cache_root, write_json, write_serialised
from raytower._lock import hold_cache_entry
from raytower._progress import Progress
from raytower.errors import DataError
from raytower.model.two_tower import ItemTower

log = logging.getLogger(__name__)
ARTIFACT_FORMAT = 2
# The method's name and version: in the cache key, so a cache never serves another method's tables.
METHOD = "lightgcn-bpr-then-propagate/2"  # /2: gnn_negatives and the weighted readout


@dataclass(frozen=True)
class PretrainConfig:
    dim: int = 64
    item_layers: int = 3
    gnn_layers: int = 1  # propagation layers after training; more smoothed too much (bench_pretrain.py)
    # The readout: (1 - w) E + w mean_k A_hat^k E. LightGCN's uniform mean over layers 0..1 is w = 0.5;
    # applied after training, that smoothed too much (0.454 against 0.474 at 1M, benchmarks/results/scale.md).
    gnn_propagation: float = 0.1
    gnn_negatives: int = 4  # sampled negatives per positive: 1 read 0.436 at 1M, 4 read 0.474
    gnn_epochs: int = 40
    gnn_lr: float = 0.01
    gnn_batch: int = 4096
    gnn_reg: float = 3e-3
    tower_epochs: int = 15
    # A step budget: past it, more passes over a large log barely move the loss (bench_scale.py at
    # 1M interactions), and 15 full epochs would cost an hour at 10M. ml-100k takes 660 (15 epochs).
    tower_max_steps: int = 3000
    tower_lr: float = 2e-3
    tower_batch: int = 2048
    tower_temp: float = 0.1
    id_dropout: float = 0.5  # hide the id this often so genres and year carry weight
    seed: int = 0

    @classmethod
    def for_train(cls, cfg, **overrides) -> "PretrainConfig":
        return cls(dim=cfg.dim, item_layers=cfg.item_layers, **overrides)

    def key(self) -> str:
        doc = {**asdict(self), "method": METHOD, "format": ARTIFACT_FORMAT}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Artifacts:
    """What every trial loads: frozen GNN tables and the pretrained item tower's weights."""

    path: Path
    gnn_user: torch.Tensor  # (n_users + 1, dim); rows of cold users are unused
    gnn_item: torch.Tensor  # (n_items + 1, dim)
    item_tower: dict[str, torch.Tensor]
    config: PretrainConfig
    stats: dict

    @classmethod
    def load(cls, path: str | Path) -> "Artifacts":
        path = Path(path)
        try:
            meta = json.loads((path / "manifest.json").read_text())
            if meta.get("format") != ARTIFACT_FORMAT or meta.get("method") != METHOD:
                raise DataError(f"pretraining artifacts of another format or method ({meta.get('format')}, "
                                f"{meta.get('method')}; this raytower reads {ARTIFACT_FORMAT}, {METHOD})", path)
            tables = torch.load(path / "lightgcn.pt", weights_only=True, map_location="cpu")
            tower = torch.load(path / "item_tower.pt", weights_only=True, map_location="cpu")
            return cls(path, tables["user"], tables["item"], tower, PretrainConfig(**meta["config"]), meta["stats"])
        except DataError:
            raise
        except FileNotFoundError as e:
            raise DataError(f"incomplete pretraining artifacts ({Path(e.filename).name} missing)", path) from None
        except Exception as e:  # a tampered or truncated file: refuse, never execute
            raise DataError(f"unreadable pretraining artifacts ({type(e).__name__})", path) from None


def artifacts_dir(bundle, pcfg: PretrainConfig) -> Path:
    return cache_root() / "pretrain" / f"{bundle.name}-{bundle.fingerprint}-{pcfg.key()}"


def build_item_tower(bundle, dim: int, item_layers: int) -> ItemTower:
    return ItemTower(
        bundle.n_items, bundle.n_genres, bundle.n_year_buckets, dim, item_layers,
        torch.as_tensor(bundle.item_genres), torch.as_tensor(bundle.item_year_bucket),
    )


def pretrain(bundle, pcfg: PretrainConfig, dest: Path | None = None, progress=print, device: str = "cpu") -> Artifacts:
    """Load the cached artifacts for (bundle, pcfg), or compute them on ``device`` and cache them
    (on the CPU, whatever the device). A cache entry that is damaged or of another format is made
    again (atomically), never misread."""
    dest = Path(dest) if dest else artifacts_dir(bundle, pcfg)
    cached = _cached(dest, progress)
    if cached is not None:
        return cached
    with hold_cache_entry(dest, on_wait=progress):  # another search or trial making them: wait, then reuse
        cached = _cached(dest, None)
        return cached if cached is not None else _make(bundle, pcfg, dest, progress, device)


def _cached(dest: Path, progress) -> Artifacts | None:
    if (dest / "manifest.json").is_file():
        try:
            return Artifacts.load(dest)
        except DataError as e:
            if progress:
                progress(f"remaking the pretraining artifacts: {e}")
    return None


def _make(bundle, pcfg: PretrainConfig, dest: Path, progress, device: str) -> Artifacts:
    torch.manual_seed(pcfg.seed)
    np.random.seed(pcfg.seed)
    gnn_user, gnn_item, gnn_stats = train_lightgcn(bundle, pcfg, progress, device)
    gnn_stats["lightgcn_val_recall@100"] = graph_recall(bundle, gnn_user, gnn_item, "val")
    if progress:
        progress(f"  lightgcn's own validation Recall@100 (graph users): {gnn_stats['lightgcn_val_recall@100']:.4f}")
    tower, tower_stats = train_item_tower(bundle, pcfg, gnn_user, gnn_item, progress, device)
    with atomic_dir(dest) as tmp:
        write_serialised(tmp / "lightgcn.pt", lambda buffer: torch.save({"user": gnn_user, "item": gnn_item}, buffer))
        write_serialised(tmp / "item_tower.pt", lambda buffer: torch.save(tower.state_dict(), buffer))
        write_json(tmp / "manifest.json", {
            "format": ARTIFACT_FORMAT, "method": METHOD, "bundle": bundle.fingerprint, "config": asdict(pcfg),
            "stats": gnn_stats | tower_stats,
        })
    return Artifacts.load(dest)


def _batch_size(n: int, cap: int) -> int:
    """At least 20 steps an epoch: on a small data set a fixed large batch would take only a few."""
    return max(64, min(cap, n // 20))


def train_lightgcn(bundle, pcfg: PretrainConfig, progress=print, device: str = "cpu"):
    """LightGCN vectors of the graph users and items, in time linear in the interactions.

    BPR (``gnn_negatives`` sampled negatives per positive) trains the layer-0 table on plain
    lookups with sparse gradients (SparseAdam): a step touches only its batch's rows, whatever the
    table size. LightGCN's propagation (the normalised adjacency's powers 1..gnn_layers applied to
    the table) then runs once, on the trained table, and is mixed in with weight gnn_propagation:
    post-training graph convolution (LightGODE, arXiv 2407.18910). Propagating inside every step,
    as LightGCN's training does, made an epoch cost edges x edges. The random draws are made on the
    CPU, so a seed gives the same batches on any device. Returns CPU tensors.
    """
    U, I = bundle.n_users, bundle.n_items
    users, items = bundle.train_pairs(graph_only=True)
    src = torch.as_tensor(users - 1, dtype=torch.long).to(device)  # user rows 0..U-1
    dst = torch.as_tensor(items - 1, dtype=torch.long).to(device)  # item rows 0..I-1
    gen = torch.Generator().manual_seed(pcfg.seed)
    user_emb = torch.nn.Embedding(U, pcfg.dim, sparse=True)
    item_emb = torch.nn.Embedding(I, pcfg.dim, sparse=True)
    for table in (user_emb, item_emb):  # LightGCN's initialisation (PyG: Xavier-uniform)
        torch.nn.init.xavier_uniform_(table.weight, generator=gen)
    user_emb, item_emb = user_emb.to(device), item_emb.to(device)
    opt = torch.optim.SparseAdam([user_emb.weight, item_emb.weight], lr=pcfg.gnn_lr)
    n = len(src)
    batch = _batch_size(n, pcfg.gnn_batch)
    total = 0.0
    steps = math.ceil(n / batch)
    bar = Progress(f"lightgcn ({pcfg.gnn_epochs} epochs of {steps} steps)", pcfg.gnn_epochs * steps, log=progress)
    for epoch in range(pcfg.gnn_epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        total = torch.zeros((), device=device)  # summed on the device: no sync per step
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            k = pcfg.gnn_negatives
            neg = torch.randint(0, I, (len(idx), k), generator=gen).to(device)
            u, pos, negv = user_emb(src[idx]), item_emb(dst[idx]), item_emb(neg)  # negv: (batch, k, dim)
            # BPR against each of k negatives: more of the catalogue is pushed down per positive,
            # at the cost of k lookups (still linear, and per step independent of the table size).
            margin = (u * pos).sum(-1, keepdim=True) - (u.unsqueeze(1) * negv).sum(-1)
            bpr = -F.logsigmoid(margin).mean()
            # L2 on the rows this step touches, as LightGCN's BPR loss regularises its batch (the
            # negatives' rows weighed as one negative's).
            reg = pcfg.gnn_reg * (u.pow(2).sum() + pos.pow(2).sum() + negv.pow(2).sum() / k) / len(idx)
            loss = bpr + reg
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            bar.update(epoch * steps + start // batch + 1,
                       lambda: f"epoch {epoch + 1}  bpr loss {float(total) / min(n, start + batch):.4f}")
    total = float(total)
    bar.close(f"bpr loss {total / max(n, 1):.4f}")
    with torch.no_grad():
        emb = propagate(torch.cat([user_emb.weight, item_emb.weight]), src, dst + U, U + I, pcfg.gnn_layers,
                        pcfg.gnn_propagation).cpu()
    pad = torch.zeros(1, pcfg.dim)
    gnn_user = torch.cat([pad, emb[:U]]).contiguous()
    gnn_item = torch.cat([pad, emb[U:]]).contiguous()
    return gnn_user, gnn_item, {"lightgcn_bpr_loss": float(total / max(n, 1))}


@torch.no_grad()
def graph_recall(bundle, gnn_user: torch.Tensor, gnn_item: torch.Tensor, split: str = "val", k: int = 100) -> float:
    """LightGCN's own Recall@k: user . item scores, history masked, full ranking, over the users
    of ``split`` that are in the graph (cold-start users have no LightGCN vector)."""
    from raytower import metrics as M

    ev = bundle.eval_set(split)
    rows = np.flatnonzero(~bundle.cold_mask[ev.users])
    hits = 0
    for s in range(0, len(rows), 1024):
        r = rows[s:s + 1024]
        starts, ends = ev.hist_offsets[r], ev.hist_offsets[r + 1]
        hist = np.concatenate([ev.hist_items[a:b] for a, b in zip(starts, ends)]) if len(r) else np.zeros(0, np.int64)
        ranks, _ = M.rank_targets(gnn_user[torch.as_tensor(ev.users[r])], gnn_item, ev.targets[r],
                                  np.concatenate([[0], np.cumsum(ends - starts)]), hist)
        hits += int((ranks < k).sum())
    return hits / max(len(rows), 1)


def propagate(x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n_nodes: int, layers: int,
              weight: float | None = None) -> torch.Tensor:
    """LightGCN's readout: (1 - weight) x + weight mean over k = 1..layers of A_hat^k x, with
    A_hat = D^-1/2 A D^-1/2 of the undirected graph with edges src-dst; ``weight`` None is
    LightGCN's own uniform mean over k = 0..layers. layers sparse products: O(edges x dim)."""
    row, col = torch.cat([src, dst]), torch.cat([dst, src])
    deg = torch.bincount(row, minlength=n_nodes).to(x.dtype)
    inv_sqrt = deg.pow(-0.5).masked_fill(deg == 0, 0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta", invariant checks
        adj = torch.sparse_coo_tensor(torch.stack([row, col]), inv_sqrt[row] * inv_sqrt[col], (n_nodes, n_nodes))
        adj = adj.coalesce().to_sparse_csr()
    if layers == 0:
        return x.clone()
    if weight is None:
        weight = layers / (layers + 1)
    hops, h = torch.zeros_like(x), x
    for _ in range(layers):
        h = adj @ h
        hops += h
    return (1 - weight) * x + weight * hops / layers


def train_item_tower(bundle, pcfg: PretrainConfig, gnn_user: torch.Tensor, gnn_item: torch.Tensor, progress=print,
                     device: str = "cpu"):
    """In-batch softmax of frozen LightGCN user vectors against the tower's outputs.

    The tower starts from the LightGCN item vectors but must reproduce them through content
    (ids are hidden ``id_dropout`` of the time), so its outputs live in the user vectors' space.
    Trained on ``device``; returned on the CPU.
    """
    tower = build_item_tower(bundle, pcfg.dim, pcfg.item_layers)
    with torch.no_grad():
        tower.id_emb.weight.copy_(gnn_item)
    tower = tower.to(device)
    users, items = bundle.train_pairs(graph_only=True)
    users = torch.as_tensor(users, dtype=torch.long).to(device)
    items = torch.as_tensor(items, dtype=torch.long).to(device)
    u_vec = F.normalize(gnn_user.to(device), dim=-1)
    # The id table's rows get sparse gradients and SparseAdam, so a step costs the same whatever
    # the catalogue size; the rest is small and dense. (Sparse here only: the curriculum's Adam
    # takes the table dense when Stage 2 unfreezes it.)
    tower.id_emb.sparse = True
    sparse_opt = torch.optim.SparseAdam([tower.id_emb.weight], lr=pcfg.tower_lr)
    opt = torch.optim.Adam([p for name, p in tower.named_parameters() if name != "id_emb.weight"], lr=pcfg.tower_lr)
    gen = torch.Generator().manual_seed(pcfg.seed + 1)
    n = len(users)
    batch = _batch_size(n, pcfg.tower_batch)
    tower.train()
    steps = math.ceil(n / batch)
    budget = min(pcfg.tower_epochs * steps, pcfg.tower_max_steps)
    bar = Progress(f"item tower ({budget} steps, {steps} an epoch)", budget, log=progress)
    done, total, seen = 0, 0.0, 0
    for epoch in range(math.ceil(budget / steps)):
        perm = torch.randperm(n, generator=gen).to(device)
        total, seen = torch.zeros((), device=device), 0  # the mean loss of the latest (possibly partial) pass
        for start in range(0, n, batch):
            if done == budget:
                break
            idx = perm[start:start + batch]
            cand, target = items[idx].unique(return_inverse=True)  # duplicates of a positive: one column
            v = tower(cand, id_dropout=pcfg.id_dropout)
            logits = u_vec[users[idx]] @ v.T / pcfg.tower_temp
            loss = F.cross_entropy(logits, target)
            opt.zero_grad()
            sparse_opt.zero_grad()
            loss.backward()
            opt.step()
            sparse_opt.step()
            total += loss.detach() * len(idx)
            seen += len(idx)
            done += 1
            bar.update(done, lambda: f"epoch {epoch + 1}  in-batch loss {float(total) / seen:.4f}")
    total = float(total)
    bar.close(f"in-batch loss {total / max(seen, 1):.4f}")
    tower.id_emb.sparse = False
    tower = tower.cpu().eval()
    return tower, {"item_tower_loss": float(total / max(seen, 1)), "item_tower_steps": done,
                   "item_tower_random_loss": math.log(min(batch, bundle.n_items))}
