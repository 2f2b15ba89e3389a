"""What every benchmark result records about how it was measured: one function, used by every script.

    from _stamp import stamp
    result = {"measured": ..., **stamp()}

The commit (and whether the tree had uncommitted changes), the package versions, the command as run
from the repository root (no absolute paths of this machine), the date, and the machine's load.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("raytower", "torch", "numpy", "pandas", "pyarrow", "ray", "optuna")


def commit() -> str:
    """HEAD's hash, with '+dirty' when tracked files had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in PACKAGES:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def relative_command(argv: list[str] | None = None) -> str:
    """The command line with paths in the checkout or beside it (../shared) written relative to it."""
    argv = list(sys.argv if argv is None else argv)
    out = ["python"]
    for arg in argv:
        path = Path(arg)
        if path.is_absolute() and path.resolve().is_relative_to(ROOT.parent):  # the checkout, or ../shared
            arg = os.path.relpath(path.resolve(), ROOT)
        out.append(arg)
    return shlex.join(out)


def stamp(argv: list[str] | None = None) -> dict:
    """Commit, versions, repository-relative command, UTC date, load average and cores."""
    return {
        "commit": commit(),
        "versions": versions(),
        "command": relative_command(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
