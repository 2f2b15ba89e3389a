"""What search() plugs in beside its settings: refused in one line when it cannot be honoured."""

import pytest

import raytower
from raytower.errors import ConfigError
from raytower.tune._plugins import check_logger, parse_loggers


def test_a_pruner_is_refused_rather_than_silently_ignored(tmp_path):
    import optuna

    with pytest.raises(raytower.UsageError, match="pruner: .*never asks an Optuna pruner"):
        raytower.search(out=tmp_path / "s", pruner=optuna.pruners.MedianPruner())
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("keywords, says", [
    ({"callbacks": "nope"}, "callbacks must be a list of ray.tune.Callback objects, got str"),
    ({"callbacks": [print]}, "callbacks must be ray.tune.Callback objects, got builtin_function_or_method"),
    ({"sampler": "tpe"}, "sampler must be an optuna.samplers.BaseSampler, got str"),
    ({"loggers": 5}, "loggers must be 'mlflow', 'wandb' or a list of them"),
    ({"loggers": ["neptune"]}, "loggers 'neptune': raytower logs to mlflow or wandb"),
    ({"loggers": "mlflow", "resume": True}, "loggers cannot be given with resume=True"),
])
def test_search_refuses_what_it_cannot_plug_in(tmp_path, keywords, says):
    with pytest.raises(raytower.UsageError, match=says.replace("(", r"\(").replace(")", r"\)")):
        raytower.search(out=tmp_path / "s", **keywords)
    assert not (tmp_path / "s").exists()


def test_a_missing_logger_package_names_the_extra_to_install():
    with pytest.raises(ConfigError, match=r"--logger wandb: wandb is not installed; pip install 'raytower\[wandb\]'"):
        check_logger("wandb", "--logger", find_spec=lambda name: None)


def test_loggers_come_repeated_or_comma_separated_each_once():
    assert parse_loggers(["mlflow,wandb", "MLflow", " wandb "]) == ("mlflow", "wandb")
    assert parse_loggers(None) == ()


def test_the_cli_refuses_an_unknown_logger_before_anything_runs(tmp_path, capsys):
    from raytower.cli import main

    assert main(["tune", "--logger", "mlflow,neptune", "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err == "raytower: error: --logger 'neptune': raytower logs to mlflow or wandb\n"


def test_wandb_without_a_key_or_offline_mode_is_refused_before_ray_starts(tmp_path, monkeypatch, capsys):
    """Ray's WandbLoggerCallback asked for the key only when Tune started: a ValueError traceback
    after Ray and the pretraining, with setup.json, the study and mlflow.db already written."""
    pytest.importorskip("wandb")
    from raytower.cli import main

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SETUP_API_KEY_HOOK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert main(["tune", "--logger", "wandb", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no W&B API key" in err and "WANDB_MODE=offline" in err, err
    assert not (tmp_path / "s").exists()


def test_the_header_says_where_each_logger_writes(monkeypatch, tmp_path):
    pytest.importorskip("mlflow")
    from raytower.tune._plugins import logger_destinations

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/team.db")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "recsys")
    said = logger_destinations(("mlflow", "wandb"), tmp_path / "s1")
    assert f"mlflow at sqlite:///{tmp_path}/team.db (experiment s1)" in said
    assert f"wandb project recsys (offline, files in {tmp_path / 's1' / 'wandb'})" in said
