"""examples/serve.py: an export served by torch, numpy and pyarrow alone, in a process where raytower
cannot be imported, for a known user (as `raytower recommend` ranks) and for a brand-new one; where
raytower is importable, its tower goes through raytower's checked loader."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raytower.cli import main
from tests import _crafted_pt2 as craft
from tests.conftest import REPO, SMALL_SYNTHETIC

SERVE = str(REPO / "examples" / "serve.py")
UNCHECKED = "is loaded unchecked"

# raytower blocked, then the example run as a script; what it imported is checked after it ran
# (pandas may come in through pyarrow, which uses it when it is installed).
RUN_WITHOUT_RAYTOWER = """
import runpy, sys
sys.modules["raytower"] = None  # import raises ImportError; find_spec finds nothing
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("MODULES", sorted(m for m in ("ray", "optuna", "raytower") if sys.modules.get(m)))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    cfg = tmp / "cfg.json"
    cfg.write_text(json.dumps({"dim": 32, "item_layers": 2, "max_len": 30, "batch_size": 64, "epochs": 1}))
    assert main(["train", "--data", SMALL_SYNTHETIC, "--config", str(cfg), "--out", str(tmp / "run"),
                 "--threads", "1"]) == 0
    assert main(["export", str(tmp / "run"), "--out", str(tmp / "model")]) == 0
    return tmp / "model"


def serve(model_dir, *args) -> list[str]:
    out = subprocess.run([sys.executable, "-c", RUN_WITHOUT_RAYTOWER, SERVE, str(model_dir), *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count(UNCHECKED) == 1, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "MODULES []"  # neither raytower nor Ray nor Optuna
    return lines[:-1]


@pytest.mark.slow  # train, export, then serve in another process: second tier
def test_a_known_user_gets_what_recommend_gives(exported, capsys):
    from raytower.export import ServedModel

    user = str(ServedModel(exported).users.iloc[3]["user_id"])
    lines = serve(exported, "--user", user, "--k", "5")
    assert main(["recommend", str(exported), "--user", user, "-k", "5"]) == 0
    want = [line.split()[1] for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert [line.split()[1] for line in lines] == want


@pytest.mark.slow  # train, export, then serve in another process: second tier
def test_a_new_user_from_raw_features(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    enc = manifest["meta_encoders"]
    assert [enc[c]["from"] for c in manifest["meta_columns"]] == ["age", "gender", "occupation"]
    gender = (enc["gender_idx"]["values"] or ["?"])[0]
    lines = serve(exported, "--age", "30", "--gender", gender, "--history", "1,2,3", "--k", "4")
    assert len(lines) == 4 and [int(line.split()[0]) for line in lines] == [1, 2, 3, 4]
    assert not {line.split()[1] for line in lines} & {"1", "2", "3"}  # seen items are not recommended


def test_the_example_needs_torch_numpy_and_pyarrow_alone():
    import ast

    tree = ast.parse(Path(SERVE).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names - set(sys.stdlib_module_names) == {"torch", "numpy", "pyarrow", "raytower"}
    # raytower only in a try whose ImportError is caught: the example runs without it
    guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try)
               and any(getattr(h.type, "id", None) == "ImportError" for h in t.handlers)
               for stmt in t.body for n in ast.walk(stmt)}
    raytower = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("raytower")]
    assert raytower and all(id(n) in guarded for n in raytower)


LOAD_TOWER = """
import runpy, sys
from pathlib import Path
if sys.argv[1] == "without":
    sys.modules["raytower"] = None
serve = runpy.run_path(sys.argv[2])  # not as __main__: its functions only
serve["load_tower"](Path(sys.argv[3]))
print("LOADED")
"""


def _load_tower(tmp_path, raytower: str, tower: bytes):
    model = craft.model_dir(tmp_path, tower)
    return subprocess.run([sys.executable, "-c", LOAD_TOWER, raytower, SERVE, str(model / "user_tower.pt2")],
                          capture_output=True, text=True, timeout=300)


def test_with_raytower_a_crafted_tower_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    out = _load_tower(tmp_path, "with", craft.crafted(craft.tiny_tower_pt2(), craft.flagged_weight, marker))
    assert out.returncode == 1 and "LOADED" not in out.stdout
    assert out.stderr.count("\n") == 1 and "refused: the file asks to unpickle objects" in out.stderr, out.stderr
    assert out.stderr.startswith("serve.py: ") and "user_tower.pt2" in out.stderr and not marker.exists()


def test_with_raytower_a_genuine_tower_loads_checked_and_silently(tmp_path):
    out = _load_tower(tmp_path, "with", craft.tiny_tower_pt2())
    assert out.returncode == 0 and "LOADED" in out.stdout and UNCHECKED not in out.stderr, out.stderr


def test_without_raytower_it_says_once_that_the_file_is_loaded_unchecked(tmp_path):
    out = _load_tower(tmp_path, "without", craft.tiny_tower_pt2())
    assert out.returncode == 0 and "LOADED" in out.stdout, out.stderr
    assert out.stderr.count(UNCHECKED) == 1 and "serve only a model you exported yourself" in out.stderr, out.stderr
