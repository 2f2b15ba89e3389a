"""One configuration's model, built from the data and the pretraining artifacts.

    model = build_model(cfg, bundle, artifacts)     # the towers, item tower frozen
    model.item_vectors()                             # every item's vector, row 0 padding

``raytower train``, every search trial, test-once evaluation and ``raytower export`` build the model
here; only training seeds the RNG first (the fresh user tower's initial weights depend on it).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from raytower.errors import DataError
from raytower.model.pretrain import Artifacts, build_item_tower
from raytower.model.two_tower import HybridUserTower, ItemTower


class TwoTower(nn.Module):
    """The user tower and the item tower of one configuration."""

    def __init__(self, user_tower: HybridUserTower, item_tower: ItemTower):
        super().__init__()
        self.user_tower, self.item_tower = user_tower, item_tower

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, dim) unit vectors of every item through the item tower, in eval mode."""
        self.item_tower.eval()
        device = self.item_tower.id_emb.weight.device
        return self.item_tower(torch.arange(self.item_tower.id_emb.num_embeddings, device=device))


def build_model(cfg, bundle, artifacts: Artifacts, device: str | torch.device = "cpu") -> TwoTower:
    """The pretrained item tower (frozen) and a fresh user tower over the frozen LightGCN table;
    the sequence encoder's item embeddings start in the item tower's space."""
    item_tower = build_item_tower(bundle, cfg.dim, cfg.item_layers)
    load_pretrained(item_tower, artifacts)
    item_tower.normalize = cfg.score == "cosine"
    item_tower.requires_grad_(False).eval().to(device)
    graph_users = torch.as_tensor(~bundle.cold_mask)
    graph_users[0] = False
    user_tower = HybridUserTower(cfg, bundle.n_items, artifacts.gnn_user, graph_users,
                                 bundle.meta_cardinalities).to(device)
    model = TwoTower(user_tower, item_tower)
    with torch.no_grad():
        start = model.item_vectors()
        if cfg.score == "dot":  # the head's raw outputs: start the embeddings at unit length anyway
            start = torch.nn.functional.normalize(start, dim=-1)
        user_tower.seq.item_emb.weight.copy_(start / cfg.dim**0.5)
    return model


def load_pretrained(item_tower: ItemTower, artifacts: Artifacts) -> None:
    """The pretrained weights, every one of them: a mismatch names the keys instead of leaving
    some layers at their random initialisation."""
    try:
        missing, unexpected = item_tower.load_state_dict(artifacts.item_tower, strict=False)
    except RuntimeError as e:  # a shape mismatch
        first = str(e).strip().splitlines()[-1].strip()[:200]
        raise DataError(f"the pretrained item tower does not fit this model ({first})", artifacts.path) from None
    if missing or unexpected:
        raise DataError(f"the pretrained item tower does not fit this model (missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]})", artifacts.path)
