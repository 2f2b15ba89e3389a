"""Tune's state in ``tune/``, signed: ``--resume`` hands it to Ray, which unpickles it.

What Ray 2.60 reads from ``tune/`` on restore, and may unpickle: ``tuner.pkl`` (``Tuner.restore``),
the newest ``experiment_state-*.json`` (trials and the controller, with cloudpickled fields), and,
from every top-level ``*.json`` and ``*.pkl`` that restore copies to its staging folder
(``_ExperimentCheckpointManager.sync_down_experiment_state``), the newest ``searcher-state-*.pkl``,
``search_gen_state-*.json`` (a pickle, despite its name) and ``callback-states-*.pkl``. So every
top-level ``*.json`` and ``*.pkl`` there must carry this user's signature (raytower._signing), and
``--resume`` checks them all before Ray reads any. What the trial folders hold, restore does not
unpickle: trials checkpoint plain files that raytower reads with ``weights_only``, Ray Train's
snapshot is JSON, and an ``error.pkl`` is read only in the session that wrote it (restore clears
the record of it from the trials it resumes).

- ``tuner.pkl``: Ray writes it once, in ``Tuner(...)`` of a fresh search, and reads it only in
  ``Tuner.restore``; raytower signs it when either returns and whenever ``fit`` gives control back.
- The experiment state: Ray saves it to a staging folder and copies that folder here in a
  background thread, as the run goes. While ``fit`` runs, raytower takes each saved file out of the
  staging folder and writes it here itself (``signed_state_writes``), each by ``replace_signed``:
  the record first allows the old and the new content, the file is replaced by rename, then the
  record keeps the new alone. A ``kill -9`` at any moment leaves every file matching its record, and
  never a file half copied.
"""

from __future__ import annotations

import os
from pathlib import Path

from raytower._signing import (SUFFIX, check_signature, replace_signed, sign_file, signature, verify_file,
                               write_signed)
from raytower.errors import ConfigError
from raytower.names import EXPERIMENT

TUNER_STATE = f"{EXPERIMENT}/tuner.pkl"
LABEL = "tuner.pkl"
STATE_SUFFIXES = (".json", ".pkl")  # what Ray's restore copies out of tune/ and reads
RESUME_HINT = "--resume cannot continue this search; start a new one with another --out"


def _local(uri: str) -> Path | None:
    return None if "://" in uri else Path(uri)


def sign_tuner_state(uri: str) -> None:
    """Sign ``tune/tuner.pkl`` under the experiment ``uri``, if Tune has written it."""
    local = _local(uri)
    if local is not None:
        if (local / TUNER_STATE).is_file():
            sign_file(local / TUNER_STATE)
        return
    from raytower._storage import ExperimentStore

    store = ExperimentStore(uri)
    data = store.read_bytes(TUNER_STATE)
    if data is not None:
        store.write_bytes(TUNER_STATE + SUFFIX, (signature(data, LABEL) + "\n").encode())


def is_state(name: str) -> bool:
    return name.endswith(STATE_SUFFIXES)


def verify_tune_state(uri: str) -> None:
    """ConfigError, naming the file, unless every state file in ``tune/`` (tuner.pkl, the experiment,
    searcher and callback states) carries this user's signature. Reads nothing else; unpickles nothing."""
    local = _local(uri)
    if local is not None:
        for path in _local_state_files(local / EXPERIMENT):
            verify_file(path, hint=RESUME_HINT)
        return
    from raytower._storage import ExperimentStore, join_uri

    store = ExperimentStore(uri)
    for rel, _ in sorted(store.files(EXPERIMENT)):
        if "/" not in rel[len(EXPERIMENT) + 1:] and is_state(rel):
            check_signature(store.read_bytes(rel) or b"", store.read_text(rel + SUFFIX), rel.rsplit("/", 1)[-1],
                            join_uri(uri, rel), hint=RESUME_HINT)


def _local_state_files(tune_dir: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(tune_dir))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ConfigError(f"cannot list it ({e.strerror})", tune_dir) from None
    return [tune_dir / name for name in names if is_state(name)]  # a folder so named: refused as unreadable


def signed_state_writes():
    """While in the block (``tuner.fit()``), Tune's experiment state reaches ``tune/`` signed, each
    file written whole (``replace_signed``) by raytower instead of copied by Ray's sync."""
    from raytower.tune._adapter import after_experiment_saves

    return after_experiment_saves(_take_over_saved_state)


def _take_over_saved_state(staging_dir: str, filesystem, experiment_fs_path: str) -> None:
    """Move each state file Tune just saved to ``staging_dir`` into the experiment folder, signed."""
    staging = Path(staging_dir)
    if getattr(filesystem, "type_name", "") == "local" and staging.resolve() == Path(experiment_fs_path).resolve():
        return  # never: Ray stages under /tmp/ray; but then there would be nothing to move
    try:
        names = sorted(n for n in os.listdir(staging) if is_state(n) and (staging / n).is_file())
    except FileNotFoundError:
        return
    for name in names:
        data = (staging / name).read_bytes()
        _write_signed_to(filesystem, experiment_fs_path, name, data)
        (staging / name).unlink()  # so that Ray's copy of the staging folder cannot rewrite it


def _write_signed_to(filesystem, folder: str, name: str, data: bytes) -> None:
    if getattr(filesystem, "type_name", "") == "local":
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_signed(Path(folder) / name, data)
        return

    def read_text(rel: str) -> str | None:
        try:
            with filesystem.open_input_stream(f"{folder}/{rel}") as f:
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return None

    def write_whole_file(rel: str, blob: bytes) -> None:  # an object store's put appears whole
        with filesystem.open_output_stream(f"{folder}/{rel}") as f:
            f.write(blob)

    replace_signed(name, data, read_text, write_whole_file)
