"""build_model: the towers of one configuration, from the bundle and the pretraining artifacts."""

import io
from dataclasses import replace

import pytest
import torch

from raytower.errors import DataError
from raytower.model.build import build_model
from raytower.model.two_tower import HybridUserTower
from raytower.train.config import TrainConfig


def _checkpoint_bytes(n_users: int) -> int:
    cfg = TrainConfig(dim=16, max_len=10, n_heads=2)
    tower = HybridUserTower(cfg, 50, torch.randn(n_users + 1, 16), torch.ones(n_users + 1, dtype=torch.bool),
                            {"age_bucket": 8, "gender_idx": 3, "occupation_idx": 22})
    buf = io.BytesIO()
    torch.save(tower.state_dict(), buf)
    return buf.tell()


def test_a_checkpoint_does_not_grow_with_the_number_of_users():
    # The frozen LightGCN table comes from the artifacts; at 1M users it was 256 MB per checkpoint.
    assert _checkpoint_bytes(100) == _checkpoint_bytes(100_000)


def test_an_old_checkpoint_with_the_gnn_table_still_loads(small_bundle, small_artifacts, small_config):
    model = build_model(small_config, small_bundle, small_artifacts)
    state = model.user_tower.state_dict()
    old = {**state, "gnn_user.weight": torch.zeros(small_bundle.n_users + 1, small_config.dim)}
    model.user_tower.load_state_dict(old)  # no "unexpected key", and the table is not overwritten
    assert model.user_tower.gnn_user.abs().sum() > 0


def test_the_model_starts_from_every_pretrained_weight(small_bundle, small_artifacts, small_config):
    model = build_model(small_config, small_bundle, small_artifacts)
    for k, v in small_artifacts.item_tower.items():
        assert torch.equal(model.item_tower.state_dict()[k], v), k
    assert not any(p.requires_grad for p in model.item_tower.parameters())  # Stage 1: frozen
    items = model.item_vectors()
    assert items.shape == (small_bundle.n_items + 1, small_config.dim)
    assert torch.allclose(model.user_tower.seq.item_emb.weight, items / small_config.dim**0.5)


def test_artifacts_that_do_not_fit_name_the_keys(small_bundle, small_artifacts, small_config):
    partial = {k: v for k, v in small_artifacts.item_tower.items() if not k.startswith("head.")}
    with pytest.raises(DataError, match=r"missing \['head.bias', 'head.weight'\]"):
        build_model(small_config, small_bundle, replace(small_artifacts, item_tower=partial))
    with pytest.raises(DataError, match="does not fit this model"):
        build_model(small_config.replace(dim=16), small_bundle, small_artifacts)
