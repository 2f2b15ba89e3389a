"""Each search its own Optuna study (issue 28 part 7): named after the search, owned through its user
attributes, and never joined by another search that shares the --study-url. Real SQLite studies; the
search's own steps (study_of, preflight, claim_study) without Ray, and one real search pair."""

import dataclasses
import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

from raytower._trial import TrialContext
from raytower.api import SearchResult
from raytower.cli import main
from raytower.errors import ConfigError, RaytowerError
from raytower.names import STUDY_OUT, STUDY_SEARCH_ID
from raytower.tune._preflight import preflight
from raytower.tune._study import absolute_study_url, check_study_owner, claim_study, study_of
from raytower.tune._tuner import warm_trials
from raytower.tune.record import SearchRecord
from raytower.tune.results import read_study
from raytower.tune.settings import SearchSettings
from tests.conftest import REPO, SMALL_SYNTHETIC

QUICK = str(REPO / "search_spaces" / "quick.yaml")


@pytest.fixture(autouse=True)
def _quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created": not these tests' stderr
    yield
    optuna.logging.set_verbosity(level)


def start(out: Path, **settings):
    """A search's steps up to its first trial that involve the study, as run_search takes them: its
    study, the preflight, the record (with the study's name and the search id) and the claim."""
    s = SearchSettings(space=QUICK, out=str(out), **settings)
    study = study_of(s, out.resolve())
    preflight(s, log=lambda line: None, study=study)
    recorded = dataclasses.replace(s, study_name=study.name)
    if not s.resume:
        out.mkdir(parents=True)
        SearchRecord(settings=dataclasses.asdict(recorded), data="synthetic", dataset={},
                     shared=TrialContext(bundle="", artifacts={}), search_id=study.search_id).write(out)
    claim_study(study)
    return study


def test_two_searches_on_one_study_url_get_two_studies_named_after_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'team.db'}"
    a, b = start(tmp_path / "x" / "search", study_url=url), start(tmp_path / "y" / "search", study_url=url)
    assert a.name != b.name and a.name.startswith("search-") and b.name.startswith("search-")
    assert sorted(optuna.study.get_all_study_names(url)) == sorted([a.name, b.name])
    for study, out in ((a, tmp_path / "x" / "search"), (b, tmp_path / "y" / "search")):
        record = SearchRecord.read(out)
        assert record.study_name == study.name and record.search_id == study.search_id
        attrs = optuna.load_study(study_name=study.name, storage=url).user_attrs
        assert attrs == {STUDY_SEARCH_ID: record.search_id, STUDY_OUT: str(out.resolve())}
    assert not (tmp_path / "x" / "search" / "optuna.db").exists()  # the study is at the URL only


def test_study_name_names_the_study_and_is_recorded(tmp_path):
    url = f"sqlite:///{tmp_path / 'team.db'}"
    study = start(tmp_path / "s", study_url=url, study_name="ranking-q3")
    assert study.name == "ranking-q3" and optuna.study.get_all_study_names(url) == ["ranking-q3"]
    assert SearchRecord.read(tmp_path / "s").study_name == "ranking-q3"


def test_a_search_naming_anothers_study_is_refused_before_anything_is_written(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'team.db'}"
    first = start(tmp_path / "first", study_url=url)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    capsys.readouterr()
    code = main(["tune", "--data", SMALL_SYNTHETIC, "--space", QUICK, "--out", str(tmp_path / "third"),
                 "--study-url", url, "--study-name", first.name])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert f"study {first.name!r} in {url} was recorded by the search in {tmp_path / 'first'}" in err
    assert "--study-name" in err and "--resume" in err
    assert not (tmp_path / "third").exists()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert optuna.study.get_all_study_names(url) == [first.name]


def test_a_study_no_raytower_search_recorded_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'team.db'}"
    optuna.create_study(study_name="hand-made", storage=url)
    with pytest.raises(ConfigError, match="'hand-made' .* was recorded by another search"):
        start(tmp_path / "s", study_url=url, study_name="hand-made")


def test_two_searches_claiming_one_name_at_once_the_second_loses(tmp_path):
    """Both pass the preflight before either has created the study: the claim settles it."""
    url = f"sqlite:///{tmp_path / 'team.db'}"
    one, two = (study_of(SearchSettings(out=str(tmp_path / n), study_url=url, study_name="same"), tmp_path / n)
                for n in ("one", "two"))
    check_study_owner(one)
    check_study_owner(two)
    claim_study(one)
    with pytest.raises(ConfigError, match="was recorded by the search in"):
        claim_study(two)


def test_resume_finds_and_joins_its_own_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'team.db'}"
    first = start(tmp_path / "s", study_url=url)
    start(tmp_path / "other", study_url=url)
    again = start(tmp_path / "s", resume=True)  # the URL and the name come from setup.json
    assert again == first
    assert len(optuna.study.get_all_study_names(url)) == 2  # joined, nothing new created
    with pytest.raises(ConfigError, match="--study-name elsewhere: this search's study is"):
        study_of(SearchSettings(out=str(tmp_path / "s"), resume=True, study_name="elsewhere"), tmp_path / "s")


def test_resume_of_a_search_whose_study_another_took_is_refused(tmp_path):
    """setup.json names a study that another search's id owns (the database was shared and the
    name reused): the resumed search would write into the other's trials."""
    url = f"sqlite:///{tmp_path / 'team.db'}"
    start(tmp_path / "s", study_url=url, study_name="shared")
    doc = json.loads((tmp_path / "s" / "setup.json").read_text())
    (tmp_path / "s" / "setup.json").write_text(json.dumps({**doc, "search_id": "not-the-owner"}))
    with pytest.raises(ConfigError, match="'shared' .* was recorded by the search in"):
        start(tmp_path / "s", resume=True)


def test_a_record_without_a_study_name_resolves_to_raytower(tmp_path):
    """A search recorded before studies had names: its study is 'raytower' in OUT/optuna.db, for
    --resume, the report's reads, SearchResult.study and --warm-start."""
    out = tmp_path / "old"
    start(out, study_name="scratch")
    doc = json.loads((out / "setup.json").read_text())
    del doc["search_id"], doc["settings"]["study_name"]
    (out / "setup.json").write_text(json.dumps(doc))
    study = optuna.create_study(study_name="raytower", storage=f"sqlite:///{out / 'optuna.db'}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, params={"x": 1.0},
                                              distributions={"x": optuna.distributions.FloatDistribution(0, 2)}))

    assert SearchRecord.read(out).study_name == "raytower" and SearchRecord.read(out).search_id == ""
    resumed = start(out, resume=True)  # an unowned study is its own when its record has no id either
    assert (resumed.name, resumed.search_id) == ("raytower", "")
    assert [t.value for t in read_study(out).trials] == [0.5]
    assert [t.value for t in SearchResult(out, {}).study.trials] == [0.5]
    assert [t.params for t in warm_trials(out)] == [{"x": 1.0}]


def test_warm_start_reads_the_earlier_searchs_own_study_at_its_study_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'team.db'}"
    earlier = start(tmp_path / "earlier", study_url=url)
    start(tmp_path / "neighbour", study_url=url)
    optuna.load_study(study_name=earlier.name, storage=url).add_trial(optuna.trial.create_trial(
        value=0.7, params={"x": 0.3}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)}))
    (trial,) = warm_trials(tmp_path / "earlier")
    assert trial.value == 0.7 and trial.user_attrs["warm_start_from"] == str((tmp_path / "earlier").resolve())


def test_a_relative_sqlite_study_url_is_made_absolute_where_the_search_starts(tmp_path, monkeypatch):
    """setup.json kept sqlite:///team.db as given: `raytower best` run from another directory made
    a new, empty team.db there and read no study."""
    monkeypatch.chdir(tmp_path)
    assert absolute_study_url("sqlite:///team.db?timeout=5") == f"sqlite:///{tmp_path / 'team.db'}?timeout=5"
    for kept in ("sqlite://", "sqlite:///:memory:", "postgresql://u:p@db.example/studies",
                 f"sqlite:///{tmp_path / 'a.db'}", None):
        assert absolute_study_url(kept) == kept


def test_a_search_whose_sqlite_study_is_gone_reads_no_study_and_creates_none(tmp_path):
    db = tmp_path / "team.db"
    start(tmp_path / "s", study_url=f"sqlite:///{db}")
    db.unlink()
    assert read_study(tmp_path / "s") is None and not db.exists()


@pytest.mark.parametrize("api", [False, True])
@pytest.mark.parametrize("name", [" ", "a\nb", "tab\there", "x" * 513])  # a newline split every line naming it
def test_an_empty_or_unprintable_study_name_is_refused_in_the_callers_names(api, name):
    with pytest.raises(ConfigError, match=("study_name" if api else "--study-name") + " must be 1 to 512 printable"):
        SearchSettings(study_name=name).validate(api=api)
    SearchSettings(study_name="étude-ü-研究").validate(api=api)


def test_search_takes_study_name_as_a_keyword():
    import inspect

    import raytower

    param = inspect.signature(raytower.search).parameters["study_name"]
    assert param.kind is param.KEYWORD_ONLY and param.default is None


@pytest.mark.ray
@pytest.mark.slow
def test_two_real_searches_on_one_study_url_keep_their_trials_apart(tmp_path):
    url = f"sqlite:///{tmp_path / 'team.db'}"
    outs = [tmp_path / "a", tmp_path / "b"]
    for out, samples in zip(outs, (1, 2)):
        assert main(["tune", "--data", SMALL_SYNTHETIC, "--space", QUICK, "--num-samples", str(samples),
                     "--max-epochs", "1", "--scheduler", "none", "--executor", "function", "--study-url", url,
                     "--out", str(out)]) == 0
    assert len(optuna.study.get_all_study_names(url)) == 2
    for out, samples in zip(outs, (1, 2)):
        study = SearchResult(out, {}).study
        assert study.study_name == SearchRecord.read(out).study_name and len(study.trials) == samples
        trial_ids = set(pd.read_parquet(out / "trials.parquet")["trial_id"])
        assert {t.user_attrs["tune_trial_id"] for t in study.trials} == trial_ids


def test_search_result_study_of_a_directory_without_its_database_is_one_line_and_creates_nothing(tmp_path):
    out = tmp_path / "copied"
    start(out, study_name="scratch")
    (out / "optuna.db").unlink()  # the record, copied without the database beside it
    with pytest.raises(RaytowerError, match="no study database at sqlite:///"):
        SearchResult(out, {}).study
    assert not (out / "optuna.db").exists()
