"""One configuration's model, built from the data and the pretraining artifacts.

    model = build_model(cfg, bundle, artifacts)     # the towers, item tower frozen
    model.item_vectors()                             # every item's vector, row 0 padding

``cfg.model`` names the towers: the built-in ones (pretrained item tower, LightGCN + sequence + meta
user tower) or a team's own, through the protocol of ``raytower.model.towers``.

``raytower train``, every search trial, test-once evaluation and ``raytower export`` build the model
here; only training seeds the RNG first (the fresh user tower's initial weights depend on it).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from raytower.errors import ConfigError, DataError
from raytower.model.pretrain import Artifacts, build_item_tower
from raytower.model.towers import BUILTIN, resolve, user_forward
from raytower.model.two_tower import HybridUserTower, ItemTower
from raytower.names import META_COLUMNS


class TwoTower(nn.Module):
    """The user tower and the item tower of one configuration (``towers``' protocol)."""

    def __init__(self, user_tower: nn.Module, item_tower: nn.Module, n_items: int):
        super().__init__()
        self.user_tower, self.item_tower, self.n_items = user_tower, item_tower, n_items

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, dim) vectors of every item through the item tower, in eval mode; row 0 padding."""
        self.item_tower.eval()
        device = next(self.item_tower.parameters()).device
        return self.item_tower(torch.arange(self.n_items + 1, device=device))


def build_model(cfg, bundle, artifacts: Artifacts | None, device: str | torch.device = "cpu") -> TwoTower:
    """The configuration's towers, the item tower frozen: the built-in ones, or those of the
    builder ``cfg.model`` names (``towers``)."""
    if cfg.model == BUILTIN:
        return _builtin(cfg, bundle, artifacts, device)
    user_tower, item_tower = resolve(cfg.model)(bundle, artifacts, dict(cfg.model_args))
    model = TwoTower(user_tower.to(device), item_tower.requires_grad_(False).to(device), bundle.n_items)
    _check_protocol(model, cfg.model, device)
    return model


def _check_protocol(model: TwoTower, spec: str, device) -> None:
    """A probe of both towers on two users and three items: a wrong shape is one line now, not a
    broadcasting error in the middle of an epoch."""
    for name, tower in (("user", model.user_tower), ("item", model.item_tower)):
        if not isinstance(tower, nn.Module):
            raise ConfigError(f"model {spec!r}: the {name} tower is a {type(tower).__name__}, not a torch.nn.Module")
    if not callable(getattr(model.item_tower, "pieces", None)):
        raise ConfigError(f"model {spec!r}: the item tower has no pieces() (its unfreezable pieces, top down)")
    try:
        with torch.no_grad():
            items = torch.ones(2, 3, dtype=torch.long, device=device)
            u = user_forward(model.user_tower.eval(), torch.ones(2, dtype=torch.long, device=device), items,
                             torch.zeros(2, len(META_COLUMNS), dtype=torch.long, device=device))
            v = model.item_tower.eval()(torch.arange(3, device=device))
    except (RuntimeError, IndexError, TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"model {spec!r}: the towers fail on a probe of 2 users and 3 items ({first})") from None
    if u.ndim != 3 or u.shape[:2] != (2, 1):
        raise ConfigError(f"model {spec!r}: the user tower returned shape {tuple(u.shape)} for 2 users; the "
                          "protocol asks for [B, d]")
    if v.shape != (3, u.shape[-1]):
        raise ConfigError(f"model {spec!r}: the item tower returned shape {tuple(v.shape)} for 3 items; the "
                          f"protocol asks for [N, d] with the user tower's d = {u.shape[-1]}")


def _builtin(cfg, bundle, artifacts: Artifacts, device) -> TwoTower:
    """The pretrained item tower (frozen) and a fresh user tower over the frozen LightGCN table;
    the sequence encoder's item embeddings start in the item tower's space (``seq_items: own``) or
    are a copy of its vectors that training keeps current (``tied``)."""
    item_tower = build_item_tower(bundle, cfg.dim, cfg.item_layers)
    load_pretrained(item_tower, artifacts)
    item_tower.normalize = cfg.score == "cosine"
    item_tower.requires_grad_(False).eval().to(device)
    graph_users = torch.as_tensor(~bundle.cold_mask)
    graph_users[0] = False
    user_tower = HybridUserTower(cfg, bundle.n_items, artifacts.gnn_user, graph_users,
                                 bundle.meta_cardinalities, artifacts.gnn_item).to(device)
    model = TwoTower(user_tower, item_tower, bundle.n_items)
    with torch.no_grad():
        start = model.item_vectors()
        if cfg.seq_items == "tied":  # the item tower's vectors as they are (the loop keeps them so)
            user_tower.seq.item_emb.requires_grad_(False)
            user_tower.seq.item_emb.weight.copy_(start)
            return model
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
