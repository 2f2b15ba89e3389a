"""One training run, start to finish: what ``raytower train`` does.

Pretraining (cached) -> the curriculum, epoch by epoch, a checkpoint after each -> test evaluated
once on the best validation epoch -> ``metrics.json``. TensorBoard scalars go to the run directory.

    OUT/run.json              what was asked: config, pretraining, data, selection metric
    OUT/checkpoints/last.pt   the latest epoch (raytower train --resume OUT continues from it)
    OUT/checkpoints/best.pt   the best validation epoch (the one tested and exported)
    OUT/metrics.json          the result, written once at the end
    OUT/tensorboard/          the per-epoch scalars
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import platform
import time
import warnings
from pathlib import Path

import torch

from raytower._io import (atomic_path, output_dir, output_kind, read_json, record_files, write_json,
                          write_serialised, writing_in_place)
from raytower._progress import Progress
from raytower._version import version as raytower_version
from raytower.errors import ConfigError, RaytowerError
from raytower.names import (BEST_CHECKPOINT, DEFAULT_METRIC, LAST_CHECKPOINT, METRICS, RUN_METRICS, RUN_RECORD,
                            check_metric, label, val_key)
from raytower.model.pretrain import UNSET_BEFORE, PretrainConfig, describe_estimate, pretrain
from raytower.model.towers import needs_pretraining
from raytower.train.row import CONSOLE
from raytower.train.config import TrainConfig
from raytower.train.evaluate import evaluate
from raytower.train.epochs import best_epoch, run_epochs
from raytower.train.loop import Curriculum, load_model

COLUMNS = [(c.short, c.key, c.fmt) for c in CONSOLE]  # the per-epoch table: (header, row key, format)


def format_header() -> str:
    return " ".join(f"{h:>{len(f.format(0 if 'd' in f else 0.0))}}" for h, _, f in COLUMNS)


def format_row(row: dict) -> str:
    cells = []
    for _, key, fmt in COLUMNS:
        v = row.get(key, float("nan"))
        cells.append(fmt.format(v) if not (isinstance(v, float) and math.isnan(v)) else " " * len(fmt.format(0.0)))
    return " ".join(cells)


def versions() -> dict[str, str]:
    out = {"raytower": raytower_version(), "torch": torch.__version__, "python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("ray", "optuna"):  # read from the metadata: importing Ray just for this costs seconds
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out




def train(cfg: TrainConfig, bundle, out_dir: str | Path, device: str = "cpu", threads: int | None = None,
          log=print, pretrain_cfg: PretrainConfig | None = None, force: bool = False,
          metric: str = DEFAULT_METRIC) -> dict:
    """Run the curriculum for ``cfg.epochs`` epochs (or to a plateau of ``cfg.patience``); return
    (and write) the final metrics. The best epoch, the one tested, is chosen by validation
    ``metric`` (``raytower.names.METRICS``). Every epoch ends with a checkpoint, so a run killed
    at any point continues with ``resume``.

    ``out_dir`` is a new or empty directory, or (with ``force``) an earlier raytower run, which is
    replaced; anything else is refused before training starts."""
    check_metric(metric)
    needs_pretraining(cfg.model)  # a model that is no marked builder: refused before --out is written
    pcfg = pretrain_cfg or PretrainConfig.for_train(cfg)
    # A new run is written in place, where --resume can continue it; one replacing an earlier run
    # (force) is built beside it and swapped in at its end, so a failed run leaves the old one whole.
    with output_dir(out_dir, "run", force, in_place=True) as out:
        write_json(out / RUN_RECORD, {
            "config": cfg.to_dict(), "pretraining": dataclasses.asdict(pcfg), "metric": metric,
            "dataset": {"name": bundle.name, "fingerprint": bundle.fingerprint, "bundle": str(bundle.path)},
            # how it ran: a resume runs the same way unless told otherwise (threads change the sums' order)
            "device": device, "threads": threads,
        })
        return _curriculum(out, cfg, pcfg, bundle, metric, device, threads, log)


def resume(out_dir: str | Path, device: str | None = None, threads: int | None = None, log=print) -> dict:
    """Continue the run in ``out_dir`` from its last epoch's checkpoint: the same epochs, the same
    figures as a run never interrupted (model, optimizer, stage, schedules, RNG all restored)."""
    out = Path(out_dir)
    with writing_in_place(out, "run", "--resume"):  # one writer at a time; the run's file list kept
        return _resume(out, device, threads, log)


def _resume(out: Path, device: str | None, threads: int | None, log) -> dict:
    record = read_run_record(out)
    device, threads = _how_it_runs(record, device, threads, out)
    if _finished(out):
        raise ConfigError("the run is finished (its metrics.json is complete): nothing to resume", out)
    cfg, pcfg, bundle = _recorded(out, record)
    last = read_checkpoint(out / LAST_CHECKPOINT) if (out / LAST_CHECKPOINT).is_file() else None
    best = read_checkpoint(out / BEST_CHECKPOINT) if last is not None else None  # (written before last.pt)
    if last is not None:
        log(f"resuming {out} after epoch {last['epoch']}")
    return _curriculum(out, cfg, pcfg, bundle, record["metric"], device, threads, log, last, best)


def evaluate_run(out_dir: str | Path, device: str | None = None, threads: int | None = None, log=print) -> dict:
    """Test, once, a run cut short: its best epoch so far, with ``complete: false`` in metrics.json."""
    out = Path(out_dir)
    with writing_in_place(out, "run", "--evaluate"):
        return _evaluate_run(out, device, threads, log)


def _evaluate_run(out: Path, device: str | None, threads: int | None, log) -> dict:
    record = read_run_record(out)
    device, threads = _how_it_runs(record, device, threads, out)
    if _finished(out):  # its test figures are there; a second look would relabel it cut short
        raise ConfigError("the run is finished (its metrics.json is complete): it was tested at its end", out)
    if not (out / LAST_CHECKPOINT).is_file():
        raise ConfigError("the run has no finished epoch to evaluate", out)
    cfg, pcfg, bundle = _recorded(out, record)
    if threads:
        torch.set_num_threads(threads)
    artifacts = _pretrained(cfg, bundle, pcfg, log, device)
    last = read_checkpoint(out / LAST_CHECKPOINT)
    best_state = read_checkpoint(out / BEST_CHECKPOINT)
    run = Curriculum.create(cfg, bundle, artifacts, device=device)
    with _about(out / LAST_CHECKPOINT):
        run.load_state_dict(last)
    best = best_epoch(run.history, val_key(record["metric"]))
    if best is None:
        raise ConfigError("no epoch of the run has a validation metric to choose", out)
    return _finish(out, run, best_state, best, record["metric"], artifacts, last.get("elapsed_s", 0.0), "cut_short",
                   log)


def read_run_record(out: Path) -> dict:
    """run.json of a ``raytower train`` run, or one line saying why ``out`` is not one."""
    record = read_json(out / RUN_RECORD, None)
    if not isinstance(record, dict) or not {"config", "pretraining", "metric", "dataset"} <= record.keys():
        raise ConfigError("not a resumable raytower train run (no run.json: runs before resuming was added "
                          "cannot be resumed)", out)
    if output_kind(out) != "run":  # a folder of the user's holding a run.json: its metrics.json is theirs
        raise ConfigError("not a raytower train run (no .raytower-output marker of a run): raytower writes "
                          "nothing into a folder it did not make", out)
    where = out / RUN_RECORD
    if record["metric"] not in METRICS:
        raise ConfigError(f"its metric must be one of {', '.join(METRICS)}, got {record['metric']!r}", where)
    data = record["dataset"]
    if not (isinstance(data, dict) and all(isinstance(data.get(k), str) for k in ("name", "fingerprint", "bundle"))):
        raise ConfigError("its dataset must be a mapping of name, fingerprint and bundle (strings)", where)
    threads = record.get("threads")
    if threads is not None and (type(threads) is not int or threads < 1):
        raise ConfigError(f"its threads must be a positive int or null, got {threads!r}", where)
    if record.get("device") not in (None, "cpu", "cuda"):
        raise ConfigError(f"its device must be 'cpu' or 'cuda', got {record.get('device')!r}", where)
    return record


def _how_it_runs(record: dict, device: str | None, threads: int | None, out: Path) -> tuple[str, int | None]:
    """The device and threads the run recorded, unless given: a resume runs as the run did."""
    device = device or record.get("device") or "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("the run trained on cuda and no CUDA device is available here: pass --device cpu", out)
    return device, threads or record.get("threads")


def _finished(out: Path) -> bool:
    """Whether metrics.json says the run ended by itself; one line when it is not raytower's."""
    if not (out / RUN_METRICS).exists():
        return False
    doc = read_json(out / RUN_METRICS, {})
    if not isinstance(doc, dict) or not isinstance(doc.get("complete"), bool):
        raise ConfigError("not the metrics.json raytower writes (it would be replaced): move it out of the run",
                          out / RUN_METRICS)
    return doc["complete"]


def _recorded(out: Path, record: dict) -> tuple[TrainConfig, PretrainConfig, object]:
    from raytower.data import load_bundle

    cfg = TrainConfig.from_dict(record["config"], source=str(out / RUN_RECORD))
    pcfg = _pretrain_config(record["pretraining"], out / RUN_RECORD)
    if (pcfg.dim, pcfg.item_layers) != (cfg.dim, cfg.item_layers):  # pretrained for this model: refused before
        raise ConfigError(f"its pretraining (dim {pcfg.dim}, item_layers {pcfg.item_layers}) does not fit its "
                          f"config (dim {cfg.dim}, item_layers {cfg.item_layers})", out / RUN_RECORD)
    data = record["dataset"]
    if not Path(data["bundle"]).is_dir():
        raise ConfigError(f"the run's prepared data {data['bundle']} is gone (a cleared cache?): prepare it "
                          "again with the same --data and flags, then resume", out)
    bundle = load_bundle(data["bundle"])
    if bundle.fingerprint != data["fingerprint"]:
        raise ConfigError(f"the run's prepared data {data['bundle']} changed (fingerprint {bundle.fingerprint}, "
                          f"recorded {data['fingerprint']})", out)
    return cfg, pcfg, bundle


def _pretrain_config(doc, where: Path) -> PretrainConfig:
    """run.json's pretraining: PretrainConfig's fields, each a finite, non-negative number of its type."""
    fields = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
    if isinstance(doc, dict):  # a run recorded before a field existed: the value that behaves as it did then
        doc = {**{k: v for k, v in UNSET_BEFORE.items() if k not in doc}, **doc}
    if not isinstance(doc, dict) or doc.keys() != fields.keys():
        raise ConfigError("its pretraining config does not fit this raytower (expected the fields "
                          f"{', '.join(fields)})", where)
    for name, kind in fields.items():
        value = doc[name]
        ok = type(value) is int if kind in (int, "int") else type(value) in (int, float) and math.isfinite(value)
        if not ok or value < 0:
            raise ConfigError(f"its pretraining {name} must be a non-negative {getattr(kind, '__name__', kind)}, "
                              f"got {value!r}", where)
    return PretrainConfig(**doc)


def _curriculum(out: Path, cfg: TrainConfig, pcfg: PretrainConfig, bundle, metric: str, device: str,
                threads: int | None, log, last: dict | None = None, best_state: dict | None = None) -> dict:
    """Pretraining (cached), the curriculum from the start or from ``last``, then test once."""
    if threads:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    elapsed_before = float(last.get("elapsed_s", 0.0)) if last else 0.0
    artifacts = _pretrained(cfg, bundle, pcfg, log, device)
    run = Curriculum.create(cfg, bundle, artifacts, device=device)
    if last is not None:
        with _about(out / LAST_CHECKPOINT):
            run.load_state_dict(last)
    pop = run.popularity
    log(f"popularity baseline: val Recall@100 {pop['val']['recall@100']:.3f}, "
        f"test Recall@100 {pop['test']['recall@100']:.3f}, Recall@10 {pop['test']['recall@10']:.3f}")
    log(format_header())
    for row in run.history:  # a resumed run shows its earlier epochs again
        log(format_row(row))
    kept: dict = {"state": best_state}

    def on_batch(done: int, total: int) -> None:  # a long epoch is never silent
        if done == 1:
            kept["bar"] = Progress(f"epoch {run.epoch + 1}", total, log=log)
        kept["bar"].update(done, f"batch {done}/{total}")
        if done == total:
            kept["bar"].close()

    run.on_batch = on_batch

    def on_epoch(row: dict, best: dict | None) -> None:
        log(format_row(row) + (f"   -> stage 2 ({row['stage_switch']})" if "stage_switch" in row else ""))
        if row["diverged"]:
            log(f"training diverged at epoch {row['epoch']} (loss {row['loss']}, val Recall@100 "
                f"{row['val/recall@100']}); stopping")
            return
        state = {**run.state_dict(), "elapsed_s": elapsed_before + time.perf_counter() - t_start}
        if best is row:
            kept["state"] = copy.deepcopy(state)
            save_checkpoint(kept["state"], out / BEST_CHECKPOINT)
        save_checkpoint(state, out / LAST_CHECKPOINT)  # after best.pt: a resume never lacks its best
        record_files(out)  # what --force may replace later, listed after every epoch (a few files)

    best = run_epochs(run, on_epoch, tb_dir=str(out / "tensorboard"), metric=val_key(metric), hparams=cfg.to_dict())
    if best is None:
        raise RaytowerError(f"training diverged in its first epoch (loss {run.history[-1]['loss']}): no epoch has a "
                            "validation metric to choose; lower lr or raise temp_start", out)
    stop = ("diverged" if run.history[-1]["diverged"] else "epochs" if run.done else "patience")
    return _finish(out, run, kept["state"], best, metric, artifacts,
                   elapsed_before + time.perf_counter() - t_start, stop, log)


def _finish(out: Path, run: Curriculum, best_state: dict, best: dict, metric: str, artifacts, wall_s: float,
            stop: str, log) -> dict:
    """Test, touched once, on the epoch validation chose; metrics.json written."""
    bundle, cfg = run.data.bundle, run.cfg
    with _about(out / BEST_CHECKPOINT):
        model = load_model(best_state, bundle, artifacts, run.device)
    test, _ = evaluate(model, run.data, "test")
    result = {
        "config": cfg.to_dict(),
        "dataset": {"name": bundle.name, "fingerprint": bundle.fingerprint,
                    "n_users": bundle.n_users, "n_items": bundle.n_items, "bundle": str(bundle.path)},
        "best_epoch": best["epoch"],
        "selection_metric": metric,
        "stage_switch": run.switch,
        # complete: the run ended by itself (its epochs, a plateau, a divergence); false: cut short
        # and tested on request (raytower train --evaluate), its best epoch so far
        "complete": stop != "cut_short",
        "stop": stop,
        "epochs_run": run.epoch,
        "val": {k[4:]: v for k, v in best.items() if k.startswith("val/")},
        "test": test,
        "popularity": run.popularity,
        "wall_time_s": wall_s,
        "history": run.history,
        "pretraining": {"path": str(artifacts.path), **artifacts.stats} if artifacts else {"path": None},
        "versions": versions(),
    }
    write_json(out / RUN_METRICS, result)
    cut = "" if result["complete"] else f" (cut short after epoch {run.epoch}: its best so far)"
    log(f"best epoch {best['epoch']}{cut} by val {label(metric)} {best[val_key(metric)]:.4f}: val Recall@100 "
        f"{best['val/recall@100']:.4f}; "
        f"test Recall@100 {test['recall@100']:.4f}, Recall@10 {test['recall@10']:.4f}, NDCG@10 {test['ndcg@10']:.4f}")
    return result


def _pretrained(cfg: TrainConfig, bundle, pcfg: PretrainConfig, log, device: str):
    """The pretraining artifacts (cached by the data's fingerprint), or None for towers that need none."""
    if not needs_pretraining(cfg.model):
        log(f"no pretraining: model {cfg.model} does not ask for it")
        return None
    log(f"pretraining (cached by data fingerprint {bundle.fingerprint}), {describe_estimate(bundle, pcfg, device)}")
    return pretrain(bundle, pcfg, progress=log, device=device)  # --device cuda: pretraining too


def read_checkpoint(path: Path) -> dict:
    """A checkpoint raytower wrote: tensors and plain data only (never code), or one line."""
    try:
        with warnings.catch_warnings():  # torch warns about a pickle it then refuses: the refusal is the news
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True, map_location="cpu")  # tensors and plain data, never code
    except Exception as e:
        raise ConfigError(f"unreadable checkpoint ({type(e).__name__})", path) from None
    _check_checkpoint(state, path)
    return state


# What a checkpoint holds (Curriculum.state_dict, and the run's elapsed time), by the type each must be.
_CHECKPOINT_FIELDS = {"config": dict, "epoch": int, "stage": int, "history": list, "user_tower": dict,
                      "item_tower_top": dict, "optimizer": dict}


def _check_checkpoint(state, path: Path) -> None:
    if not isinstance(state, dict):
        raise ConfigError(f"not a raytower checkpoint (a {type(state).__name__}, not a mapping)", path)
    for key, kind in _CHECKPOINT_FIELDS.items():
        value = state.get(key)
        if not (type(value) is int if kind is int else isinstance(value, kind)):  # (a bool is no epoch)
            raise ConfigError(f"not a raytower checkpoint: its {key} must be a {kind.__name__}, got "
                              f"{type(state.get(key)).__name__}", path)
    if type(state.get("elapsed_s", 0.0)) not in (int, float):
        raise ConfigError(f"not a raytower checkpoint: its elapsed_s must be a number, got {state['elapsed_s']!r}",
                          path)
    for row in state["history"]:  # printed and ranked on resume: numbers, and the stage switch's reason
        if not (isinstance(row, dict) and type(row.get("epoch")) is int
                and all(type(v) in ((str,) if k == "stage_switch" else (int, float)) for k, v in row.items())):
            raise ConfigError("not a raytower checkpoint: its history holds a row that is not an epoch's figures",
                              path)


@contextlib.contextmanager
def _about(path: Path):
    """A checkpoint that does not fit the run's model: the one line names the file."""
    try:
        yield
    except ConfigError as e:
        if e.path is not None:
            raise
        raise ConfigError(str(e), path) from None


def save_checkpoint(state: dict, dest: Path) -> None:
    try:
        with atomic_path(dest) as tmp:
            write_serialised(tmp, lambda buffer: torch.save(state, buffer))  # a full disk: ENOSPC, not torch's
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(dest)) from None  # the checkpoint's name, not its temporary one
