"""LightGCN pretraining: its own validation Recall@100, wall and CPU time, peak RSS, per method.

    .venv/bin/python benchmarks/bench_pretrain.py --data ml-100k --out benchmarks/results/pretrain_ml100k.json
    .venv/bin/python benchmarks/bench_pretrain.py --data synthetic:n_users=25000,n_items=10000 --methods full

The quality gate of the scale work: the linear method's own validation Recall@100 (LightGCN user
vector . item vector, history masked, full ranking, graph users only) must be at least the
full-graph method's. ``full`` is the method raytower used up to format 1 (every BPR step
propagates over the whole graph); it is kept here, and only here, as the reference.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _stamp import ROOT, stamp

sys.path.insert(0, str(ROOT))

from raytower.data import load_bundle  # noqa: E402
from raytower.model.pretrain import PretrainConfig, graph_recall, train_lightgcn  # noqa: E402


def batch_size(n: int, cap: int) -> int:
    """The full method's batch, by raytower's rule of its day (at least 20 steps an epoch): the
    reference keeps its own copy so that it stays the method it was."""
    return max(64, min(cap, n // 20))


def train_lightgcn_full(bundle, pcfg: PretrainConfig, progress=print):
    """raytower's method up to artifact format 1: every BPR step propagates LightGCN over the whole
    graph (PyG), so an epoch costs O(edges^2). The reference of the quality gate."""
    from torch_geometric.nn.models import LightGCN
    from torch_geometric.utils import to_torch_csr_tensor

    U, I = bundle.n_users, bundle.n_items
    users, items = bundle.train_pairs(graph_only=True)
    src = torch.as_tensor(users - 1, dtype=torch.long)  # node ids: users 0..U-1, items U..U+I-1
    dst = torch.as_tensor(items - 1 + U, dtype=torch.long)
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        adj = to_torch_csr_tensor(edge_index, size=(U + I, U + I))
    model = LightGCN(U + I, pcfg.dim, pcfg.gnn_layers)
    opt = torch.optim.Adam(model.parameters(), lr=pcfg.gnn_lr)
    gen = torch.Generator().manual_seed(pcfg.seed)
    n = len(src)
    batch = batch_size(n, pcfg.gnn_batch)
    for epoch in range(pcfg.gnn_epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            neg = torch.randint(U, U + I, (len(idx),), generator=gen)
            label_index = torch.cat([torch.stack([src[idx], dst[idx]]), torch.stack([src[idx], neg])], dim=1)
            rank = model(adj, label_index)
            pos, negr = rank.chunk(2)
            nodes = torch.cat([src[idx], dst[idx], neg]).unique()
            loss = model.recommendation_loss(pos, negr, node_id=nodes, lambda_reg=pcfg.gnn_reg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if progress and (epoch % 10 == 9 or epoch == pcfg.gnn_epochs - 1):
            progress(f"  lightgcn epoch {epoch + 1}/{pcfg.gnn_epochs}  bpr loss {total / n:.4f}")
    with torch.no_grad():
        emb = model.get_embedding(adj)
    pad = torch.zeros(1, pcfg.dim)
    gnn_user = torch.cat([pad, emb[:U]]).contiguous()
    gnn_item = torch.cat([pad, emb[U:]]).contiguous()
    return gnn_user, gnn_item, {"lightgcn_bpr_loss": float(total / max(n, 1))}


def lightgcn_recall(bundle, gnn_user: torch.Tensor, gnn_item: torch.Tensor) -> dict:
    """Validation Recall@10/100 of the raw LightGCN scores for the graph users, with the SE of @100."""
    n = int((~bundle.cold_mask[bundle.eval_set("val").users]).sum())
    r100 = graph_recall(bundle, gnn_user, gnn_item, "val", 100)
    return {"recall@100": r100, "recall@10": graph_recall(bundle, gnn_user, gnn_item, "val", 10),
            "se@100": float(np.sqrt(r100 * (1 - r100) / n)), "n_users": n,
            "test_recall@100": graph_recall(bundle, gnn_user, gnn_item, "test", 100)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--methods", default="full,linear", help="comma-separated: full, linear")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bundle = load_bundle(a.data, progress=True)
    rows = {"data": a.data, "n_interactions": bundle.manifest["n_interactions"], "n_users": bundle.n_users,
            "n_items": bundle.n_items, "threads": a.threads, "methods": {}}
    for method in a.methods.split(","):
        pcfg = PretrainConfig(dim=a.dim)
        train = {"full": train_lightgcn_full, "linear": train_lightgcn}[method]
        torch.manual_seed(pcfg.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        gnn_user, gnn_item, stats = train(bundle, pcfg, lambda m: print(m, flush=True))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rec = lightgcn_recall(bundle, gnn_user, gnn_item)
        rows["methods"][method] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), **stats, **rec,
                                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        print(method, json.dumps(rows["methods"][method]), flush=True)
        if a.out:
            out = Path(a.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")  # a reader never sees half a file
            tmp.write_text(json.dumps({**stamp(), **rows}, indent=2) + "\n")
            tmp.replace(out)


if __name__ == "__main__":
    main()
