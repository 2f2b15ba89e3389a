"""`raytower export` / `recommend`: the served model reproduces the in-process scores."""

import json

import numpy as np
import pytest
import torch

from raytower.cli import main

pytestmark = pytest.mark.ray  # uses the session's real search


@pytest.fixture(scope="module")
def exported(search, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    assert main(["export", str(search), "--out", str(out)]) == 0
    return out


def test_exported_tower_and_item_vectors_reproduce_in_process_scores(search, exported):
    from raytower.export import ServedModel, load_chosen
    from raytower.train.data import TrainData
    from raytower.train.evaluate import user_vectors

    model, cfg, bundle, _ = load_chosen(str(search))  # a str, as a notebook passes it, or a Path
    data = TrainData.build(bundle, cfg.max_len)
    items = model.item_vectors()
    served = ServedModel(exported)
    assert np.allclose(served.item_vectors.numpy(), items.numpy(), atol=1e-6)
    ev = data.eval_sets["test"]
    ref, _ = user_vectors(model, data, "test")
    hists = [ev.hist_items[ev.hist_offsets[k]:ev.hist_offsets[k + 1]] for k in range(len(ev))]
    meta = data.meta[torch.as_tensor(ev.users)].numpy()
    got = served.user_vector(ev.users, hists, meta)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(got @ served.item_vectors.T, ref @ items.T, atol=1e-5)
    # torch.export replaced TorchScript (deprecated in torch 2.13): the same outputs as a trace
    import warnings

    from raytower.export import ServingUserTower

    rows = np.arange(min(64, len(ev)))
    args = (torch.as_tensor(ev.users[rows]), data.eval_batch("test", rows, cfg.max_len), torch.as_tensor(meta[rows]))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(ServingUserTower(model.user_tower).eval(), args, check_trace=False)
        assert torch.allclose(served.tower(*args), traced(*args), atol=1e-5)


def test_recommend_prints_unseen_items(exported, capsys):
    from raytower.export import ServedModel

    served = ServedModel(exported)
    user = served.users.iloc[0]
    assert main(["recommend", str(exported), "--user", str(user["user_id"]), "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and "title" in lines[0]
    top = served.recommend(user["user_id"], 5)
    assert not set(top["item_id"].astype(str)) & set(served.items.loc[list(user["history"]), "item_id"].astype(str))


def test_recommend_unknown_user_is_one_line(exported, capsys):
    assert main(["recommend", str(exported), "--user", "no-such-user"]) == 2
    assert "no-such-user" in capsys.readouterr().err


def test_export_replaces_an_earlier_export_only_with_force(search, tmp_path, capsys):
    model = tmp_path / "m"
    assert main(["export", str(search), "--out", str(model)]) == 0
    before = (model / "manifest.json").stat().st_mtime_ns
    assert main(["export", str(search), "--out", str(model)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (model / "manifest.json").stat().st_mtime_ns == before
    assert main(["export", str(search), "--out", str(model), "--force"]) == 0
    assert (model / "manifest.json").stat().st_mtime_ns != before
    assert main(["export", str(search), "--out", str(search)]) == 2  # the search itself is never replaced
    assert (search / "best_config.json").is_file()


def _exported_scores(model_dir) -> torch.Tensor:
    from raytower.export import ServedModel

    served = ServedModel(model_dir)
    u = served.users.iloc[0]
    vec = served.user_vector(np.array([u["user_idx"]]), [np.asarray(u["history"])],
                             np.array([[u[c] for c in served.manifest["meta_columns"]]]))
    return vec @ served.item_vectors.T


def test_export_from_the_folder_submit_fetches(search, exported, tmp_path):
    """`submit --fetch-to` copies best_config.json, trials.parquet, setup.json and the chosen
    checkpoint; export reads that folder as it reads the search."""
    import json
    import shutil

    from raytower.tune.record import store_of
    from raytower.tune.results import checkpoint_state

    fetched = tmp_path / "fetched"
    fetched.mkdir()
    for name in ("best_config.json", "trials.parquet", "setup.json"):
        shutil.copy(search / name, fetched / name)
    best = json.loads((search / "best_config.json").read_text())
    torch.save(checkpoint_state(store_of(search), best["trial_id"], best["selection"]["epoch"]),
               fetched / "checkpoint.pt")
    assert main(["export", str(fetched), "--out", str(tmp_path / "m")]) == 0
    assert torch.allclose(_exported_scores(tmp_path / "m"), _exported_scores(exported), atol=1e-6)


def test_export_from_a_train_run(tmp_path, capsys):
    from tests.conftest import SMALL_SYNTHETIC

    cfg = tmp_path / "c.yaml"
    cfg.write_text("dim: 32\nitem_layers: 2\nmax_len: 30\nepochs: 2\nbatch_size: 64\n")
    assert main(["train", "--data", SMALL_SYNTHETIC, "--config", str(cfg), "--threads", "1",
                 "--out", str(tmp_path / "run")]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 0
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert manifest["epoch"] == metrics["best_epoch"] and manifest["config"] == metrics["config"]
    assert torch.isfinite(_exported_scores(tmp_path / "m")[0, 1:]).all()


def test_a_tied_model_exports_the_user_tower_it_trained(tmp_path):
    """seq_items: tied trains the encoder on the item tower's live vectors; the export (the user tower
    alone) must score as the trained model does, through the copy the loop keeps."""
    from tests.conftest import SMALL_SYNTHETIC

    from raytower.export import ServedModel, load_chosen
    from raytower.train.data import TrainData
    from raytower.train.evaluate import user_vectors

    cfg = tmp_path / "c.yaml"
    cfg.write_text("dim: 32\nitem_layers: 2\nmax_len: 30\nepochs: 2\nbatch_size: 64\nseq_items: tied\n"
                   "unfreeze_depth: 4\nlr_ratio: 1.0\nstage1_max_epochs: 0\n")
    assert main(["train", "--data", SMALL_SYNTHETIC, "--config", str(cfg), "--threads", "1",
                 "--out", str(tmp_path / "run")]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 0
    model, tcfg, bundle, _ = load_chosen(tmp_path / "run")
    assert tcfg.seq_items == "tied"
    # the encoder's table is the item tower as trained (what the exported item vectors are too)
    assert torch.equal(model.user_tower.seq.item_emb.weight, model.item_vectors())
    data = TrainData.build(bundle, tcfg.max_len)
    ev = data.eval_sets["test"]
    rows = np.arange(min(32, len(ev)))
    ref, _ = user_vectors(model, data, "test")
    hists = [ev.hist_items[ev.hist_offsets[k]:ev.hist_offsets[k + 1]] for k in rows]
    got = ServedModel(tmp_path / "m").user_vector(ev.users[rows], hists, data.meta[torch.as_tensor(ev.users[rows])].numpy())
    assert torch.allclose(got, ref[rows], atol=1e-5)


@pytest.mark.slow  # train, then export in a process under a file-size limit: second tier
def test_an_export_past_a_file_size_limit_is_one_line(tmp_path):
    # torch.export.save reported a full disk or RLIMIT_FSIZE as a RuntimeError and a C++ stack
    import resource
    import subprocess
    import sys

    from tests.conftest import SMALL_SYNTHETIC

    cfg = tmp_path / "c.yaml"
    cfg.write_text("dim: 32\nitem_layers: 2\nmax_len: 30\nepochs: 1\nbatch_size: 64\n")
    assert main(["train", "--data", SMALL_SYNTHETIC, "--config", str(cfg), "--threads", "1",
                 "--out", str(tmp_path / "run")]) == 0

    def limit():  # the user tower's archive is about 500 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    done = subprocess.run([sys.executable, "-m", "raytower.cli", "export", str(tmp_path / "run"), "--out",
                           str(tmp_path / "m")], preexec_fn=limit, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.strip().endswith("user_tower.pt2: File too large (nothing half-written is left behind)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "run"]  # nothing half-written beside it
