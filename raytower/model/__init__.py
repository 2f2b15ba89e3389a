"""The towers (``two_tower``), their once-per-data-set pretraining (``pretrain``) and one
configuration's model built from both (``build``). No Ray here."""

from raytower.model.build import TwoTower, build_model
# (``pretrain``, the function, is not re-exported here: it would hide the module of that name.)
from raytower.model.pretrain import Artifacts, PretrainConfig
from raytower.model.two_tower import HybridUserTower, ItemTower

__all__ = ["Artifacts", "HybridUserTower", "ItemTower", "PretrainConfig", "TwoTower", "build_model"]
