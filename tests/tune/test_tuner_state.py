"""Tune's state in --out/tune is signed each time Ray saves it (raytower.tune._tuner_state), so
--resume refuses a state file that would run code, and a search killed while a file was being
replaced still resumes. One tiny real search (Ray on 127.0.0.1), tampered with, then resumed."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from raytower import _signing
from raytower.cli import main
from tests._crafted_pt2 import Exploit
from tests.conftest import REPO, SMALL_SYNTHETIC

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # a search and its resume: second tier


def _args(out: Path) -> list[str]:
    return ["tune", "--data", SMALL_SYNTHETIC, "--space", str(REPO / "search_spaces" / "quick.yaml"),
            "--num-samples", "2", "--max-epochs", "2", "--scheduler", "none", "--executor", "function",
            "--seed", "5", "--out", str(out)]


def _state_files(tune_dir: Path) -> list[Path]:
    return sorted(p for p in tune_dir.iterdir() if p.suffix in (".json", ".pkl"))


def _one(tune_dir: Path, prefix: str) -> Path:
    (path,) = [p for p in _state_files(tune_dir) if p.name.startswith(prefix)]
    return path


def _with_embedded_exploit(state: bytes, marker: Path) -> bytes:
    """The experiment state with a cloudpickled object that creates ``marker``, as Ray's encoder
    embeds what JSON cannot hold: Ray's decoder (``_loads_with_cloudpickle``) unpickles it on restore."""
    doc = json.loads(state)
    doc["stats"]["note"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(Exploit(marker)).hex()}
    return json.dumps(doc).encode()


def test_every_state_file_is_signed_tampering_is_refused_and_a_killed_replace_resumes(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(_args(out)) == 0
    tune_dir = out / "tune"
    kinds = {re.sub(r"-[0-9_-]+\.(json|pkl)$", "", p.name) for p in _state_files(tune_dir)}  # no session stamp
    assert {"experiment_state", "searcher-state", "search_gen_state", "tuner.pkl"} <= kinds, kinds
    for path in _state_files(tune_dir):  # each signed once, in one line, as Ray last saved it
        _signing.verify_file(path)
        assert len(_signing.recorded_lines(_signing.signature_path(path).read_text())) == 1
    capsys.readouterr()

    marker = tmp_path / "pwned"
    searcher, experiment = _one(tune_dir, "searcher-state-"), _one(tune_dir, "experiment_state-")
    for path, tampered in ((searcher, pickle.dumps(Exploit(marker))),
                           (experiment, _with_embedded_exploit(experiment.read_bytes(), marker))):
        genuine = path.read_bytes()
        path.write_bytes(tampered)
        assert main([*_args(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path.name}: refused: it does not match its signature" in err, err
        assert not marker.exists()
        path.write_bytes(genuine)

    # A kill while a file was replaced: the new file in place, the old content's signature still in
    # the record beside the new one (searcher), or the old file still in place with both (experiment).
    older = _signing.signature(b"what Ray saved before", searcher.name)
    _signing.signature_path(searcher).write_text(f"{older}\n{_signing.signature(searcher.read_bytes(), searcher.name)}\n")
    newer = _signing.signature(b"what Ray was saving", experiment.name)
    _signing.signature_path(experiment).write_text(
        f"{_signing.signature(experiment.read_bytes(), experiment.name)}\n{newer}\n")
    assert main([*_args(out), "--resume"]) == 0, capsys.readouterr().err
    for path in _state_files(tune_dir):  # saved again by the resumed session: one signature each
        _signing.verify_file(path)
        assert len(_signing.recorded_lines(_signing.signature_path(path).read_text())) == 1
    assert not marker.exists()
