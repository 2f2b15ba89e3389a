"""The towers as an epoch trains them: which parts train, where a candidate's vector comes from,
and DDP's wrapping of each part that trains.

Stage 1 trains the user side alone: every item's vector is computed once (``item_cache``) and a
batch's candidates are rows of it. Once Stage 2 unfreezes the top pieces of the item tower,
candidates run through those pieces at every step: from the frozen base's output when the tower
offers it (``frozen_base``), else through the whole tower. Under DDP each part that trains is
wrapped, and wrapped again when its set of trainable parameters grows: DDP fixes it at wrapping.
"""

from __future__ import annotations

import torch
from torch import nn

from raytower.errors import ConfigError
from raytower.model.build import TwoTower


class TrainedTowers:
    def __init__(self, model: TwoTower, device: torch.device, world_size: int = 1):
        self.model, self.device, self.world_size = model, device, world_size
        self.user_module: nn.Module = self.wrap(model.user_tower)  # what a step calls: wrapped under DDP
        self.item_top: nn.Module | None = None  # Stage 2: the unfrozen top of the item tower
        self.item_base: torch.Tensor | None = None  # its input for every item: the frozen base's output
        self.item_level = 0  # the piece of the tower item_base comes out of
        self.item_cache = model.item_vectors()  # every item's vector, as the item tower stands

    def wrap(self, module: nn.Module) -> nn.Module:
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=ids)
        return module

    def train(self) -> None:
        """Training mode for the parts that train (the frozen item tower stays in eval mode)."""
        self.model.user_tower.train()
        if self.item_top is not None:
            self.model.item_tower.train()

    def candidate_vectors(self, cand: torch.Tensor) -> torch.Tensor:
        if self.item_top is None:
            return self.item_cache[cand]
        if self.item_base is None:  # the embeddings train too: the whole tower runs
            return self.item_top(cand)
        return self.item_top(self.item_base[cand])

    def refresh_item_cache(self) -> None:
        """Every item's vector again, after an epoch that trained the item tower."""
        if self.item_top is not None:
            with torch.no_grad():
                self.item_cache = self.model.item_vectors()

    def unfreeze_item_top(self, depth: int) -> list[nn.Parameter]:
        """The top ``depth`` pieces of the item tower train from now on; returns their parameters."""
        tower = self.model.item_tower
        pieces = tower.pieces()[:depth]
        for p in pieces:
            p.requires_grad_(True)
        if callable(getattr(tower, "frozen_base", None)):  # what lies under: once per stage
            self.item_base, self.item_level = tower.frozen_base(depth)
        top = tower if self.item_base is None else _TowerTop(tower, self.item_level)
        self.item_top = self.wrap(top)
        return [p for piece in pieces for p in piece.parameters()]

    def unfreeze_gnn(self, model_name: str) -> torch.Tensor:
        """The user tower's GNN table trains from now on; returns it."""
        user_tower = self.model.user_tower
        if not callable(getattr(user_tower, "unfreeze_gnn", None)):
            raise ConfigError(f"gnn_unfreeze: the user tower of model {model_name!r} has no GNN table "
                              "to unfreeze (unfreeze_gnn())")
        table = user_tower.unfreeze_gnn()
        self.user_module = self.wrap(user_tower)
        return table


class _TowerTop(nn.Module):
    """The unfrozen top of the item tower as a module of its own, so DDP can wrap just that."""

    def __init__(self, tower, level: int):
        super().__init__()
        self.tower, self.level = tower, level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower.forward_from(x, self.level)
