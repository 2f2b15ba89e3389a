"""The sweep that chose the linear LightGCN's settings (issue #13's quality gate): BPR with k sampled
negatives, optionally a sampled one-layer propagation inside each step (``k``), then the readout
(1 - w) E + w A_hat E for several w, each scored by LightGCN's own validation Recall@100.

    .venv/bin/python benchmarks/sweep_pretrain.py ../shared/data/ml-100k 1 '[{"negs":1},{"negs":4},{"negs":8}]'
    .venv/bin/python benchmarks/sweep_pretrain.py synthetic:n_users=25000,n_items=10000 1 '[{"negs":4},{"negs":8}]'

Arguments: data, torch threads, a JSON list of variants (keyword arguments of ``run``). Prints one
RESULT line per variant: its settings, {w: val Recall@100}, seconds. Measured output:
benchmarks/results/sweep_pretrain_ml100k.log and sweep_pretrain_1m.log.
"""
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from raytower.data import load_bundle  # noqa: E402
from raytower.model.pretrain import _batch_size, graph_recall, propagate  # noqa: E402

def csr(a, b, n):
    order = np.argsort(a, kind="stable")
    off = np.zeros(n + 1, np.int64); np.add.at(off, a + 1, 1); off = np.cumsum(off)
    return torch.as_tensor(off), torch.as_tensor(b[order])

def run(bundle, dim=64, epochs=40, lr=0.01, reg=3e-3, batch=4096, k=0, negs=1, seed=0, post=(0, 1, 2)):
    U, I = bundle.n_users, bundle.n_items
    users, items = bundle.train_pairs(graph_only=True)
    src = torch.as_tensor(users - 1, dtype=torch.long); dst = torch.as_tensor(items - 1, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    ue = torch.nn.Embedding(U, dim, sparse=True); ie = torch.nn.Embedding(I, dim, sparse=True)
    for t in (ue, ie): torch.nn.init.xavier_uniform_(t.weight, generator=gen)
    opt = torch.optim.SparseAdam([ue.weight, ie.weight], lr=lr)
    uoff, unb = csr(src.numpy(), dst.numpy(), U); ioff, inb = csr(dst.numpy(), src.numpy(), I)
    du = (uoff[1:] - uoff[:-1]).float(); di = (ioff[1:] - ioff[:-1]).float()
    isq_u = du.clamp(min=1).rsqrt(); isq_i = di.clamp(min=1).rsqrt()

    def hu(rows):
        e = ue(rows)
        if not k: return e
        d = du[rows]
        pick = uoff[rows, None] + (torch.rand(len(rows), k, generator=gen) * d[:, None]).long()
        nb = unb[pick]
        agg = (ie(nb) * isq_i[nb, None]).mean(1) * d.sqrt()[:, None]
        return (e + agg) / 2, e
    def hi(rows):
        e = ie(rows)
        if not k: return e
        d = di[rows]
        pick = ioff[rows, None] + (torch.rand(len(rows), k, generator=gen) * d[:, None]).long()
        nb = inb[pick]
        agg = (ue(nb) * isq_u[nb, None]).mean(1) * d.sqrt()[:, None]
        return (e + agg) / 2, e
    n = len(src); B = _batch_size(n, batch); t0 = time.time()
    for ep in range(epochs):
        perm = torch.randperm(n, generator=gen); tot = 0
        for s in range(0, n, B):
            idx = perm[s:s + B]
            neg = torch.randint(0, I, (len(idx) * negs,), generator=gen)
            if k:
                (u, u0), (p, p0), (q, q0) = hu(src[idx]), hi(dst[idx]), hi(neg)
            else:
                u, p, q = hu(src[idx]), hi(dst[idx]), hi(neg); u0, p0, q0 = u, p, q
            q = q.view(len(idx), negs, dim)
            x = (u * p).sum(-1)[:, None] - (u[:, None] * q).sum(-1)
            bpr = -F.logsigmoid(x).mean()
            r = reg * (u0.pow(2).sum() + p0.pow(2).sum() + q0.pow(2).sum() / negs) / len(idx)
            loss = bpr + r
            opt.zero_grad(); loss.backward(); opt.step(); tot += bpr.item() * len(idx)
        if ep % 10 == 9: print(f"  ep {ep+1} bpr {tot/n:.4f} {time.time()-t0:.0f}s", flush=True)
    out = {}
    with torch.no_grad():
        x0 = torch.cat([ue.weight, ie.weight])
        h1 = propagate(x0, src, dst + U, U + I, 1) * 2 - x0  # A_hat x0
        pad = torch.zeros(1, dim)
        for a in (0.0, 0.1, 0.2, 0.3, 0.5):
            emb = (1 - a) * x0 + a * h1
            out[a] = round(graph_recall(bundle, torch.cat([pad, emb[:U]]), torch.cat([pad, emb[U:]]), "val"), 4)
    return out, round(time.time() - t0, 1)

if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    b = load_bundle(sys.argv[1] if len(sys.argv) > 1 else "synthetic:n_users=25000,n_items=10000")
    variants = json.loads(sys.argv[3])
    for v in variants:
        r, t = run(b, **v)
        print("RESULT", json.dumps(v), r, t, flush=True)
