"""examples/serve.py: an export served by torch, numpy and pyarrow alone, in a process where raytower
cannot be imported, for a known user (as `raytower recommend` ranks) and for a brand-new one."""

import json
import subprocess
import sys

import pytest

from raytower.cli import main
from tests.conftest import REPO, SMALL_SYNTHETIC

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
    out = subprocess.run([sys.executable, "-c", RUN_WITHOUT_RAYTOWER, str(REPO / "examples" / "serve.py"),
                          str(model_dir), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
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


def test_the_example_imports_torch_numpy_and_pyarrow_alone():
    import ast

    tree = ast.parse((REPO / "examples" / "serve.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names - set(sys.stdlib_module_names) == {"torch", "numpy", "pyarrow"}
