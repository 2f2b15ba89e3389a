"""A team's own towers through the protocol (raytower.model.towers): train, checkpoint, export,
recommend, search, with the example's mean-pooling user tower and two-piece item tower."""

import json
import os

import pytest
import torch

from raytower.cli import main
from raytower.errors import ConfigError
from raytower.train.config import TrainConfig
from tests.conftest import REPO, SMALL_SYNTHETIC

EXAMPLES = REPO / "examples"
MINE = {"model": "towers:build", "model_args": {"dim": 16}, "targets": "last", "unfreeze_depth": 2,
        "lr_ratio": 1.0, "epochs": 3, "batch_size": 64, "max_len": 20, "temp_start": 0.1, "anneal_rate": 1.0,
        "logq_max": 0.0}


@pytest.fixture
def examples_importable(monkeypatch):
    """The example module importable here and in every process started from here (Ray's workers)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")])))


def test_the_curriculum_trains_the_towers_own_parameters(examples_importable, small_bundle):
    from raytower.train.loop import Curriculum

    run = Curriculum.create(TrainConfig.from_dict(MINE), small_bundle, None)
    assert type(run.model.user_tower).__name__ == "MeanUserTower"
    # no pretraining: no Stage 1, both pieces of the item tower train from the first step
    assert run.stage == 2 and "no Stage 1" in run.switch["reason"]
    table = run.model.item_tower.table.weight.detach().clone()
    rows = [run.step() for _ in range(3)]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert not torch.equal(table, run.model.item_tower.table.weight)
    state = run.state_dict()
    assert set(state["user_tower"]) == {"items.weight", "users.weight"}
    assert set(state["item_tower_top"]["0"]) == {"weight", "bias"} and set(state["item_tower_top"]["1"]) == {"weight"}


@pytest.mark.parametrize("model,message", [
    ("os:getcwd", "not a tower builder"),
    ("no_such_module_xyz:build", "cannot import no_such_module_xyz"),
    ("towers:nothing", "has no nothing"),
])
def test_a_config_names_only_marked_builders(examples_importable, small_bundle, model, message):
    from raytower.model.build import build_model

    with pytest.raises(ConfigError, match=message):
        build_model(TrainConfig.from_dict({**MINE, "model": model}), small_bundle, None)


def test_a_named_module_is_read_before_it_is_imported(tmp_path, monkeypatch, capsys):
    # A config handed back names any module; importing it ran it (`this` printed, a package's
    # __main__ ran its command line, a module's side effects happened) before the mark was checked.
    from raytower.model.towers import resolve

    ran = tmp_path / "ran"
    side_effect = f"open({str(ran)!r}, 'a').write(__name__ + ' ')\n"
    (tmp_path / "rt_side.py").write_text(side_effect + "def build(bundle, artifacts, args): pass\n")
    (tmp_path / "rt_pkg").mkdir()
    (tmp_path / "rt_pkg" / "__init__.py").write_text(side_effect + "from .sub import build\n")
    (tmp_path / "rt_pkg" / "sub.py").write_text(side_effect + "def build(bundle, artifacts, args): pass\n")
    (tmp_path / "rt_mine").mkdir()  # a team's package re-exporting its marked builder: still found
    (tmp_path / "rt_mine" / "__init__.py").write_text("from .impl import build as towers\n")
    (tmp_path / "rt_mine" / "impl.py").write_text("import raytower\n\n\n@raytower.towers.builder()\n"
                                                  "def build(bundle, artifacts, args): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, message in [("rt_side:build", "not a tower builder"), ("rt_pkg:build", "not a tower builder"),
                          ("rt_pkg.sub:build", "not a tower builder"), ("rt_side:other", "rt_side has no other"),
                          ("this:s", "not a tower builder"), ("venv.__main__:main", "not a tower builder")]:
        with pytest.raises(ConfigError, match=message):
            resolve(spec)
    assert not ran.exists() and capsys.readouterr().out == ""  # nothing of them ran
    assert resolve("rt_mine:towers").__name__ == "build"


def test_towers_of_the_wrong_shape_are_one_line(examples_importable, small_bundle, monkeypatch):
    import towers

    from raytower.model.build import build_model

    class Flat(torch.nn.Module):
        def forward(self, user_idx, items, meta):
            return torch.zeros(len(user_idx))  # [B], not [B, d]

    monkeypatch.setattr(towers, "MeanUserTower", lambda *a: Flat())
    with pytest.raises(ConfigError, match=r"user tower returned shape \(2, 1\).*\[B, d\]"):
        build_model(TrainConfig.from_dict(MINE), small_bundle, None)
    with pytest.raises(ConfigError, match="targets: all"):
        from raytower.train.loop import Curriculum

        monkeypatch.undo()
        monkeypatch.syspath_prepend(str(EXAMPLES))
        Curriculum.create(TrainConfig.from_dict({**MINE, "targets": "all"}), small_bundle, None)


def test_train_export_and_recommend_a_teams_towers(examples_importable, tmp_path, capsys):
    cfg = tmp_path / "mine.json"
    cfg.write_text(json.dumps(MINE))
    run, model = tmp_path / "run", tmp_path / "model"
    assert main(["train", "--data", SMALL_SYNTHETIC, "--config", str(cfg), "--out", str(run), "--threads", "1"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pretraining"] == {"path": None} and metrics["config"]["model"] == "towers:build"
    assert "no pretraining" in capsys.readouterr().out
    assert main(["export", str(run), "--out", str(model)]) == 0
    assert json.loads((model / "manifest.json").read_text())["dim"] == 16  # the towers' own d, not cfg.dim
    capsys.readouterr()
    assert main(["recommend", str(model), "--user", "1", "-k", "5"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 6  # header + 5 items


@pytest.mark.slow
@pytest.mark.ray
def test_a_search_over_a_teams_towers(examples_importable, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(f"fixed: {json.dumps({k: v for k, v in MINE.items() if k not in ('epochs', 'lr_ratio')})}\n"
                     "search:\n  lr: {distribution: log_uniform, low: 0.001, high: 0.01}\n"
                     "  lr_ratio: {distribution: log_uniform, low: 0.1, high: 1.0}\n")
    out = tmp_path / "search"
    assert main(["tune", "--data", SMALL_SYNTHETIC, "--space", str(space), "--num-samples", "2", "--max-epochs", "2",
                 "--executor", "function", "--out", str(out), "--seed", "0"]) == 0
    best = json.loads((out / "best_config.json").read_text())
    assert best["params"]["model"] == "towers:build" and best["params"]["model_args"] == {"dim": 16}
    assert 0 <= best["test"]["recall@100"] <= 1
