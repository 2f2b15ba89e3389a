"""The ``raytower`` command: data -> train -> tune -> best.

Every user error (a bad file, flag or config) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from raytower._flags import (Parser, add_data_flags, add_force, add_tune_flags, add_val_users, non_negative_int,
                             positive_int, prepare_options)
from raytower._hints import next_steps, resume_command, retrain_command, this_command
from raytower.errors import RaytowerError
from raytower.names import RUN_RECORD, SEARCH_RECORD

# The machine's problems, not raytower's: a full disk, a quota or file-size limit, a read-only or forbidden place.
_ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


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
    from raytower.data import cached_dataset, download

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
    if args.resume or args.evaluate:
        return _continue_train(args)
    from raytower.train.config import TrainConfig

    cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed), ("val_users", args.val_users),
                                   ("patience", args.patience)) if v is not None}
    if overrides:
        cfg = cfg.replace(**overrides)
    for line in cfg.advice():
        print(f"raytower: warning: {line}", file=sys.stderr)
    _check_device(args.device)
    from raytower._io import check_destination

    if args.out:
        check_destination(args.out, "run", args.force)  # before the data is prepared
    bundle = load_data(args)
    _check_fingerprint(args, bundle)
    from raytower.train.run import train

    out = Path(args.out or f"runs/train-{bundle.name}")
    # For the resume hint; none when --force replaces a run: the new one is built beside it and an
    # interrupted one is discarded, the earlier run kept as it was.
    args.out = None if args.force and out.is_dir() and any(out.iterdir()) else str(out)
    _stop_on_sigterm()
    train(cfg, bundle, out, device=args.device or "cpu", threads=args.threads, force=args.force,
          metric=_train_metric(args))
    print(f"wrote {out / 'metrics.json'}")
    return 0


def _continue_train(args) -> int:
    """--resume OUT (continue from the last epoch) or --evaluate OUT (test a run cut short)."""
    given = [f"--{name.replace('_', '-')}" for name in ("config", "epochs", "seed", "val_users", "patience", "out",
                                                        "metric") if getattr(args, name) is not None]
    if args.resume and args.evaluate:
        given.append("--evaluate")
    if given:
        raise RaytowerError(f"{given[0]} cannot be given with --{'resume' if args.resume else 'evaluate'}: the run "
                            "continues as its run.json records it")
    _check_device(args.device)
    from raytower.train.run import evaluate_run, resume

    out = Path(args.resume or args.evaluate)
    if args.evaluate:
        evaluate_run(out, device=args.device, threads=args.threads)
    else:
        args.out = str(out)
        _stop_on_sigterm()
        resume(out, device=args.device, threads=args.threads)
    print(f"wrote {out / 'metrics.json'}")
    return 0


def _check_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RaytowerError("--device cuda: no CUDA device is available here")


def _train_metric(args) -> str:
    """--metric, else the metric a best_config.json was chosen by, else Recall@100."""
    from raytower.names import DEFAULT_METRIC, check_metric

    if args.metric:
        return check_metric(args.metric)
    import json

    try:
        chosen = json.loads(Path(args.config).read_text())["selection"]["metric"] if args.config else None
    except (OSError, ValueError, KeyError, TypeError):
        chosen = None  # not a best_config.json
    return chosen.removeprefix("val/") if isinstance(chosen, str) else DEFAULT_METRIC


def cmd_tune(args) -> int:
    from raytower.tune._plugins import Plugins, parse_loggers
    from raytower.tune._settings_file import apply_settings_file
    from raytower.tune.settings import from_args, given_fields

    from_file = apply_settings_file(args)  # --config tune.yaml: its values, the command line's over them
    settings = from_args(args)  # a bad flag value is one line before torch or Ray is imported
    plugins = Plugins(loggers=parse_loggers(args.logger))
    plugins.check(settings.resume, api=False)
    from raytower._log import console
    from raytower.tune.search import SearchInterrupted, run_search

    _stop_on_sigterm()
    try:
        run_search(settings, data=args.data, prepare_options=prepare_options(args), log=console,
                   given=given_fields(args.argv[1:]) | from_file, plugins=plugins)
    except SearchInterrupted as e:
        print(f"raytower: {e}", file=sys.stderr)
        print(f"resume it with: {resume_command(args.argv)}", file=sys.stderr)
        return _interrupted_status()
    print(f"wrote {Path(args.out) / 'best_config.json'} and {Path(args.out) / 'trials.parquet'}")
    print(f"retrain it: {retrain_command(args)}")
    for line in next_steps(Path(args.out), settings.study_url):
        print(line)
    return 0


_TERMINATED: list[int] = []


def _stop_on_sigterm() -> None:
    """SIGTERM (timeout, Slurm, docker stop) stops a search as Ctrl-C does: Tune saves it and the
    resume hint is printed; the exit status is then 143. A second SIGTERM ends it at once."""
    import signal

    def on_term(signum, frame):
        _TERMINATED.append(signum)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if not callable(signal.getsignal(signal.SIGINT)):
            # SIGINT ignored (a job a non-interactive shell started with &, nohup): raising it
            # would do nothing, and SIGTERM, handled, would be swallowed too
            raise KeyboardInterrupt
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, on_term)


def _interrupted_status() -> int:
    return 128 + 15 if _TERMINATED else 130


def cmd_best(args) -> int:
    import json

    from raytower.tune.results import export_results, is_best_config

    if args.output:
        from raytower._io import check_file_destination

        check_file_destination(args.output, "best_config.json", is_best_config, args.force)
    # Reads the search and writes nothing in it; the JSON alone goes to stdout (pipe it to jq).
    doc = export_results(args.dir, write=False, log=lambda line: print(line, file=sys.stderr))
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
    print(f"wrote {path} (user_tower.pt2, item_vectors.npy, items.parquet, users.parquet, manifest.json)")
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
    parser = Parser(
        prog="raytower",
        description="Hyperparameter search for two-tower recommenders trained with a two-stage curriculum.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for add in (_data_parsers, _train_parser, _tune_parser, _best_parser, _report_parsers, _export_parsers,
                _submit_parser):
        add(sub)
    return parser


def _data_parsers(sub) -> None:
    data = sub.add_parser("data", help="download and prepare data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND", parser_class=Parser)
    p = data_sub.add_parser("prepare", help="prepare a data source into a cached bundle and print its summary")
    add_data_flags(p)
    p.add_argument("--out", dest="bundle_out", metavar="DIR", help="write the bundle here instead of the cache")
    add_force(p, "bundle")
    p.set_defaults(func=cmd_data_prepare)
    p = data_sub.add_parser("download", help="download a MovieLens release (checksum-verified)")
    p.add_argument("name", help="ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest-small, ml-latest")
    p.add_argument("--out", "--dest", dest="dest", default=None, metavar="DIR",
                   help="unpack into DIR/NAME (default: the raytower cache; --dest: the older spelling)")
    add_force(p, "download in DIR/NAME")
    p.set_defaults(func=cmd_data_download)


def _train_parser(sub) -> None:
    from raytower.names import METRICS

    p = sub.add_parser("train", help="train one configuration: pretraining (cached), the curriculum, test once")
    add_data_flags(p)
    p.add_argument("--config", metavar="FILE", help="config fields as JSON or YAML, or a best_config.json")
    p.add_argument("--epochs", type=positive_int, help="override the config's epochs")
    add_val_users(p)
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="the validation metric that chooses the best epoch, the one tested (default: the one a "
                        "best_config.json was chosen by, else recall@100)")
    p.add_argument("--out", metavar="DIR", help="run directory, new or empty (default runs/train-<dataset>)")
    add_force(p, "run")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default cpu; with --resume or --evaluate, the run's own")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (fix it for reproducible runs; default: torch's choice; with --resume or "
                        "--evaluate, the run's own)")
    p.add_argument("--strict", action="store_true",
                   help="a best_config.json chosen on other data (another fingerprint) is an error, not a warning")
    p.add_argument("--patience", type=non_negative_int, default=None, metavar="N",
                   help="stop after N epochs without a better validation metric, counted from Stage 2 and the "
                        "logQ ramp on (default: the config's; 0: off)")
    p.add_argument("--resume", metavar="OUT", default=None,
                   help="continue the interrupted run in OUT from its last epoch (every epoch is checkpointed)")
    p.add_argument("--evaluate", metavar="OUT", default=None,
                   help="test a run cut short, once, on its best epoch so far (metrics.json says so)")
    p.set_defaults(func=cmd_train)


def _tune_parser(sub) -> None:
    p = sub.add_parser(
        "tune", help="search the curriculum's knobs with Ray Tune + Optuna (TPE) + ASHA",
        description="Search the curriculum's knobs. Writes OUT/best_config.json, OUT/trials.parquet and "
                    "the Optuna study (OUT/optuna.db). --resume continues an interrupted search in OUT; "
                    "it restores Ray Tune's experiment state, which Tune stores as pickles: resume only "
                    "directories raytower itself wrote.")
    add_tune_flags(p)
    p.add_argument("--config", metavar="FILE", help="tune flags from a YAML file (keys: the flags' names, e.g. "
                   "num_samples: 16); flags given here override it")
    p.set_defaults(func=cmd_tune, parser=p)


def _best_parser(sub) -> None:
    p = sub.add_parser("best", help="print the chosen configuration of a finished or interrupted search "
                                    "(what its best_config.json holds); nothing in DIR is written")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--out", "-o", "--output", dest="output", metavar="FILE",
                   help="write it to FILE instead of printing it (-o, --output: the older spellings)")
    add_force(p, "best_config.json at FILE")
    p.set_defaults(func=cmd_best)


def _report_parsers(sub) -> None:
    p = sub.add_parser("report", help="leaderboard and plots of a finished or interrupted search (DIR/report/)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--top", type=positive_int, default=15, help="leaderboard rows (default %(default)s)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("compare", help="several searches side by side")
    p.add_argument("dirs", metavar="DIR", nargs="+")
    p.set_defaults(func=cmd_compare)


def _export_parsers(sub) -> None:
    p = sub.add_parser("export", help="write the chosen model for serving (torch.export user tower, item vectors)")
    p.add_argument("dir", metavar="DIR", help="a finished search, the folder `submit --fetch-to` wrote, or a "
                                              "`raytower train` run")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="a new or empty directory")
    add_force(p, "exported model")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("recommend", help="top items for a user from an exported model")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--user", required=True, help="the user id as in the source data")
    p.add_argument("-k", type=positive_int, default=10)
    p.set_defaults(func=cmd_recommend)


def _submit_parser(sub) -> None:
    p = sub.add_parser("submit", help="run a search on a Ray cluster as a Ray Job; fetch best_config.json back",
                       description="Submit `raytower tune ...` as a Ray Job (it joins the cluster with "
                                   "--address auto), follow its logs, and on success copy best_config.json and "
                                   "trials.parquet from its --out (which must be on shared storage) to this --out (or --fetch-to). "
                                   "The token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token is sent.")
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
                   help="the Jobs API (default %(default)s: `ray dashboard cluster.yaml` tunnels it here)")
    p.add_argument("--out", "--fetch-to", dest="fetch_to", metavar="DIR", default=None,
                   help="copy the results here when the job succeeds (a new or empty directory)")
    add_force(p, "fetched results")
    p.add_argument("--working-dir", metavar="DIR", default=None, help="upload this directory as the job's working_dir")
    p.add_argument("--insecure", action="store_true",
                   help="allow plain http:// to a non-loopback address (the token then travels unencrypted)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop the job after this")
    p.add_argument("tune_args", nargs=argparse.REMAINDER, metavar="-- tune ...", help="the tune command and its flags")
    p.set_defaults(func=cmd_submit)


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
        if args.func is cmd_tune and (Path(args.out) / SEARCH_RECORD).is_file():
            print(f"resume it with: {resume_command(args.argv)}", file=sys.stderr)
        elif args.func is cmd_train and getattr(args, "out", None) and (Path(args.out) / RUN_RECORD).is_file():
            import shlex

            print(f"resume it with: {shlex.join([*this_command(), 'train', '--resume', args.out])}", file=sys.stderr)
        return _interrupted_status()


if __name__ == "__main__":
    sys.exit(main())
