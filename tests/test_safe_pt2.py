"""An exported model is read as data: a .pt2 that asks to unpickle objects or run code is refused
before torch sees it, and a genuine one loads as torch.export.load would load it."""

import subprocess
import sys

import pytest
import torch

from raytower.cli import main
from raytower.errors import ConfigError
from tests import _crafted_pt2 as craft

REFUSED_PICKLE = "refused: the file asks to unpickle objects"
REFUSED_CODE = "refused: the file asks to run code"
CRAFTS = [(name, c, REFUSED_PICKLE) for name, c in craft.PICKLE_CRAFTS.items()] + [
    (name, c, REFUSED_CODE) for name, c in craft.CODE_CRAFTS.items()]


@pytest.mark.parametrize("name,how,message", CRAFTS, ids=[c[0] for c in CRAFTS])
def test_recommend_refuses_a_crafted_model_without_running_it(tmp_path, capfd, name, how, message):
    marker = tmp_path / "pwned"
    model = craft.model_dir(tmp_path, craft.crafted(craft.tiny_tower_pt2(), how, marker))
    assert main(["recommend", str(model), "--user", "1"]) == 2
    err = capfd.readouterr().err  # the file descriptor: torch logs through handlers of its own
    assert not marker.exists()
    assert err.count("\n") == 1 and message in err and "user_tower.pt2" in err and "damaged" not in err, err


def test_the_python_api_refuses_it_too(tmp_path):
    from raytower.export import ServedModel

    marker = tmp_path / "pwned"
    model = craft.model_dir(tmp_path, craft.crafted(craft.tiny_tower_pt2(), craft.flagged_weight, marker))
    with pytest.raises(ConfigError, match=REFUSED_PICKLE):
        ServedModel(model)
    assert not marker.exists()


def _outputs(module, args):
    with torch.no_grad():
        return module(*args)


def test_a_genuine_tiny_tower_loads_with_the_same_outputs(tmp_path):
    from raytower._safe_pt2 import load_tower

    path = tmp_path / "user_tower.pt2"
    path.write_bytes(craft.tiny_tower_pt2())
    reference = torch.export.load(str(path)).module()  # a file this test wrote itself
    args = (torch.tensor([0, 9]), torch.tensor([[1, 1, 2], [3, 5, 8]]))  # another batch size than export's
    assert torch.equal(_outputs(load_tower(path), args), _outputs(reference, args))


def test_a_genuine_raytower_user_tower_loads_with_the_same_outputs(tmp_path, small_bundle, small_artifacts,
                                                                   small_config):
    from raytower._safe_pt2 import load_tower
    from raytower.export import ServingUserTower, export_user_tower
    from raytower.train.loop import Curriculum

    model = Curriculum.create(small_config, small_bundle, small_artifacts).model.eval()
    path = tmp_path / "user_tower.pt2"
    torch.export.save(export_user_tower(ServingUserTower(model.user_tower).eval(), small_config.max_len), str(path))
    users = torch.arange(1, 6)
    seq = torch.randint(0, small_bundle.n_items + 1, (5, small_config.max_len))
    meta = torch.zeros(5, 3, dtype=torch.long)
    expected = _outputs(ServingUserTower(model.user_tower).eval(), (users, seq, meta))
    got = _outputs(load_tower(path), (users, seq, meta))
    assert torch.allclose(got, expected, atol=1e-5)  # as test_export compares the served tower
    assert torch.equal(got, _outputs(torch.export.load(str(path)).module(), (users, seq, meta)))


def test_only_torch_export_entries_pass(tmp_path):
    """Shared libraries (AOTInductor) and files torch.export.save never writes are refused."""
    from raytower._safe_pt2 import checked_archive

    for entry in ("data/aotinductor/model/model.so", "extra/notes.txt"):
        path = tmp_path / "user_tower.pt2"
        path.write_bytes(craft.crafted(craft.tiny_tower_pt2(), lambda e, m, entry=entry: e.update({entry: b"x"}), None))
        with pytest.raises(ConfigError, match=f"{REFUSED_PICKLE} or load code: '{entry}'"):
            checked_archive(path)


def test_the_checked_copy_keeps_no_sample_inputs_and_no_node_metadata(tmp_path):
    import io
    import json
    import zipfile

    from raytower._safe_pt2 import checked_archive

    path = tmp_path / "user_tower.pt2"
    path.write_bytes(craft.tiny_tower_pt2())
    with zipfile.ZipFile(io.BytesIO(checked_archive(path))) as z:
        assert z.read("user_tower/data/sample_inputs/model.pt") == b""
        nodes = json.loads(z.read("user_tower/models/model.json"))["graph_module"]["graph"]["nodes"]
    assert nodes and all(n["metadata"] == {} for n in nodes)


def test_a_damaged_model_is_one_line_without_torchs_traceback(tmp_path):
    def cut_node(entries, _):
        craft._edit_json(entries, "models/model.json",
                         lambda d: d["graph_module"]["graph"]["nodes"][0].update(inputs=[]))

    model = craft.model_dir(tmp_path, craft.crafted(craft.tiny_tower_pt2(), cut_node, None))
    out = subprocess.run([sys.executable, "-m", "raytower.cli", "recommend", str(model), "--user", "1"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "a damaged exported model" in out.stderr and "Traceback" not in out.stderr


def test_torch_older_than_2_6_is_refused(tmp_path, monkeypatch):
    from raytower import _safe_pt2

    path = tmp_path / "user_tower.pt2"
    path.write_bytes(craft.tiny_tower_pt2())
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(ConfigError, match="needs torch 2.6 or later"):
        _safe_pt2.load_tower(path)
