"""Where a search's Tune and Train state lives, read through ``pyarrow.fs``.

By default that is ``--out`` itself. On a cluster it is ``--storage-path`` (``s3://...``, ``gs://...``
or a filesystem every node mounts): Ray writes trial results and checkpoints there, so a trial
that loses its node resumes on any other. ``--out`` stays on the driver's disk and keeps what must
not live on object storage: the Optuna SQLite study (copied to the storage path when the search
ends), ``setup.json`` and the exported results.

Below the search and its trainable, both of which read it (``raytower.tune.record.store_of`` finds
a search directory's store); no Ray here.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from raytower.errors import ConfigError
from raytower.names import BEST_CONFIG, DRIVER_MEMORY, OPTUNA_DB, SEARCH_RECORD, STOPS, TRIALS

PUBLISHED = (BEST_CONFIG, TRIALS, OPTUNA_DB, STOPS, SEARCH_RECORD, DRIVER_MEMORY)


def join_uri(uri: str, part: str) -> str:
    """``uri``/``part``, before any ``?query`` (s3://b/p?endpoint_override=h -> s3://b/p/part?endpoint_override=h)."""
    base, sep, query = uri.partition("?")
    return f"{base.rstrip('/')}/{part}{sep}{query}"


def experiment_uri(out: Path, storage_path: str | None) -> str:
    """The root under which Ray writes ``tune/`` and ``train/`` for the search in ``out``."""
    if not storage_path:
        return str(Path(out).resolve())
    # one folder per search in a shared bucket; options such as ?endpoint_override= stay at the end
    base, sep, query = storage_path.partition("?")
    return base.rstrip("/") + "/" + out.name + sep + query


def open_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        raise ConfigError(f"--storage-path: cannot open it ({str(e).splitlines()[0]})", uri) from None


class ExperimentStore:
    """The files of one search's Tune and Train runs, wherever they are."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = open_uri(uri)

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _info(self, what):
        # Missing credentials, an unknown bucket or no network: one line naming the storage path,
        # not an Arrow traceback in the middle of a search.
        try:
            return self.fs.get_file_info(what)
        except OSError as e:
            raise ConfigError(f"--storage-path: cannot reach it ({str(e).splitlines()[0]})", self.uri) from None

    def is_dir(self, rel: str) -> bool:
        return self._info(self._path(rel)).type == pafs.FileType.Directory

    def is_file(self, rel: str) -> bool:
        return self._info(self._path(rel)).type == pafs.FileType.File

    def subdirs(self, rel: str) -> list[str]:
        if not self.is_dir(rel):
            return []
        infos = self._info(pafs.FileSelector(self._path(rel)))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def files(self, rel: str, recursive: bool = False) -> list[tuple[str, float]]:
        """(path relative to the store's root, modification time) of the files under ``rel``."""
        if not self.is_dir(rel):
            return []
        infos = self._info(pafs.FileSelector(self._path(rel), recursive=recursive))
        return [(i.path[len(self.root) + 1:], i.mtime.timestamp() if i.mtime else 0.0)
                for i in infos if i.type == pafs.FileType.File]

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self._path(rel)) as f:
                return f.read()
        except (FileNotFoundError, OSError):
            return None

    def read_text(self, rel: str) -> str | None:
        data = self.read_bytes(rel)
        return None if data is None else data.decode("utf-8", errors="replace")

    def publish(self, out: Path) -> list[str]:
        """Copy the driver-side results (the study included) next to the Tune state."""
        local = pafs.LocalFileSystem()
        self.fs.create_dir(self.root, recursive=True)  # a no-op on object stores
        copied = []
        for name in PUBLISHED:
            if (out / name).is_file():
                pafs.copy_files(str(out / name), self._path(name), source_filesystem=local,
                                destination_filesystem=self.fs)
                copied.append(name)
        return copied

    def copy_in(self, local: Path, rel: str) -> None:
        """Copy the local file or directory ``local`` (recursively) to ``rel`` in the store."""
        # copy_files makes the subdirectories of a directory, not the directory itself
        self.fs.create_dir(self._path(rel) if Path(local).is_dir() else self._path(rel).rsplit("/", 1)[0],
                           recursive=True)
        pafs.copy_files(str(local), self._path(rel), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def copy_out(self, rel: str, local: Path) -> None:
        """Copy ``rel`` (a file or a directory, recursively) from the store to the local ``local``."""
        pafs.copy_files(self._path(rel), str(local), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.fs.open_output_stream(self._path(rel)) as f:
            f.write(data)

    def fetch(self, names: tuple[str, ...], dest: Path) -> list[str]:
        """Copy ``names`` from the store into the local directory ``dest``; the names missing there."""
        from raytower._io import atomic_path

        dest.mkdir(parents=True, exist_ok=True)
        missing = []
        for name in names:
            data = self.read_bytes(name)
            if data is None:
                missing.append(name)
                continue
            with atomic_path(dest / name) as tmp:
                Path(tmp).write_bytes(data)
        return missing
