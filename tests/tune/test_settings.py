"""A search's settings under their current names: --study-url (the Optuna study) and its older
spelling --storage, kept for one release, on the command line and in a search's record."""

import json

from raytower._flags import parse_tune
from raytower._trial import TrialContext
from raytower.tune.record import SearchRecord
from raytower.tune.settings import SearchSettings, given_fields

URL = "sqlite:///elsewhere/study.db"


def test_study_url_is_the_flag_and_says_nothing_more(capsys):
    _, settings = parse_tune(["--study-url", URL, "--out", "runs/x"])
    assert settings.study_url == URL
    assert capsys.readouterr().err == ""


def test_the_old_storage_flag_sets_the_study_url_with_one_line_on_stderr(capsys):
    for argv in (["--storage", URL], [f"--storage={URL}"]):
        _, settings = parse_tune([*argv, "--out", "runs/x"])
        assert settings.study_url == URL and settings.storage_path is None
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "--storage is deprecated" in err[0] and "--study-url" in err[0], err


def test_resume_sees_the_old_flag_as_the_study_url_given_and_says_so_once(capsys):
    # --resume compares every field named on the command line with the record
    assert "study_url" in given_fields(["--storage", URL])
    assert capsys.readouterr().err == ""  # a second parse of the same line: the note was printed once


def test_help_lists_the_new_flag_only(capsys):
    import pytest

    with pytest.raises(SystemExit):
        parse_tune(["--help"])
    out = capsys.readouterr().out
    assert "--study-url URL" in out and "--storage " not in out and "--storage-path" in out


def test_a_record_written_before_the_rename_reads_its_study_url(tmp_path):
    record = SearchRecord(settings={**vars(SearchSettings(study_url=URL))}, data="synthetic",
                          shared=TrialContext(bundle="b", artifacts={}), dataset={"name": "synthetic"})
    record.write(tmp_path)
    doc = json.loads((tmp_path / "setup.json").read_text())
    assert doc["settings"]["study_url"] == URL  # written under the current name
    doc["settings"]["storage"] = doc["settings"].pop("study_url")  # as raytower 0.x wrote it
    (tmp_path / "setup.json").write_text(json.dumps(doc))
    old = SearchRecord.read(tmp_path)
    assert old.study_url == URL and "storage" not in old.settings and old.extra == {}
    assert SearchRecord.read(tmp_path).settings == record.settings


def test_train_and_tune_read_val_users_from_one_definition():
    import argparse

    from raytower.cli import build_parser
    from raytower.train.config import TrainConfig

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    train, tune = (next(a for a in commands[c]._actions if a.dest == "val_users") for c in ("train", "tune"))
    assert train.option_strings == tune.option_strings == ["--val-users"]
    assert (train.type, train.metavar) == (tune.type, tune.metavar) == (int, "N")
    assert train.default is None  # train: the config's value holds unless the flag is given
    assert tune.default == SearchSettings().val_users == TrainConfig().val_users == -1
    assert train.help == tune.help.replace("default %(default)s", "default: the config's")


def test_a_record_from_before_the_trial_context_was_named_reads_its_artifact_store():
    import raytower.tune

    assert TrialContext.from_dict({"bundle": "b", "artifacts": {}, "published": "s3://x/y"}).artifact_store == "s3://x/y"
    assert raytower.tune.Shared is TrialContext  # the 0.x name, for one release
