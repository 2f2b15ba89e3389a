"""Pretraining: LightGCN trained in time linear in the interactions, and a cache that never misreads."""

import json
import math

import numpy as np
import pytest
import torch

from raytower.model import pretrain as P
from raytower.model.pretrain import PretrainConfig, graph_recall, pretrain, propagate


def test_lightgcn_vectors_rank_held_out_items(small_bundle, small_artifacts):
    # Measured with 4 negatives and the 0.1-weighted readout: 0.738, 0.742, 0.731 over seeds 0-2 (SE
    # about 0.017; one negative and the uniform mean read 0.729, 0.726, 0.744); the popularity
    # baseline's validation Recall@100 on this data is 0.645.
    got = graph_recall(small_bundle, small_artifacts.gnn_user, small_artifacts.gnn_item, "val")
    assert got == pytest.approx(small_artifacts.stats["lightgcn_val_recall@100"])
    assert got >= 0.70
    assert small_artifacts.stats["cpu_s"] > 0  # what the pretraining cost: a run's time to quality counts it


def test_propagate_is_lightgcns_mean_of_normalised_adjacency_powers():
    g = torch.Generator().manual_seed(0)
    src, dst = torch.tensor([0, 0, 1, 2, 3]), torch.tensor([4, 5, 5, 6, 4])
    x = torch.randn(7, 3, generator=g)
    a = torch.zeros(7, 7)
    a[src, dst] = a[dst, src] = 1
    d = a.sum(1).pow(-0.5)
    a_hat = d[:, None] * a * d[None, :]
    want = (x + a_hat @ x + a_hat @ a_hat @ x) / 3
    assert torch.allclose(propagate(x, src, dst, 7, 2), want, atol=1e-6)
    # raytower's readout: the trained table, with a weight on the propagated layers' mean
    assert torch.allclose(propagate(x, src, dst, 7, 2, 0.1), 0.9 * x + 0.1 * (a_hat @ x + a_hat @ a_hat @ x) / 2,
                          atol=1e-6)
    assert torch.allclose(propagate(x, src, dst, 7, 1, 0.5), (x + a_hat @ x) / 2, atol=1e-6)
    lonely = torch.zeros(1, 3)  # a node without edges keeps its own vector, never NaN
    assert torch.isfinite(propagate(torch.cat([x, lonely]), src, dst, 8, 2)).all()


def test_a_step_touches_only_its_batchs_rows(small_bundle):
    # Sparse gradients: the optimizer's state exists only for rows a step used, so a step costs the
    # same whatever the table size (a dense Adam step over a 300k-row table took 14x longer).
    users, items = small_bundle.train_pairs(graph_only=True)
    emb = torch.nn.Embedding(small_bundle.n_items, 8, sparse=True)
    opt = torch.optim.SparseAdam([emb.weight])
    before = emb.weight.detach().clone()
    rows = torch.as_tensor(items[:5] - 1)
    emb(rows).sum().backward()
    opt.step()
    changed = (emb.weight.detach() != before).any(1)
    assert set(torch.nonzero(changed).flatten().tolist()) == set(rows.tolist())


def test_the_cache_key_names_the_method_and_format(monkeypatch):
    key = PretrainConfig().key()
    monkeypatch.setattr(P, "METHOD", "another-method/1")
    assert PretrainConfig().key() != key
    monkeypatch.setattr(P, "METHOD", P.METHOD)
    monkeypatch.setattr(P, "ARTIFACT_FORMAT", P.ARTIFACT_FORMAT + 1)
    assert PretrainConfig().key() != key


@pytest.mark.parametrize("damage", ["old format", "truncated table"])
def test_a_stale_or_damaged_cache_entry_is_made_again_not_misread(small_bundle, tmp_path, damage):
    pcfg = PretrainConfig(dim=8, item_layers=1, gnn_epochs=1, tower_epochs=1, tower_max_steps=5)  # fast tier: seconds
    dest = tmp_path / "artifacts"
    first = pretrain(small_bundle, pcfg, dest=dest, progress=None)
    if damage == "old format":
        manifest = json.loads((dest / "manifest.json").read_text())
        (dest / "manifest.json").write_text(json.dumps({**manifest, "format": 1, "method": None}))
    else:
        (dest / "lightgcn.pt").write_bytes((dest / "lightgcn.pt").read_bytes()[:100])
    said = []
    again = pretrain(small_bundle, pcfg, dest=dest, progress=said.append)
    assert any("remaking" in s for s in said)
    assert json.loads((dest / "manifest.json").read_text())["format"] == P.ARTIFACT_FORMAT
    assert torch.equal(again.gnn_user, first.gnn_user)  # seeded: the same tables again
    assert np.isfinite(again.stats["lightgcn_val_recall@100"])


def test_pretraining_on_a_device_returns_cpu_tables_and_the_cpu_figures(small_bundle):
    """`raytower train --device cuda` pretrains on the device: the draws stay on the CPU, so on the
    CPU device path the tables are the ones the default path makes, returned on the CPU."""
    from raytower.model.pretrain import train_item_tower, train_lightgcn

    pcfg = PretrainConfig(dim=16, item_layers=1, gnn_epochs=1, tower_epochs=1, tower_max_steps=5)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    u, i, _ = train_lightgcn(small_bundle, pcfg, None)
    du, di, _ = train_lightgcn(small_bundle, pcfg, None, device=device)
    assert du.device.type == "cpu" and di.device.type == "cpu"
    assert torch.allclose(u, du, atol=1e-4) and torch.allclose(i, di, atol=1e-4)
    tower, _ = train_item_tower(small_bundle, pcfg, du, di, None, device=device)
    assert all(p.device.type == "cpu" for p in tower.parameters())


@pytest.mark.slow  # LightGCN in a process under a file-size limit: second tier
def test_pretraining_past_a_file_size_limit_is_one_line(small_bundle, tmp_path):
    # torch.save reported a full disk or RLIMIT_FSIZE as a RuntimeError traceback
    import os
    import resource
    import subprocess
    import sys

    def limit():  # the LightGCN tables are about 155 kB; the bundle is read where it is
        resource.setrlimit(resource.RLIMIT_FSIZE, (120_000, 120_000))

    cfg = tmp_path / "c.yaml"
    cfg.write_text("dim: 32\nitem_layers: 2\nmax_len: 30\nbatch_size: 64\nepochs: 1\n")
    done = subprocess.run([sys.executable, "-m", "raytower.cli", "train", "--data", str(small_bundle.path), "--config",
                           str(cfg), "--out", str(tmp_path / "run"), "--threads", "1"], preexec_fn=limit,
                          env={**os.environ, "RAYTOWER_CACHE": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.endswith("lightgcn.pt: File too large (nothing half-written is left behind)"), last
    assert not list((tmp_path / "cache").rglob("*.pt"))  # no partial cache entry


# --- budgets that scale with the data (issue 28 part 2) -------------------------------------------


def test_the_budget_is_passes_over_small_data_and_capped_on_large():
    from raytower.model.pretrain import budget

    pcfg = PretrainConfig(gnn_epochs=40, gnn_max_samples=20_000_000, tower_epochs=15, tower_max_steps=1500)
    small = budget(6_000, pcfg)  # a 300-user CSV: every pass of at least 20 steps (the batch shrinks)
    assert small.gnn_batch == 300 and small.gnn_steps == 40 * 20 and small.tower_steps == 15 * 20
    ml1m = budget(987_531, pcfg)  # capped: 20M positives, about 20 passes, not 40
    assert ml1m.gnn_steps == math.ceil(20_000_000 / 4096) and ml1m.tower_steps == 1500
    huge = budget(50_000_000, pcfg)  # never under one pass
    assert huge.gnn_steps == math.ceil(50_000_000 / 4096)
    uncapped = budget(987_531, PretrainConfig(gnn_max_samples=0))
    assert uncapped.gnn_steps == 40 * math.ceil(987_531 / 4096)


def test_the_loops_run_the_budget_a_cap_ending_inside_a_pass(small_bundle):
    from raytower.model.pretrain import budget, train_item_tower, train_lightgcn

    n = len(small_bundle.train_pairs(graph_only=True)[0])
    pcfg = PretrainConfig(dim=8, item_layers=1, gnn_epochs=3, gnn_max_samples=int(1.5 * n), tower_epochs=2,
                          tower_max_steps=7)
    plan = budget(n, pcfg)
    per_pass = math.ceil(n / plan.gnn_batch)
    assert per_pass < plan.gnn_steps < 2 * per_pass  # the cap binds, half-way through the second pass
    user, item, gnn_stats = train_lightgcn(small_bundle, pcfg, None)
    _, tower_stats = train_item_tower(small_bundle, pcfg, user, item, None)
    assert gnn_stats["lightgcn_steps"] == plan.gnn_steps and tower_stats["item_tower_steps"] == plan.tower_steps == 7


def test_an_entry_made_before_the_cap_keeps_its_key_and_reads_as_uncapped(small_bundle, tmp_path):
    # The default config's key before gnn_max_samples existed (tower_max_steps was 3000): runs
    # recorded then (run.json without the field) must find their artifacts, not pretrain anew.
    legacy = PretrainConfig(gnn_max_samples=0, tower_max_steps=3000)
    assert legacy.key() == "9d96cd413666"
    assert PretrainConfig().key() != legacy.key()  # today's budgets: another entry
    pcfg = PretrainConfig(dim=8, item_layers=1, gnn_epochs=1, tower_epochs=1, gnn_max_samples=0)
    dest = tmp_path / "old"
    pretrain(small_bundle, pcfg, dest=dest, progress=None)
    manifest = json.loads((dest / "manifest.json").read_text())
    del manifest["config"]["gnn_max_samples"]  # as a manifest written before the field
    (dest / "manifest.json").write_text(json.dumps(manifest))
    said = []
    assert pretrain(small_bundle, pcfg, dest=dest, progress=said.append).config == pcfg
    assert not any("remaking" in s for s in said)


def test_a_changed_budget_never_reuses_another_budgets_artifacts(small_bundle, tmp_path):
    from raytower.model.pretrain import artifacts_dir

    # one LightGCN pass each: only the item tower's budget tells them apart
    one = PretrainConfig(dim=8, item_layers=1, gnn_epochs=1, tower_epochs=1, tower_max_steps=3)
    other = PretrainConfig(dim=8, item_layers=1, gnn_epochs=1, tower_epochs=1, tower_max_steps=5)
    assert artifacts_dir(small_bundle, one) != artifacts_dir(small_bundle, other)
    made = pretrain(small_bundle, one, progress=None)
    assert pretrain(small_bundle, other, progress=None).stats["item_tower_steps"] == 5
    # even at the same path (a dest given by hand), an entry of another config is made again
    said = []
    again = pretrain(small_bundle, other, dest=made.path, progress=said.append)
    assert again.config == other and again.stats["item_tower_steps"] == 5
    assert any("another pretraining config" in s for s in said)


def test_the_estimate_times_both_phases_and_leaves_the_seeded_run_alone(small_bundle):
    from raytower.model.pretrain import budget, describe_estimate, estimate_seconds

    pcfg = PretrainConfig(dim=8, item_layers=1, gnn_epochs=1, tower_epochs=1, seed=5)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    seconds, plan = estimate_seconds(small_bundle, pcfg)
    assert torch.equal(torch.get_rng_state(), state)  # the tower's initialisation drew from a fork
    assert plan == budget(len(small_bundle.train_pairs(graph_only=True)[0]), pcfg)
    assert 0 < seconds < 60 and math.isfinite(seconds)
    text = describe_estimate(small_bundle, pcfg)
    assert "about" in text and f"{plan.gnn_steps:,} LightGCN + {plan.tower_steps:,} item tower steps" in text
    pretrain(small_bundle, pcfg, progress=None)
    assert describe_estimate(small_bundle, pcfg).endswith("cached")
