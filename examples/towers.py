"""Your own towers in raytower's curriculum: a mean-pooling user tower and a two-piece item tower.

    # space.yaml (or a raytower train --config file)
    fixed: {model: "towers:build", model_args: {dim: 32}, targets: last, unfreeze_depth: 2, lr_ratio: 1.0}

    PYTHONPATH=examples raytower tune --data ml-100k --space space.yaml --out runs/mine

The protocol is raytower.model.towers': build(bundle, artifacts, model_args) -> (user_tower, item_tower).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import raytower


class MeanUserTower(nn.Module):
    """The mean of the recent items' embeddings, plus a learned vector per user."""

    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.users = nn.Embedding(n_users + 1, dim)

    def forward(self, user_idx, items, meta):  # [B], [B, L] left-padded with 0, [B, M] -> [B, d]
        mask = (items > 0).unsqueeze(-1).float()
        mean = (self.items(items) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return F.normalize(mean + self.users(user_idx), dim=-1)


class TwoPieceItemTower(nn.Module):
    """An id table under a linear head: pieces() lists them from the top, so unfreeze_depth 1 trains
    the head and 2 the table too."""

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.table = nn.Embedding(n_items + 1, dim)
        self.head = nn.Linear(dim, dim)

    def pieces(self):
        return [self.head, self.table]

    def forward(self, item_idx):  # [N] -> [N, d]
        return F.normalize(self.head(self.table(item_idx)), dim=-1)


@raytower.towers.builder(pretrained=False)  # no pretraining: Stage 2 (the unfreezing) from the first step
def build(bundle, artifacts, model_args):
    dim = int(model_args.get("dim", 32))
    return MeanUserTower(bundle.n_users, bundle.n_items, dim), TwoPieceItemTower(bundle.n_items, dim)
