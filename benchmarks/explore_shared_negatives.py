"""A candidate for LightGCN's next method, measured here only: BPR whose negatives are shared by
the whole batch (M item rows a step, scored by one matrix product) instead of 4 drawn per positive.

    .venv/bin/python benchmarks/explore_shared_negatives.py quality ../shared/data/ml-100k 256 1024
    .venv/bin/python benchmarks/explore_shared_negatives.py quality synthetic:n_users=25000,n_items=10000 256
    .venv/bin/python benchmarks/explore_shared_negatives.py step 256 25000x10000 250000x50000

Why: a step of raytower's method updates one row per distinct item it draws, up to 4,096 x 5, and
SparseAdam's work per row is what grows from 1M to 10M (benchmarks/results/scale.md). With M shared
negatives a step touches at most 4,096 + M item rows. ``quality`` prints LightGCN's own validation
Recall@100 (as bench_pretrain.py); ``step`` the CPU ms of a step at fixed edges and growing tables
(as bench_pretrain_step.py). The loop is ``raytower.model.pretrain.train_lightgcn``'s with the
negatives changed, and nothing else; it is not wired into raytower.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from raytower.model.pretrain import PretrainConfig, _batch_size, graph_recall, propagate  # noqa: E402


def train_lightgcn_shared(bundle, pcfg: PretrainConfig, shared: int, epochs: int | None = None):
    """train_lightgcn with ``shared`` negatives a step, scored against every row of the batch."""
    U, I = bundle.n_users, bundle.n_items
    users, items = bundle.train_pairs(graph_only=True)
    src = torch.as_tensor(users - 1, dtype=torch.long)
    dst = torch.as_tensor(items - 1, dtype=torch.long)
    gen = torch.Generator().manual_seed(pcfg.seed)
    user_emb = torch.nn.Embedding(U, pcfg.dim, sparse=True)
    item_emb = torch.nn.Embedding(I, pcfg.dim, sparse=True)
    for table in (user_emb, item_emb):
        torch.nn.init.xavier_uniform_(table.weight, generator=gen)
    opt = torch.optim.SparseAdam([user_emb.weight, item_emb.weight], lr=pcfg.gnn_lr)
    n, steps = len(src), 0
    batch = _batch_size(n, pcfg.gnn_batch)
    for _ in range(epochs or pcfg.gnn_epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            neg = torch.randint(0, I, (shared,), generator=gen)
            u, pos, negv = user_emb(src[idx]), item_emb(dst[idx]), item_emb(neg)  # negv: (shared, dim)
            margin = (u * pos).sum(-1, keepdim=True) - u @ negv.T  # (batch, shared)
            bpr = -F.logsigmoid(margin).mean()
            # The negatives' L2 weighed as one negative a row, as in train_lightgcn.
            reg = pcfg.gnn_reg * (u.pow(2).sum() + pos.pow(2).sum() + negv.pow(2).sum() * len(idx) / shared) / len(idx)
            opt.zero_grad()
            (bpr + reg).backward()
            opt.step()
            steps += 1
    with torch.no_grad():
        emb = propagate(torch.cat([user_emb.weight, item_emb.weight]), src, dst + U, U + I, pcfg.gnn_layers,
                        pcfg.gnn_propagation)
    pad = torch.zeros(1, pcfg.dim)
    return torch.cat([pad, emb[:U]]), torch.cat([pad, emb[U:]]), steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["quality", "step"])
    ap.add_argument("what", help="quality: the data source; step: the shared negatives")
    ap.add_argument("rest", nargs="+", help="quality: shared negatives to try; step: USERSxITEMS tables")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.mode == "quality":
        from raytower.data import load_bundle

        bundle = load_bundle(a.what)
        for shared in map(int, a.rest):
            c = time.process_time()
            gu, gi, steps = train_lightgcn_shared(bundle, PretrainConfig(), shared)
            cpu = time.process_time() - c
            print(json.dumps({"data": a.what, "shared_negatives": shared, "cpu_s": round(cpu, 1),
                              "ms_per_step": round(1000 * cpu / steps, 2),
                              "val_recall@100": round(graph_recall(bundle, gu, gi, "val", 100), 4)}),
                  flush=True)
        return
    from bench_pretrain_step import RandomGraph

    for size in a.rest:
        users, items = (int(x) for x in size.split("x"))
        graph, cpu = RandomGraph(users, items, 400_000), {}
        for epochs in (1, 4):  # the difference: a step alone, set-up and propagation cancel out
            c = time.process_time()
            _, _, steps = train_lightgcn_shared(graph, PretrainConfig(), int(a.what), epochs=epochs)
            cpu[epochs] = (time.process_time() - c, steps)
        ms = 1000 * (cpu[4][0] - cpu[1][0]) / (cpu[4][1] - cpu[1][1])
        print(json.dumps({"tables": size, "shared_negatives": int(a.what), "cpu_ms_per_step": round(ms, 2)}), flush=True)


if __name__ == "__main__":
    main()
