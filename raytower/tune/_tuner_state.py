"""Tune's ``tune/tuner.pkl``, signed: ``--resume`` hands it to ``Tuner.restore``, which unpickles it.

Ray 2.60 writes ``tuner.pkl`` once, in ``TunerInternal.__init__`` of a fresh ``Tuner``
(``ray/tune/impl/tuner_internal.py``), and only reads it in ``Tuner.restore``; ``fit`` leaves it
alone. So raytower signs it when ``Tuner(...)`` returns, which a ``kill -9`` later cannot undo, and
again when ``Tuner.restore(...)`` returns and whenever ``fit`` gives control back, in case another
Ray release rewrites it there. ``--resume`` checks the signature before anything unpickles the file.
The signature (``tuner.pkl.hmac``, raytower._signing) lies beside the file, on the storage path too.
"""

from __future__ import annotations

from pathlib import Path

from raytower._signing import SUFFIX, check_signature, sign_file, signature, verify_file
from raytower.names import EXPERIMENT

TUNER_STATE = f"{EXPERIMENT}/tuner.pkl"
LABEL = "tuner.pkl"
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


def verify_tuner_state(uri: str) -> None:
    """ConfigError unless ``tune/tuner.pkl`` (when there is one) carries this user's signature."""
    local = _local(uri)
    if local is not None:
        if (local / TUNER_STATE).exists():
            verify_file(local / TUNER_STATE, hint=RESUME_HINT)
        return
    from raytower._storage import ExperimentStore, join_uri

    store = ExperimentStore(uri)
    data = store.read_bytes(TUNER_STATE)
    if data is not None:
        check_signature(data, store.read_text(TUNER_STATE + SUFFIX), LABEL, join_uri(uri, TUNER_STATE),
                        hint=RESUME_HINT)
