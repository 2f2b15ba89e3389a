"""One raytower process at a time per destination: an OS file lock beside it.

    with hold_destination(out, "--out"):   # a second writer is refused in one line naming the holder
        ...
    with hold_cache_entry(entry):          # a second builder waits, then reuses what the first built
        ...

The lock is ``fcntl.flock`` on ``.NAME.raytower-lock`` in the destination's parent directory.
Beside it, not inside: it can be taken before the destination exists, and it stays where it is
when a directory built beside the destination is swapped in (a lock file inside the old directory
would leave with it, and a third process could lock the new one while the first still writes).
Only when the parent is not writable (an empty directory a user made where they cannot create
one, such as /scratch/$USER) is it ``DEST/.raytower-lock``; nothing can be swapped in there anyway.

The descriptor is close-on-exec, so the processes a search starts (Ray's, by fork and exec) never
hold it, and the kernel drops the lock when its holder dies, however it dies: a killed search leaves
no stale lock. The holder writes its PID and host into the file, for the refusal message, and
removes the file when it lets go; a waiter that locked the removed file notices and tries again.
Holds nest within a thread (``download`` inside ``cached_dataset``'s hold of the same entry).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

LOCK_SUFFIX = ".raytower-lock"
INSIDE_LOCK = ".raytower-lock"  # the name inside a destination whose parent is not writable
_held = threading.local()
_PEEK_GRACE_S = 0.5  # a peek (refuse_if_held) holds the lock for microseconds; a writer, for its whole run


def owner() -> dict:
    """Who this process is, as a lock file and a temporary directory's marker say it."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def lock_path(dest: str | os.PathLike) -> Path:
    """Where the lock of ``dest`` lives: beside it, or inside it when its parent is not writable."""
    dest = Path(dest)
    parent = Path(os.path.realpath(dest.parent))  # one lock however the parent is spelled
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK) and (parent / dest.name).is_dir():
        return parent / dest.name / INSIDE_LOCK
    return parent / f".{dest.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def hold_destination(dest: str | os.PathLike, flag: str = "--out") -> Iterator[None]:
    """Hold ``dest`` while this process writes it; another holder is refused (ConfigError) in one line."""
    with _hold(Path(dest), flag, wait=False, on_wait=None):
        yield


@contextlib.contextmanager
def hold_cache_entry(dest: str | os.PathLike, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the cache entry ``dest`` while this process makes it, waiting for any other maker first:
    look again once held, since the other one may have made it meanwhile."""
    with _hold(Path(dest), "cache entry", wait=True, on_wait=on_wait):
        yield


def refuse_if_held(dest: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse now, in one line, a destination another raytower process holds; create nothing (the
    checks before any work use this; the hold itself comes when the writing starts)."""
    path = lock_path(dest)
    if _counts().get(str(path)):
        return  # this thread holds it
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return  # no lock file: nobody holds it (or it cannot be read; the hold will say so)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise _refusal(flag, fd, dest) from None
    except OSError:
        pass  # a file system without locks: the hold will warn
    finally:
        os.close(fd)


def _counts() -> dict[str, int]:
    if not hasattr(_held, "counts"):
        _held.counts = {}
    return _held.counts


@contextlib.contextmanager
def _hold(dest: Path, flag: str, wait: bool, on_wait) -> Iterator[None]:
    path = lock_path(dest)
    key, counts = str(path), _counts()
    if counts.get(key):
        counts[key] += 1
        try:
            yield
        finally:
            counts[key] -= 1
        return
    created = _missing_dirs(path.parent)
    fd = _acquire(path, dest, flag, wait, on_wait)
    counts[key] = 1
    try:
        yield
    finally:
        del counts[key]
        _release(fd, path)
        for d in created:  # the directories only the lock needed go with it (rmdir: only if empty)
            with contextlib.suppress(OSError):
                d.rmdir()


def _acquire(path: Path, dest: Path, flag: str, wait: bool, on_wait) -> int:
    told = False
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # (a neighbour letting go may have removed it)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except FileNotFoundError:
            continue
        except OSError as e:
            from raytower.errors import ConfigError

            raise ConfigError(f"{flag}: cannot take the lock {path} ({e.strerror or e})", dest) from None
        try:
            if not _lock_soon(fd):
                if not wait:
                    raise _refusal(flag, fd, dest)
                if on_wait is not None and not told:
                    on_wait(f"waiting for {_holder(fd)}, which is making {dest}")
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(owner()).encode(), 0)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed this file as it let go: lock the one at ``path`` now


def _lock_soon(fd: int) -> bool:
    deadline = time.monotonic() + _PEEK_GRACE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            _warn_once("this file system keeps no file locks: nothing stops two raytower processes from "
                       "writing one destination at once")
            return True


_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"raytower: warning: {message}", file=sys.stderr)


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _release(fd: int, path: Path) -> None:
    try:
        if _same_file(fd, path):
            os.unlink(path)  # while still locked: whoever locks the removed file next sees it and retries
    except OSError:
        pass
    finally:
        os.close(fd)


def _refusal(flag: str, fd: int, dest):
    from raytower.errors import ConfigError

    return ConfigError(f"{flag}: in use by {_holder(fd)}; one raytower process writes a destination at a time: "
                       "wait for it to end, or choose another directory", dest)


def _holder(fd: int) -> str:
    """'another raytower process (PID 123 on host)', from what the holder wrote once it had the lock."""
    for _ in range(25):
        try:
            doc = json.loads(os.pread(fd, 4096, 0) or b"null")
            if isinstance(doc, dict) and isinstance(doc.get("pid"), int):
                return f"another raytower process (PID {doc['pid']} on {doc.get('host', '?')})"
        except (OSError, ValueError):
            pass
        time.sleep(0.02)  # just locked: the holder is writing its name
    return "another raytower process"


def _missing_dirs(d: Path) -> list[Path]:
    """``d`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    return missing
