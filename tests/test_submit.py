"""The command `raytower submit` sends and where it reads results back: no cluster needed.
(The submissions themselves, against a real head, are in tests/cluster/test_submit.py.)"""

import shlex
from pathlib import Path

import pytest

from raytower.submit import entrypoint, results_location


@pytest.mark.parametrize("storage", [["--storage-path", "s3://b/runs?region=eu-west-1"],
                                     ["--storage-path=s3://b/runs?region=eu-west-1"]])
def test_both_flag_forms_give_the_same_results_location(storage):
    args = ["tune", "--data", "ml-100k", "--out=runs/x1", *storage]
    command, out = entrypoint(args)
    assert out == Path("runs/x1")
    assert shlex.split(command)[-2:] == ["--address", "auto"]
    # the search's folder goes into the path, its options stay at the end
    assert results_location(args, out) == "s3://b/runs/x1?region=eu-west-1"


def test_without_a_storage_path_results_are_read_from_out(monkeypatch):
    monkeypatch.setenv("RAYTOWER_STORAGE", "s3://only-on-this-machine")
    args = ["tune", "--out", "/shared/runs/x2", "--address", "10.0.0.1:6379"]
    command, out = entrypoint(args)
    assert "auto" not in shlex.split(command)  # an address given is kept as it is
    assert results_location(args, out) == str(Path("/shared/runs/x2").resolve())


def test_a_bad_tune_flag_fails_before_anything_is_submitted():
    from raytower.errors import ConfigError

    with pytest.raises(ConfigError, match="--num-samples must be >= 1"):  # the job's own check, run here
        entrypoint(["tune", "--out", "runs/x", "--num-samples", "0"])
    with pytest.raises(SystemExit) as e:  # a flag tune does not know
        entrypoint(["tune", "--out", "runs/x", "--trials", "3"])
    assert e.value.code == 2
