"""The Python API speaks its own names: unknown keywords and wrong types are UsageErrors (TypeErrors
too), range errors name the keyword, not the flag, and a bad device leaves no run directory."""

import inspect

import pytest

import raytower
from raytower.errors import ConfigError, UsageError
from tests.conftest import SMALL_SYNTHETIC

TINY = {"dim": 32, "item_layers": 2, "max_len": 30, "batch_size": 64, "stage1_max_epochs": 1, "epochs": 1}


@pytest.mark.parametrize("call,message", [
    (lambda t: raytower.search(bogus=1, out=t / "s"), "search() got unknown keyword(s) bogus; it takes"),
    (lambda t: raytower.search(max_epochs="3", out=t / "s"), "max_epochs must be int, got str '3'"),
    (lambda t: raytower.load_bundle(nope=1), "load_bundle() got unknown keyword(s) nope; it takes"),
    (lambda t: raytower.fit(42, out=t / "r"), "config must be a TrainConfig"),
    (lambda t: raytower.fit(TINY, out=t / "r", temprature=0.1), "fit() got unknown keyword(s) temprature"),
    (lambda t: raytower.fit(TINY, data=SMALL_SYNTHETIC, out=t / "r", threads=0), "threads must be a positive int"),
    # wrong types that were a bare TypeError from deep inside, or passed: out=5 wrote ./5, force="no" forced,
    # log=None failed after the run directory was made
    (lambda t: raytower.fit(TINY, data=5, out=t / "r"), "fit(): data must be a path or a source name, got int"),
    (lambda t: raytower.fit(TINY, data=SMALL_SYNTHETIC, out=5), "fit(): out must be a path, got int"),
    (lambda t: raytower.fit(TINY, data=SMALL_SYNTHETIC, out=t / "r", prepare=[1]), "prepare must be a dict"),
    (lambda t: raytower.fit(TINY, data=SMALL_SYNTHETIC, out=t / "r", prepare={"nope": 1}),
     "fit(): prepare got unknown key(s) nope; it takes"),
    (lambda t: raytower.fit(TINY, data=SMALL_SYNTHETIC, out=t / "r", force="no"), "force must be True or False"),
    (lambda t: raytower.fit(TINY, data=SMALL_SYNTHETIC, out=t / "r", log=None), "log must be callable"),
    (lambda t: raytower.search(out=5), "search(): out must be a path, got int"),
    (lambda t: raytower.search(space=5, out=t / "s"), "search(): space must be a search space file"),
    (lambda t: raytower.search(prepare=[1], out=t / "s"), "search(): prepare must be a dict"),
])
def test_usage_errors_are_type_errors_naming_what_is_accepted(tmp_path, call, message):
    with pytest.raises(UsageError) as e:
        call(tmp_path)
    assert isinstance(e.value, TypeError) and isinstance(e.value, raytower.RaytowerError)
    assert message in str(e.value)
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_range_errors_name_the_keyword_not_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"^num_samples must be >= 1, got 0$"):
        raytower.search(num_samples=0, out=tmp_path / "s")
    with pytest.raises(ConfigError, match=r"^metric must be one of"):
        raytower.fit(TINY, data=SMALL_SYNTHETIC, out=tmp_path / "r", metric="ndcg@7")


def test_the_old_storage_keyword_is_the_study_url_with_a_deprecation_warning(tmp_path):
    # checked as study_url: a wrong type names the new keyword
    with pytest.warns(DeprecationWarning, match=r"search\(storage=\.\.\.\) is deprecated.*study_url"), \
            pytest.raises(UsageError, match="study_url must be str, got int 5"):
        raytower.search(storage=5, out=tmp_path / "s")
    with pytest.raises(UsageError, match="storage is the old name of study_url; give only study_url"):
        raytower.search(storage="sqlite:///a.db", study_url="sqlite:///b.db", out=tmp_path / "s")
    assert "study_url" in inspect.signature(raytower.search).parameters
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("prepare,message", [({"seed": "x"}, "seed must be int, got 'x'"),
                                             ({"cold_frac": "0.1"}, "cold_frac must be float, got '0.1'"),
                                             ({"seed": -1}, "seed must be >= 0, got -1")])
def test_prepare_options_of_the_wrong_type_are_one_line_naming_the_field(prepare, message):
    # they were a NumPy or comparison TypeError from inside the preparation
    with pytest.raises(raytower.RaytowerError, match=message):
        raytower.load_bundle(SMALL_SYNTHETIC, **prepare)


def test_a_device_torch_does_not_know_leaves_no_run_directory(tmp_path):
    with pytest.raises(ConfigError, match="device 'tpu9'"):
        raytower.fit(TINY, data=SMALL_SYNTHETIC, out=tmp_path / "r", device="tpu9")
    assert not (tmp_path / "r").exists()


def test_completion_shows_the_api_and_search_spells_out_its_keywords():
    import inspect

    assert {"search", "fit", "load_bundle", "towers", "TrainConfig"} <= set(dir(raytower))
    params = inspect.signature(raytower.search).parameters
    assert {"num_samples", "max_epochs", "metric", "searcher", "patience"} <= set(params)
    assert params["num_samples"].default == 20 and params["num_samples"].kind is inspect.Parameter.KEYWORD_ONLY


def test_fit_returns_a_typed_result_with_short_reprs(tmp_path):
    run = raytower.fit(TINY, data=SMALL_SYNTHETIC, out=tmp_path / "r", threads=1, log=lambda line: None)
    assert isinstance(run, raytower.FitResult)
    assert run.best_epoch == 1 and 0 <= run.test["recall@100"] <= 1 and run["test"] == run.test
    assert len(run.history) == 1 and "val/recall@100" in run.history.columns
    text = repr(run)
    assert text.startswith("FitResult(") and "\n" not in text and len(text) < 300
    assert "<table>" in run._repr_html_() and "test recall@100" in run._repr_html_()
