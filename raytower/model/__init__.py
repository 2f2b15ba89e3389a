"""The towers (``two_tower``) and their once-per-data-set pretraining (``pretrain``). No Ray here."""

from raytower.model.pretrain import Artifacts, PretrainConfig, pretrain
from raytower.model.two_tower import HybridUserTower, ItemTower

__all__ = ["Artifacts", "HybridUserTower", "ItemTower", "PretrainConfig", "pretrain"]
