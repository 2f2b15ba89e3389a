"""Serve a raytower export with torch, numpy and pyarrow alone: top-k for a known user, or for a new one.

    python examples/serve.py MODEL_DIR --user 42 --k 10
    python examples/serve.py MODEL_DIR --age 25 --gender F --occupation writer --history 50,181,1 --k 10

MODEL_DIR is what ``raytower export`` wrote (manifest.json, user_tower.pt2, item_vectors.npy,
items.parquet, users.parquet). A known user is scored on the history the export holds; a new user on
the item ids given (oldest first) and raw features, encoded as the manifest's ``meta_encoders`` say,
with user index 0, which the towers read as "not in the graph" (the cold-start vector).

``torch.export.load`` trusts its file: a crafted ``user_tower.pt2`` can run code as it loads. Where
raytower is installed, the tower is loaded through its checked loader (raytower.export.load_checked_tower), which
refuses such a file in one line. Without raytower it is loaded unchecked, and says so on stderr:
serve only a model you exported yourself.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch


def load_tower(path: Path) -> torch.nn.Module:
    """The user tower: checked by raytower where it is installed, else as torch loads it, unchecked."""
    try:
        from raytower.errors import RaytowerError
        from raytower.export import load_checked_tower
    except ImportError:
        print(f"serve.py: raytower is not installed, so {path} is loaded unchecked (torch.export.load runs "
              "code a crafted file holds): serve only a model you exported yourself", file=sys.stderr)
        return torch.export.load(str(path)).module()
    try:
        return load_checked_tower(path)
    except RaytowerError as e:  # one line: "refused: the file asks to unpickle objects"
        raise SystemExit(f"serve.py: {e}") from None


class Model:
    def __init__(self, model_dir: Path):
        self.manifest = json.loads((model_dir / "manifest.json").read_text())
        self.tower = load_tower(model_dir / "user_tower.pt2")
        self.item_vectors = torch.from_numpy(np.load(model_dir / "item_vectors.npy", allow_pickle=False))
        items = pq.read_table(model_dir / "items.parquet").to_pydict()
        # item_idx: the item's row in item_vectors.npy; item_id: its id in the source data
        self.item = {idx: (str(item_id), title) for idx, item_id, title in
                     zip(items["item_idx"], items["item_id"], items["title"])}
        self.item_idx = {item_id: idx for idx, (item_id, _) in self.item.items()}
        self.user_table = pq.read_table(model_dir / "users.parquet").to_pydict()
        self.users = {str(u): n for n, u in enumerate(self.user_table["user_id"])}

    def encode(self, raw: dict) -> list[int]:
        """A new user's raw features -> the meta columns' bucket ids (0: unknown)."""
        out = []
        for column in self.manifest["meta_columns"]:
            enc = self.manifest["meta_encoders"][column]
            value = raw.get(enc["from"])
            if value is None:
                out.append(0)
            elif "edges" in enc:
                out.append(1 + bisect.bisect_right(enc["edges"], float(value)))
            else:
                out.append(1 + enc["values"].index(value) if value in enc["values"] else 0)
        return out

    @torch.no_grad()
    def top_k(self, user_idx: int, history: list[int], meta: list[int], k: int) -> list[tuple[str, str, float]]:
        max_len = self.manifest["max_len"]
        seq = ([0] * max_len + history)[-max_len:]  # left-padded with 0
        vec = self.tower(torch.tensor([user_idx]), torch.tensor([seq]), torch.tensor([meta]))[0]
        scores = self.item_vectors @ vec
        scores[0] = float("-inf")  # padding
        scores[torch.tensor(history, dtype=torch.long)] = float("-inf")  # what the user has seen
        top = torch.topk(scores, k).indices.tolist()
        return [(*self.item[idx], float(scores[idx])) for idx in top]

    def known_user(self, user_id: str, k: int):
        n = self.users[str(user_id)]
        t = self.user_table
        return self.top_k(t["user_idx"][n], list(t["history"][n]), [t[c][n] for c in self.manifest["meta_columns"]], k)

    def new_user(self, raw: dict, item_ids: list[str], k: int):
        return self.top_k(0, [self.item_idx[i] for i in item_ids if i in self.item_idx], self.encode(raw), k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--user", help="a known user's id, as in the source data")
    p.add_argument("--age", type=float)
    p.add_argument("--gender")
    p.add_argument("--occupation")
    p.add_argument("--history", default="", help="a new user's item ids, oldest first, comma-separated")
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args()
    model = Model(args.model_dir)
    if args.user is not None:
        if str(args.user) not in model.users:
            p.error(f"unknown user {args.user!r}")
        rows = model.known_user(args.user, args.k)
    else:
        raw = {"age": args.age, "gender": args.gender, "occupation": args.occupation}
        rows = model.new_user(raw, [i for i in args.history.split(",") if i], args.k)
    for rank, (item_id, title, score) in enumerate(rows, 1):
        print(f"{rank:>3}  {item_id:>8}  {score:8.4f}  {title}")


if __name__ == "__main__":
    main()
