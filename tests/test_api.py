"""The Python API: what a notebook calls."""

import json
import subprocess
import sys

import pandas as pd
import pytest

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


@pytest.fixture(scope="module")
def api_search(tmp_path_factory):
    """raytower.search as a notebook calls it: Ray on 127.0.0.1, two trials of two epochs."""
    out = tmp_path_factory.mktemp("api") / "search"
    lines = []
    result = raytower.search(data=SMALL_SYNTHETIC, space="quick", out=out, num_samples=2, max_epochs=2,
                             executor="function", seed=1, log=lines.append)
    return out, result, lines


@pytest.mark.ray
def test_search_returns_the_search_it_wrote(api_search):
    out, result, _ = api_search
    assert result.out == out and result.settings.num_samples == 2
    written = json.loads((out / "best_config.json").read_text())
    # compared as JSON: a metric a trial does not have (gate_mean without a gate) is NaN, and NaN != NaN;
    # the returned dict is plain JSON values, as the file is, so a notebook can json.dumps it
    assert json.dumps(result.best, sort_keys=True) == json.dumps(written, sort_keys=True)
    assert isinstance(result.trials, pd.DataFrame) and len(result.trials) == 2
    assert result.trials.equals(pd.read_parquet(out / "trials.parquet"))


@pytest.mark.ray
def test_search_best_config_names_a_trial_it_ran_and_trains_as_is(api_search):
    _, result, _ = api_search
    chosen = result.trials.set_index("trial_id").loc[result.best["trial_id"]]  # a KeyError if it ran no such trial
    assert chosen["best/val/recall@100"] == pytest.approx(result.best["selection"]["value"])
    cfg = raytower.TrainConfig.from_dict(result.best_config)
    assert cfg.epochs == 2 and cfg.dim == 32  # --max-epochs, and the quick space's fixed dim
    assert {k: getattr(cfg, k) for k in result.best_config} == result.best_config


@pytest.mark.ray
def test_search_logs_through_the_callers_function(api_search):
    out, result, lines = api_search
    assert any(line.startswith("search: 2 trials of up to 2 epochs") and str(out) in line for line in lines)
    assert any(line.startswith(f"best trial {result.best['trial_id']}:") for line in lines)
