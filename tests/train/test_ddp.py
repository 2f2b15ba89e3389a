"""The loop under DDP (gloo, 2 processes on CPU): same steps per rank, Stage 2 re-wrapping, ranks in sync."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests._net import free_port

pytestmark = pytest.mark.slow  # two spawned processes: second tier


def _worker(rank, world, port, bundle_path, art_path, cfg_dict, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from raytower.data import Bundle
    from raytower.model.pretrain import Artifacts
    from raytower.train.config import TrainConfig
    from raytower.train.loop import Curriculum

    run = Curriculum.create(TrainConfig.from_dict(cfg_dict), Bundle(bundle_path), Artifacts.load(art_path), rank=rank, world_size=world)
    rows = [run.step() for _ in range(3)]
    torch.save({"rows": rows, "user": run.user_tower.state_dict(), "head": run.item_tower.head.state_dict(),
                "item": run.item_tower.state_dict(),
                "stage": run.stage}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_ranks_stay_in_sync_through_the_stage_switch(small_bundle, small_artifacts, small_config, tmp_path):
    cfg = small_config.replace(epochs=3, stage1_max_epochs=1, unfreeze_depth=1, lr_ratio=0.5)
    mp.spawn(_worker, args=(2, free_port(), str(small_bundle.path), str(small_artifacts.path), cfg.to_dict(), str(tmp_path)),
             nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["stage"] == r1["stage"] == 2
    for key, value in r0["user"].items():
        assert torch.allclose(value, r1["user"][key]), key  # DDP kept the user towers identical
    for key, value in r0["head"].items():
        assert torch.allclose(value, r1["head"][key]), key  # and the unfrozen head after the switch
    assert [r["loss"] for r in r0["rows"]] == [r["loss"] for r in r1["rows"]]  # all-reduced epoch loss


def test_a_trainable_gnn_table_stays_in_sync_across_ranks(small_bundle, small_artifacts, small_config, tmp_path):
    # The table becomes a parameter of the already-wrapped user tower at Stage 2: without wrapping
    # it again, DDP would not all-reduce its gradient and each rank would train its own table.
    cfg = small_config.replace(epochs=3, stage1_max_epochs=1, unfreeze_depth=1, gnn_unfreeze=True, gnn_lr_ratio=1.0,
                               targets="last")
    mp.spawn(_worker, args=(2, free_port(), str(small_bundle.path), str(small_artifacts.path), cfg.to_dict(), str(tmp_path)),
             nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    table = r0["user"]["gnn_user"]
    start = torch.nn.functional.normalize(small_artifacts.gnn_user, dim=-1)
    assert not torch.allclose(table, start)  # it trained
    for key, value in r0["user"].items():
        assert torch.allclose(value, r1["user"][key]), key


def test_tied_inputs_train_the_whole_item_tower_in_sync_across_ranks(small_bundle, small_artifacts, small_config,
                                                                     tmp_path):
    # seq_items: tied runs the DDP-wrapped item tower once a step and feeds it to the DDP-wrapped user
    # tower too: the id table's gradient from both sides must be all-reduced alike on every rank.
    cfg = small_config.replace(epochs=3, stage1_max_epochs=1, unfreeze_depth=small_config.item_layers + 2,
                               lr_ratio=1.0, loss="full", seq_items="tied")
    mp.spawn(_worker, args=(2, free_port(), str(small_bundle.path), str(small_artifacts.path), cfg.to_dict(), str(tmp_path)),
             nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert not torch.equal(r0["item"]["id_emb.weight"], small_artifacts.item_tower["id_emb.weight"])  # it trained
    for part in ("user", "item"):
        for key, value in r0[part].items():
            assert torch.allclose(value, r1[part][key]), (part, key)
    assert torch.equal(r0["user"]["seq.item_emb.weight"], r1["user"]["seq.item_emb.weight"])
