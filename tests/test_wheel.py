"""The wheel, as a user gets it: built from a clean tree, installed in a fresh venv, run from an
empty directory far from the repository (issue: `--space` used to exist only inside the checkout).

The fresh venv borrows this environment's dependencies (torch, Ray, ...) through a path entry, not
as a site directory, so the editable install of raytower here is invisible to it."""

import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the wheel is built from `git archive HEAD`")
    work = tmp_path_factory.mktemp("wheel")
    archive = work / "src.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), "HEAD"], check=True)
    src = work / "src"
    with tarfile.open(archive) as t:
        t.extractall(src, filter="data")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(work / "dist"), str(src)], check=True)
    (whl,) = (work / "dist").glob("raytower-*.whl")
    return whl


def test_the_wheel_carries_the_spaces_and_no_top_level_trainables(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "raytower/search_spaces/quick.yaml" in names and "raytower/search_spaces/default.yaml" in names
    assert "raytower/trainables/curriculum.py" in names
    assert not any(n.startswith("trainables/") for n in names)


def test_a_search_runs_from_an_empty_directory_with_the_installed_wheel(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    where = subprocess.run([str(py), "-c", "import raytower; print(raytower.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert str(REPO) not in where  # the wheel's copy, not the checkout's
    run = subprocess.run([str(env_dir / "bin" / "raytower"), "tune", "--data", "synthetic:n_users=300,n_items=120,seed=1",
                          "--space", "quick", "--num-samples", "1", "--max-epochs", "1", "--executor", "function",
                          "--out", "out"], cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert (empty / "out" / "best_config.json").is_file()
