"""Every user-facing command against malformed input: one line naming the file and the problem,
exit status 2, no traceback, nothing partly written. A new case is one line of BAD_INPUT.

(Data-file cases -- corrupt, truncated, empty, unknown layout -- are the same kind of table in
tests/test_cli_data.py.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from raytower.cli import main
from raytower.tune import SearchRecord, SearchSettings, TrialContext
from tests.conftest import REPO, SMALL_SYNTHETIC

QUICK = str(REPO / "search_spaces" / "quick.yaml")


def space(tmp, **knob):
    doc = yaml.safe_load(Path(QUICK).read_text())
    doc["search"].update(knob)
    doc.pop("start_from", None)
    p = tmp / "space.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(p)


# Nine nested aliases: 10**9 list elements once expanded.
BILLION_LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "dim: *i\n"


def start_from(tmp, knobs=None, **point):
    """The quick space (its knobs updated by ``knobs``) with one start point."""
    doc = yaml.safe_load(Path(QUICK).read_text())
    doc["search"].update(knobs or {})
    doc["start_from"] = [point]
    p = tmp / "space.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(p)


def text(tmp, name, content):
    p = tmp / name
    p.write_text(content)
    return str(p)


def tune(tmp, *extra, space_file=QUICK):
    return ["tune", "--data", SMALL_SYNTHETIC, "--space", space_file, "--out", str(tmp / "out"), *extra]


def local_search(tmp, mode=None):
    """What a search without --storage-path leaves in --out, as far as --resume reads it."""
    out = tmp / "out"
    (out / "tune").mkdir(parents=True)
    _record(out, storage_path=None)
    if mode is not None:
        (out / "tune").chmod(mode)
    return tmp


def tampered_tuner_state(tmp, how):
    """A local search whose tune/tuner.pkl raytower signed, then changed (``append``: one byte more;
    ``unsigned``: a pickle that would create a file, with no signature; ``directory``: a folder)."""
    import pickle

    from raytower._signing import sign_file
    from tests._crafted_pt2 import Exploit

    local_search(tmp)
    pkl = tmp / "out" / "tune" / "tuner.pkl"
    pkl.write_bytes(pickle.dumps({"as": "Ray wrote it"}))
    sign_file(pkl)
    if how == "append":
        pkl.write_bytes(pkl.read_bytes() + b"\0")
    elif how == "directory":  # a folder in its place, its signature left
        pkl.unlink()
        pkl.mkdir()
    else:
        pkl.write_bytes(pickle.dumps(Exploit(tmp / "pwned")))
        pkl.with_name("tuner.pkl.hmac").unlink()
    return tmp


def tampered_tune_state(tmp, name, how):
    """A local search whose Tune state raytower signed (tuner.pkl, experiment_state, searcher-state),
    then ``name`` in tune/ changed by ``how``: ``exploit`` (a pickle that would create a file, its
    signature left), ``embedded`` (the experiment state with one embedded, as Ray's encoder does),
    ``planted`` (a newer state file Ray would read, with no signature)."""
    import pickle

    from raytower._signing import write_signed
    from tests._crafted_pt2 import Exploit

    local_search(tmp)
    tune_dir = tmp / "out" / "tune"
    trial = pickle.dumps({"trial_id": "a"}).hex()
    write_signed(tune_dir / "tuner.pkl", pickle.dumps({"as": "Ray wrote it"}))
    write_signed(tune_dir / "experiment_state-2026-01-01_00-00-00.json", json.dumps({"trial_data": [[trial, "{}"]]}).encode())
    write_signed(tune_dir / "searcher-state-2026-01-01_00-00-00.pkl", pickle.dumps({"searcher": 1}))
    exploit = pickle.dumps(Exploit(tmp / "pwned"))
    if how == "embedded":  # as Ray's encoder embeds what JSON cannot hold, and its decoder unpickles
        embedded = {"_type": "CLOUDPICKLE_FALLBACK", "value": exploit.hex()}
        (tune_dir / name).write_text(json.dumps({"trial_data": [[trial, "{}"]], "stats": {"note": embedded}}))
    else:
        (tune_dir / name).write_bytes(exploit)
    return tmp


def users_dir(tmp, name="mine"):
    """A directory of the user's own: a refused command must leave every byte of it."""
    d = tmp / name
    d.mkdir(parents=True)
    (d / "notes.txt").write_text("my own work")
    return str(d)


def marked(tmp, name, kind):
    """An earlier raytower output of ``kind``."""
    from raytower._io import write_marker

    d = tmp / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text("{}")
    write_marker(d, kind)  # lists metrics.json as raytower's
    return str(d)


def marked_with_users_files(tmp, name, kind):
    """An earlier raytower output the user added notes and an analysis folder to: --force must keep them."""
    d = Path(marked(tmp, name, kind))
    (d / "notes.txt").write_text("my own work")
    (d / "analysis").mkdir()
    (d / "analysis" / "plot.py").write_text("print(1)")
    return str(d)


def hand_marked(tmp, name, kind):
    """A folder of the user's with a marker they wrote by hand: not raytower's to replace."""
    d = Path(users_dir(tmp, name))
    (d / ".raytower-output").write_text(json.dumps({"kind": kind}))
    return str(d)


def damaged_fetched(tmp):
    """What `submit --fetch-to` leaves, its checkpoint cut short."""
    d = tmp / "fetched"
    d.mkdir()
    (d / "best_config.json").write_text(json.dumps({"trial_id": "a", "selection": {"epoch": 1}}))
    _record(d, storage_path=None)
    (d / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    return str(d)


def damaged_run(tmp):
    d = tmp / "run"
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "best.pt").write_bytes(b"")
    (d / "metrics.json").write_text("{cut short")
    return str(d)


def other_data_search(tmp):
    """A search --resume would continue, run on other data than --data prepares."""
    out = tmp / "out"
    (out / "tune").mkdir(parents=True)
    SearchRecord(settings={"storage_path": None, "metric": "recall@100", "num_samples": 12}, data="ml-100k",
                 shared=TrialContext(bundle="", artifacts={}), dataset={"fingerprint": "0123456789abcdef"}).write(out)
    return tmp


def _record(out, **settings):
    SearchRecord(settings=settings, data="synthetic", shared=TrialContext(bundle="", artifacts={}),
                 dataset={}).write(out)


def diverged_search(tmp):
    """A search whose only trial diverged (its NaN epochs once ranked every target first)."""
    out = tmp / "s"
    (out / "tune" / "trial_a").mkdir(parents=True)
    _record(out, storage_path=None, max_epochs=3, num_samples=1)
    (out / "tune" / "trial_a" / "params.json").write_text(json.dumps({"lr": 1e30}))
    rows = [{"epoch": 1, "trial_id": "a", "val/recall@100": 1.0, "loss": float("nan"), "diverged": 1.0}]
    (out / "tune" / "trial_a" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "stops.json").write_text(json.dumps({"a": ["diverged", 1]}))
    return str(out)


def damaged_model(tmp, **manifest):
    """An exported model's folder: a sound manifest (``manifest`` changes it) over a damaged tower."""
    from raytower.train.data import META_COLUMNS

    d = tmp / "model"
    d.mkdir()
    doc = {"format": 2, "dim": 32, "max_len": 5, "meta_columns": list(META_COLUMNS), **manifest}
    (d / "manifest.json").write_text(json.dumps(doc))
    (d / "user_tower.pt2").write_bytes(b"PK\x03\x04 not really a zip")
    return str(d)


def crafted_model(tmp, craft_name):
    """An exported model whose user_tower.pt2 creates a file if torch.export.load reads it (issue 25)."""
    from tests import _crafted_pt2 as craft

    tower = craft.crafted(craft.tiny_tower_pt2(), craft.PICKLE_CRAFTS[craft_name], tmp / "pwned")
    return str(craft.model_dir(tmp, tower))


def damaged_bundle(tmp):
    from raytower.data._prepare import BUNDLE_FORMAT

    d = tmp / "bundle"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"format": BUNDLE_FORMAT, "fingerprint": "x"}))
    (d / "interactions.parquet").write_bytes(b"PAR1 cut short")
    return str(d)


def junk_study(tmp, foreign=False):
    """An earlier search's folder whose optuna.db is junk, or a real SQLite study of another name."""
    d = tmp / "earlier"
    d.mkdir()
    if foreign:
        import optuna

        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created": not this test's stderr
        try:
            optuna.create_study(study_name="someone-else", storage=f"sqlite:///{d / 'optuna.db'}")
        finally:
            optuna.logging.set_verbosity(level)
    else:
        (d / "optuna.db").write_bytes(b"not a database at all")
    return str(d)


def damaged_setup(tmp):
    out = Path(diverged_search(tmp))
    (out / "setup.json").write_text('{"settings": {')
    return str(out)


def damaged_stops(tmp):
    out = Path(diverged_search(tmp))
    (out / "stops.json").write_text('{"a": ["diverged"')
    return str(out)


def damaged_trial(tmp, params=None, epoch=2):
    """A two-trial search whose leader's record is damaged: its params.json, or an epoch of its result.json.
    Choosing without it would silently name the other trial the leader."""
    out = tmp / "s"
    _record(out, storage_path=None, max_epochs=2, num_samples=2, metric="recall@100")
    for name, value, text in (("lead", 0.9, params), ("other", 0.5, None)):
        (out / "tune" / f"trial_{name}").mkdir(parents=True)
        (out / "tune" / f"trial_{name}" / "params.json").write_text(text or json.dumps({"lr": 1e-3}))
        rows = [{"epoch": e, "trial_id": name, "val/recall@100": value, "loss": 1.0, "loss_random": 7.0,
                 "diverged": 0.0} for e in (1, epoch if name == "lead" else 2)]
        (out / "tune" / f"trial_{name}" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(out)


def crafted_run(tmp, edit=None, last=None, metrics=None, marker=True):
    """A `raytower train` run cut short (run.json, its marker), edited as a careless or malicious user
    would: ``edit(record)`` changes run.json, ``last`` is what checkpoints/last.pt holds (torch.save; bytes as is),
    ``metrics`` what metrics.json holds; ``marker=False``: a folder of the user's holding a run.json."""
    import dataclasses

    from raytower._io import write_marker
    from raytower.data import load_bundle
    from raytower.model.pretrain import PretrainConfig
    from raytower.train.config import TrainConfig

    bundle = load_bundle(SMALL_SYNTHETIC)  # (in the cache, outside tmp)
    cfg = TrainConfig.from_dict({"dim": 32, "item_layers": 2, "max_len": 30, "batch_size": 64, "epochs": 2})
    record = {"config": cfg.to_dict(), "pretraining": dataclasses.asdict(PretrainConfig.for_train(cfg)),
              "metric": "recall@100", "device": "cpu", "threads": 1,
              "dataset": {"name": bundle.name, "fingerprint": bundle.fingerprint, "bundle": str(bundle.path)}}
    if edit is not None:
        edit(record)
    d = tmp / "run"
    (d / "checkpoints").mkdir(parents=True)
    (d / "run.json").write_text(json.dumps(record))
    for name in ("last.pt", "best.pt") if last is not None else ():
        if isinstance(last, bytes):
            (d / "checkpoints" / name).write_bytes(last)
        else:
            torch.save(last, d / "checkpoints" / name)
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if marker:
        write_marker(d, "run")
    return str(d)


def trained_run(tmp, change=None, best=None):
    """What `raytower export` reads of a finished train run (metrics.json, checkpoints/best.pt), edited."""
    d = tmp / "run"
    (d / "checkpoints").mkdir(parents=True)
    metrics = {"dataset": {"bundle": str(tmp / "bundle")}, "pretraining": {"path": None}, "best_epoch": 1}
    (d / "metrics.json").write_text(json.dumps({**metrics, **(change or {})}))
    torch.save(best if best is not None else checkpoint(), d / "checkpoints" / "best.pt")
    return str(d)


class Exploit:
    """Unpickling this would create ``marker``; a checkpoint holding it is refused unread."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def checkpoint(**change):
    """What a checkpoint holds (Curriculum.state_dict's fields), with ``change``."""
    return {"config": {}, "epoch": 1, "stage": 1, "history": [{"epoch": 1, "val/recall@100": 0.5}],
            "user_tower": {}, "item_tower_top": {}, "optimizer": {}, "elapsed_s": 1.0, **change}


BEST_NO_PARAMS = json.dumps({"selection": {"value": 0.5}, "dataset": {}})
# (argv builder, text the one-line error must contain)
BAD_INPUT = [
    (lambda t: tune(t, space_file=space(t, temperature={"distribution": "uniform", "low": 0.1, "high": 1})), "unknown knob"),
    (lambda t: tune(t, space_file=space(t, anneal_rate={"distribution": "uniform", "low": 0.9, "high": 0.9})), "empty range"),
    (lambda t: tune(t, space_file=space(t, anneal_rate={"distribution": "uniform", "low": 0.99, "high": 0.8})), "inverted range"),
    (lambda t: tune(t, space_file=space(t, anneal_rate={"distribution": "gaussian", "low": 0.8, "high": 0.9})), "unknown distribution"),
    (lambda t: tune(t, space_file=space(t, unfreeze_depth={"distribution": "uniform", "low": 0, "high": 2})), "integer field"),
    (lambda t: tune(t, space_file=space(t, fusion={"distribution": "categorical", "choices": ["gated", "bilinear"]})), "unknown fusion type"),
    (lambda t: tune(t, space_file=text(t, "s.yaml", "search: [unclosed")), "not valid YAML"),
    (lambda t: tune(t, space_file=text(t, "s.yaml", BILLION_LAUGHS)), "YAML aliases"),
    (lambda t: ["train", "--config", text(t, "c.yaml", BILLION_LAUGHS)], "YAML aliases"),
    (lambda t: tune(t, space_file=start_from(t, {"fusion": {"distribution": "categorical", "choices": ["gated", "moe"]}},
                                             fusion="concat")), "fusion = 'concat' is not one of ['gated', 'moe']"),
    (lambda t: tune(t, space_file=start_from(t, temp_start=9.0)), "temp_start = 9.0 is not in"),
    (lambda t: tune(t, space_file=str(t / "missing.yaml")), "cannot read search space"),
    (lambda t: tune(t, "--num-samples", "0"), "--num-samples"),
    (lambda t: tune(t, "--max-epochs", "-2"), "--max-epochs"),
    (lambda t: tune(t, "--patience", "-1"), "--patience"),
    (lambda t: tune(t, "--seed", str(2**40)), "--seed must be in [0, 2**32)"),
    (lambda t: tune(t, "--gpus-per-trial", "64"), "GPU"),
    (lambda t: tune(t, "--cpus-per-trial", "64"), "no trial could ever start"),  # it waited forever
    (lambda t: tune(t, "--warm-start", str(t / "nowhere")), "--warm-start: no optuna.db"),
    # read before anything is written: found after Ray started, they left an --out neither re-run nor resumed
    (lambda t: tune(t, "--warm-start", junk_study(t)), "--warm-start: cannot read the study"),
    (lambda t: tune(t, "--warm-start", junk_study(t, foreign=True)), "--warm-start: cannot read the study"),
    (lambda t: tune(t, "--study-url", "nosuchdb://x/y"), "--study-url nosuchdb://x/y: cannot open it"),
    # each connection its own database: the search ran, then ended in a KeyError traceback, no study left
    (lambda t: tune(t, "--study-url", "sqlite://"), "--study-url sqlite://: an in-memory SQLite database"),
    (lambda t: tune(t, "--study-url", "sqlite:///:memory:"), "an in-memory SQLite database lives in one connection"),
    # the study's database was created by the check, before --address refused the search
    (lambda t: tune(t, "--study-url", f"sqlite:///{t / 'team.db'}", "--address", "127.0.0.1:9"), "no Ray cluster"),
    (lambda t: tune(t, "--study-url", f"sqlite:///{t / 'nowhere' / 'team.db'}"), "cannot create the database there"),
    (lambda t: tune(t, "--study-url", "sqlite:///b.db", "--storage", "sqlite:///a.db"),  # the last won, silently
     "argument --storage: not allowed with argument --study-url"),
    (lambda t: tune(t, "--address", "127.0.0.1:9"), "no Ray cluster answers there"),  # it retried for minutes
    (lambda t: ["tune", "--space", QUICK, "--out", text(t, "afile", "x") + "/out"], "is a file"),
    (lambda t: tune(t, "--min-free-gb", "1e9"), "free"),
    (lambda t: ["tune", "--space", QUICK, "--out", f"/dev/shm/raytower-test-{t.name}"], "object store"),
    (lambda t: tune(t, "--resume"), "--resume"),
    (lambda t: tune(t, "--storage-path", "nosuchscheme://bucket/runs"), "--storage-path: cannot open it"),
    # an S3 endpoint nobody listens on: curl's connection refused, in one line, in seconds
    (lambda t: tune(t, "--storage-path", "s3://bucket/runs?endpoint_override=127.0.0.1:9&scheme=http"),
     "--storage-path: cannot reach it"),
    (lambda t: tune(local_search(t), "--resume", "--storage-path", str(t / "elsewhere")), "resume it without --storage-path"),
    (lambda t: tune(local_search(t, mode=0o777), "--resume"), "writable by every user"),
    (lambda t: tune(tampered_tuner_state(t, "append"), "--resume"), "does not match its signature (tuner.pkl.hmac)"),
    (lambda t: tune(tampered_tuner_state(t, "unsigned"), "--resume"), "no signature beside it (tuner.pkl.hmac)"),
    (lambda t: tune(other_data_search(t), "--resume"), "ran on data with fingerprint 0123456789abcdef"),
    # every file of Tune's state that restore may unpickle is signed, not tuner.pkl alone
    (lambda t: tune(tampered_tune_state(t, "searcher-state-2026-01-01_00-00-00.pkl", "exploit"), "--resume"),
     "searcher-state-2026-01-01_00-00-00.pkl: refused: it does not match its signature"),
    (lambda t: tune(tampered_tune_state(t, "experiment_state-2026-01-01_00-00-00.json", "embedded"), "--resume"),
     "experiment_state-2026-01-01_00-00-00.json: refused: it does not match its signature"),
    (lambda t: tune(tampered_tune_state(t, "callback-states-2099-01-01_00-00-00.pkl", "planted"), "--resume"),
     "no signature beside it (callback-states-2099-01-01_00-00-00.pkl.hmac)"),
    # sizes the synthetic generator cannot hold in memory: a MemoryError traceback
    (lambda t: ["data", "prepare", "--data", "synthetic:n_users=1e12"], "n_users must be <= 20,000,000"),
    (lambda t: ["tune", "--data", "synthetic:n_users=1e7", "--space", QUICK, "--out", str(t / "out")],
     "interactions; at most 200,000,000"),
    (lambda t: ["data", "prepare", "--data", "synthetic:dim=1e6"], "dim must be <= 1,024"),
    (lambda t: tune(other_data_search(t), "--resume", "--metric", "ndcg@10"), "--metric ndcg@10: this search ran with recall@100"),
    (lambda t: tune(other_data_search(t), "--resume", "--num-samples", "40"), "--num-samples 40: this search ran with 12"),
    # a flag given with its default value is still given: it was ignored and the recorded value used
    (lambda t: tune(other_data_search(t), "--resume", "--num-samples", str(SearchSettings.num_samples)),
     f"--num-samples {SearchSettings.num_samples}: this search ran with 12"),
    (lambda t: ["export", damaged_fetched(t), "--out", str(t / "m")], "unreadable checkpoint"),
    (lambda t: ["export", damaged_run(t), "--out", str(t / "m")], "metrics.json: not valid JSON"),
    (lambda t: tune(t, "--metric", "ndcg@7"), "argument --metric: invalid choice"),
    (lambda t: tune(t, "--searcher", "cmaes"), "argument --searcher: invalid choice"),
    (lambda t: tune(t, "--collapse-frac", "1.5"), "--collapse-frac must be in (0, 1)"),
    (lambda t: ["train", "--config", text(t, "c.json", "{not json")], "not valid JSON"),
    (lambda t: ["train", "--config", text(t, "best_config.json", BEST_NO_PARAMS)], "'params'"),
    (lambda t: ["train", "--config", text(t, "c.json", '{"lr": -1.0}')], "lr must be > 0"),
    (lambda t: ["train", "--config", text(t, "c.json", '{"temp_start": 0.01, "temp_min": 0.1}')], "temp_min"),
    (lambda t: ["train", "--config", text(t, "c.yaml", "fusion: [concat")], "not valid YAML"),
    (lambda t: ["train", "--config", text(t, "c.yaml", "epochs: 2\nlr: 0.1\nepochs: 3\n")],
     "'epochs' is given twice in a config (line 3)"),  # PyYAML kept the last, silently
    (lambda t: ["train", "--epochs", "-3"], "--epochs"),
    (lambda t: ["train", "--epochs", "0"], "--epochs"),
    (lambda t: ["train", "--seed", str(2**64)], "seed must be in [0, 2**63)"),
    (lambda t: ["train", "--seed", "-1"], "seed must be in [0, 2**63)"),
    (lambda t: ["train", "--config", text(t, "c.yaml", "max_len: 1000000000\n")], "max_len must be at most 10,000"),
    (lambda t: ["train", "--config", text(t, "c.yaml", "max_len: 1e9\n")], "max_len must be int"),
    (lambda t: ["train", "--val-users", "-2"], "val_users must be -1"),
    (lambda t: ["train", "--device", "cuda"] if not torch.cuda.is_available() else ["train", "--epochs", "x"], "cuda"),
    (lambda t: ["best", str(t)], "not a raytower search directory"),
    (lambda t: ["report", str(t)], "not a raytower search directory"),
    (lambda t: ["export", str(t), "--out", str(t / "model")], "best_config.json"),
    (lambda t: ["recommend", str(t), "--user", "1"], "not an exported model"),
    (lambda t: ["data", "prepare", "--data", str(t)], "unknown data layout"),
    (lambda t: ["recommend", damaged_model(t), "--user", "1"], "a damaged exported model"),
    # a tampered manifest: max_len 1e10 asked for 74.5 GiB, an unknown meta column was a KeyError
    (lambda t: ["recommend", damaged_model(t, max_len=10**10), "--user", "1"], "max_len must be a whole number"),
    (lambda t: ["recommend", damaged_model(t, meta_columns=["nope"]), "--user", "1"], "meta_columns must be"),
    (lambda t: ["recommend", damaged_model(t, format="2"), "--user", "1"], "format must be 1 or 2"),
    (lambda t: ["recommend", crafted_model(t, "flagged_weight"), "--user", "1"], "refused: the file asks to unpickle"),
    (lambda t: ["recommend", crafted_model(t, "pickled_sample_inputs"), "--user", "1"], "asks to unpickle objects"),
    (lambda t: ["recommend", crafted_model(t, "opaque_constant"), "--user", "1"], "unpickle objects (data/constants"),
    (lambda t: ["data", "prepare", "--data", damaged_bundle(t)], "a damaged data bundle"),
    (lambda t: ["best", damaged_stops(t)], "stops.json: damaged"),
    (lambda t: ["report", damaged_setup(t)], "setup.json: damaged search record"),
    (lambda t: ["tune", "--space", QUICK, "--out", f"/sys/raytower-test-{t.name}"], "virtual file system"),
    (lambda t: ["best", damaged_trial(t, params='{"lr": 1e-3, "dim"')], "trial_lead/params.json: damaged trial record"),
    (lambda t: ["report", damaged_trial(t, params="[1, 2]")], "trial_lead/params.json: damaged trial record"),
    (lambda t: ["best", damaged_trial(t, epoch="two")], "trial_lead/result.json: damaged trial record: epoch 'two'"),
    # Destinations the user names: nothing of theirs is deleted or overwritten (issue: data loss).
    (lambda t: ["data", "prepare", "--data", SMALL_SYNTHETIC, "--out", users_dir(t)], "files raytower did not write"),
    (lambda t: ["data", "prepare", "--data", SMALL_SYNTHETIC, "--out", text(t, "f", "x")], "an existing file"),
    (lambda t: ["data", "prepare", "--data", SMALL_SYNTHETIC, "--out", marked(t, "m", "model")],
     "a raytower model, not a bundle"),
    (lambda t: ["train", "--out", users_dir(t)], "files raytower did not write"),
    (lambda t: ["train", "--out", marked(t, "r", "run")], "earlier raytower run; pass --force"),
    (lambda t: ["train", "--out", marked(t, "r", "search"), "--force"], "a raytower search, not a run"),
    (lambda t: ["train", "--out", marked_with_users_files(t, "r", "run"), "--force"],
     "files raytower did not write (analysis/, notes.txt)"),
    (lambda t: ["train", "--out", hand_marked(t, "r", "run"), "--force"], "marker lists no files"),
    (lambda t: ["data", "prepare", "--data", SMALL_SYNTHETIC, "--out", marked_with_users_files(t, "b", "bundle"),
                "--force"], "files raytower did not write (analysis/, notes.txt)"),
    (lambda t: ["export", str(t), "--out", hand_marked(t, "m", "model"), "--force"], "marker lists no files"),
    (lambda t: ["export", users_dir(t, "a/search"), "--out", str(t / "a")], "files raytower did not write"),
    (lambda t: ["export", str(t), "--out", text(t, "f", "x"), "--force"], "an existing file"),
    (lambda t: ["export", str(t), "--out", marked(t, "m", "model")], "earlier raytower model; pass --force"),
    (lambda t: ["best", str(t), "-o", users_dir(t)], "a directory"),
    (lambda t: ["best", str(t), "-o", text(t, "best.json", "{}"), "--force"], "not a raytower best_config.json"),
    # --out everywhere a command writes, the older spellings kept: -o/--output, --dest, --fetch-to
    (lambda t: ["best", str(t), "--out", users_dir(t)], "--out: a directory"),
    (lambda t: ["data", "download", "ml-100k", "--out", str(Path(users_dir(t, "d/ml-100k")).parent)],
     "--out: the directory holds files raytower did not write"),
    (lambda t: ["submit", "--address", "http://127.0.0.1:9", "--out", users_dir(t), "--", "tune", "--out", "x"],
     "--out: the directory holds files raytower did not write"),
    (lambda t: ["data", "download", "ml-100k", "--dest", str(Path(users_dir(t, "d/ml-100k")).parent)],
     "files raytower did not write"),
    (lambda t: tune(t) if users_dir(t, "out") else None, "files raytower did not write"),
    (lambda t: ["submit", "--address", "http://127.0.0.1:9", "--fetch-to", users_dir(t), "--", "tune", "--out", "x"],
     "files raytower did not write"),
    # The token is never sent in the clear to another machine (RFC 5737 documentation address).
    (lambda t: ["submit", "--address", "http://192.0.2.1:8265", "--", "tune", "--out", "x"], "pass --insecure"),
    (lambda t: ["submit", "--address", "ftp://127.0.0.1:8265", "--", "tune", "--out", "x"], "expected http(s)"),
    # train --resume / --evaluate on a run.json or checkpoint handed back: tracebacks, an epoch trained for
    # nothing (an unknown metric), a user's metrics.json overwritten, a finished run relabelled cut short
    (lambda t: ["train", "--resume", crafted_run(t, lambda r: r.update(metric="nope"))], "its metric must be one of"),
    (lambda t: ["train", "--resume", crafted_run(t, lambda r: r.update(dataset="x"))], "its dataset must be a mapping"),
    (lambda t: ["train", "--resume", crafted_run(t, lambda r: r["dataset"].update(bundle=5))],
     "its dataset must be a mapping"),
    (lambda t: ["train", "--resume", crafted_run(t, lambda r: r.update(threads="abc"))], "its threads must be"),
    (lambda t: ["train", "--evaluate", crafted_run(t, lambda r: r.update(threads=-3))], "its threads must be"),
    (lambda t: ["train", "--resume", crafted_run(t, lambda r: r.update(device="meta"))], "its device must be"),
    (lambda t: ["train", "--resume", crafted_run(t, lambda r: r["pretraining"].update(dim="abc"))],
     "its pretraining dim must be a non-negative int"),
    (lambda t: ["train", "--resume", crafted_run(t, lambda r: r["pretraining"].update(dim=64))],
     "its pretraining (dim 64, item_layers 2) does not fit its config"),
    (lambda t: ["train", "--resume", crafted_run(t, last=[1, 2])], "not a raytower checkpoint (a list"),
    (lambda t: ["train", "--resume", crafted_run(t, last=checkpoint(elapsed_s="x"))], "its elapsed_s must be a number"),
    (lambda t: ["train", "--resume", crafted_run(t, last=checkpoint(epoch="x"))], "its epoch must be a int"),
    (lambda t: ["train", "--resume", crafted_run(t, last=checkpoint(history=[{"epoch": 1, "val/recall@100": "x"}]))],
     "its history holds a row"),
    (lambda t: ["train", "--evaluate", crafted_run(t, last=checkpoint(config=None))], "its config must be a dict"),
    (lambda t: ["train", "--evaluate", crafted_run(t, metrics={"complete": True})], "it was tested at its end"),
    (lambda t: ["train", "--resume", crafted_run(t, metrics={"my": "notes"})], "not the metrics.json raytower writes"),
    (lambda t: ["train", "--resume", crafted_run(t, metrics={"my": "notes"}, marker=False)],
     "no .raytower-output marker of a run"),
    (lambda t: ["train", "--resume", crafted_run(t, lambda r: r.update(device="cuda"))]
     if not torch.cuda.is_available() else ["train", "--epochs", "x"], "cuda"),
    # the model is resolved before --out is written: the refusal once left a run.json behind
    (lambda t: ["train", "--data", SMALL_SYNTHETIC, "--config", text(t, "c.yaml", 'model: "os:system"\n'),
                "--out", str(t / "r")], "not a tower builder"),
    # a newline in a file's name made the one line two
    (lambda t: ["data", "prepare", "--data", str(t / "a\nb.csv")], "b.csv': no such file"),
    (lambda t: ["data", "prepare", "--data", "/dev/null"], "/dev/null: not a regular file or a directory"),
    (lambda t: tune(tampered_tuner_state(t, "directory"), "--resume"), "tuner.pkl: cannot read it (Is a directory)"),
    # export of a train run whose metrics.json or best.pt was edited: a traceback, a string epoch in the manifest
    (lambda t: ["export", trained_run(t, {"pretraining": {"path": 5}}), "--out", str(t / "m")],
     "metrics.json: its dataset's bundle and pretraining's path must be paths"),
    (lambda t: ["export", trained_run(t, {"best_epoch": "two"}), "--out", str(t / "m")],
     "metrics.json: its best_epoch must be an int, got 'two'"),
    (lambda t: ["export", trained_run(t, best=checkpoint(config={"dim": "x"})), "--out", str(t / "m")],
     "best.pt: dim must be int, got 'x'"),
]


@pytest.mark.parametrize("build,message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, build, message):
    argv = build(tmp_path)
    before = _snapshot(tmp_path)
    code = run(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("raytower") and message in err, err
    assert _snapshot(tmp_path) == before  # nothing partly written, nothing replaced


def _snapshot(root):
    return {(p, p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in root.rglob("*")}


def run(argv) -> int:
    """main(), with argparse's flag errors (SystemExit) turned into their exit status."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_flag_errors_are_one_line_in_a_real_process(tmp_path):
    out = subprocess.run([sys.executable, "-m", "raytower.cli", "tune", "--num-samples", "0"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--num-samples" in out.stderr


def test_a_pickled_checkpoint_is_refused_in_one_line_in_a_real_process(tmp_path):
    # torch's warning about the pickle it then refused was a second line on stderr
    import pickle

    run_dir = crafted_run(tmp_path, last=pickle.dumps(Exploit(tmp_path / "pwned")))  # protocol 4: torch warns
    out = subprocess.run([sys.executable, "-m", "raytower.cli", "train", "--resume", run_dir],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "last.pt: unreadable checkpoint" in out.stderr and not (tmp_path / "pwned").exists()


def test_checkpoint_from_another_model_shape_is_refused(small_bundle, small_artifacts, small_config):
    from raytower.errors import ConfigError
    from raytower.train.loop import Curriculum

    state = Curriculum.create(small_config, small_bundle, small_artifacts).state_dict()
    other = Curriculum.create(small_config.replace(n_blocks=1), small_bundle, small_artifacts)
    with pytest.raises(ConfigError, match="checkpoint does not fit this model"):
        other.load_state_dict(state)


def test_config_chosen_on_other_data_warns_and_strict_refuses(tmp_path, capsys):
    best = {"selection": {"value": 0.5}, "dataset": {"fingerprint": "0000000000000000"},
            "params": {"dim": 32, "item_layers": 2, "max_len": 30, "batch_size": 64, "epochs": 1}}
    cfg = tmp_path / "best_config.json"
    cfg.write_text(json.dumps(best))
    assert main(["train", "--config", str(cfg), "--data", SMALL_SYNTHETIC, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "0000000000000000" in err and err.count("\n") == 1
    assert main(["train", "--config", str(cfg), "--data", SMALL_SYNTHETIC, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "0000000000000000" in err


def test_best_on_a_search_whose_only_trial_diverged_says_so(tmp_path, capsys):
    # Its NaN epoch once read as Recall@100 1.0 and was exported as the best configuration.
    assert main(["best", diverged_search(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no trial is eligible" in err and "1 diverged" in err, err
    assert not (tmp_path / "s" / "best_config.json").exists()


@pytest.mark.parametrize("code,strerror", [("ENOSPC", "No space left on device"), ("EFBIG", "File too large")])
def test_a_full_disk_or_a_file_size_limit_is_one_line(tmp_path, capsys, monkeypatch, code, strerror):
    import errno

    from raytower import _io

    def full(*a, **k):
        raise OSError(getattr(errno, code), strerror, str(tmp_path / "b" / "manifest.json"))

    monkeypatch.setattr(_io, "write_json", full)
    monkeypatch.setattr("raytower.data._prepare.write_json", full)
    code = run(["data", "prepare", "--data", SMALL_SYNTHETIC, "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and strerror in err, err
    assert list(tmp_path.iterdir()) == []  # the half-written bundle went with the error
