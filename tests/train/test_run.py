"""`raytower train` end to end: the table, metrics.json, TensorBoard files, reproducibility."""

import json
import subprocess
import sys

import pytest

from raytower.cli import main

TRAIN_ARGS = ["--epochs", "3", "--seed", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def small_cfg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "cfg.yaml"
    path.write_text("dim: 32\nitem_layers: 2\nmax_len: 30\nbatch_size: 64\nstage1_max_epochs: 1\nfusion: moe\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_cfg_file):
    from tests.conftest import SMALL_SYNTHETIC

    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", SMALL_SYNTHETIC, "--config", str(small_cfg_file), "--out", str(out), *TRAIN_ARGS]) == 0
    return out


def test_metrics_json_has_best_epoch_val_and_test(trained):
    m = json.loads((trained / "metrics.json").read_text())
    assert len(m["history"]) == 3
    best = max(m["history"], key=lambda r: r["val/recall@100"])
    assert m["best_epoch"] == best["epoch"]
    assert m["val"]["recall@100"] == best["val/recall@100"]
    assert 0 <= m["test"]["recall@100"] <= 1 and "cold/recall@100" in m["test"]
    assert m["config"]["fusion"] == "moe"
    last = m["history"][-1]  # each expert's weight, for all users and apart for cold and warm ones
    experts = sorted(k for k in last if k.startswith("expert_") and k.count("_") == 1)
    assert len(experts) == m["config"]["n_experts"] and sum(last[k] for k in experts) == pytest.approx(1.0, abs=1e-4)
    for k in experts:
        assert min(last[f"{k}_cold"], last[f"{k}_warm"]) <= last[k] + 1e-6 <= max(last[f"{k}_cold"], last[f"{k}_warm"]) + 2e-6
    assert m["stage_switch"]["epoch"] == 1
    assert (trained / "checkpoints" / "best.pt").is_file()


def test_tensorboard_scalars_read_back_with_tensorboards_reader(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"curriculum/tau", "curriculum/lambda", "curriculum/stage", "loss/train", "loss/random_guess",
            "val/recall_at_100", "collapse/effective_rank", "fusion/expert_0", "fusion/expert_0_cold",
            "fusion/expert_0_warm"} <= tags
    taus = [e.value for e in acc.Scalars("curriculum/tau")]
    assert [e.step for e in acc.Scalars("curriculum/tau")] == [1, 2, 3]
    assert taus[0] > taus[1] > taus[2]  # annealing shows up
    # HPARAMS: the run's whole config as a session; its best validation Recall@100 so far per epoch
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    metrics = json.loads((trained / "metrics.json").read_text())
    assert start.hparams["fusion"].string_value == "moe" and start.hparams["dim"].number_value == 32
    best = [e.value for e in acc.Scalars("hparams/best_val_recall_at_100")]
    assert best == sorted(best) and best[-1] == pytest.approx(metrics["val"]["recall@100"])


def test_same_seed_and_threads_reproduce_the_run(trained, tmp_path, small_cfg_file):
    from tests.conftest import SMALL_SYNTHETIC

    assert main(["train", "--data", SMALL_SYNTHETIC, "--config", str(small_cfg_file), "--out", str(tmp_path), *TRAIN_ARGS]) == 0
    a = json.loads((trained / "metrics.json").read_text())
    b = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    assert a["test"] == b["test"]


def test_bad_config_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"fusion": "transformer"}')
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "fusion" in err


def test_core_imports_no_ray():
    code = ("import sys, raytower.data, raytower.model, raytower.train, raytower.train.run; "
            "print(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_earlier_run_is_replaced_only_with_force(small_cfg_file, tmp_path, capsys):
    from raytower._io import MARKER
    from tests.conftest import SMALL_SYNTHETIC

    out = tmp_path / "run"
    argv = ["train", "--data", SMALL_SYNTHETIC, "--config", str(small_cfg_file), "--out", str(out),
            "--epochs", "1", "--threads", "1"]
    assert main([*argv, "--seed", "1"]) == 0
    first = (out / "metrics.json").read_bytes()
    assert main([*argv, "--seed", "2"]) == 2  # a second run would mix two runs' files and curves
    assert "pass --force" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == first
    listed = json.loads((out / MARKER).read_text())["files"]  # every file the run wrote, with its size
    assert {"run.json", "metrics.json", "checkpoints/best.pt", "checkpoints/last.pt"} <= listed.keys()
    assert listed == {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()
                      and p.name != MARKER}
    (out / "notes.txt").write_text("my own work")  # what the user keeps in a run: --force keeps it too
    (out / "analysis").mkdir()
    before = _snapshot(tmp_path)
    assert main([*argv, "--seed", "2", "--force"]) == 2
    assert "files raytower did not write (analysis/, notes.txt)" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before
    (out / "notes.txt").unlink()
    (out / "analysis").rmdir()
    assert main([*argv, "--seed", "2", "--force"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == 2
    assert len(list((out / "tensorboard").iterdir())) == 1  # one run's curves, not two
    assert json.loads((out / MARKER).read_text())["kind"] == "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # built beside, swapped in, nothing left


def _snapshot(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in root.rglob("*")}


def test_a_failed_force_run_leaves_the_earlier_run_as_it_was(small_cfg_file, tmp_path, capsys, monkeypatch):
    import errno
    from pathlib import Path

    import raytower.train.run as run_module
    from tests.conftest import SMALL_SYNTHETIC

    out = tmp_path / "run"
    argv = ["train", "--data", SMALL_SYNTHETIC, "--config", str(small_cfg_file), "--out", str(out),
            "--epochs", "1", "--threads", "1"]
    assert main([*argv, "--seed", "1"]) == 0
    before = _snapshot(tmp_path)
    real = run_module.write_json

    def full_disk(dest, obj):  # the new run's last write: the disk is full by then
        if Path(dest).name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(dest))
        return real(dest, obj)

    monkeypatch.setattr(run_module, "write_json", full_disk)
    capsys.readouterr()
    assert main([*argv, "--seed", "2", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert _snapshot(tmp_path) == before  # the old run whole; the new one's files gone with it


@pytest.mark.slow  # a real training process under a file-size limit: second tier
def test_a_checkpoint_past_a_file_size_limit_is_one_line(small_cfg_file, tmp_path):
    # torch's own writer reported a full disk or RLIMIT_FSIZE as a RuntimeError ("unexpected pos"): a traceback
    import resource

    from tests.conftest import SMALL_SYNTHETIC

    def limit():  # a checkpoint of this model is about 650 kB; the data and pretraining files are smaller
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "raytower.cli", "train", "--data", SMALL_SYNTHETIC, "--config",
                           str(small_cfg_file), "--out", str(out), "--epochs", "1", "--threads", "1"],
                          preexec_fn=limit, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"raytower: error: {out / 'checkpoints' / 'best.pt'}: File too "
                                                     "large (nothing half-written is left behind)")
    assert not list((out / "checkpoints").iterdir())  # no partial checkpoint


def test_two_processes_on_one_out_the_second_is_refused_naming_the_first(small_cfg_file, tmp_path):
    import os
    import signal
    import time
    from pathlib import Path

    from raytower._lock import hold_destination, lock_path
    from tests.conftest import SMALL_SYNTHETIC

    raytower = str(Path(sys.executable).with_name("raytower"))
    out = tmp_path / "run"
    argv = [raytower, "train", "--data", SMALL_SYNTHETIC, "--config", str(small_cfg_file), "--out", str(out),
            "--threads", "1"]
    first = subprocess.Popen([*argv, "--epochs", "500"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and first.poll() is None:
            try:
                if json.loads(lock_path(out).read_text())["pid"] == first.pid:
                    break  # it holds --out
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the first training never took --out")
        second = subprocess.run([*argv, "--epochs", "1"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert f"in use by another raytower process (PID {first.pid} on " in second.stderr
        first.send_signal(signal.SIGKILL)  # no clean-up: only the kernel lets go of the lock
        first.wait()
        with hold_destination(out):  # free at once
            assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    finally:
        first.kill()
        first.wait()


def test_a_run_that_diverges_at_once_is_one_line_and_never_switches_stage(tmp_path, capsys):
    from tests.conftest import SMALL_SYNTHETIC

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("dim: 32\nitem_layers: 2\nmax_len: 30\nbatch_size: 64\nstage1_max_epochs: 1\nlr: 1.0e+30\n")
    rc = main(["train", "--data", SMALL_SYNTHETIC, "--config", str(cfg), "--out", str(tmp_path / "run"),
               "--epochs", "3", "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "diverged" in err, err
    assert "stage 2" not in out  # a NaN epoch is no reason to unfreeze anything
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_data_prepare_out_reuses_its_bundle_and_replaces_another_only_with_force(tmp_path, capsys):
    from tests.conftest import SMALL_SYNTHETIC

    out = tmp_path / "bundle"
    argv = ["data", "prepare", "--data", SMALL_SYNTHETIC, "--out", str(out)]
    assert main(argv) == 0
    assert main(argv) == 0 and "(cached)" in capsys.readouterr().out  # the same bundle: nothing rewritten
    assert main([*argv, "--data-seed", "1"]) == 2 and "pass --force" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["options"]["seed"] == 0
    assert main([*argv, "--data-seed", "1", "--force"]) == 0
    assert json.loads((out / "manifest.json").read_text())["options"]["seed"] == 1


def test_train_says_what_the_pretraining_will_take_before_it_starts(small_bundle, small_config, tmp_path, capsys,
                                                                   monkeypatch):
    # issue 28 part 2: an estimate from a timed probe first, then progress; a second run finds it cached.
    # train() as `raytower train` calls it, with a pretraining of one pass each: the default budget
    # (1,100 steps) cost this test 5 CPU-s and checks no more.
    from raytower.model.pretrain import PretrainConfig
    from raytower.train.run import train

    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "cache"))  # nothing made yet
    cfg = small_config.replace(epochs=1)
    pcfg = PretrainConfig.for_train(cfg, gnn_epochs=1, tower_epochs=1)
    train(cfg, small_bundle, tmp_path / "a", threads=1, pretrain_cfg=pcfg)
    lines = capsys.readouterr().out.splitlines()
    said = next(i for i, line in enumerate(lines) if line.startswith("pretraining (cached by data fingerprint"))
    assert "about" in lines[said] and "LightGCN" in lines[said] and "item tower steps" in lines[said]
    done = next(i for i, line in enumerate(lines) if line.startswith("  lightgcn") and "bpr loss" in line)
    assert said < done
    train(cfg, small_bundle, tmp_path / "b", threads=1, pretrain_cfg=pcfg)
    assert any(line.startswith("pretraining (") and line.endswith("cached") for line in capsys.readouterr().out.splitlines())


def test_a_run_recorded_before_the_pretraining_cap_reads_as_uncapped(tmp_path):
    # run.json of a run started before gnn_max_samples existed: --resume finds its artifacts' config
    import dataclasses

    from raytower.model.pretrain import PretrainConfig
    from raytower.train.run import _pretrain_config

    before = dataclasses.asdict(PretrainConfig(gnn_max_samples=0, tower_max_steps=3000))
    del before["gnn_max_samples"]
    assert _pretrain_config(before, tmp_path) == PretrainConfig(gnn_max_samples=0, tower_max_steps=3000)
