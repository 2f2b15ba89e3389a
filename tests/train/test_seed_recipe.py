"""The seed's recipe as the seed ran it: last-item targets, a trainable GNN table, no Stage 1."""

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch

import raytower.train.loop as loop
from raytower.train.config import TrainConfig
from raytower.train.data import training_targets
from raytower.train.loop import Curriculum

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "seed_recipe.yaml"


def _record_steps(monkeypatch):
    """Every step's batch (train-user positions) and the targets handed to the loss, in order."""
    seen = {"rows": [], "targets": []}
    real_batches, real_candidates = loop.epoch_batches, loop.candidates

    def batches(*a, **k):
        out = real_batches(*a, **k)
        seen["rows"] += out
        return out

    def candidates(targets):
        seen["targets"].append(targets.clone())
        return real_candidates(targets)

    monkeypatch.setattr(loop, "epoch_batches", batches)
    monkeypatch.setattr(loop, "candidates", candidates)
    return seen


# --- targets -------------------------------------------------------------------------------------

def test_last_item_targets_are_the_last_column_one_per_user():
    seqs = torch.tensor([[0, 0, 4, 7, 9], [3, 5, 2, 8, 6], [0, 0, 0, 1, 2]])
    inp, tgt, valid = training_targets(seqs, "last")
    assert tgt[valid].tolist() == [9, 6, 2] and valid.shape == (3, 1)
    _, tgt_all, valid_all = training_targets(seqs, "all")
    assert tgt_all[valid_all].tolist() == [7, 9, 5, 2, 8, 6, 2]  # every position with an input
    assert torch.equal(inp, seqs[:, :-1])


def test_targets_last_trains_only_the_last_item_one_row_per_user(small_bundle, small_artifacts, small_config,
                                                                  monkeypatch):
    seen = _record_steps(monkeypatch)
    run = Curriculum.create(small_config.replace(epochs=1, targets="last", batch_size=50), small_bundle, small_artifacts)
    row = run.step()
    off, items = small_bundle.train_sequences
    assert len(seen["rows"]) == len(seen["targets"]) > 1
    for rows, targets in zip(seen["rows"], seen["targets"]):
        users = run.data.train_users[rows]
        assert len(targets) == len(rows) <= 50  # a training row per user: batch_size counts rows
        assert targets.tolist() == items[off[users + 1] - 1].tolist()  # each user's last train item
    assert np.isfinite(row["loss"]) and row["loss"] < row["loss_random"] + 1.0


def test_targets_all_trains_every_position(small_bundle, small_artifacts, small_config, monkeypatch):
    seen = _record_steps(monkeypatch)
    run = Curriculum.create(small_config.replace(epochs=1), small_bundle, small_artifacts)
    run.step()
    lens = run.data.train_lens
    for rows, targets in zip(seen["rows"], seen["targets"]):
        assert len(targets) == int((lens[rows] - 1).sum())  # a user of n items gives n - 1 targets


# --- the GNN table --------------------------------------------------------------------------------

def _user_tower_bytes(run: Curriculum) -> int:
    buf = io.BytesIO()
    torch.save(run.state_dict()["user_tower"], buf)
    return buf.tell()


def test_a_frozen_gnn_table_never_moves_and_stays_out_of_checkpoints(small_bundle, small_artifacts, small_config):
    run = Curriculum.create(small_config.replace(stage1_max_epochs=1, epochs=2, unfreeze_depth=1), small_bundle,
                            small_artifacts)
    keys = set(run.state_dict()["user_tower"])
    gnn0 = run.user_tower.gnn_user.clone()
    run.step(), run.step()
    assert run.stage == 2 and torch.equal(gnn0, run.user_tower.gnn_user)
    assert not run.user_tower.gnn_trainable
    # The frozen run's checkpoint is what it was: the same keys before and after Stage 2, no table.
    assert set(run.state_dict()["user_tower"]) == keys and "gnn_user" not in keys


def test_gnn_unfreeze_trains_the_table_in_stage2_at_its_own_lr(small_bundle, small_artifacts, small_config):
    cfg = small_config.replace(stage1_max_epochs=1, epochs=2, unfreeze_depth=1, gnn_unfreeze=True, gnn_lr_ratio=0.5)
    run = Curriculum.create(cfg, small_bundle, small_artifacts)
    gnn0 = run.user_tower.gnn_user.clone()
    assert "gnn_user" not in run.state_dict()["user_tower"]  # Stage 1: frozen, out of the checkpoint
    frozen_bytes = _user_tower_bytes(run)
    run.step()  # Stage 1's epoch leaves the table as it was, then switches
    assert torch.equal(gnn0, run.user_tower.gnn_user)
    assert run.stage == 2 and run.user_tower.gnn_trainable
    group = run.optimizer.param_groups[-1]
    assert group["params"] == [run.user_tower.gnn_user] and group["lr"] == cfg.lr * 0.5
    run.step()
    table = run.user_tower.gnn_user.detach()
    changed = (table != gnn0).any(1)
    assert changed.sum() > 0.5 * (~torch.as_tensor(small_bundle.cold_mask)).sum()  # warm users' rows moved
    # Rows nothing looks up get no gradient, so Adam never moves them: padding and cold users.
    cold = torch.as_tensor(small_bundle.cold_mask).clone()
    cold[0] = True
    assert not changed[cold].any()
    state = run.state_dict()["user_tower"]
    assert torch.equal(state["gnn_user"], table)  # the checkpoint carries the trained table
    assert _user_tower_bytes(run) >= frozen_bytes + table.numel() * 4


def test_a_trainable_table_resumes_exactly(small_bundle, small_artifacts, small_config):
    cfg = small_config.replace(epochs=3, stage1_max_epochs=1, gnn_unfreeze=True, gnn_lr_ratio=1.0)
    straight = Curriculum.create(cfg, small_bundle, small_artifacts)
    rows = [straight.step() for _ in range(2)]
    state = copy.deepcopy(straight.state_dict())  # before create() reseeds: the state holds the RNG
    rows.append(straight.step())  # the run goes on past its checkpoint, as `raytower train` does
    resumed = Curriculum.create(cfg, small_bundle, small_artifacts)
    resumed.load_state_dict(state)
    row = resumed.step()
    assert row["loss"] == rows[2]["loss"] and row["val/recall@100"] == rows[2]["val/recall@100"]
    assert torch.equal(resumed.user_tower.gnn_user, straight.user_tower.gnn_user)


def test_the_test_once_model_carries_the_trained_table(small_bundle, small_artifacts, small_config):
    from raytower.train.evaluate import evaluate
    from raytower.train.loop import load_model

    cfg = small_config.replace(epochs=2, stage1_max_epochs=1, gnn_unfreeze=True, gnn_lr_ratio=1.0)
    run = Curriculum.create(cfg, small_bundle, small_artifacts)
    run.step(), run.step()
    model = load_model(run.state_dict(), small_bundle, small_artifacts)
    assert torch.equal(model.user_tower.gnn_user, run.user_tower.gnn_user.detach())
    assert evaluate(model, run.data, "test")[0] == run.evaluate("test")[0]
    # A table of another size is one line, not a traceback.
    from raytower.errors import ConfigError

    state = run.state_dict()
    state["user_tower"] = {**state["user_tower"], "gnn_user": torch.zeros(3, cfg.dim)}
    with pytest.raises(ConfigError, match="checkpoint does not fit this model"):
        load_model(state, small_bundle, small_artifacts)


# --- no Stage 1, and the recipe file ----------------------------------------------------------------

def test_stage1_max_epochs_zero_unfreezes_from_the_first_step(small_bundle, small_artifacts, small_config):
    cfg = small_config.replace(epochs=1, stage1_max_epochs=0, unfreeze_depth=1)
    run = Curriculum.create(cfg, small_bundle, small_artifacts)
    assert run.stage == 2 and run.switch["epoch"] == 0
    head0 = run.item_tower.head.weight.clone()
    row = run.step()
    assert row["stage"] == 2 and "stage_switch" not in row
    assert not torch.equal(head0, run.item_tower.head.weight)  # the head trained in the first epoch


def test_the_seed_recipe_file_is_the_recipe_and_trains_everything_at_one_lr(small_bundle, small_artifacts):
    cfg = TrainConfig.load(RECIPE)
    assert (cfg.temp_start, cfg.temp_min, cfg.anneal_rate) == (0.07, 0.07, 1.0)
    assert (cfg.logq_warmup_epochs, cfg.logq_ramp_epochs, cfg.logq_max) == (0, 0, 1.0)
    assert (cfg.fusion, cfg.targets, cfg.stage1_max_epochs) == ("concat", "last", 0)
    assert cfg.unfreeze_depth == cfg.item_layers + 2 and cfg.lr_ratio == 1.0
    assert cfg.gnn_unfreeze and cfg.gnn_lr_ratio == 1.0
    # The same recipe on the small test model (its pretraining is 32-d with 2 item layers).
    small = cfg.replace(dim=32, item_layers=2, unfreeze_depth=4, max_len=30, epochs=1, batch_size=64)
    run = Curriculum.create(small, small_bundle, small_artifacts)
    assert {g["lr"] for g in run.optimizer.param_groups} == {small.lr}
    before = {k: v.clone() for k, v in run.item_tower.state_dict().items()}
    gnn0 = run.user_tower.gnn_user.detach().clone()
    row = run.step()
    assert row["tau"] == 0.07 and row["lambda"] == 1.0
    assert all(not torch.equal(before[k], v) for k, v in run.item_tower.state_dict().items()
               if k in ("id_emb.weight", "head.weight", "blocks.0.ff.0.weight"))
    assert not torch.equal(gnn0, run.user_tower.gnn_user)
