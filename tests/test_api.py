"""The Python API: what a notebook calls."""

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import optuna
import pandas as pd
import pytest
from ray import tune

import raytower
from tests.conftest import SMALL_SYNTHETIC


def test_import_raytower_stays_light():
    code = "import sys, raytower; print('torch' in sys.modules, 'ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["False", "False"]


def test_fit_takes_a_dict_and_returns_the_metrics(tmp_path):
    cfg = {"dim": 32, "item_layers": 2, "max_len": 30, "batch_size": 64, "stage1_max_epochs": 1}
    run = raytower.fit(cfg, data=SMALL_SYNTHETIC, out=tmp_path / "run", epochs=1, threads=1, log=lambda m: None)
    assert run["config"]["epochs"] == 1 and 0 <= run["test"]["recall@100"] <= 1
    assert (tmp_path / "run" / "metrics.json").is_file()
    with pytest.raises(raytower.RaytowerError, match="lr must be > 0"):
        raytower.fit({**cfg, "lr": -1.0}, data=SMALL_SYNTHETIC, out=tmp_path / "bad")


def test_load_bundle_prepares_once_then_reuses_the_cached_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "cache"))  # an empty cache: the first call prepares
    spec = "synthetic:n_users=300,n_items=120,seed=3"
    first = raytower.load_bundle(spec)
    assert not first.cache_hit and first.path.parent == tmp_path / "cache" / "bundles"
    assert (first.n_users, first.n_items) == (300, 120)
    assert len(first.users) == 300 and len(first.items) == 120
    assert first.users["user_idx"].tolist() == list(range(1, 301))  # index 0 is padding
    again = raytower.load_bundle(spec)
    assert again.cache_hit and again.fingerprint == first.fingerprint and again.path == first.path


def test_load_bundle_passes_prepare_options_into_the_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "cache"))
    spec = "synthetic:n_users=300,n_items=120,seed=3"
    default = raytower.load_bundle(spec)
    more_cold = raytower.load_bundle(spec, cold_frac=0.5)
    assert not more_cold.cache_hit and more_cold.fingerprint != default.fingerprint
    assert more_cold.users["cold"].mean() > default.users["cold"].mean()
    with pytest.raises(raytower.RaytowerError, match="cold_frac"):
        raytower.load_bundle(spec, cold_frac=1.5)


SAMPLED = []  # what the caller's sampler was asked (the searcher calls it in this process)


class CountingSampler(optuna.samplers.RandomSampler):
    def sample_independent(self, study, trial, param_name, param_distribution):
        SAMPLED.append(param_name)
        return super().sample_independent(study, trial, param_name, param_distribution)


class EndedTrials(tune.Callback):
    def __init__(self):
        self.ended = []

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended.append(trial.trial_id)


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@pytest.fixture(scope="module")
def api_search(tmp_path_factory):
    """raytower.search as a notebook calls it: Ray on 127.0.0.1, two trials of two epochs, with a
    caller's callback and sampler, the loggers whose packages are installed (MLflow into a SQLite
    store, W&B offline), and whatever reaches the process's stdout and stderr captured."""
    root = tmp_path_factory.mktemp("api")
    out = root / "search"
    lines, ended = [], EndedTrials()
    loggers = [name for name in ("mlflow", "wandb") if installed(name)]
    with pytest.MonkeyPatch.context() as env, captured_fds() as printed:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        result = raytower.search(data=SMALL_SYNTHETIC, space="quick", out=out, num_samples=2, max_epochs=2,
                                 executor="function", seed=1, log=lines.append, callbacks=[ended],
                                 sampler=CountingSampler(seed=1), loggers=loggers)
    return out, result, lines, printed, ended


@contextlib.contextmanager
def captured_fds():
    """What the process writes to stdout and stderr (file descriptors 1, 2) within the block: capfd,
    for a module's fixture."""
    printed = {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved = [os.dup(fd) for fd in (1, 2)]
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
        try:
            yield printed
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            for name, f in (("out", out), ("err", err)):
                f.seek(0)
                printed[name] = f.read().decode(errors="replace")


@pytest.mark.ray
def test_search_returns_the_search_it_wrote(api_search):
    out, result, *_ = api_search
    assert result.out == out and result.settings.num_samples == 2
    written = json.loads((out / "best_config.json").read_text())
    # compared as JSON: a metric a trial does not have (gate_mean without a gate) is NaN, and NaN != NaN;
    # the returned dict is plain JSON values, as the file is, so a notebook can json.dumps it
    assert json.dumps(result.best, sort_keys=True) == json.dumps(written, sort_keys=True)
    assert isinstance(result.trials, pd.DataFrame) and len(result.trials) == 2
    assert result.trials.equals(pd.read_parquet(out / "trials.parquet"))


@pytest.mark.ray
def test_search_best_config_names_a_trial_it_ran_and_trains_as_is(api_search):
    _, result, *_ = api_search
    chosen = result.trials.set_index("trial_id").loc[result.best["trial_id"]]  # a KeyError if it ran no such trial
    assert chosen["best/val/recall@100"] == pytest.approx(result.best["selection"]["value"])
    cfg = raytower.TrainConfig.from_dict(result.best_config)
    assert cfg.epochs == 2 and cfg.dim == 32  # --max-epochs, and the quick space's fixed dim
    assert {k: getattr(cfg, k) for k in result.best_config} == result.best_config


@pytest.mark.ray
def test_search_logs_through_the_callers_function(api_search):
    out, result, lines, *_ = api_search
    assert any(line.startswith("search: 2 trials of up to 2 epochs") and str(out) in line for line in lines)
    assert any(line.startswith(f"best trial {result.best['trial_id']}:") for line in lines)


@pytest.mark.ray
def test_search_lines_go_to_log_and_nothing_to_the_console(api_search):
    _, result, lines, printed, _ = api_search
    trial_lines = [line for line in lines if line.startswith("  trial ")]
    assert {line.split()[1] for line in trial_lines} == set(result.trials["trial_id"])  # one line per trial
    assert printed["out"] == "", printed["out"][-2000:]  # no trial or progress line, nor the header, escaped
    # stderr: raytower's lines and Ray's Python logs neither (a Ray C++ warning may be there: not Python's to route)
    assert "  trial " not in printed["err"] and "search: " not in printed["err"] and " INFO " not in printed["err"]


@pytest.mark.ray
def test_search_runs_the_callers_callbacks_and_sampler_and_hands_back_the_result_grid(api_search):
    out, result, lines, _, ended = api_search
    assert sorted(ended.ended) == sorted(result.trials["trial_id"])
    assert SAMPLED and any("CountingSampler on validation" in line for line in lines)
    plugged = json.loads((out / "setup.json").read_text())["plugins"]  # the record does not claim TPE
    assert plugged["sampler"] == "CountingSampler" and plugged["callbacks"] == ["EndedTrials"]
    grid = result.result_grid
    assert isinstance(grid, tune.ResultGrid) and len(grid) == 2 and not grid.errors
    assert {r.metrics["trial_id"] for r in grid} == set(result.trials["trial_id"])
    assert isinstance(result.study, optuna.Study) and len(result.study.trials) == 2


@pytest.mark.ray
@pytest.mark.skipif(not installed("mlflow"), reason="mlflow is not installed (pip install 'raytower[mlflow]')")
def test_search_logs_each_trials_curriculum_scalars_to_mlflow(api_search):
    from mlflow.tracking import MlflowClient

    out, result, *_ = api_search
    client = MlflowClient(f"sqlite:///{out.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(out.name)  # named after the search's --out
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    for run in runs:
        tau = client.get_metric_history(run.info.run_id, "tau")
        assert [m.step for m in tau] == [1, 2]  # one value per epoch, the curriculum's temperature
        # every scalar the trial reports; MLflow refuses '@' in a name, so val/recall@100 is spelled _at_
        assert {"val/recall_at_100", "lambda", "stage", "loss"} <= set(run.data.metrics)
        assert run.data.tags["raytower.out"] == str(out.resolve())


@pytest.mark.ray
@pytest.mark.skipif(not installed("wandb"), reason="wandb is not installed (pip install 'raytower[wandb]')")
def test_search_logs_each_trials_curriculum_scalars_to_wandb_offline(api_search):
    out, result, *_ = api_search
    runs = sorted((out / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    for run in runs:
        history = run / f"run-{run.name.rsplit('-', 1)[-1]}.wandb"
        assert history.is_file() and history.stat().st_size > 0
        data = history.read_bytes()
        assert b"tau" in data and b"val/recall@100" in data
