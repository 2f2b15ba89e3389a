from pathlib import Path

import optuna
import pytest
import yaml

from raytower.errors import ConfigError
from raytower.tune.space import load_space, parse_space

REPO = Path(__file__).resolve().parents[2]
BASE = {"search": {"temp_start": {"distribution": "log_uniform", "low": 0.05, "high": 1.0}}}


@pytest.mark.parametrize("name", ["default.yaml", "quick.yaml"])
def test_shipped_spaces_load(name):
    space = load_space(REPO / "search_spaces" / name)
    assert {"temp_start", "anneal_rate", "logq_max", "unfreeze_depth", "lr_ratio", "fusion"} <= set(space.names)
    for point in space.start_from:
        space.config(point)  # every start point is a valid training config


def _sample(space, n, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        fixed = space.define_by_run(trial)
        yield trial.params, fixed


def test_lr_ratio_exists_only_when_unfreeze_depth_is_positive():
    space = load_space(REPO / "search_spaces" / "default.yaml")
    seen_depths = set()
    for params, fixed in _sample(space, 60):
        seen_depths.add(params["unfreeze_depth"])
        assert ("lr_ratio" in params) == (params["unfreeze_depth"] > 0)
        cfg = space.config(params)
        assert cfg.stage1_max_epochs == fixed["stage1_max_epochs"]
    assert seen_depths == set(range(6))  # 0 to 5: up to the whole item tower, its id table included


def test_the_grace_period_follows_searched_stage1_and_categorical_warmups(tmp_path):
    from raytower.tune.search import default_grace_period

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"search": {
        "logq_warmup_epochs": {"distribution": "categorical", "choices": [0, 2, 5]},  # crashed on int(k.high)
        "stage1_max_epochs": {"distribution": "int", "low": 2, "high": 8}}}))  # was read as the fixed default
    assert default_grace_period(load_space(path), 30) == 8 + 3


def test_active_drops_inactive_conditionals():
    space = load_space(REPO / "search_spaces" / "default.yaml")
    assert "lr_ratio" not in space.active({"unfreeze_depth": 0, "lr_ratio": 0.1})
    assert space.active({"unfreeze_depth": 2, "lr_ratio": 0.1})["lr_ratio"] == 0.1


def _with(**knob):
    return {"search": {**BASE["search"], **knob}}


BAD_SPACES = [  # (document, what the error must say)
    (_with(temperature={"distribution": "uniform", "low": 0.1, "high": 1}), "unknown knob 'temperature'"),
    (_with(anneal_rate={"distribution": "uniform", "low": 0.9, "high": 0.9}), "empty range"),
    (_with(anneal_rate={"distribution": "uniform", "low": 0.99, "high": 0.8}), "inverted range"),
    (_with(anneal_rate={"distribution": "beta", "low": 0.8, "high": 0.9}), "unknown distribution 'beta'"),
    (_with(fusion={"distribution": "categorical", "choices": ["concat", "cross"]}), "unknown fusion type 'cross'"),
    (_with(fusion={"distribution": "categorical", "choices": []}), "non-empty list"),
    (_with(unfreeze_depth={"distribution": "uniform", "low": 0, "high": 3}), "integer field"),
    (_with(logq_max={"distribution": "int", "low": 0, "high": 1}), "float field"),
    (_with(lr={"distribution": "log_uniform", "low": 0, "high": 1e-2}), "needs low > 0"),
    (_with(lr_ratio={"distribution": "log_uniform", "low": 1e-3, "high": 1, "when": "unfreeze_depth > 0"}), "listed before it"),
    (_with(unfreeze_depth={"distribution": "int", "low": 0, "high": 9}), "unfreeze_depth"),
    ({"search": {}}, "at least one knob"),
    ({**BASE, "fixed": {"fusion": "xgboost"}}, "unknown fusion type"),
    ({**BASE, "start_from": [{"anneal_rate": 0.9}]}, "does not search"),
    ({**BASE, "grid": {}}, "unknown section"),
    # conditions that would load and never hold, silently turning the knob off
    ({"search": {"fusion": {"distribution": "categorical", "choices": ["concat", "gated"]},
                 "n_experts": {"distribution": "int", "low": 2, "high": 8, "when": "fusion == moe"}}},
     "'moe' is not one of fusion's choices"),
    # (safe_dump sorts the knobs: each parent's name sorts before its child's)
    ({"search": {"fusion": {"distribution": "categorical", "choices": ["concat", "gated"]},
                 "lr_ratio": {"distribution": "log_uniform", "low": 1e-3, "high": 1,
                              "when": "fusion == gated and unfreeze_depth > 0"}}}, "is compound"),
    ({"search": {"anneal_rate": {"distribution": "uniform", "low": 0.8, "high": 0.99},
                 "logq_max": {"distribution": "uniform", "low": 0.0, "high": 0.1, "when": "anneal_rate > high"}}},
     "anneal_rate is a number"),
]


@pytest.mark.parametrize("doc,message", BAD_SPACES, ids=[m for _, m in BAD_SPACES])
def test_malformed_space_is_one_line_naming_the_file(tmp_path, doc, message):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as e:
        load_space(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_not_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("search: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_space(path)


def test_coupled_bounds_are_left_to_the_trial():
    # temp_start may go below the default temp_min only if temp_min is searched too
    doc = {"search": {"temp_start": {"distribution": "log_uniform", "low": 0.01, "high": 1.0},
                      "temp_min": {"distribution": "log_uniform", "low": 0.001, "high": 0.01}}}
    parse_space(doc)
    with pytest.raises(ConfigError, match="temp_min"):
        parse_space({"search": {"temp_start": {"distribution": "log_uniform", "low": 0.01, "high": 1.0}}})


def test_an_lr_ratio_above_one_is_allowed_with_a_warning(tmp_path):
    from raytower.tune.space import parse_space

    space = parse_space({"search": {"lr_ratio": {"distribution": "log_uniform", "low": 0.01, "high": 3.0}}})
    assert any("lr_ratio 3 > 1" in line for line in space.advice())
    calm = parse_space({"search": {"lr_ratio": {"distribution": "log_uniform", "low": 0.001, "high": 0.1}}})
    assert calm.advice() == []
