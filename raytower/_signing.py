"""HMAC-SHA256 signatures for the files raytower must let Ray unpickle later (Ray Tune's state).

The key is the user's own, kept outside every output directory: ``$XDG_CONFIG_HOME/raytower/key``
(``~/.config/raytower/key``), 32 random bytes made on first use, mode 0600 in a 0700 folder. Whoever
can rewrite a signed file but cannot read that key cannot make a signature that matches: a hash
stored in the output directory would protect nothing, since whoever edits one file there can edit
the other. A signature record lies beside its file (``tuner.pkl.hmac``): one line, or two while
the file is being replaced (``replace_signed``), and the file must match one of them.

No Ray here: raytower.tune signs and checks Tune's files through this module.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

from raytower.errors import ConfigError

KEY_BYTES = 32
SUFFIX = ".hmac"
SCHEME = "hmac-sha256"


def key_path() -> Path:
    """``$XDG_CONFIG_HOME/raytower/key``; XDG says a relative XDG_CONFIG_HOME is ignored."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".config") / "raytower" / "key"


def user_key(create: bool = True) -> bytes:
    """The user's signing key, made (atomically, mode 0600) when missing and ``create``."""
    path = key_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if not create:
            raise ConfigError("no signing key: it was deleted or never made, so no signature can be checked",
                              path) from None
        _make_key(path)
        return user_key(create=False)
    except OSError as e:  # a symbolic link (ELOOP), no permission
        raise ConfigError(f"cannot read the signing key ({e.strerror})", path) from None
    with os.fdopen(fd, "rb") as f:
        _check_private(os.fstat(f.fileno()), path, "the signing key")
        _check_private(os.stat(path.parent), path.parent, "the signing key's folder")
        key = f.read()
    if len(key) < KEY_BYTES:
        raise ConfigError(f"the signing key is damaged (shorter than {KEY_BYTES} bytes)", path)
    return key


def _check_private(st: os.stat_result, path: Path, what: str) -> None:
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ConfigError(f"{what} belongs to another user: it cannot vouch for your files", path)
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        raise ConfigError(f"{what} is open to other users (mode {stat.S_IMODE(st.st_mode):o}): anyone who "
                          f"reads it can sign files as you; chmod 600 {path}", path)
    if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022:
        raise ConfigError(f"{what} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}): they could "
                          f"put their own key there; chmod 700 {path}", path)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ConfigError(f"{what} is not a regular file", path)


def _make_key(path: Path) -> None:
    """Write a new key where none is; a process that made one first wins, and both then use it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".key.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # appears whole, and never replaces a key another process made
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def signature(data: bytes, label: str, key: bytes | None = None) -> str:
    """The signature line of ``data``; ``label`` (the file's name) keeps one kind of file's
    signature from passing for another's."""
    mac = hmac.new(key if key is not None else user_key(), label.encode() + b"\0" + data, hashlib.sha256)
    return f"{SCHEME}:{mac.hexdigest()}"


def recorded_lines(recorded: str | None) -> list[str]:
    """The signatures a record allows (one, or the old and the new while its file is replaced)."""
    return [line.strip() for line in (recorded or "").splitlines() if line.strip()]


def check_signature(data: bytes, recorded: str | None, label: str, path: str | os.PathLike, hint: str = "") -> None:
    """ConfigError unless ``recorded`` (the signature file's text, None when missing) signs ``data``
    in one of its lines. ``hint`` ends the message: what the user can do instead."""
    hint = f"; {hint}" if hint else ""
    if recorded is None:
        raise ConfigError(f"refused: no signature beside it ({label}{SUFFIX}), so nothing shows raytower wrote "
                          f"it for you, and loading this pickle would run any code in it{hint}", path)
    wanted = signature(data, label, user_key(create=False)).encode()
    if not any([hmac.compare_digest(line.encode(), wanted) for line in recorded_lines(recorded)]):
        raise ConfigError(f"refused: it does not match its signature ({label}{SUFFIX}): it changed after raytower "
                          f"wrote it, or another key signed it, and loading this pickle would run any code in "
                          f"it{hint}", path)


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def sign_file(path: str | os.PathLike) -> None:
    """Write ``path``'s signature beside it, by rename: a reader sees the old one or the new."""
    path = Path(path)
    write_whole(signature_path(path), (signature(path.read_bytes(), path.name) + "\n").encode())


def write_whole(dest: Path, data: bytes) -> None:
    """``dest`` replaced by ``data`` by rename (mode 0600): a reader, or a kill, sees the old file or the new."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_signed(name: str, data: bytes, read_text, write_whole_file) -> None:
    """Replace the file ``name`` by ``data`` and its record by ``data``'s signature, so that a kill at
    any moment leaves a file its record allows: the record first allows the old content and the
    new, then the file is replaced, then the record keeps the new alone. ``read_text(name)`` is a
    file's text (None when missing); ``write_whole_file(name, bytes)`` makes a file appear whole."""
    new = signature(data, Path(name).name)
    both = dict.fromkeys([*recorded_lines(read_text(name + SUFFIX)), new])
    write_whole_file(name + SUFFIX, "".join(f"{line}\n" for line in both).encode())
    write_whole_file(name, data)
    write_whole_file(name + SUFFIX, f"{new}\n".encode())


def write_signed(path: str | os.PathLike, data: bytes) -> None:
    """``replace_signed`` on the local disk."""
    path = Path(path)

    def read_text(name: str) -> str | None:
        try:
            return (path.parent / name).read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    replace_signed(path.name, data, read_text, lambda name, blob: write_whole(path.parent / name, blob))


def verify_file(path: str | os.PathLike, hint: str = "") -> None:
    """ConfigError unless the signature beside ``path`` signs it, and it is a file, not a link: a
    link's target can be swapped between this check and the read that follows it."""
    path = Path(path)
    if path.is_symlink() or signature_path(path).is_symlink():
        hint_end = f"; {hint}" if hint else ""
        raise ConfigError(f"refused: a symbolic link (it or its signature), where raytower writes files; what it "
                          f"points to could change after this check{hint_end}", path)
    try:
        recorded = signature_path(path).read_text()
    except FileNotFoundError:
        recorded = None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read its signature ({getattr(e, 'strerror', None) or e})", path) from None
    try:
        data = path.read_bytes()
    except OSError as e:  # a directory in its place
        raise ConfigError(f"cannot read it ({e.strerror or e})", path) from None
    check_signature(data, recorded, path.name, path, hint)
