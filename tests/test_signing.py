"""The user's signing key and HMAC signatures (raytower._signing): no Ray."""

import os
import stat
import subprocess
import sys

import pytest

from raytower import _signing
from raytower.errors import ConfigError


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@pytest.fixture
def pickle_file(tmp_path):
    p = tmp_path / "out" / "tune" / "tuner.pkl"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\x80\x04 a pickle Ray wrote")
    return p


def test_the_key_is_made_once_private_and_outside_the_output(config_home):
    key = _signing.user_key()
    path = config_home / "raytower" / "key"
    assert _signing.key_path() == path and path.read_bytes() == key and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert _signing.user_key() == key  # made once, then read
    assert [p.name for p in path.parent.iterdir()] == ["key"]  # no temporary file left


def test_without_xdg_config_home_the_key_is_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _signing.key_path() == tmp_path / ".config" / "raytower" / "key"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # XDG: ignored unless absolute
    assert _signing.key_path() == tmp_path / ".config" / "raytower" / "key"


def test_processes_racing_to_make_the_key_share_one(config_home):
    code = "from raytower import _signing; print(_signing.user_key().hex())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    keys = {p.communicate()[0].strip() for p in procs}
    assert len(keys) == 1 and keys == {(config_home / "raytower" / "key").read_bytes().hex()}


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_key_others_can_read_is_refused(config_home, mode):
    _signing.user_key()
    (config_home / "raytower" / "key").chmod(mode)
    with pytest.raises(ConfigError, match="open to other users.*chmod 600"):
        _signing.user_key()


def test_a_key_folder_others_can_write_is_refused(config_home):
    _signing.user_key()
    (config_home / "raytower").chmod(0o777)
    with pytest.raises(ConfigError, match="writable by other users.*chmod 700"):
        _signing.user_key()


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="giving a file away needs root")
def test_a_key_owned_by_another_user_is_refused(config_home):
    _signing.user_key()
    os.chown(config_home / "raytower" / "key", 12345, 12345)
    with pytest.raises(ConfigError, match="belongs to another user"):
        _signing.user_key()


def test_a_key_that_is_a_symlink_is_refused(config_home, tmp_path):
    elsewhere = tmp_path / "their-key"
    elsewhere.write_bytes(os.urandom(32))
    elsewhere.chmod(0o600)
    (config_home / "raytower").mkdir(parents=True, mode=0o700)
    (config_home / "raytower" / "key").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="cannot read the signing key"):
        _signing.user_key()


def test_a_signed_file_verifies(config_home, pickle_file):
    _signing.sign_file(pickle_file)
    assert pickle_file.with_name("tuner.pkl.hmac").read_text().startswith("hmac-sha256:")
    _signing.verify_file(pickle_file)


@pytest.mark.parametrize("linked", ["file", "signature"])
def test_a_signed_file_reached_through_a_symlink_is_refused(config_home, pickle_file, tmp_path, linked):
    """Its target verified, then swapped before Ray read it: a link out of tune/ passed the check."""
    _signing.sign_file(pickle_file)
    moved = pickle_file if linked == "file" else pickle_file.with_name("tuner.pkl.hmac")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved.rename(elsewhere / moved.name)
    moved.symlink_to(elsewhere / moved.name)
    with pytest.raises(ConfigError, match="refused: a symbolic link"):
        _signing.verify_file(pickle_file)


def test_a_byte_appended_is_refused(config_home, pickle_file):
    _signing.sign_file(pickle_file)
    with pickle_file.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ConfigError, match="does not match its signature") as e:
        _signing.verify_file(pickle_file, hint="do something else")
    assert str(e.value).startswith(str(pickle_file)) and str(e.value).endswith("; do something else")


def test_a_missing_signature_is_refused(config_home, pickle_file):
    _signing.user_key()
    with pytest.raises(ConfigError, match=r"no signature beside it \(tuner.pkl.hmac\)"):
        _signing.verify_file(pickle_file)


def test_a_signature_copied_from_another_file_or_key_is_refused(config_home, pickle_file, tmp_path, monkeypatch):
    _signing.sign_file(pickle_file)
    other = pickle_file.with_name("other.pkl")
    other.write_bytes(pickle_file.read_bytes())  # same bytes, another kind of file
    other.with_name("other.pkl.hmac").write_text(pickle_file.with_name("tuner.pkl.hmac").read_text())
    with pytest.raises(ConfigError, match="does not match"):
        _signing.verify_file(other)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "someone-else"))  # another user's key
    _signing.user_key()
    with pytest.raises(ConfigError, match="does not match"):
        _signing.verify_file(pickle_file)


def test_verifying_never_makes_a_key(config_home, pickle_file):
    pickle_file.with_name("tuner.pkl.hmac").write_text("hmac-sha256:00\n")
    with pytest.raises(ConfigError, match="no signing key"):
        _signing.verify_file(pickle_file)
    assert not (config_home / "raytower" / "key").exists()


class Killed(Exception):
    """A kill -9 between two writes: nothing after it happens."""


def _replace_killed_after(path, data, writes):
    """``replace_signed`` of ``path`` by ``data``, the process killed after its first ``writes`` writes."""
    done = []

    def write(name, blob):
        if len(done) == writes:
            raise Killed
        _signing.write_whole(path.parent / name, blob)
        done.append(name)

    def read_text(name):
        p = path.parent / name
        return p.read_text() if p.exists() else None

    try:
        _signing.replace_signed(path.name, data, read_text, write)
    except Killed:
        pass
    return done


@pytest.mark.parametrize("writes", [0, 1, 2, 3])
def test_a_replace_killed_at_any_moment_leaves_a_file_its_record_allows(config_home, tmp_path, writes):
    state = tmp_path / "tune" / "searcher-state-2026-01-01_00-00-00.pkl"
    state.parent.mkdir()
    _signing.write_signed(state, b"\x80\x04 the old state")
    done = _replace_killed_after(state, b"\x80\x04 the new state", writes)
    assert len(done) == min(writes, 3)
    _signing.verify_file(state)  # old or new, it resumes
    assert state.read_bytes() == (b"\x80\x04 the new state" if writes >= 2 else b"\x80\x04 the old state")
    lines = _signing.recorded_lines(_signing.signature_path(state).read_text())
    assert len(lines) == (2 if writes in (1, 2) else 1)  # both allowed only across the replace
    assert sorted(p.name for p in state.parent.iterdir()) == [state.name, state.name + ".hmac"]  # no temp file left


def test_a_record_of_two_signs_only_those_two(config_home, pickle_file):
    old, new = b"\x80\x04 old", b"\x80\x04 new"
    record = "".join(_signing.signature(d, pickle_file.name) + "\n" for d in (old, new))
    for data in (old, new):
        _signing.check_signature(data, record, pickle_file.name, pickle_file)
    with pytest.raises(ConfigError, match="does not match its signature"):
        _signing.check_signature(b"\x80\x04 a third", record, pickle_file.name, pickle_file)
