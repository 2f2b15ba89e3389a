"""What raytower wrote into a destination, as its marker lists it: read-only helpers of ``_io``.

The marker ``.raytower-output`` (JSON) names the output's kind and lists every file (relative path,
size) and folder raytower wrote there; what is present and not listed is the user's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from raytower._lock import INSIDE_LOCK

MARKER = ".raytower-output"
KINDS = ("bundle", "run", "search", "model", "results", "dataset")


def foreign_entries(directory: str | os.PathLike) -> list[str] | None:
    """What in ``directory`` its marker does not list as raytower's (folders end in '/'): a user's
    files, or raytower's changed since (another size). None when there is something but the marker
    lists nothing at all: a hand-written marker, or one raytower wrote before it kept a list."""
    found = unlisted(Path(directory), sizes=True)
    if found is None:
        return None
    dirs = {d for d in found if (Path(directory) / d).is_dir() and not (Path(directory) / d).is_symlink()}
    top = [p for p in found if not any(p.startswith(d + "/") for d in dirs)]  # a folder, not all it holds
    return [p + "/" if p in dirs else p for p in top]


def unlisted(directory: Path, sizes: bool) -> list[str] | None:
    """Relative paths in ``directory`` its marker does not list (``sizes``: or lists with another size);
    None when there is something but the marker has no list."""
    files, dirs, other = listing(directory)
    doc = read_marker(directory)
    listed_files, listed_dirs = doc.get("files"), doc.get("dirs")
    if not isinstance(listed_files, dict) or not isinstance(listed_dirs, list):
        return None if files or dirs or other else []
    found = [d for d in dirs if d not in listed_dirs] + other
    for f, size in files.items():
        if f not in listed_files and not _interrupted_write(f, listed_files):
            found.append(f)
        elif sizes and f in listed_files and listed_files[f] != size:
            found.append(f)
    return sorted(found)


def _interrupted_write(rel: str, listed: dict) -> bool:
    """``.NAME.XXXX.tmp`` beside a listed NAME (or the marker): what atomic_path leaves when killed."""
    folder, _, name = rel.rpartition("/")
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    target = name[1:-len(".tmp")].rpartition(".")[0]  # mkstemp's random part has no dot
    return target == MARKER or (f"{folder}/{target}" if folder else target) in listed


def listing(directory: Path) -> tuple[dict[str, int], list[str], list[str]]:
    """Files (with sizes), folders, and anything else (links, sockets) in ``directory``, by relative
    path; the marker and a lock file inside are raytower's and never listed."""
    files: dict[str, int] = {}
    dirs: list[str] = []
    other: list[str] = []

    def walk(d: Path, prefix: str) -> None:
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            rel = prefix + e.name
            if not prefix and e.name in (MARKER, INSIDE_LOCK):
                continue
            try:
                if e.is_symlink():
                    other.append(rel)
                elif e.is_dir(follow_symlinks=False):
                    dirs.append(rel)
                    walk(Path(e.path), rel + "/")
                elif e.is_file(follow_symlinks=False):
                    files[rel] = e.stat(follow_symlinks=False).st_size
                else:
                    other.append(rel)
            except FileNotFoundError:
                pass  # removed while listed (an old checkpoint)

    walk(Path(directory), "")
    return dict(sorted(files.items())), sorted(dirs), sorted(other)


def read_marker(directory: str | os.PathLike) -> dict:
    try:
        doc = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def names(paths: list[str], most: int = 3) -> str:
    more = len(paths) - most
    return ", ".join(paths[:most]) + (f" and {more} more" if more > 0 else "")


def key(directory: Path) -> str:
    return os.path.realpath(directory)
