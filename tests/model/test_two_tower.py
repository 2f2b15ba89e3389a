import pytest
import torch

from raytower.model.pretrain import build_item_tower
from raytower.model.two_tower import Fusion, HybridUserTower, SequenceEncoder
from raytower.train.config import TrainConfig


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4])
def test_cached_base_plus_top_equals_the_whole_tower(small_bundle, depth):
    tower = build_item_tower(small_bundle, dim=16, item_layers=2).eval()
    items = torch.arange(small_bundle.n_items + 1)
    base, level = tower.frozen_base(depth)
    full = tower(items)
    if depth == 4:  # item_layers + 2: the embeddings train, nothing is cached
        assert base is None
    else:
        assert torch.allclose(tower.forward_from(base, level), full, atol=1e-6)


def test_item_tower_outputs_unit_vectors(small_bundle):
    tower = build_item_tower(small_bundle, dim=16, item_layers=1).eval()
    v = tower(torch.arange(1, 10))
    assert torch.allclose(v.norm(dim=-1), torch.ones(9), atol=1e-5)


def test_unfreeze_depth_counts_from_the_top(small_bundle):
    tower = build_item_tower(small_bundle, dim=16, item_layers=3)
    stages = tower.pieces()
    assert stages[0] is tower.head
    assert stages[1] is tower.blocks[2] and stages[3] is tower.blocks[0]
    assert tower.id_emb in list(stages[4].modules())


@pytest.mark.parametrize("pooling", ["last", "attention"])
def test_sequence_encoder_is_causal(pooling):
    torch.manual_seed(0)
    enc = SequenceEncoder(n_items=50, dim=16, max_len=8, n_blocks=2, n_heads=2, dropout=0.0, pooling=pooling).eval()
    seq = torch.tensor([[0, 0, 3, 7, 9, 11, 4, 2]])
    changed = seq.clone()
    changed[0, -1] = 30  # change only the latest item
    h1, h2 = enc(seq), enc(changed)
    assert torch.allclose(h1[:, :-1], h2[:, :-1], atol=1e-6)  # earlier positions cannot see it
    assert not torch.allclose(h1[:, -1], h2[:, -1])
    assert torch.isfinite(h1).all()  # padded positions do not produce NaN


def test_padding_does_not_change_real_positions():
    torch.manual_seed(0)
    enc = SequenceEncoder(n_items=50, dim=16, max_len=8, n_blocks=1, n_heads=2, dropout=0.0, pooling="attention").eval()
    short = enc(torch.tensor([[0, 0, 0, 0, 5, 6, 7, 8]]))[:, -1]
    longer_pad = enc(torch.tensor([[0, 0, 0, 0, 0, 0, 5, 6, 7, 8]])[:, -8:])[:, -1]
    assert torch.allclose(short, longer_pad, atol=1e-6)


@pytest.mark.parametrize("kind", ["concat", "gated", "moe"])
def test_fusion_shapes_and_gates(kind):
    f = Fusion(kind, dim=8, n_experts=3, dropout=0.0)
    out = f(torch.randn(4, 5, 8), torch.randn(4, 5, 8), torch.randn(4, 5, 8))
    assert out.shape == (4, 5, 8)
    if kind == "concat":
        assert f.last_gate is None
    elif kind == "gated":
        assert f.last_gate.shape == (4, 5, 8) and ((f.last_gate > 0) & (f.last_gate < 1)).all()
    else:
        assert torch.allclose(f.last_gate.sum(-1), torch.ones(4, 5))


def test_gated_fusion_follows_its_formula():
    torch.manual_seed(0)
    f = Fusion("gated", dim=4, n_experts=1, dropout=0.0).eval()
    g_, s_, m_ = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)
    g = torch.sigmoid(f.gate(torch.cat([g_, s_, m_], -1)))
    expected = f.mlp(g * s_ + (1 - g) * g_ + f.meta_proj(m_))
    assert torch.allclose(f(g_, s_, m_), expected)


def test_a_trainable_gnn_table_is_state_and_a_frozen_one_is_not():
    cfg = TrainConfig(dim=16, max_len=10, n_heads=2, gnn_unfreeze=True)
    table = torch.nn.functional.normalize(torch.randn(11, 16), dim=-1)
    tower = HybridUserTower(cfg, 50, table, torch.ones(11, dtype=torch.bool), {"age_bucket": 8, "gender_idx": 3,
                                                                                 "occupation_idx": 22})
    assert "gnn_user" not in tower.state_dict() and not tower.gnn_trainable
    param = tower.unfreeze_gnn()
    assert tower.unfreeze_gnn() is param  # once
    assert isinstance(param, torch.nn.Parameter) and any(p is param for p in tower.parameters())
    assert torch.allclose(tower.state_dict()["gnn_user"], table)
    with torch.no_grad():
        param.mul_(3.0)  # off the unit sphere, as training may take it
    tower.eval()
    users = torch.tensor([1, 2])
    assert torch.allclose(tower.gnn_vector(users).norm(dim=-1), torch.ones(2))  # normalised at lookup

