"""`raytower export` / `recommend`: the served model reproduces the in-process scores."""

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

    model, cfg, bundle, _ = load_chosen(search)
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
