"""The curriculum's promises, checked on a small synthetic set."""

import copy
import math

import pytest
import torch

from raytower.train.evaluate import popularity_metrics
from raytower.train.loop import Curriculum


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_stage1_freezes_item_tower_and_gnn_table(small_bundle, small_artifacts, small_config):
    cfg = small_config.replace(stage1_max_epochs=3, epochs=2)
    run = Curriculum.create(cfg, small_bundle, small_artifacts)
    item0, gnn0 = _snapshot(run.item_tower), run.user_tower.gnn_user.clone()
    seq0 = run.user_tower.seq.blocks[0].ff[0].weight.clone()
    opt_params = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in run.item_tower.parameters())
    assert not any(p.requires_grad for p in run.item_tower.parameters())
    run.step(), run.step()
    assert run.stage == 1
    assert _changed(item0, run.item_tower) == set()  # bit-identical
    assert torch.equal(gnn0, run.user_tower.gnn_user)
    assert not torch.equal(seq0, run.user_tower.seq.blocks[0].ff[0].weight)  # the user side learns


def test_stage2_changes_exactly_the_chosen_blocks(small_bundle, small_artifacts, small_config):
    cfg = small_config.replace(stage1_max_epochs=1, epochs=3, unfreeze_depth=2, lr_ratio=0.5)
    run = Curriculum.create(cfg, small_bundle, small_artifacts)
    run.step()
    assert run.stage == 2 and "stage1_max_epochs" in run.switch["reason"]
    groups = run.optimizer.param_groups
    assert len(groups) == 2 and groups[1]["lr"] == cfg.lr * 0.5
    before, gnn0 = _snapshot(run.item_tower), run.user_tower.gnn_user.clone()
    run.step()
    changed = {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks") else "") for k in _changed(before, run.item_tower)}
    assert changed == {"head", "blocks.1"}  # head + top block of 2; block 0 and embeddings untouched
    assert torch.equal(gnn0, run.user_tower.gnn_user)


def test_unfreeze_depth_zero_keeps_item_tower_frozen(small_bundle, small_artifacts, small_config):
    run = Curriculum.create(small_config.replace(stage1_max_epochs=1, epochs=2, unfreeze_depth=0), small_bundle, small_artifacts)
    before = _snapshot(run.item_tower)
    run.step(), run.step()
    assert run.stage == 2 and _changed(before, run.item_tower) == set()


def test_relative_switch_on_recall(small_bundle, small_artifacts, small_config):
    # 0.01 x popularity is reached at once: the switch names the recall rule, not the epoch cap
    run = Curriculum.create(small_config.replace(stage2_min_recall=0.01, stage1_max_epochs=50), small_bundle, small_artifacts)
    row = run.step()
    assert run.stage == 2 and row["stage_switch"].startswith("val recall@100")


def test_rows_report_loss_beside_random_guess(small_bundle, small_artifacts, small_config):
    run = Curriculum.create(small_config.replace(epochs=1, logq_warmup_epochs=5), small_bundle, small_artifacts)
    row = run.step()
    assert abs(row["loss_random"] - row["ln_candidates"]) < 1e-4  # lambda = 0: ln(#candidates)
    for key in ("val/recall@10", "val/recall@100", "val/ndcg@10", "val/cold/recall@100", "val/coverage@100",
                "effective_rank", "uniformity", "gate_mean", "gate_mean_train", "tau", "lambda"):
        assert key in row, key


@pytest.mark.parametrize("changes", [{"unfreeze_depth": 1},
                                     # the whole tower read through the tied inputs, random batches
                                     {"unfreeze_depth": 4, "lr_ratio": 1.0, "seq_items": "tied", "batches": "random"}],
                         ids=["head", "tied-whole-tower-random-batches"])
def test_resume_from_state_reproduces_the_uninterrupted_run(small_bundle, small_artifacts, small_config, changes):
    cfg = small_config.replace(epochs=4, stage1_max_epochs=2, **changes)
    straight = Curriculum.create(cfg, small_bundle, small_artifacts)
    rows = [straight.step() for _ in range(3)]
    # a checkpoint after epoch 3, as `raytower train` writes one after every epoch and goes on
    state = copy.deepcopy(straight.state_dict())
    rows.append(straight.step())
    resumed = Curriculum.create(cfg, small_bundle, small_artifacts)
    resumed.load_state_dict(state)
    assert resumed.stage == 2 and resumed.epoch == 3
    row = resumed.step()
    assert row["loss"] == rows[3]["loss"] and row["val/recall@100"] == rows[3]["val/recall@100"]


def test_learns_past_popularity_in_a_few_epochs(small_bundle, small_artifacts, small_config):
    run = Curriculum.create(small_config.replace(epochs=6), small_bundle, small_artifacts)
    best = max(run.step()["val/recall@100"] for _ in range(6))
    assert best > popularity_metrics(small_bundle, "val")["recall@100"] + 0.02


def test_test_once_model_equals_the_trained_one_without_the_harness(small_bundle, small_artifacts, small_config):
    from raytower.train.evaluate import evaluate
    from raytower.train.loop import load_model

    run = Curriculum.create(small_config.replace(epochs=3, stage1_max_epochs=1, unfreeze_depth=2),
                            small_bundle, small_artifacts)
    while not run.done:
        run.step()
    rng = torch.get_rng_state()
    model = load_model(run.state_dict(), small_bundle, small_artifacts)
    assert torch.equal(torch.get_rng_state(), rng)  # no reseeding just to get a model
    assert evaluate(model, run.data, "test")[0] == run.evaluate("test")[0]


def test_full_softmax_ranks_every_item_without_logq(small_bundle, small_artifacts, small_config):
    """loss: full is the cross-entropy over every item (SASRec+'s): ln(n_items) candidates in every
    step, no logQ correction whatever the ramp says, and it learns past popularity."""
    cfg = small_config.replace(epochs=4, loss="full", logq_warmup_epochs=0, logq_max=1.0, logq_ramp_epochs=1)
    run = Curriculum.create(cfg, small_bundle, small_artifacts)
    rows = [run.step() for _ in range(4)]
    ln_n = math.log(small_bundle.n_items)
    assert all(abs(r["ln_candidates"] - ln_n) < 1e-9 and abs(r["loss_random"] - ln_n) < 1e-4 for r in rows)
    assert all(r["lambda"] == 0.0 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] < ln_n
    assert max(r["val/recall@100"] for r in rows) > popularity_metrics(small_bundle, "val")["recall@100"]


def test_dot_scores_leave_both_towers_unnormalised(small_bundle, small_artifacts, small_config):
    from raytower.train.evaluate import user_vectors

    cosine = Curriculum.create(small_config, small_bundle, small_artifacts)
    dot = Curriculum.create(small_config.replace(score="dot", unfreeze_depth=small_config.item_layers + 2,
                                                 stage1_max_epochs=0, epochs=2), small_bundle, small_artifacts)
    assert torch.allclose(cosine.model.item_vectors()[1:].norm(dim=-1), torch.tensor(1.0))
    assert not torch.allclose(dot.model.item_vectors()[1:].norm(dim=-1), torch.tensor(1.0))
    row = dot.step()
    assert math.isfinite(row["loss"])
    u, _ = user_vectors(dot.model, dot.data, "val")
    assert not torch.allclose(u.norm(dim=-1), torch.tensor(1.0))


def _whole_tower_run(small_bundle, small_artifacts, small_config, seq_items="tied", **changes):
    """Stage 2 from the first step, the whole item tower (id table too) training."""
    cfg = small_config.replace(seq_items=seq_items, stage1_max_epochs=0,
                               unfreeze_depth=small_config.item_layers + 2, **changes)
    return Curriculum.create(cfg, small_bundle, small_artifacts)


def test_tied_inputs_train_the_item_tower_through_the_sequence_too(small_bundle, small_artifacts, small_config):
    """seq_items: tied is SASRec's shared embedding: an item the batch only reads (in a sequence, never
    a candidate) still moves the item tower's id table; with its own table the encoder keeps it apart."""
    from raytower.train.data import training_targets

    moved = {}
    for mode in ("own", "tied"):
        run = _whole_tower_run(small_bundle, small_artifacts, small_config, mode, loss="inbatch", targets="last")
        idx = run._batches()[0]
        run._train_step(torch.as_tensor(run.data.train_users)[idx], idx, tau=0.5, lam=0.0)
        rows = idx.numpy()
        inp, tgt, _ = training_targets(run.data.train_batch(rows, int(run.data.train_lens[rows].max())), "last")
        read_only = set(inp[inp > 0].tolist()) - set(tgt.flatten().tolist())
        assert read_only, "the batch reads some item it never predicts"
        grad = run.item_tower.id_emb.weight.grad
        moved[mode] = {i for i in read_only if grad[i].abs().sum() > 0}
        assert run.user_tower.seq.tied_inputs is None  # the step leaves no table behind
    assert moved["own"] == set()
    assert moved["tied"] == read_only


def test_tied_inputs_are_the_item_vectors_in_checkpoints_and_evaluation(small_bundle, small_artifacts, small_config):
    from raytower.train.evaluate import evaluate
    from raytower.train.loop import load_model

    run = _whole_tower_run(small_bundle, small_artifacts, small_config, epochs=2, loss="full")
    assert not run.user_tower.seq.item_emb.weight.requires_grad
    while not run.done:
        run.step()
    assert torch.equal(run.user_tower.seq.item_emb.weight, run.model.item_vectors())
    model = load_model(run.state_dict(), small_bundle, small_artifacts)  # what evaluate and export read
    assert evaluate(model, run.data, "test")[0] == run.evaluate("test")[0]


def test_tied_inputs_run_the_item_tower_on_the_steps_items_only(small_bundle, small_artifacts, small_config,
                                                                monkeypatch):
    """With in-batch candidates a step runs the item tower on the items it reads or scores, not the
    catalogue (at millions of items the whole tower per step would not fit)."""
    from raytower.train.data import training_targets
    from raytower.train.loss import candidates

    run = _whole_tower_run(small_bundle, small_artifacts, small_config, loss="inbatch", batch_size=8)
    seen = []
    real = run.towers.candidate_vectors
    monkeypatch.setattr(run.towers, "candidate_vectors", lambda ids: seen.append(ids) or real(ids))
    idx = run._batches()[0]
    run._train_step(torch.as_tensor(run.data.train_users)[idx], idx, tau=0.5, lam=0.0)
    rows = idx.numpy()
    inp, tgt, valid = training_targets(run.data.train_batch(rows, int(run.data.train_lens[rows].max())), "all")
    cand, _ = candidates(tgt[valid])
    assert len(seen) == 1
    assert set(seen[0].tolist()) == set(inp.flatten().tolist()) | set(cand.tolist())
    assert len(seen[0]) < small_bundle.n_items
