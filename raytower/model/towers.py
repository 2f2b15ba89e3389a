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
names code to import, and the mark keeps it to functions written for this purpose. Importing a module
runs it, so the module's source is read first, without running it or the packages above it: it must
define the name at its top level as a marked function (or import it from a module that does).
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
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
    if module not in sys.modules:  # importing it would run it: read it first
        _check_source(spec, module, name)
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ConfigError(f"model {spec!r}: cannot import {module} ({e})") from None
    except AttributeError:
        raise ConfigError(f"model {spec!r}: {module} has no {name}") from None
    if not callable(fn) or not isinstance(getattr(fn, _MARK, None), dict):
        raise ConfigError(f"model {spec!r}: not a tower builder (mark it with @raytower.towers.builder())")
    return fn


def _check_source(spec: str, module: str, name: str, depth: int = 0) -> None:
    """One line unless ``module``'s source defines ``name`` at its top level as a function marked with
    ``builder`` (a decorator or call of that name), or imports it from a module that does."""
    try:
        found = _find_spec(module)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"model {spec!r}: cannot import {module} ({e})") from None
    if found is None:
        raise ConfigError(f"model {spec!r}: cannot import {module} (No module named {module!r})")
    if not (found.origin or "").endswith(".py") or depth > 8:
        raise ConfigError(f"model {spec!r}: {module} is not a Python source file raytower can read before "
                          "importing it; define the builder in one")
    try:
        tree = ast.parse(Path(found.origin).read_bytes(), found.origin)
    except (OSError, SyntaxError, ValueError) as e:
        raise ConfigError(f"model {spec!r}: cannot read {found.origin} ({type(e).__name__}: {e})") from None
    # the last top-level statement binding ``name``: what the module's attribute will be
    bound = next((node for node in reversed(tree.body) if name in _bound_by(node)), None)
    if bound is None:
        raise ConfigError(f"model {spec!r}: {module} has no {name} (defined at its top level)")
    if isinstance(bound, ast.ImportFrom):
        original = next(a.name for a in bound.names if (a.asname or a.name) == name)
        package = module if found.submodule_search_locations is not None else module.rpartition(".")[0]
        source = importlib.util.resolve_name("." * bound.level + (bound.module or ""), package)
        if source not in sys.modules:
            _check_source(spec, source, original, depth + 1)
        elif not isinstance(getattr(getattr(sys.modules[source], original, None), _MARK, None), dict):
            raise ConfigError(f"model {spec!r}: not a tower builder (mark it with @raytower.towers.builder())")
        return
    marks = bound.decorator_list if hasattr(bound, "decorator_list") else [bound.value]
    if not any(_calls_builder(m) for m in marks):
        raise ConfigError(f"model {spec!r}: not a tower builder (mark it with @raytower.towers.builder())")


def _bound_by(node: ast.stmt) -> set[str]:
    """The names a top-level definition, assignment or ``from ... import`` binds."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.ImportFrom):
        return {a.asname or a.name for a in node.names}
    return set()


def _find_spec(module: str):
    """Where ``module`` is, found without importing it or the packages above it (importlib's
    find_spec imports the parents, running their ``__init__``)."""
    parent = module.rpartition(".")[0]
    if not parent or parent in sys.modules:
        return importlib.util.find_spec(module)
    above = _find_spec(parent)
    if above is None or above.submodule_search_locations is None:
        return None
    return importlib.machinery.PathFinder.find_spec(module, list(above.submodule_search_locations))


def _calls_builder(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and (isinstance(n.func, ast.Name) and n.func.id == "builder"
                                            or isinstance(n.func, ast.Attribute) and n.func.attr == "builder")
               for n in ast.walk(node))


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

