"""Atomic writes (a reader sees the old file or the new one, never half of one), and the destinations
a user names: marked as raytower's, listed, replaced only with --force and only when nothing else is there."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from raytower._lock import INSIDE_LOCK, hold_cache_entry, hold_destination, owner, refuse_if_held
from raytower._manifest import KINDS, MARKER, foreign_entries, key, listing, names, read_marker, unlisted


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
def atomic_dir(dest: str | os.PathLike, may_replace: Callable[[Path], None] | None = None,
               kind: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``dest``; it becomes ``dest`` only on success.

    An existing ``dest`` is replaced. Used for cache entries (data bundles, pretraining
    artifacts, downloads) so an interrupted run never leaves a half-written entry behind; another
    process making the same entry is waited for (``hold_cache_entry``).
    ``may_replace(dest)``, when given, runs just before an existing ``dest`` is swapped out and
    raises to keep it: the destination may have changed while the new one was being written.
    The temporary directory carries MARKER with this process's PID and host, so that a later writer
    tells it from a user's folder and sweeps it only once this process is gone. With ``kind`` (a
    destination the user named) the marker stays, listing what was written; a cache entry has none.
    """
    dest = Path(dest)
    with hold_cache_entry(dest):  # (already held, without waiting, when the user named it)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _sweep_orphans(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent))
        # mkdtemp makes 0700: a model a serving account reads, a cache a team shares, follow the umask
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            _write_doc(tmp, {**({"kind": kind} if kind else {}), **owner()})
            yield tmp
            if kind:
                write_marker(tmp, kind)  # finished: every file in it is raytower's
            else:
                (tmp / MARKER).unlink(missing_ok=True)
            _swap_in(tmp, dest, may_replace)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


PREVIOUS = "previous"  # inside a set-aside .NAME.PID.*.old directory: the output being replaced


def _swap_in(tmp: Path, dest: Path, may_replace: Callable[[Path], None] | None) -> None:
    if not (dest.exists() or dest.is_symlink()):
        os.replace(tmp, dest)
        return
    if may_replace is not None:
        may_replace(dest)
    # The old output is set aside in a directory carrying this process's marker: if the process dies
    # between the two renames, the next writer's sweep puts the old one back.
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".old", dir=dest.parent))
    _write_doc(aside, owner())
    os.replace(dest, aside / PREVIOUS)
    os.replace(tmp, dest)
    shutil.rmtree(aside, ignore_errors=True)


# --- destinations a user names ---------------------------------------------------------------------
# raytower never deletes or overwrites what a user owns. Every directory it writes for a user carries
# MARKER, naming its kind and listing every file and folder raytower wrote there (relative paths,
# file sizes); an existing destination may be replaced only when it is raytower's own output of the
# same kind holding nothing else, and only with --force. One raytower process writes a destination at
# a time (raytower._lock). Anything else is refused before work starts.

_FOREIGN: dict[str, frozenset[str]] = {}  # an output written in place -> what was not raytower's when it began


def write_marker(directory: str | os.PathLike, kind: str) -> None:
    """Mark ``directory`` as raytower's ``kind``, listing everything in it now as raytower's own (a
    finished output, or one just begun)."""
    assert kind in KINDS, kind
    from raytower._version import version

    files, dirs, _ = listing(Path(directory))
    _write_doc(directory, {"kind": kind, "raytower": version(), "files": files, "dirs": dirs})


def record_files(directory: str | os.PathLike) -> None:
    """Bring the marker's list of raytower's files up to date in an output written in place (after
    each epoch, at the end); cheap enough for every epoch. What was there and not raytower's when this
    writer began (``writing_in_place``) is never listed."""
    directory = Path(directory)
    doc = read_marker(directory)
    if doc.get("kind") not in KINDS:
        return
    foreign = _FOREIGN.get(key(directory), frozenset())
    files, dirs, _ = listing(directory)
    _write_doc(directory, {**doc, "files": {f: n for f, n in files.items() if f not in foreign},
                           "dirs": [d for d in dirs if d not in foreign]})


def output_kind(directory: str | os.PathLike) -> str | None:
    """The kind raytower marked ``directory`` with, or None (not raytower's, or not a directory)."""
    kind = read_marker(directory).get("kind")
    return kind if kind in KINDS else None


def _write_doc(directory: str | os.PathLike, doc: dict) -> None:
    if read_marker(directory) != doc:  # unchanged: nothing is written
        write_json(Path(directory) / MARKER, doc)


def check_destination(dest: str | os.PathLike, kind: str, force: bool = False, flag: str = "--out") -> bool:
    """Refuse, in one line, a destination raytower may not write a ``kind`` into; True when an
    earlier output of that kind is there and ``force`` allows replacing it.

    Allowed: a path that does not exist, an empty directory, or (with ``force``) a directory marked
    as raytower's ``kind`` that holds only the files its marker lists. Another raytower process
    writing there is refused first. Run before any work, and again just before the swap."""
    from raytower.errors import ConfigError

    refuse_if_held(dest, flag)
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
    if not any(e.name != INSIDE_LOCK for e in os.scandir(dest)):
        return False
    found = output_kind(dest)
    if found != kind:
        what = f"a raytower {found}, not a {kind}" if found else "files raytower did not write"
        raise ConfigError(f"{flag}: the directory holds {what}; raytower deletes nothing of yours: "
                          "choose a new or empty directory", dest)
    foreign = foreign_entries(dest)
    if foreign is None:
        raise ConfigError(f"{flag}: its {MARKER} marker lists no files (written by hand, or by an earlier raytower "
                          "that kept no list), so raytower cannot tell its files from yours and deletes nothing: "
                          "remove the directory yourself if nothing in it is yours, or choose another", dest)
    if foreign:
        raise ConfigError(f"{flag}: the directory holds files raytower did not write ({names(foreign)}) beside an "
                          f"earlier raytower {kind}; raytower deletes nothing of yours: move them out, or choose "
                          "another directory", dest)
    if not force:
        raise ConfigError(f"{flag}: holds an earlier raytower {kind}; pass --force to replace it, "
                          "or choose another directory", dest)
    return True


def check_file_destination(dest: str | os.PathLike, kind: str, is_ours: Callable[[Path], bool],
                           force: bool = False, flag: str = "--out") -> None:
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
def output_dir(dest: str | os.PathLike, kind: str, force: bool = False, flag: str = "--out",
               in_place: bool = False) -> Iterator[Path]:
    """A ``kind`` for a destination the user named: held against other raytower processes, checked,
    built in a temporary directory beside it and swapped in only if what is there then may still be
    replaced; a failure leaves the earlier output as it was.

    ``in_place``: an output written over a long time (a training run) is written where it is when
    the destination is new or empty, so that it can be continued (``writing_in_place``); only an
    earlier output it replaces (``force``) makes it build beside."""
    dest = Path(dest)
    with hold_destination(dest, flag):
        replacing = check_destination(dest, kind, force, flag)
        if in_place and not replacing:
            dest.mkdir(parents=True, exist_ok=True)
            write_marker(dest, kind)
            with writing_in_place(dest, kind, flag):
                yield dest
            return
        with atomic_dir(dest, may_replace=lambda d: check_destination(d, kind, force, flag), kind=kind) as tmp:
            yield tmp


@contextlib.contextmanager
def writing_in_place(dest: str | os.PathLike, kind: str, flag: str = "--out") -> Iterator[Path]:
    """Write on in ``dest``, a ``kind`` raytower began (a new run, ``train --resume``, ``tune --resume``):
    held against other raytower processes, its marker's list brought up to date at the end, even a
    failed end (and whenever the writer calls ``record_files``). What was there and not raytower's
    when this began stays unlisted: nothing of the user's becomes raytower's to replace."""
    dest = Path(dest)
    with hold_destination(dest, flag):
        held = key(dest)
        found = unlisted(dest, sizes=False) if dest.is_dir() else []
        _FOREIGN[held] = frozenset(found if found is not None else _everything(dest))
        try:
            yield dest
        except BaseException:
            if output_kind(dest) == kind:
                with contextlib.suppress(OSError):  # (a full disk: the first error is the one to tell)
                    record_files(dest)
            raise
        else:
            if output_kind(dest) == kind:
                record_files(dest)
        finally:
            _FOREIGN.pop(held, None)


def _everything(directory: Path) -> list[str]:
    files, dirs, other = listing(directory)
    return [*files, *dirs, *other]


def claim_output_dir(dest: str | os.PathLike, kind: str, force: bool = False, flag: str = "--out") -> Path:
    """Make ``dest`` the home of a new ``kind`` written in place (a search, inside ``writing_in_place``):
    checked, created and marked. With ``force``, an earlier output of that kind holding only raytower's
    listed files (a search whose start failed leaves its marker alone) has those files removed."""
    dest = Path(dest)
    with hold_destination(dest, flag):
        if check_destination(dest, kind, force, flag):
            _remove_listed(dest)
        dest.mkdir(parents=True, exist_ok=True)
        write_marker(dest, kind)
    return dest


def _remove_listed(directory: Path) -> None:
    """Remove what the marker lists and ``directory`` holds. Only entries found inside it count: the
    marker is a file anyone may edit, and a listed '../notes.txt' or '/home/me/x' is nobody's to delete."""
    doc = read_marker(directory)
    files, dirs, _ = listing(directory)  # relative paths inside, links not followed
    listed_files, listed_dirs = doc.get("files"), doc.get("dirs")
    for f in files.keys() & (listed_files.keys() if isinstance(listed_files, dict) else set()):
        (directory / f).unlink(missing_ok=True)
    for d in sorted(set(dirs) & set(listed_dirs if isinstance(listed_dirs, list) else []), key=len, reverse=True):
        with contextlib.suppress(OSError):
            (directory / d).rmdir()


def _sweep_orphans(dest: Path) -> None:
    """Remove what a killed writer of ``dest`` left beside it: a temporary (``.NAME.*.tmp``) or
    set-aside (``.NAME.*.old``) directory carrying raytower's marker with that writer's PID and this
    host's name, that process being gone. A folder without that marker is a user's, whatever its
    name. An old output set aside by a swap cut short is put back first."""
    host = socket.gethostname()
    for p in dest.parent.glob(f".{glob.escape(dest.name)}.*"):
        if p.is_symlink() or not p.is_dir() or p.suffix not in (".tmp", ".old"):
            continue
        doc = read_marker(p)
        pid = doc.get("pid")
        if type(pid) is not int or doc.get("host") != host or _alive(pid):
            continue
        if p.suffix == ".old" and (p / PREVIOUS).is_dir() and not (dest.exists() or dest.is_symlink()):
            os.replace(p / PREVIOUS, dest)
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

        def construct_mapping(self, node, deep=False):
            # PyYAML keeps the last of two equal keys: "num_samples: 16 ... num_samples: 4" ran 4, silently
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if (key_node.tag, key_node.value) in seen:
                        raise ConfigError(f"{key_node.value!r} is given twice in a {what} (line "
                                          f"{key_node.start_mark.line + 1})"[:200], path)
                    seen.add((key_node.tag, key_node.value))
            return super().construct_mapping(node, deep)

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


def write_serialised(dest: str | os.PathLike, serialise: Callable[[io.BytesIO], None]) -> None:
    """Write what ``serialise(buffer)`` puts in memory to ``dest`` (in a directory being built).
    torch's own writers (torch.save, torch.export.save) report a full disk or a file-size limit as a
    RuntimeError and a C++ stack; Python's write raises the OSError (ENOSPC, EFBIG), naming ``dest``."""
    buffer = io.BytesIO()
    serialise(buffer)
    try:
        Path(dest).write_bytes(buffer.getbuffer())
    except OSError as e:  # a failed write names no file
        raise OSError(e.errno, e.strerror, str(dest)) from None


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
