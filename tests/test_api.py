"""The Python API: what a notebook calls."""

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


@pytest.mark.ray
def test_search_returns_its_trials_and_best_config(search):
    result = raytower.SearchResult(search, __import__("json").loads((search / "best_config.json").read_text()))
    assert isinstance(result.trials, pd.DataFrame) and result.best["trial_id"] in set(result.trials["trial_id"])
    assert raytower.TrainConfig.from_dict(result.best_config).epochs >= 1
