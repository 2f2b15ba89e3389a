"""LightGCN's BPR negatives three ways: 4 drawn per positive (raytower's method /2), 256 shared by
the batch, and 4 per positive drawn from a pool of 256 a step. What a step costs, how that grows
with the data, and what the tables are worth.

    .venv/bin/python benchmarks/bench_negatives.py step synthetic:n_users=25000,n_items=10000 \\
        synthetic:n_users=250000,n_items=50000 --out benchmarks/results/negatives_step.json
    .venv/bin/python benchmarks/bench_negatives.py quality ../shared/data/ml-100k

``step`` runs each kind of step on the same batches of each data set's real train pairs (one
thread, SparseAdam, raytower's batch of 4,096 edges), all of them interleaved 50 steps at a time
so that they meet the same machine, and reports CPU milliseconds a step and the distinct table
rows a step touches. SparseAdam's work is per distinct row, and drawn per positive
the negatives repeat less as the catalogue grows, so /2's rows a step, and its cost, grew with the
data although the batch did not.

The two candidates bound a step's item rows by batch + 256 and their step cost grew less than
/2's, but both fell short of /2 downstream on ml-100k, and /2's own growth is within the scale
goal, by this probe and by the whole phase (bench_growth_beside.py; benchmarks/results/scale.md):
raytower kept /2.

``quality`` prints LightGCN's own validation Recall@100 (as bench_pretrain.py) after each kind's
40 epochs, and checks that this file's per-positive loop is raytower's ``train_lightgcn`` (the
same tables, bit for bit).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from raytower.model.pretrain import PretrainConfig, _batch_size, graph_recall, propagate, train_lightgcn  # noqa: E402

PER_POSITIVE, SHARED = 4, 256
KINDS = {  # name: how a step draws its negatives
    "per_positive": f"{PER_POSITIVE} drawn per positive (raytower's /2)",
    "shared": f"{SHARED} shared by the batch, each scored against every row",
    "pool": f"{PER_POSITIVE} per positive drawn from a pool of {SHARED} a step",
}


def bpr_loss(kind: str, u, pos, item_emb, n_items: int, gen, reg: float):
    """One step's BPR loss and L2, its negatives drawn the ``kind`` way; the negatives' L2 counts as
    one negative a row, as LightGCN's loss regularises its batch."""
    b = len(u)
    if kind == "shared":
        negv = item_emb(torch.randint(0, n_items, (SHARED,), generator=gen))  # (SHARED, dim)
        margin = (u * pos).sum(-1, keepdim=True) - u @ negv.T
        neg_l2 = negv.pow(2).sum() * b / SHARED
    else:
        if kind == "per_positive":
            negv = item_emb(torch.randint(0, n_items, (b, PER_POSITIVE), generator=gen))
        else:
            pool = torch.randint(0, n_items, (SHARED,), generator=gen)
            negv = item_emb(pool)[torch.randint(0, SHARED, (b, PER_POSITIVE), generator=gen)]
        margin = (u * pos).sum(-1, keepdim=True) - (u.unsqueeze(1) * negv).sum(-1)
        neg_l2 = negv.pow(2).sum() / PER_POSITIVE
    return -F.logsigmoid(margin).mean() + reg * (u.pow(2).sum() + pos.pow(2).sum() + neg_l2) / b


def _tables(bundle, pcfg: PretrainConfig, gen):
    user_emb = torch.nn.Embedding(bundle.n_users, pcfg.dim, sparse=True)
    item_emb = torch.nn.Embedding(bundle.n_items, pcfg.dim, sparse=True)
    for table in (user_emb, item_emb):  # as train_lightgcn
        torch.nn.init.xavier_uniform_(table.weight, generator=gen)
    return user_emb, item_emb, torch.optim.SparseAdam([user_emb.weight, item_emb.weight], lr=pcfg.gnn_lr)


def train_lightgcn_kind(bundle, pcfg: PretrainConfig, kind: str):
    """train_lightgcn's loop (the same batches, steps and readout) with the ``kind`` negatives."""
    U = bundle.n_users
    users, items = bundle.train_pairs(graph_only=True)
    src, dst = torch.as_tensor(users - 1), torch.as_tensor(items - 1)
    gen = torch.Generator().manual_seed(pcfg.seed)
    user_emb, item_emb, opt = _tables(bundle, pcfg, gen)
    n = len(src)
    batch = _batch_size(n, pcfg.gnn_batch)
    for _ in range(pcfg.gnn_epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            loss = bpr_loss(kind, user_emb(src[idx]), item_emb(dst[idx]), item_emb, bundle.n_items, gen, pcfg.gnn_reg)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        emb = propagate(torch.cat([user_emb.weight, item_emb.weight]), src, dst + U, U + bundle.n_items,
                        pcfg.gnn_layers, pcfg.gnn_propagation)
    pad = torch.zeros(1, pcfg.dim)
    return torch.cat([pad, emb[:U]]), torch.cat([pad, emb[U:]])


class Stepper:
    """BPR steps of one kind on one data set's train pairs, timed one at a time (CPU seconds) with
    the distinct table rows each step's gradient holds."""

    def __init__(self, bundle, kind: str):
        self.pcfg, self.kind, self.n_items = PretrainConfig(), kind, bundle.n_items
        users, items = bundle.train_pairs(graph_only=True)
        self.src, self.dst = torch.as_tensor(users - 1), torch.as_tensor(items - 1)
        self.gen = torch.Generator().manual_seed(0)
        self.user_emb, self.item_emb, self.opt = _tables(bundle, self.pcfg, self.gen)
        self.perm = torch.randperm(len(self.src), generator=self.gen)
        self.done, self.cpu, self.rows = 0, 0.0, 0

    def run(self, steps: int, measure: bool = True) -> None:
        batch = self.pcfg.gnn_batch
        for _ in range(steps):
            start = (self.done * batch) % (len(self.src) - batch)
            idx = self.perm[start:start + batch]
            c0 = time.process_time()
            loss = bpr_loss(self.kind, self.user_emb(self.src[idx]), self.item_emb(self.dst[idx]), self.item_emb,
                            self.n_items, self.gen, self.pcfg.gnn_reg)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            c1 = time.process_time()
            self.done += 1
            if measure:
                self.cpu += c1 - c0
                self.rows += sum(p.grad.coalesce().indices().shape[1] for p in (self.user_emb.weight, self.item_emb.weight))


def step_costs(bundles: dict, steps: int, warmup: int = 50, block: int = 50) -> list[dict]:
    """Every (data set, kind) pair's CPU ms and rows a step, the pairs' steps interleaved in blocks
    of ``block``: this machine's speed drifts by up to 1.7x over minutes (with what else runs on
    its host), so sizes measured one after another would compare two different machines."""
    steppers = {(source, kind): Stepper(b, kind) for source, b in bundles.items() for kind in KINDS}
    for st in steppers.values():
        st.run(warmup, measure=False)
    for _ in range(0, steps, block):
        for st in steppers.values():
            st.run(block)
    return [{"data": source, "interactions": int(len(st.src)), "negatives": kind,
             "cpu_ms_per_step": round(1000 * st.cpu / (st.done - warmup), 2),
             "rows_per_step": st.rows // (st.done - warmup)} for (source, kind), st in steppers.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["step", "quality"])
    ap.add_argument("data", nargs="+", help="data sources (step: in growing order)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", help="step: write the rows here as JSON")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from raytower.data import load_bundle

    rows = []
    if a.mode == "step":
        rows = step_costs({source: load_bundle(source) for source in a.data}, a.steps)
        for row in rows:
            print(json.dumps(row), flush=True)
    for source in a.data if a.mode == "quality" else ():
        bundle = load_bundle(source)
        for kind in KINDS:
            pcfg = PretrainConfig()
            c0 = time.process_time()
            gu, gi = train_lightgcn_kind(bundle, pcfg, kind)
            doc = {"data": source, "negatives": KINDS[kind], "cpu_s": round(time.process_time() - c0, 1),
                   "val_recall@100": round(graph_recall(bundle, gu, gi, "val", 100), 4)}
            if kind == "per_positive":
                doc["same_as_raytower"] = torch.equal(gu, train_lightgcn(bundle, pcfg, None)[0])
            print(json.dumps(doc), flush=True)
    for kind in KINDS if a.mode == "step" and len(a.data) > 1 else ():  # growth, first data set to last
        mine = [r for r in rows if r["negatives"] == kind]
        first, last = mine[0], mine[-1]
        print(f"{kind}: a step x{last['cpu_ms_per_step'] / first['cpu_ms_per_step']:.2f}, rows a step "
              f"x{last['rows_per_step'] / first['rows_per_step']:.2f}, from {first['data']} to {last['data']}")
    if a.out:
        Path(a.out).write_text(json.dumps({"command": " ".join(sys.argv), "machine": platform.machine(),
                                           "threads": 1, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
