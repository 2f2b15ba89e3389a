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
    assert torch.allclose(tower.table_vectors(users).norm(dim=-1), torch.ones(2))  # normalised at lookup



def _history_tower(window: int) -> HybridUserTower:
    cfg = TrainConfig(dim=8, max_len=12, n_heads=2, gnn_vector="history", gnn_window=window, gnn_dropout=0.0,
                      dropout=0.0)
    torch.manual_seed(0)
    return HybridUserTower(cfg, 30, torch.randn(6, 8), torch.ones(6, dtype=torch.bool),
                           {"age_bucket": 8, "gender_idx": 3, "occupation_idx": 22}, torch.randn(31, 8)).eval()


def test_the_history_gnn_vector_is_the_windowed_mean_of_the_items_so_far():
    tower = _history_tower(window=3)
    seq = torch.tensor([[0, 0, 4, 9, 2, 7, 5]])  # left-padded
    got = tower.history_vectors(seq)[0]
    unit = tower.gnn_item
    for t, want in [(2, unit[4]), (3, unit[4] + unit[9]), (4, unit[4] + unit[9] + unit[2]),
                    (6, unit[2] + unit[7] + unit[5])]:
        assert torch.allclose(got[t], torch.nn.functional.normalize(want, dim=0), atol=1e-6)
    assert got[:2].abs().sum() == 0  # padding positions: no item, no vector


def test_the_history_gnn_vector_never_sees_a_later_item():
    # The point of gnn_vector: history: position t's user vector (the one trained to predict item t + 1)
    # must not change when the items after t do, as the LightGCN table's row does (it saw them all).
    tower = _history_tower(window=4)
    meta = torch.zeros(1, 3, dtype=torch.long)
    a = tower(torch.tensor([1]), torch.tensor([[3, 8, 1, 6, 2, 11]]), meta)
    b = tower(torch.tensor([1]), torch.tensor([[3, 8, 1, 6, 20, 29]]), meta)
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-6) and not torch.allclose(a[0, 4:], b[0, 4:])
    users = torch.tensor([1, 2])  # the user id plays no part: a user outside the graph is served alike
    seqs = torch.tensor([[3, 8, 1], [3, 8, 1]])
    out = tower(users, seqs, torch.zeros(2, 3, dtype=torch.long))
    assert torch.allclose(out[0], out[1])
