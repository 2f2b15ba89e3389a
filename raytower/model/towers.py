"""The tower protocol: a team's own towers, trained by raytower's curriculum, search and export.

A config names a builder (``model: "mypkg.towers:build"``, with its ``model_args``):

    @raytower.towers.builder(pretrained=False)
    def build(bundle, artifacts, model_args) -> (user_tower, item_tower): ...

    user_tower(user_idx[B], items[B, L], meta[B, M]) -> [B, d]    items left-padded with 0 (the export's
                                                                  signature); meta: the bundle's META_COLUMNS
    item_tower(item_idx[N]) -> [N, d]                             row 0 of the catalogue is padding
    item_tower.pieces() -> [nn.Module, ...]                       the unfreezable pieces, top down; the
                                                                  id table may be the bottom piece

Both are ``torch.nn.Module``; a score is the dot product of their outputs. The curriculum freezes the
item tower, then in Stage 2 unfreezes its top ``unfreeze_depth`` pieces at ``lr * lr_ratio``; with
``pretrained=False`` the builder gets ``artifacts=None``, no pretraining runs, and there is no Stage 1
(a frozen random item tower has nothing to keep). Optional, for speed or more training signal:

    user_tower.all_positions = True     forward(..., last_only=False) returns [B, L, d], one vector per
                                        position, so ``targets: all`` trains every next-item prediction
    item_tower.frozen_base(depth), item_tower.forward_from(x, level)
                                        what lies under the unfrozen pieces, computed once per stage

Only a function marked with ``builder`` is called: a config (a best_config.json someone hands back)
names code to import, and the mark keeps it to functions written for this purpose.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from raytower.errors import ConfigError

BUILTIN = "raytower"  # the built-in towers (raytower.model.build), one implementation of the protocol
_MARK = "__raytower_builder__"


def builder(pretrained: bool = False) -> Callable:
    """Mark ``build(bundle, artifacts, model_args) -> (user_tower, item_tower)`` as a tower builder.
    ``pretrained``: raytower's pretraining (LightGCN users, a content item tower) runs first and the
    builder gets its ``Artifacts``; otherwise ``artifacts`` is None."""
    def mark(fn: Callable) -> Callable:
        setattr(fn, _MARK, {"pretrained": bool(pretrained)})
        return fn

    return mark


def resolve(spec: str) -> Callable:
    """``"package.module:function"`` -> the marked builder, or one line saying why not."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name.isidentifier():
        raise ConfigError(f"model {spec!r}: expected 'package.module:function' (or {BUILTIN!r}, the built-in towers)")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ConfigError(f"model {spec!r}: cannot import {module} ({e})") from None
    except AttributeError:
        raise ConfigError(f"model {spec!r}: {module} has no {name}") from None
    if not callable(fn) or not isinstance(getattr(fn, _MARK, None), dict):
        raise ConfigError(f"model {spec!r}: not a tower builder (mark it with @raytower.towers.builder())")
    return fn


def needs_pretraining(model: str) -> bool:
    return model == BUILTIN or resolve(model).__raytower_builder__["pretrained"]


def user_forward(tower: torch.nn.Module, users: torch.Tensor, seq: torch.Tensor, meta: torch.Tensor,
                 last_only: bool = True, all_positions: bool | None = None) -> torch.Tensor:
    """[B, L', d] user vectors: one per position for a tower with ``all_positions`` (and
    ``last_only`` False), else the last position's alone ([B, 1, d]). Pass ``all_positions`` for a
    wrapped tower (DDP), which does not show its module's attributes."""
    if all_positions if all_positions is not None else getattr(tower, "all_positions", False):
        return tower(users, seq, meta, last_only=last_only)
    return tower(users, seq, meta)[:, None]

