"""Atomic writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable as any other
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, may_replace: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``dest``; it becomes ``dest`` only on success.

    An existing ``dest`` is replaced. Used for cache entries (data bundles, pretraining
    artifacts, downloads) so an interrupted run never leaves a half-written entry behind.
    ``may_replace(dest)``, when given, runs just before an existing ``dest`` is swapped out and
    raises to keep it: the destination may have changed while the new one was being written.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _sweep_orphans(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        if dest.exists() or dest.is_symlink():
            if may_replace is not None:
                may_replace(dest)
            old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- destinations a user names ---------------------------------------------------------------------
# raytower never deletes or overwrites what a user owns. Every directory it writes for a user carries
# MARKER, naming its kind; an existing destination may be replaced only when it is raytower's own
# output of the same kind, and only with --force. Anything else is refused before work starts.

MARKER = ".raytower-output"
KINDS = ("bundle", "run", "search", "model", "results", "dataset")


def write_marker(directory: str | os.PathLike, kind: str) -> None:
    assert kind in KINDS, kind
    from raytower import __version__

    write_json(Path(directory) / MARKER, {"kind": kind, "raytower": __version__})


def output_kind(directory: str | os.PathLike) -> str | None:
    """The kind raytower marked ``directory`` with, or None (not raytower's, or not a directory)."""
    try:
        doc = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    return kind if kind in KINDS else None


def check_destination(dest: str | os.PathLike, kind: str, force: bool = False, flag: str = "--out") -> bool:
    """Refuse, in one line, a destination raytower may not write a ``kind`` into; True when an
    earlier output of that kind is there and ``force`` allows replacing it.

    Allowed: a path that does not exist, an empty directory, or (with ``force``) a directory marked
    as raytower's ``kind``. Run before any work, and again just before the swap."""
    from raytower.errors import ConfigError

    dest = Path(dest)
    if dest.is_symlink() and not dest.exists():
        raise ConfigError(f"{flag}: a broken symbolic link; raytower replaces no link", dest)
    if not dest.exists():
        _check_creatable(dest, flag)
        return False
    if not dest.is_dir():
        raise ConfigError(f"{flag}: an existing file; raytower writes a directory here and never replaces a file",
                          dest)
    if not os.access(dest, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: the directory is not writable (permission denied)", dest)
    if not any(dest.iterdir()):
        return False
    found = output_kind(dest)
    if found == kind:
        if not force:
            raise ConfigError(f"{flag}: holds an earlier raytower {kind}; pass --force to replace it, "
                              "or choose another directory", dest)
        return True
    what = f"a raytower {found}, not a {kind}" if found else "files raytower did not write"
    raise ConfigError(f"{flag}: the directory holds {what}; raytower deletes nothing of yours: "
                      "choose a new or empty directory", dest)


def check_file_destination(dest: str | os.PathLike, kind: str, is_ours: Callable[[Path], bool],
                           force: bool = False, flag: str = "-o") -> None:
    """``check_destination`` for a single file: ``is_ours(path)`` tells raytower's own ``kind``."""
    from raytower.errors import ConfigError

    dest = Path(dest)
    if dest.is_dir():
        raise ConfigError(f"{flag}: a directory; give a file name (raytower writes a {kind} file)", dest)
    if not dest.exists() and not dest.is_symlink():
        _check_creatable(dest, flag)
        return
    if not dest.is_file() or dest.is_symlink() or not is_ours(dest):
        raise ConfigError(f"{flag}: an existing file that is not a raytower {kind}; raytower deletes nothing of "
                          "yours: choose a new file name", dest)
    if not force:
        raise ConfigError(f"{flag}: holds an earlier raytower {kind}; pass --force to replace it", dest)
    if not os.access(dest.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: its directory is not writable (permission denied)", dest)


def _check_creatable(dest: Path, flag: str) -> None:
    from raytower.errors import ConfigError

    existing = dest.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag}: cannot create the directory: {existing} is a file", dest)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot create the directory: {existing} is not writable (permission denied)",
                          dest)


@contextlib.contextmanager
def output_dir(dest: str | os.PathLike, kind: str, force: bool = False, flag: str = "--out") -> Iterator[Path]:
    """``atomic_dir`` for a destination the user named: checked first, marked with ``kind``, and
    swapped in only if what is there then may still be replaced."""
    check_destination(dest, kind, force, flag)
    with atomic_dir(dest, may_replace=lambda d: check_destination(d, kind, force, flag)) as tmp:
        write_marker(tmp, kind)
        yield tmp


def claim_output_dir(dest: str | os.PathLike, kind: str, force: bool = False, flag: str = "--out") -> Path:
    """Make ``dest`` the home of a new ``kind`` written in place (a training run, a search): checked,
    an earlier output of that kind cleared only with ``force``, created and marked."""
    dest = Path(dest)
    if check_destination(dest, kind, force, flag):
        old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
        os.replace(dest, old)  # gone from view at once; its files go next
        shutil.rmtree(old, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    write_marker(dest, kind)
    return dest


def _sweep_orphans(dest: Path) -> None:
    """Remove what a killed writer of ``dest`` left beside it: its ``.NAME.PID.*`` temporary and
    set-aside directories, where that process is gone. A live writer's are kept."""
    for p in dest.parent.glob(f".{glob.escape(dest.name)}.*"):
        rest = p.name[len(dest.name) + 2:]
        pid = rest.split(".", 1)[0]
        if p.is_dir() and pid.isdigit() and (p.suffix in (".tmp", ".old")) and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def read_user_text(path: str | os.PathLike, what: str) -> str:
    """A text file a user hands us (config, search space), or a one-line ConfigError naming it."""
    from raytower.errors import ConfigError

    try:
        return Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {what} ({e.strerror})", path) from None
    except UnicodeDecodeError:
        raise ConfigError(f"not a text file (a {what} was expected)", path) from None


_YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


def load_user_yaml(text: str, path: str | os.PathLike, what: str) -> Any:
    """YAML a user hands us, anchors and aliases refused: a few nested aliases expand to billions of
    nodes (a "billion laughs" file exhausted memory while its error message was being built)."""
    import yaml

    from raytower.errors import ConfigError

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise ConfigError(f"YAML aliases (*name) are not accepted in a {what} (line {mark.line + 1})", path)
            return super().compose_node(parent, index)

    # YAML 1.2 floats: PyYAML (YAML 1.1) reads 1e30 and 1.0e-3 as strings, and "lr must be float,
    # got '1e30'" puzzled; a leading digit, an exponent without a sign or without a dot are floats.
    NoAliases.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
    try:
        return yaml.load(text, Loader=NoAliases)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML ({str(e).splitlines()[0]})", path) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike, missing: Any) -> Any:
    """A JSON file raytower wrote: ``missing`` when absent, one ConfigError line when damaged."""
    from raytower.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        return missing
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise ConfigError(f"damaged ({type(e).__name__}); raytower wrote it, so remove it to have it "
                          "written afresh", path) from None


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def cache_root() -> Path:
    """Where prepared bundles, downloads and pretraining artifacts live (``RAYTOWER_CACHE``)."""
    root = os.environ.get("RAYTOWER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "raytower"
    )
    return Path(root)
