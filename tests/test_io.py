"""raytower._io and raytower._lock: atomic writes, what a killed writer leaves behind, one writer per
destination, and --force replacing only the files raytower listed."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raytower._io import MARKER, _sweep_orphans, atomic_dir, check_destination, output_dir
from raytower.cli import main
from raytower.errors import ConfigError
from tests.conftest import REPO, SMALL_SYNTHETIC


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _snapshot(root: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in root.rglob("*")}


def test_a_killed_writers_temporary_directory_is_cleaned_up_on_the_next_run(tmp_path):
    dest = tmp_path / "bundles" / "b"
    # A process that dies (SIGKILL, in effect) inside atomic_dir: its .tmp directory stays behind,
    # and so does its lock file, but not its lock: the kernel dropped that with the process.
    code = ("import os, sys; from raytower._io import atomic_dir\n"
            f"with atomic_dir({str(dest)!r}) as tmp:\n"
            "    (tmp / 'half.parquet').write_text('x'); os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    left = sorted(p.name for p in dest.parent.iterdir())
    assert len(left) == 2 and left[0].endswith(".tmp") and left[1] == ".b.raytower-lock"
    live = dest.parent / f".b.{os.getpid()}.abc.tmp"  # a writer still at work: its directory stays
    live.mkdir()
    (live / MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with atomic_dir(dest) as tmp:
        (tmp / "whole.parquet").write_text("y")
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted(["b", live.name])
    assert sorted(p.name for p in dest.iterdir()) == ["whole.parquet"]  # a cache entry carries no marker


def test_only_raytowers_own_temporary_folders_of_a_dead_process_on_this_host_are_swept(tmp_path):
    dead, here = _dead_pid(), socket.gethostname()
    dest = tmp_path / "x"

    def folder(name, marker=None):
        d = tmp_path / name
        d.mkdir()
        (d / "notes.txt").write_text("mine")
        if marker is not None:
            (d / MARKER).write_text(json.dumps(marker))
        return d

    users = [folder(".x.123.tmp"), folder(f".x.{dead}.tmp"), folder(f".x.{dead}.old"),  # no marker: a user's
             folder(f".x.{dead}.a.tmp", {"kind": "run"}),  # a copied output: no PID
             folder(f".x.{dead}.b.tmp", {"pid": dead, "host": here + "-elsewhere"})]  # another machine's
    ours = folder(f".x.{dead}.c.tmp", {"pid": dead, "host": here})
    with atomic_dir(dest) as tmp:
        (tmp / "f").write_text("y")
    assert not ours.exists()
    for d in users:
        assert (d / "notes.txt").read_text() == "mine", d


def test_an_old_output_set_aside_by_a_swap_cut_short_is_put_back(tmp_path):
    dead, here = _dead_pid(), socket.gethostname()
    dest = tmp_path / "m"
    with output_dir(dest, "model") as tmp:
        (tmp / "w.npy").write_text("old")
    # Killed between its two renames: the old output aside, the new one complete but not in place.
    aside = tmp_path / f".m.{dead}.q.old"
    aside.mkdir()
    (aside / MARKER).write_text(json.dumps({"pid": dead, "host": here}))
    dest.rename(aside / "previous")
    new = tmp_path / f".m.{dead}.r.tmp"
    new.mkdir()
    (new / MARKER).write_text(json.dumps({"kind": "model", "pid": dead, "host": here}))
    _sweep_orphans(dest)
    assert (dest / "w.npy").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _model(dest: Path) -> None:
    with output_dir(dest, "model") as tmp:
        (tmp / "w.npy").write_bytes(b"x" * 10)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "v.json").write_text("{}")


def test_the_marker_lists_every_file_raytower_wrote_and_force_replaces_them(tmp_path):
    dest = tmp_path / "m"
    _model(dest)
    doc = json.loads((dest / MARKER).read_text())
    assert doc["kind"] == "model" and doc["files"] == {"sub/v.json": 2, "w.npy": 10} and doc["dirs"] == ["sub"]
    assert "pid" not in doc  # a finished output names no writer
    with output_dir(dest, "model", force=True) as tmp:
        (tmp / "w.npy").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "w.npy"]
    assert json.loads((dest / MARKER).read_text())["files"] == {"w.npy": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # nothing set aside, no lock file left


@pytest.mark.parametrize("add,shown", [
    (lambda d: (d / "notes.txt").write_text("mine"), "notes.txt"),
    (lambda d: (d / "analysis").mkdir(), "analysis/"),
    (lambda d: (d / "sub" / "plot.png").write_bytes(b"png"), "sub/plot.png"),
    (lambda d: (d / "w.npy").write_bytes(b"my own edit"), "w.npy"),  # another size: changed since
    (lambda d: (d / "link").symlink_to(d / "w.npy"), "link"),
])
def test_force_refuses_an_output_holding_anything_raytower_did_not_list(tmp_path, add, shown):
    dest = tmp_path / "m"
    _model(dest)
    add(dest)
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match=f"files raytower did not write \\({shown}\\)"):
        with output_dir(dest, "model", force=True) as tmp:
            (tmp / "w.npy").write_text("new")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("marker,message", [
    ({"kind": "model"}, "lists no files"),  # hand-written (or an earlier raytower's, which kept no list)
    ({"kind": "model", "files": {}, "dirs": []}, r"files raytower did not write \(notes.txt\)"),
])
def test_a_hand_written_marker_does_not_make_a_folder_raytowers(tmp_path, marker, message):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("my own work")
    (dest / MARKER).write_text(json.dumps(marker))
    with pytest.raises(ConfigError, match=message):
        check_destination(dest, "model", force=True)
    assert (dest / "notes.txt").read_text() == "my own work"


def test_a_marker_listing_paths_outside_its_folder_deletes_nothing_there(tmp_path):
    # A search --out re-claimed with --force removes the files its marker lists; the marker is a file
    # anyone may edit, and it once deleted '../notes.txt' and absolute paths it named.
    from raytower._io import claim_output_dir

    (tmp_path / "notes.txt").write_text("my own work")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "data.csv").write_text("mine too")
    dest = tmp_path / "s"
    dest.mkdir()
    (dest / "setup.json").write_text("{}")
    outside = {"../notes.txt": 11, str(tmp_path / "elsewhere" / "data.csv"): 8, "setup.json": 2}
    (dest / MARKER).write_text(json.dumps({"kind": "search", "files": outside, "dirs": ["../elsewhere"]}))
    claim_output_dir(dest, "search", force=True)
    assert (tmp_path / "notes.txt").read_text() == "my own work"
    assert (tmp_path / "elsewhere" / "data.csv").read_text() == "mine too"
    assert not (dest / "setup.json").exists()  # what it lists inside is raytower's, and goes


HOLDER = """
import sys, time
from raytower._io import output_dir
from raytower._lock import hold_destination
with hold_destination(sys.argv[1]):
    # The lock is beside the destination: it still holds after a new output is swapped in.
    with output_dir(sys.argv[1], "model", force=True) as tmp:
        (tmp / "w.npy").write_text("held")
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def held(tmp_path):
    """A destination another process holds (and has just replaced with a new output)."""
    dest = tmp_path / "held"
    _model(dest)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(dest)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield dest, proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(held):
    from raytower._lock import hold_destination, lock_path

    dest, proc = held
    with pytest.raises(ConfigError, match=f"in use by another raytower process \\(PID {proc.pid} on "):
        with hold_destination(dest):
            pass
    with pytest.raises(ConfigError, match=f"PID {proc.pid}"):
        check_destination(dest, "model", force=True)
    proc.kill()  # SIGKILL: no clean-up ran
    proc.wait()
    assert lock_path(dest).exists()  # its file stays, its lock does not
    with hold_destination(dest):
        assert json.loads(lock_path(dest).read_text())["pid"] == os.getpid()
    assert not lock_path(dest).exists()


@pytest.mark.parametrize("argv", [
    ["train", "--data", SMALL_SYNTHETIC, "--out", "{d}", "--force"],
    ["train", "--resume", "{d}"],
    ["data", "prepare", "--data", SMALL_SYNTHETIC, "--out", "{d}", "--force"],
    ["export", "{t}", "--out", "{d}", "--force"],
    ["tune", "--data", SMALL_SYNTHETIC, "--space", str(REPO / "search_spaces" / "quick.yaml"), "--num-samples", "1",
     "--max-epochs", "1", "--out", "{d}"],
    ["tune", "--data", SMALL_SYNTHETIC, "--out", "{d}", "--resume"],
], ids=["train", "train --resume", "data prepare", "export", "tune", "tune --resume"])
def test_every_command_refuses_a_destination_another_raytower_process_writes(held, tmp_path, capsys, argv):
    dest, proc = held
    before = _snapshot(tmp_path)
    code = main([a.format(d=dest, t=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"in use by another raytower process (PID {proc.pid} on" in err, err
    assert _snapshot(tmp_path) == before


CACHE_BUILDER = """
import json, sys, time
from pathlib import Path
import raytower.data as data
import raytower.data._load as loader  # where load_bundle looks prepare up

built = []
real = loader.prepare

def slow_prepare(*args, **kwargs):
    built.append(True)
    time.sleep(2)  # a long preparation: the other process asks for the same entry meanwhile
    return real(*args, **kwargs)

loader.prepare = slow_prepare
Path(sys.argv[1] + sys.argv[3]).touch()  # ready
while not Path(sys.argv[1]).exists():
    time.sleep(0.01)
bundle = data.load_bundle(sys.argv[2])
print(json.dumps({"built": bool(built), "hit": bundle.cache_hit, "path": str(bundle.path)}))
"""


def test_two_processes_making_one_cache_entry_both_succeed_and_the_second_reuses_the_first(tmp_path):
    env = {**os.environ, "RAYTOWER_CACHE": str(tmp_path / "cache")}
    go = tmp_path / "go"
    spec = "synthetic:n_users=300,n_items=150,seed=11"
    procs = [subprocess.Popen([sys.executable, "-c", CACHE_BUILDER, str(go), spec, f".{i}"], env=env,
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both imported: they ask at once
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["built"] for r in results) == [False, True], results  # made once, not twice
    assert len({r["path"] for r in results}) == 1
    assert [r["hit"] for r in results if not r["built"]] == [True]
    entries = sorted(p.name for p in (tmp_path / "cache" / "bundles").iterdir())
    assert len(entries) == 1 and not entries[0].startswith(".")  # no lock file, no temporary left


def test_outputs_and_cache_entries_follow_the_umask(tmp_path):
    """export --out was 0700 (mkdtemp) under umask 022, so a serving account could not read the model."""
    import os
    import stat

    from raytower._io import atomic_dir, output_dir

    old = os.umask(0o022)
    try:
        with output_dir(tmp_path / "model", "model") as d:
            (d / "f").write_text("x")
        with atomic_dir(tmp_path / "cache-entry") as d:
            (d / "f").write_text("x")
    finally:
        os.umask(old)
    for name in ("model", "cache-entry"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o755, name
