"""raytower._io: atomic writes, and what a killed writer leaves behind."""

import os
import subprocess
import sys

from raytower._io import atomic_dir


def test_a_killed_writers_temporary_directory_is_cleaned_up_on_the_next_run(tmp_path):
    dest = tmp_path / "bundles" / "b"
    # A process that dies (SIGKILL, in effect) inside atomic_dir: its .tmp directory stays behind.
    code = ("import os, sys; from raytower._io import atomic_dir\n"
            f"with atomic_dir({str(dest)!r}) as tmp:\n"
            "    (tmp / 'half.parquet').write_text('x'); os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    left = [p.name for p in dest.parent.iterdir()]
    assert len(left) == 1 and left[0].endswith(".tmp")
    live = dest.parent / f".b.{os.getpid()}.abc.tmp"  # a writer still at work: its directory stays
    live.mkdir()
    with atomic_dir(dest) as tmp:
        (tmp / "whole.parquet").write_text("y")
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted(["b", live.name])
    assert (dest / "whole.parquet").read_text() == "y"
