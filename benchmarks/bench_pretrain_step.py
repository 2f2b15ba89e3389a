"""LightGCN's BPR step at a fixed number of edges and growing tables: is the cost of a step
independent of the table size, as the method intends, or does the memory hierarchy add to it?

    .venv/bin/python benchmarks/bench_pretrain_step.py --out benchmarks/results/pretrain_step.json

bench_scale.py measures LightGCN growing a little faster than the interactions from 1M to 10M
(its exponent). The method's steps are linear in the edges and touch only their batch's rows; what
else grows with the data is the size of the tables those rows are read from and written to (the
embedding, and SparseAdam's two moments: 3 x rows x dim x 4 bytes). This holds the edges fixed
(a random graph), runs ``train_lightgcn`` itself for 1 and for 1 + ``--epochs`` epochs, and varies
only the number of users and items; the difference, over the extra epochs' steps, is the cost of a
step alone (the initialisation and the closing propagation, which grow with the tables' rows, cancel
out). CPU milliseconds per step that rise with the tables, then level off once they
are far beyond the CPU's last-level cache, say the growth is the cache's, paid once, not a term
that keeps growing with the data.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from raytower.model.pretrain import PretrainConfig, _batch_size, train_lightgcn  # noqa: E402


class RandomGraph:
    """What ``train_lightgcn`` reads of a bundle: sizes and the train pairs (1-based ids)."""

    def __init__(self, n_users: int, n_items: int, n_edges: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n_users, self.n_items = n_users, n_items
        self._users = rng.integers(1, n_users + 1, n_edges)
        self._items = rng.integers(1, n_items + 1, n_edges)

    def train_pairs(self, graph_only: bool = False):
        return self._users, self._items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edges", type=int, default=400_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--tables", nargs="+", default=["25000x10000", "250000x50000", "2500000x500000"],
                    help="USERSxITEMS rows of the two tables")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true",
                    help="also print torch.profiler's top operators of a 2-epoch run per table size")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    steps = a.epochs * -(-a.edges // _batch_size(a.edges, PretrainConfig.gnn_batch))
    # A first call pays torch's one-time start-up (about a second): spend it outside the measurement.
    train_lightgcn(RandomGraph(100, 100, 10_000), PretrainConfig(gnn_epochs=1), progress=lambda *_: None)
    rows = []
    for size in a.tables:
        users, items = (int(x) for x in size.split("x"))
        graph = RandomGraph(users, items, a.edges)
        cpu = {}
        for epochs in (1, 1 + a.epochs):
            c0 = time.process_time()
            train_lightgcn(graph, PretrainConfig(gnn_epochs=epochs), progress=lambda *_: None)
            cpu[epochs] = time.process_time() - c0
        table_mb = 3 * (users + items) * PretrainConfig.dim * 4 / 2**20  # weights + SparseAdam's two moments
        rows.append({"tables": size, "table_state_mb": round(table_mb, 1), "steps": steps,
                     "cpu_s_1_epoch": round(cpu[1], 2), f"cpu_s_{1 + a.epochs}_epochs": round(cpu[1 + a.epochs], 2),
                     "cpu_ms_per_step": round(1000 * (cpu[1 + a.epochs] - cpu[1]) / steps, 2)})
        print(rows[-1], flush=True)
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                train_lightgcn(graph, PretrainConfig(gnn_epochs=2), progress=lambda *_: None)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
    doc = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, {platform.processor() or '?'}",
           "edges": a.edges, "epochs": a.epochs, "threads": a.threads, "rows": rows}
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
