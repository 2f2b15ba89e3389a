"""The ``raytower`` command: data -> train -> tune -> best.

Every user error (a bad file, flag or config) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from raytower.errors import RaytowerError

DATA_HELP = (
    "data source: a directory (MovieLens layout auto-detected), an interactions file "
    "(.csv/.parquet, options as FILE:user=COL,item=COL,time=COL,rating=COL,items=FILE,users=FILE), "
    "a dataset name (ml-100k, ml-1m, ...; downloaded if missing), a prepared bundle directory, or "
    "synthetic[:key=value,...] (default: synthetic)"
)


# The machine's problems, not raytower's: a full disk, a quota, a read-only or forbidden place.
_ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage block), like every other raytower error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def _add_force(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--force", action="store_true",
                   help=f"replace an earlier raytower {kind} at the destination (never anything else)")


def _val_users(text: str) -> int:
    v = int(text)
    if v < -1:
        raise argparse.ArgumentTypeError(f"must be -1 (auto), 0 (all) or a number of users, got {text}")
    return v


def _add_val_users(p: argparse.ArgumentParser, default: int | None) -> None:
    from raytower.train.config import VAL_USERS_AUTO

    p.add_argument("--val-users", type=_val_users, default=default, metavar="N",
                   help=f"validate each epoch on a seeded sample of N users, the same for every trial (its "
                        f"standard error is printed beside Recall@100); 0: all; -1: all up to {VAL_USERS_AUTO:,} "
                        f"users, a sample of {VAL_USERS_AUTO:,} above (default{'' if default is None else ' -1'}"
                        f"{': the config' if default is None else ''}). Test always ranks every user")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data preparation")
    g.add_argument("--data", default="synthetic", metavar="SOURCE", help=DATA_HELP)
    g.add_argument("--split", choices=["leave_last_out", "temporal"], default="leave_last_out",
                   help="leave-last-out per user (default) or a global temporal split")
    g.add_argument("--cold-frac", type=_fraction, default=0.1,
                   help="fraction of users kept out of the LightGCN graph (cold start), seeded (default 0.1)")
    g.add_argument("--k-core", type=_non_negative_int, default=0, help="k-core filter (default 0: off)")
    g.add_argument("--min-rating", type=float, default=None,
                   help="implicit feedback: keep interactions with rating >= this (default: keep all)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the cold-start draw (default 0)")


def prepare_options(args):
    from raytower.data import PrepareOptions

    return PrepareOptions(split=args.split, cold_frac=args.cold_frac, k_core=args.k_core,
                          min_rating=args.min_rating, seed=args.data_seed)


def load_data(args, progress: bool = True):
    from raytower.data import load_bundle

    return load_bundle(args.data, prepare_options(args), out=getattr(args, "bundle_out", None), progress=progress,
                       force=getattr(args, "force", False))


# --- commands --------------------------------------------------------------------------------------


def cmd_data_prepare(args) -> int:
    from raytower.data import summary_rows

    bundle = load_data(args)
    rows = summary_rows(bundle.manifest)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"{'bundle':<{width}}  {bundle.path}{' (cached)' if getattr(bundle, 'cache_hit', False) else ''}")
    return 0


def cmd_data_download(args) -> int:
    from raytower.data._download import cached_dataset, download

    path = download(args.name, args.dest, force=args.force) if args.dest else cached_dataset(args.name)
    print(path)
    return 0


def _check_fingerprint(args, bundle) -> None:
    """A best_config.json names the data it was chosen on; other data is a warning (--strict: an error)."""
    if not args.config:
        return
    import json

    try:
        doc = json.loads(Path(args.config).read_text())
    except (OSError, ValueError):
        return  # a YAML config, or already reported by TrainConfig.load
    want = (doc.get("dataset") or {}).get("fingerprint") if isinstance(doc, dict) else None
    if want and want != bundle.fingerprint:
        msg = (f"{args.config}: chosen on data with fingerprint {want}, but --data {args.data} has fingerprint "
               f"{bundle.fingerprint}")
        if args.strict:
            raise RaytowerError(msg)
        print(f"raytower: warning: {msg}", file=sys.stderr)


def cmd_train(args) -> int:
    from raytower.train.config import TrainConfig

    cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed), ("val_users", args.val_users))
                 if v is not None}
    if overrides:
        cfg = cfg.replace(**overrides)
    for line in cfg.advice():
        print(f"raytower: warning: {line}", file=sys.stderr)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RaytowerError("--device cuda: no CUDA device is available here")
    from raytower._io import check_destination

    if args.out:
        check_destination(args.out, "run", args.force)  # before the data is prepared
    bundle = load_data(args)
    _check_fingerprint(args, bundle)
    from raytower.train.run import train

    out = Path(args.out or f"runs/train-{bundle.name}")
    train(cfg, bundle, out, device=args.device, threads=args.threads, force=args.force)
    print(f"wrote {out / 'metrics.json'}")
    return 0


def cmd_tune(args) -> int:
    from raytower.tune.search import SearchInterrupted, SearchSettings, run_search

    _stop_on_sigterm()
    settings = SearchSettings(
        space=args.space, num_samples=args.num_samples, max_epochs=args.max_epochs, out=args.out,
        address=args.address, executor=args.executor, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, workers_per_trial=args.workers_per_trial,
        max_concurrent=args.max_concurrent, seed=args.seed, time_budget_s=args.time_budget,
        grace_period=args.grace_period, reduction_factor=args.reduction_factor, scheduler=args.scheduler,
        searcher=args.searcher, truthful_pruning=not args.no_truthful_pruning, storage=args.storage,
        storage_path=args.storage_path,
        chance_patience=args.chance_patience, patience=args.patience, resume=args.resume, warm_start=args.warm_start,
        min_free_gb=args.min_free_gb, threads_per_trial=args.threads_per_trial, val_users=args.val_users,
        verbose=args.verbose,
    )
    try:
        run_search(settings, data=args.data, prepare_options=prepare_options(args))
    except SearchInterrupted as e:
        print(f"raytower: {e}", file=sys.stderr)
        print(f"resume it with: {_resume_command(args.argv)}", file=sys.stderr)
        return _interrupted_status()
    print(f"wrote {Path(args.out) / 'best_config.json'} and {Path(args.out) / 'trials.parquet'}")
    print(f"retrain it: raytower train --config {Path(args.out) / 'best_config.json'} --data {args.data}")
    return 0


_TERMINATED: list[int] = []


def _stop_on_sigterm() -> None:
    """SIGTERM (timeout, Slurm, docker stop) stops a search as Ctrl-C does: Tune saves it and the
    resume hint is printed; the exit status is then 143. A second SIGTERM ends it at once."""
    import signal

    def on_term(signum, frame):
        _TERMINATED.append(signum)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, on_term)


def _interrupted_status() -> int:
    return 128 + 15 if _TERMINATED else 130


def _resume_command(argv: list[str]) -> str:
    import shlex

    return shlex.join(["raytower", *argv, *([] if "--resume" in argv else ["--resume"])])


def cmd_best(args) -> int:
    import json

    from raytower.tune.results import export_results, is_best_config

    if args.output:
        from raytower._io import check_file_destination

        check_file_destination(args.output, "best_config.json", is_best_config, args.force)
    doc = export_results(args.dir)
    if args.output:
        from raytower._io import write_json

        write_json(args.output, doc)
        print(f"wrote {args.output}")
    else:
        print(json.dumps(doc, indent=2, default=str))
    return 0


def cmd_report(args) -> int:
    from raytower.report import write_report

    write_report(args.dir, top=args.top)
    return 0


def cmd_compare(args) -> int:
    from raytower.report import compare

    print(compare(args.dirs).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def cmd_export(args) -> int:
    from raytower.export import export_model

    path = export_model(args.dir, args.out, force=args.force)
    print(f"wrote {path} (user_tower.pt, item_vectors.npy, items.parquet, users.parquet, manifest.json)")
    return 0


def cmd_recommend(args) -> int:
    from raytower.export import ServedModel

    top = ServedModel(args.model_dir).recommend(args.user, args.k)
    print(top.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def cmd_submit(args) -> int:
    from raytower.submit import submit

    tune_args = list(args.tune_args)
    if tune_args and tune_args[0] == "--":
        tune_args = tune_args[1:]
    return submit(args.address, tune_args, args.fetch_to, args.working_dir, args.timeout, force=args.force,
                  insecure=args.insecure)


# --- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="raytower",
        description="Hyperparameter search for two-tower recommenders trained with a two-stage curriculum.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    data = sub.add_parser("data", help="download and prepare data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND", parser_class=_Parser)
    p = data_sub.add_parser("prepare", help="prepare a data source into a cached bundle and print its summary")
    add_data_args(p)
    p.add_argument("--out", dest="bundle_out", metavar="DIR", help="write the bundle here instead of the cache")
    _add_force(p, "bundle")
    p.set_defaults(func=cmd_data_prepare)
    p = data_sub.add_parser("download", help="download a MovieLens release (checksum-verified)")
    p.add_argument("name", help="ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest-small, ml-latest")
    p.add_argument("--dest", default=None, metavar="DIR", help="unpack into DIR/NAME (default: the raytower cache)")
    _add_force(p, "download in DIR/NAME")
    p.set_defaults(func=cmd_data_download)

    p = sub.add_parser("train", help="train one configuration: pretraining (cached), the curriculum, test once")
    add_data_args(p)
    p.add_argument("--config", metavar="FILE", help="config fields as JSON or YAML, or a best_config.json")
    p.add_argument("--epochs", type=_positive_int, help="override the config's epochs")
    _add_val_users(p, default=None)
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--out", metavar="DIR", help="run directory, new or empty (default runs/train-<dataset>)")
    _add_force(p, "run")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads (fix it for reproducible runs; default: torch's choice)")
    p.add_argument("--strict", action="store_true",
                   help="a best_config.json chosen on other data (another fingerprint) is an error, not a warning")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "tune", help="search the curriculum's knobs with Ray Tune + Optuna (TPE) + ASHA",
        description="Search the curriculum's knobs. Writes OUT/best_config.json, OUT/trials.parquet and "
                    "the Optuna study (OUT/optuna.db). --resume continues an interrupted search in OUT; "
                    "it restores Ray Tune's experiment state, which Tune stores as pickles: resume only "
                    "directories raytower itself wrote.")
    add_data_args(p)
    p.add_argument("--space", default="default", metavar="SPACE",
                   help="search space: quick or default (shipped with raytower; copies in the repository's "
                        "search_spaces/), or a YAML file (default %(default)s)")
    p.add_argument("--num-samples", type=_positive_int, default=20, help="trials (default %(default)s)")
    p.add_argument("--max-epochs", type=_positive_int, default=30, help="epochs of a trial that is never stopped")
    _add_val_users(p, default=-1)
    p.add_argument("--out", default="runs/search", metavar="DIR", help="experiment directory (default %(default)s)")
    p.add_argument("--address", default=None,
                   help="join a Ray cluster ('auto' on a cluster node, or host:port); default: a private local Ray")
    p.add_argument("--executor", choices=["auto", "function", "train"], default="auto",
                   help="function: the loop runs in the Tune trial (one CPU worker, least overhead); "
                        "train: a Ray Train TorchTrainer per trial (DDP, GPUs); auto: train when GPUs or "
                        "several workers are asked for")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--threads-per-trial", type=_positive_int, default=None,
                   help="torch threads in each trial (default: --cpus-per-trial, at least 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed, e.g. 0.5")
    p.add_argument("--workers-per-trial", type=_positive_int, default=1, help="DDP workers (executor train)")
    p.add_argument("--max-concurrent", type=_positive_int, default=None, help="default: as many as resources allow")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="stop starting trials after this")
    p.add_argument("--grace-period", type=_positive_int, default=None,
                   help="ASHA's first rung in epochs (default: after the latest Stage 2 switch + 3)")
    p.add_argument("--reduction-factor", type=int, default=2)
    p.add_argument("--scheduler", choices=["asha", "none"], default="asha")
    p.add_argument("--searcher", choices=["tpe", "random"], default="tpe")
    p.add_argument("--no-truthful-pruning", action="store_true",
                   help="tell Optuna what Ray's OptunaSearch does (early-stopped = COMPLETE) instead of PRUNED")
    p.add_argument("--storage", default=None, metavar="URL", help="Optuna RDB URL (default sqlite in OUT)")
    p.add_argument("--storage-path", default=os.environ.get("RAYTOWER_STORAGE") or None, metavar="URI",
                   help="where Ray keeps trial results and checkpoints on a cluster: s3://BUCKET/PREFIX, gs://..., "
                        "or a directory every node mounts (default: $RAYTOWER_STORAGE, else OUT). The search goes "
                        "in URI/<name of OUT>; "
                        "the Optuna study stays in OUT and is copied there at the end")
    p.add_argument("--chance-patience", type=_positive_int, default=3,
                   help="epochs at or above the random-guess loss before a trial is stopped as 'chance'")
    p.add_argument("--patience", type=int, default=5,
                   help="stop a trial as 'plateau' when its validation Recall@100 has not improved for this many "
                        "epochs, counted from ASHA's grace period on; 0 turns it off (default %(default)s)")
    p.add_argument("--min-free-gb", type=float, default=1.0,
                   help="refuse to start with less free disk than this under --out (default %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search in --out (only directories raytower wrote: "
                        "Ray Tune restores its state from pickles)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="also show Ray's own output (progress tables, trial logs); by default it goes to OUT/ray.log")
    p.add_argument("--warm-start", metavar="DIR", default=None,
                   help="seed TPE with the finished trials of an earlier search's study")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("best", help="re-export best_config.json from a finished or interrupted search")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("-o", "--output", metavar="FILE", help="write here too (default: print)")
    _add_force(p, "best_config.json at FILE")
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("report", help="leaderboard and plots of a finished or interrupted search (DIR/report/)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--top", type=_positive_int, default=15, help="leaderboard rows (default %(default)s)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="several searches side by side")
    p.add_argument("dirs", metavar="DIR", nargs="+")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="write the chosen model for serving (TorchScript user tower, item vectors)")
    p.add_argument("dir", metavar="DIR", help="a search directory with best_config.json")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="a new or empty directory")
    _add_force(p, "exported model")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("recommend", help="top items for a user from an exported model")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--user", required=True, help="the user id as in the source data")
    p.add_argument("-k", type=_positive_int, default=10)
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("submit", help="run a search on a Ray cluster as a Ray Job; fetch best_config.json back",
                       description="Submit `raytower tune ...` as a Ray Job (it joins the cluster with "
                                   "--address auto), follow its logs, and on success copy best_config.json and "
                                   "trials.parquet from its --out (which must be on shared storage) to --fetch-to. "
                                   "The token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token is sent.")
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
                   help="the Jobs API (default %(default)s: `ray dashboard cluster.yaml` tunnels it here)")
    p.add_argument("--fetch-to", metavar="DIR", default=None,
                   help="copy the results here when the job succeeds (a new or empty directory)")
    _add_force(p, "fetched results")
    p.add_argument("--working-dir", metavar="DIR", default=None, help="upload this directory as the job's working_dir")
    p.add_argument("--insecure", action="store_true",
                   help="allow plain http:// to a non-loopback address (the token then travels unencrypted)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop the job after this")
    p.add_argument("tune_args", nargs=argparse.REMAINDER, metavar="-- tune ...", help="the tune command and its flags")
    p.set_defaults(func=cmd_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except RaytowerError as e:
        print(f"raytower: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRORS:
            raise  # anything else is a bug: keep its traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"raytower: error: {where}{e.strerror or e} (nothing half-written is left behind)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raytower: interrupted", file=sys.stderr)
        if args.func is cmd_tune and (Path(args.out) / "setup.json").is_file():
            print(f"resume it with: {_resume_command(args.argv)}", file=sys.stderr)
        return _interrupted_status()


if __name__ == "__main__":
    sys.exit(main())
