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
import time
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
# Fields added after format 2, with the value that reproduces the pretraining made before they
# existed: a run.json written before lacks them (raytower.train.run reads them as this).
UNSET_BEFORE = {"gnn_max_samples": 0}


@dataclass(frozen=True)
class PretrainConfig:
    dim: int = 64
    item_layers: int = 3
    gnn_layers: int = 1  # propagation layers after training; more smoothed too much (bench_pretrain.py)
    # The readout: (1 - w) E + w mean_k A_hat^k E. LightGCN's uniform mean over layers 0..1 is w = 0.5;
    # applied after training, that smoothed too much (0.454 against 0.474 at 1M, benchmarks/results/scale.md).
    gnn_propagation: float = 0.1
    gnn_negatives: int = 4  # sampled negatives per positive: 1 read 0.436 at 1M, 4 read 0.474
    # The budgets scale with the data: gnn_epochs passes over the graph's interactions, capped at
    # gnn_max_samples positives (0: no cap, as before the cap existed). On ML-1M (0.99M) the cap is
    # 20 passes: validation Recall@100 0.415 against 0.409 after 40 and 0.414 after 15, at half the
    # CPU time (issue 28 part 2). Small data keeps its 40 passes (at least 20 steps each: _batch_size).
    gnn_epochs: int = 40
    gnn_max_samples: int = 20_000_000
    gnn_lr: float = 0.01
    gnn_batch: int = 4096
    gnn_reg: float = 3e-3
    tower_epochs: int = 15
    # A step budget: past it, more passes over a large log barely move the loss (bench_scale.py at
    # 1M interactions), and 15 full epochs would cost an hour at 10M. ml-100k takes 720 (15 epochs).
    # On ML-1M the latest pass's in-batch loss read 6.47 after 500 steps, 6.43 after 1,000, 6.38
    # after 3,000 (random: 7.62), at about 30 CPU-s a 1,000 steps (issue 28 part 2).
    tower_max_steps: int = 1500
    tower_lr: float = 2e-3
    tower_batch: int = 2048
    tower_temp: float = 0.1
    id_dropout: float = 0.5  # hide the id this often so genres and year carry weight
    seed: int = 0

    @classmethod
    def for_train(cls, cfg, **overrides) -> "PretrainConfig":
        return cls(dim=cfg.dim, item_layers=cfg.item_layers, **overrides)

    def key(self) -> str:
        """The cache key: every field (a changed budget is another entry, never a stale one reused),
        the method and the format. A field added since keeps an entry's older key at the value that
        reproduces the behaviour before it (UNSET_BEFORE), so runs recorded before it find theirs."""
        doc = {k: v for k, v in asdict(self).items() if UNSET_BEFORE.get(k, object()) != v}
        doc = {**doc, "method": METHOD, "format": ARTIFACT_FORMAT}
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
            config = PretrainConfig(**{**UNSET_BEFORE, **meta["config"]})  # a manifest from before a field
            return cls(path, tables["user"], tables["item"], tower, config, meta["stats"])
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
    cached = _cached(dest, pcfg, progress)
    if cached is not None:
        return cached
    with hold_cache_entry(dest, on_wait=progress):  # another search or trial making them: wait, then reuse
        cached = _cached(dest, pcfg, None)
        return cached if cached is not None else _make(bundle, pcfg, dest, progress, device)


def _cached(dest: Path, pcfg: PretrainConfig, progress) -> Artifacts | None:
    """The entry at ``dest`` if it was made with ``pcfg``: one made with other budgets or settings
    (a ``dest`` given by hand) is made again, never reused for this config."""
    if (dest / "manifest.json").is_file():
        try:
            art = Artifacts.load(dest)
            if art.config == pcfg:
                return art
            if progress:
                progress("remaking the pretraining artifacts: they were made with another pretraining config")
        except DataError as e:
            if progress:
                progress(f"remaking the pretraining artifacts: {e}")
    return None


def _make(bundle, pcfg: PretrainConfig, dest: Path, progress, device: str) -> Artifacts:
    cpu_start = time.process_time()  # this process's CPU seconds: what the pretraining costs a run
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
            "stats": gnn_stats | tower_stats | {"cpu_s": round(time.process_time() - cpu_start, 1)},
        })
    return Artifacts.load(dest)


def _batch_size(n: int, cap: int) -> int:
    """At least 20 steps an epoch: on a small data set a fixed large batch would take only a few."""
    return max(64, min(cap, n // 20))


@dataclass(frozen=True)
class Budget:
    """The batches and steps of each phase on a data set: what the loops run and the estimate counts."""

    gnn_batch: int
    gnn_steps: int
    tower_batch: int
    tower_steps: int


def budget(n: int, pcfg: PretrainConfig) -> Budget:
    """Steps for ``n`` graph interactions: ``gnn_epochs`` passes of LightGCN, capped at
    ``gnn_max_samples`` positives but never under one pass; ``tower_epochs`` passes of the item
    tower, capped at ``tower_max_steps``. So small data pays seconds and large data a fixed bill."""
    gnn_batch, tower_batch = _batch_size(n, pcfg.gnn_batch), _batch_size(n, pcfg.tower_batch)
    per_pass = math.ceil(n / gnn_batch)
    gnn_steps = pcfg.gnn_epochs * per_pass
    if pcfg.gnn_max_samples and pcfg.gnn_epochs * n > pcfg.gnn_max_samples:
        gnn_steps = max(per_pass, math.ceil(pcfg.gnn_max_samples / gnn_batch))
    tower_steps = min(pcfg.tower_epochs * math.ceil(n / tower_batch), pcfg.tower_max_steps)
    return Budget(gnn_batch, gnn_steps, tower_batch, tower_steps)


def _bpr_step(user_emb, item_emb, opt, users: torch.Tensor, pos_items: torch.Tensor, neg: torch.Tensor,
              pcfg: PretrainConfig) -> torch.Tensor:
    """One SparseAdam step of BPR against each of k negatives (neg: (batch, k)); the loss, detached.

    k negatives push more of the catalogue down per positive, at the cost of k lookups (still
    linear, and per step independent of the table size)."""
    k = neg.shape[1]
    u, pos, negv = user_emb(users), item_emb(pos_items), item_emb(neg)  # negv: (batch, k, dim)
    margin = (u * pos).sum(-1, keepdim=True) - (u.unsqueeze(1) * negv).sum(-1)
    bpr = -F.logsigmoid(margin).mean()
    # L2 on the rows this step touches, as LightGCN's BPR loss regularises its batch (the
    # negatives' rows weighed as one negative's).
    reg = pcfg.gnn_reg * (u.pow(2).sum() + pos.pow(2).sum() + negv.pow(2).sum() / k) / len(users)
    loss = bpr + reg
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


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
    plan = budget(n, pcfg)
    batch, per_pass = plan.gnn_batch, math.ceil(n / plan.gnn_batch)
    bar = Progress(f"lightgcn ({plan.gnn_steps:,} steps, {per_pass} a pass)", plan.gnn_steps, log=progress)
    done, total, seen = 0, 0.0, 0
    for epoch in range(math.ceil(plan.gnn_steps / per_pass)):
        perm = torch.randperm(n, generator=gen).to(device)
        total, seen = torch.zeros((), device=device), 0  # summed on the device: no sync per step
        for start in range(0, n, batch):
            if done == plan.gnn_steps:  # the cap ends it inside a pass
                break
            idx = perm[start:start + batch]
            neg = torch.randint(0, I, (len(idx), pcfg.gnn_negatives), generator=gen).to(device)
            total += _bpr_step(user_emb, item_emb, opt, src[idx], dst[idx], neg, pcfg) * len(idx)
            seen, done = seen + len(idx), done + 1
            bar.update(done, lambda: f"pass {epoch + 1}  bpr loss {float(total) / seen:.4f}")
    total = float(total) / max(seen, 1)  # the latest (possibly partial) pass's mean
    bar.close(f"bpr loss {total:.4f}")
    with torch.no_grad():
        emb = propagate(torch.cat([user_emb.weight, item_emb.weight]), src, dst + U, U + I, pcfg.gnn_layers,
                        pcfg.gnn_propagation).cpu()
    pad = torch.zeros(1, pcfg.dim)
    gnn_user = torch.cat([pad, emb[:U]]).contiguous()
    gnn_item = torch.cat([pad, emb[U:]]).contiguous()
    return gnn_user, gnn_item, {"lightgcn_bpr_loss": total, "lightgcn_steps": done}


@torch.no_grad()
def graph_recall(bundle, gnn_user: torch.Tensor, gnn_item: torch.Tensor, split: str = "val", k: int = 100) -> float:
    """LightGCN's own Recall@k: user . item scores, history masked, full ranking, over the users
    of ``split`` that are in the graph (cold-start users have no LightGCN vector)."""
    from raytower import metrics

    ev = bundle.eval_set(split)
    rows = np.flatnonzero(~bundle.cold_mask[ev.users])
    hits = 0
    for s in range(0, len(rows), 1024):
        r = rows[s:s + 1024]
        starts, ends = ev.hist_offsets[r], ev.hist_offsets[r + 1]
        hist = np.concatenate([ev.hist_items[a:b] for a, b in zip(starts, ends)]) if len(r) else np.zeros(0, np.int64)
        ranks, _ = metrics.rank_targets(gnn_user[torch.as_tensor(ev.users[r])], gnn_item, ev.targets[r],
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
    opts = _tower_optimizers(tower, pcfg)
    gen = torch.Generator().manual_seed(pcfg.seed + 1)
    n = len(users)
    plan = budget(n, pcfg)
    batch, per_pass = plan.tower_batch, math.ceil(n / plan.tower_batch)
    tower.train()
    bar = Progress(f"item tower ({plan.tower_steps:,} steps, {per_pass} a pass)", plan.tower_steps, log=progress)
    done, total, seen = 0, 0.0, 0
    for epoch in range(math.ceil(plan.tower_steps / per_pass)):
        perm = torch.randperm(n, generator=gen).to(device)
        total, seen = torch.zeros((), device=device), 0  # the mean loss of the latest (possibly partial) pass
        for start in range(0, n, batch):
            if done == plan.tower_steps:
                break
            idx = perm[start:start + batch]
            total += _tower_step(tower, opts, u_vec[users[idx]], items[idx], pcfg) * len(idx)
            seen, done = seen + len(idx), done + 1
            bar.update(done, lambda: f"pass {epoch + 1}  in-batch loss {float(total) / seen:.4f}")
    total = float(total)
    bar.close(f"in-batch loss {total / max(seen, 1):.4f}")
    tower.id_emb.sparse = False
    tower = tower.cpu().eval()
    return tower, {"item_tower_loss": float(total / max(seen, 1)), "item_tower_steps": done,
                   "item_tower_random_loss": math.log(min(batch, bundle.n_items))}


def _tower_optimizers(tower: ItemTower, pcfg: PretrainConfig) -> tuple:
    """The id table's rows get sparse gradients and SparseAdam, so a step costs the same whatever
    the catalogue size; the rest is small and dense. (Sparse here only: the curriculum's Adam takes
    the table dense when Stage 2 unfreezes it; train_item_tower turns it back.)"""
    tower.id_emb.sparse = True
    sparse = torch.optim.SparseAdam([tower.id_emb.weight], lr=pcfg.tower_lr)
    dense = torch.optim.Adam([p for name, p in tower.named_parameters() if name != "id_emb.weight"], lr=pcfg.tower_lr)
    return dense, sparse


def _tower_step(tower: ItemTower, opts: tuple, u_vec: torch.Tensor, pos_items: torch.Tensor,
                pcfg: PretrainConfig) -> torch.Tensor:
    """One step of the in-batch softmax of the users' vectors against the tower's outputs; the loss."""
    cand, target = pos_items.unique(return_inverse=True)  # duplicates of a positive: one column
    v = tower(cand, id_dropout=pcfg.id_dropout)
    loss = F.cross_entropy(u_vec @ v.T / pcfg.tower_temp, target)
    for opt in opts:
        opt.zero_grad()
    loss.backward()
    for opt in opts:
        opt.step()
    return loss.detach()


def estimate_seconds(bundle, pcfg: PretrainConfig, device: str = "cpu", probe_steps: int = 3) -> tuple[float, Budget]:
    """The wall seconds pretraining would take here and now: each phase's steps times a step's time
    in a short timed probe (a warm-up and ``probe_steps`` steps of each phase on throwaway tables).
    Its random draws come from a fork of torch's generators: the seeded run is untouched.
    Propagation and evaluation are left out."""
    users, items = bundle.train_pairs(graph_only=True)
    plan = budget(len(users), pcfg)
    cuda = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # initialisations and id dropout draw from torch's own
        torch.manual_seed(pcfg.seed)
        per_step = [_time_steps(step, probe_steps) for step in _probe_steps(bundle, pcfg, plan, users, items, device)]
    return plan.gnn_steps * per_step[0] + plan.tower_steps * per_step[1], plan


def _probe_steps(bundle, pcfg: PretrainConfig, plan: Budget, users, items, device: str) -> tuple:
    """A LightGCN step and an item-tower step of the plan's batch sizes, on throwaway tables."""
    take = torch.randperm(len(users))[:plan.gnn_batch]
    users = torch.as_tensor(users[take], dtype=torch.long).to(device)
    items = torch.as_tensor(items[take], dtype=torch.long).to(device)
    user_emb = torch.nn.Embedding(bundle.n_users + 1, pcfg.dim, sparse=True).to(device)
    item_emb = torch.nn.Embedding(bundle.n_items + 1, pcfg.dim, sparse=True).to(device)
    sparse_opt = torch.optim.SparseAdam([user_emb.weight, item_emb.weight], lr=pcfg.gnn_lr)
    neg = torch.randint(1, bundle.n_items + 1, (len(users), pcfg.gnn_negatives)).to(device)
    tower = build_item_tower(bundle, pcfg.dim, pcfg.item_layers).to(device)
    opts = _tower_optimizers(tower, pcfg)
    tower_items = items[:plan.tower_batch]  # (the tower's batch is never the larger)
    u_vec = F.normalize(torch.randn(len(tower_items), pcfg.dim), dim=-1).to(device)
    return (lambda: _bpr_step(user_emb, item_emb, sparse_opt, users, items, neg, pcfg),
            lambda: _tower_step(tower, opts, u_vec, tower_items, pcfg))


def _time_steps(step, n: int) -> float:
    """Seconds a step takes, after a warm-up step (first-call allocations); float() waits for a device."""
    float(step())
    t0 = time.perf_counter()
    for _ in range(n):
        loss = step()
    float(loss)
    return (time.perf_counter() - t0) / n


def describe_estimate(bundle, pcfg: PretrainConfig, device: str = "cpu") -> str:
    """What a header says of the pretraining before it starts: cached, or its steps and estimated time."""
    from raytower._progress import clock

    if (artifacts_dir(bundle, pcfg) / "manifest.json").is_file():
        return f"dim={pcfg.dim}, item_layers={pcfg.item_layers} cached"
    seconds, plan = estimate_seconds(bundle, pcfg, device)
    return (f"dim={pcfg.dim}, item_layers={pcfg.item_layers}: about {clock(seconds)} "
            f"({plan.gnn_steps:,} LightGCN + {plan.tower_steps:,} item tower steps, timed here now)")
