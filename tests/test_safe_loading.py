"""Files a user may hand back are loaded as data, never as code: a tampered file is an error."""

import os
import pickle

import pytest
import torch

from raytower.errors import RaytowerError

MARKER = "raytower-pwned"


class _Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _tampered(path, marker):
    torch.save({"user_tower": _Exploit(marker)}, path)  # a torch checkpoint carrying a pickle payload


def test_tampered_trial_checkpoint_is_refused_without_running_it(tmp_path):
    from ray.tune import Checkpoint

    from raytower.trainables.curriculum import load_state

    marker = tmp_path / MARKER
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _tampered(ckpt / "state.pt", marker)
    with pytest.raises(RaytowerError, match="unreadable checkpoint"):
        load_state(Checkpoint.from_directory(str(ckpt)))
    assert not marker.exists()


def test_tampered_pretraining_artifacts_are_refused(tmp_path, small_artifacts):
    import shutil

    from raytower.model.pretrain import Artifacts

    marker = tmp_path / MARKER
    copy = tmp_path / "art"
    shutil.copytree(small_artifacts.path, copy)
    _tampered(copy / "item_tower.pt", marker)
    with pytest.raises(RaytowerError, match="unreadable pretraining artifacts"):
        Artifacts.load(copy)
    assert not marker.exists()


def test_yaml_with_python_tags_is_refused(tmp_path):
    from raytower.train.config import TrainConfig
    from raytower.tune.space import load_space

    marker = tmp_path / MARKER
    payload = f'!!python/object/apply:os.system ["touch {marker}"]\n'
    for path, load in ((tmp_path / "c.yaml", TrainConfig.load), (tmp_path / "s.yaml", load_space)):
        path.write_text(payload)
        with pytest.raises(RaytowerError, match="not valid YAML"):
            load(path)
    assert not marker.exists()


def test_pickled_best_config_is_not_json(tmp_path):
    from raytower.train.config import TrainConfig

    path = tmp_path / "best_config.json"
    path.write_bytes(pickle.dumps(_Exploit(tmp_path / MARKER)))
    with pytest.raises(RaytowerError, match="not a text file"):
        TrainConfig.load(path)
    assert not (tmp_path / MARKER).exists()
