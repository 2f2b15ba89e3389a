"""The test harness's own rule: a test that starts Ray must be marked ray, so `make test-fast` stays free of it."""

import subprocess

import pytest


@pytest.fixture
def fake_raylet(tmp_path):
    """A harmless program that has the name of Ray's node daemon."""
    program = tmp_path / "raylet"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    return program


def test_an_unmarked_test_cannot_start_a_ray_daemon(fake_raylet):
    with pytest.raises(RuntimeError, match="test_an_unmarked_test_cannot_start_a_ray_daemon starts Ray but is not marked ray"):
        subprocess.Popen([str(fake_raylet)])


def test_an_unmarked_test_may_start_other_programs(tmp_path):
    assert subprocess.run(["true"]).returncode == 0


@pytest.mark.ray
def test_a_test_marked_ray_may_start_it(fake_raylet):
    assert subprocess.run([str(fake_raylet)]).returncode == 0
