"""Download and unpack the MovieLens releases, safely.

    path = download("ml-100k", "data/")          # -> data/ml-100k (u.data, u.item, ...)
    path = cached_dataset("ml-1m")               # -> <cache>/datasets/ml-1m, downloaded once

What "safely" means here:

* the zip is streamed to a temporary file beside the destination (never held in memory), with its
  MD5 computed on the way;
* the MD5 is checked against GroupLens' published value for the frozen releases; the
  ``ml-latest*`` zips are re-released in place from time to time, so they get no pinned checksum
  and rely on the zip's own CRCs (``ZipFile.testzip``), which every download is checked with;
* entries with absolute paths or ``..`` components are refused (zip slip) before anything is
  written;
* the archive is unpacked into a temporary directory and renamed into place only when complete
  (``atomic_dir``): an interrupted or failed download leaves nothing behind;
* every failure is one ``DataError`` line naming the URL or file and the problem.

``base_url`` (or the environment variable ``RAYTOWER_MOVIELENS_URL``) replaces the GroupLens
server, for mirrors and for tests with a local server.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from raytower._io import cache_root, check_destination, output_dir
from raytower._lock import hold_cache_entry
from raytower.errors import DataError

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
BASE_URL_ENV = "RAYTOWER_MOVIELENS_URL"
PUBLISHED = "published checksum"
ZIP_ONLY = "zip integrity only"
_TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Dataset:
    """One downloadable release: its zip, the folder the zip unpacks to and how it is checked."""

    name: str
    zip_name: str
    folder: str  # the zip's top-level folder
    md5: str | None  # GroupLens' published MD5 of the zip (the <zip>.md5 file beside it)
    check: str  # PUBLISHED or ZIP_ONLY, for messages and docs


# The MD5s are the values GroupLens publishes beside each zip (<name>.zip.md5); the frozen
# releases have not changed since publication. ml-latest and ml-latest-small are rebuilt in place
# with each re-release, so pinning a checksum would break them at the next refresh.
DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("ml-100k", "ml-100k.zip", "ml-100k", "0e33842e24a9c977be4e0107933c0723", PUBLISHED),
        Dataset("ml-1m", "ml-1m.zip", "ml-1m", "c4d9eecfca2ab87c1945afe126590906", PUBLISHED),
        Dataset("ml-10m", "ml-10m.zip", "ml-10M100K", "ce571fd55effeba0271552578f2648bd", PUBLISHED),
        Dataset("ml-20m", "ml-20m.zip", "ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", PUBLISHED),
        Dataset("ml-25m", "ml-25m.zip", "ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", PUBLISHED),
        Dataset("ml-32m", "ml-32m.zip", "ml-32m", "d472be332d4daa821edc399621853b57", PUBLISHED),
        Dataset("ml-latest-small", "ml-latest-small.zip", "ml-latest-small", None, ZIP_ONLY),
        Dataset("ml-latest", "ml-latest.zip", "ml-latest", None, ZIP_ONLY),
    )
}


def dataset_url(name: str, base_url: str | None = None) -> str:
    """The URL ``download`` fetches for ``name`` (honours ``base_url`` and RAYTOWER_MOVIELENS_URL)."""
    info = _info(name)
    base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return f"{base.rstrip('/')}/{info.zip_name}"


def download(
    name: str,
    dest_dir: str | os.PathLike,
    *,
    base_url: str | None = None,
    progress: bool = True,
    md5: str | None = None,
    force: bool = False,
) -> Path:
    """Download release ``name`` and unpack it to ``dest_dir/name``; return that directory.

    The zip's top-level folder is stripped, so ``ml-10m`` (whose zip holds ``ml-10M100K/``) also
    lands in ``dest_dir/ml-10m``. An existing ``dest_dir/name`` is refused unless it is an earlier
    raytower download and ``force`` is set; it is replaced only once the new copy is complete. ``md5`` overrides the registry's expected checksum (for mirrors and tests).
    Raises DataError (one line, naming the URL or file) on any failure, leaving nothing behind.
    """
    info = _info(name)
    url = dataset_url(name, base_url)
    expected = (md5 or info.md5 or "").lower() or None
    check = PUBLISHED if md5 is None else "given checksum"
    dest_dir = Path(dest_dir)
    target = dest_dir / name
    check_destination(target, "dataset", force, "--out")  # before a byte is fetched
    created = not dest_dir.exists()
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=f".{info.zip_name}.", suffix=".part", dir=dest_dir)
    os.close(fd)
    part = Path(part)
    try:
        got = _fetch(url, part, desc=name, progress=progress)
        if expected and got != expected:
            raise DataError(f"checksum mismatch: md5 {got}, expected {expected} ({check}); "
                            "the download is corrupt or the file changed upstream", url)
        _unpack(part, target, url, force)
        return target
    finally:
        part.unlink(missing_ok=True)
        # Nothing left behind: a destination folder this call created goes again if it failed.
        if created and not target.exists() and dest_dir.is_dir() and not any(dest_dir.iterdir()):
            dest_dir.rmdir()


def cached_dataset(name: str, *, progress: bool = True) -> Path:
    """``cache_root()/datasets/name``, downloading it first if it is not there yet."""
    _info(name)
    path = cache_root() / "datasets" / name
    if path.is_dir():  # atomic_dir: if it exists, it is complete
        return path
    with hold_cache_entry(path):  # two searches may ask at once: the second waits and uses the first's download
        if path.is_dir():
            return path
        return download(name, path.parent, progress=progress)


# --------------------------------------------------------------------------- helpers


def _info(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def _fetch(url: str, dest: Path, *, desc: str, progress: bool) -> str:
    """Stream ``url`` into ``dest``; return the MD5 of what was received."""
    from tqdm import tqdm

    h = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "raytower"})
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp, open(dest, "wb") as out:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, desc=f"downloading {desc}", unit="B", unit_scale=True,
                      unit_divisor=1024, disable=None if progress else True, leave=False) as bar:  # None: a terminal only
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DataError(f"HTTP error {e.code} {e.reason}", url) from None
    except urllib.error.URLError as e:
        raise DataError(f"network error: {e.reason}", url) from None
    except http.client.IncompleteRead as e:
        got = received + len(e.partial)
        raise DataError(f"truncated download: connection closed after {got:,} bytes", url) from None
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, a full disk
        raise DataError(f"download failed: {type(e).__name__}: {e}", url) from None
    if total is not None and received < total:
        raise DataError(f"truncated download: got {received:,} of {total:,} bytes", url)
    return h.hexdigest()


def _unpack(zip_path: Path, target: Path, url: str, force: bool) -> None:
    """Check ``zip_path`` whole, then unpack it into ``target`` atomically."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = _safe_members(zf, url)
            bad = zf.testzip()  # every entry's CRC: catches corruption a good length can hide
            if bad is not None:
                raise DataError(f"corrupt zip: entry {bad!r} fails its CRC check", url)
            with output_dir(target, "dataset", force, "--out") as tmp:
                for info, rel in members:
                    out = tmp.joinpath(*rel.parts)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DataError(f"corrupt or truncated zip: {e}", url) from None
    except OSError as e:  # a full disk, permissions: the destination's problem, not the zip's
        raise DataError(f"could not unpack {url}: {e.strerror or e}", target) from None


def _safe_members(zf: zipfile.ZipFile, url: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The file entries with their paths relative to the zip's single top-level folder.

    Refuses absolute paths, drive letters and ``..`` anywhere (zip slip), before extracting.
    """
    entries = []
    for info in zf.infolist():
        raw = info.filename.replace("\\", "/")
        p = PurePosixPath(raw)
        if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":") or ".." in p.parts:
            raise DataError(f"unsafe path in zip (refused): {info.filename!r}", url)
        if not info.is_dir() and p.parts and p.parts[0] != "__MACOSX":  # Finder's metadata
            entries.append((info, p))
    if not entries:
        raise DataError("the zip is empty", url)
    # Strip the common top-level folder (ml-100k/, ml-10M100K/) if there is one.
    tops = {p.parts[0] for _, p in entries}
    if len(tops) == 1 and all(len(p.parts) > 1 for _, p in entries):
        entries = [(i, PurePosixPath(*p.parts[1:])) for i, p in entries]
    return entries
