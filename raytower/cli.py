"""The ``raytower`` command: data -> train -> tune -> best.

Every user error (a bad file, flag or config) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
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

    return load_bundle(args.data, prepare_options(args), out=getattr(args, "bundle_out", None), progress=progress)


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
    from raytower.data._download import download

    path = download(args.name, args.dest)
    print(path)
    return 0


def cmd_train(args) -> int:
    from raytower.train.config import TrainConfig

    cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    if overrides:
        cfg = cfg.replace(**overrides)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RaytowerError("--device cuda: no CUDA device is available here")
    bundle = load_data(args)
    from raytower.train.run import train

    out = Path(args.out or f"runs/train-{bundle.name}")
    train(cfg, bundle, out, device=args.device, threads=args.threads)
    print(f"wrote {out / 'metrics.json'}")
    return 0


# --- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raytower",
        description="Hyperparameter search for two-tower recommenders trained with a two-stage curriculum.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="download and prepare data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = data_sub.add_parser("prepare", help="prepare a data source into a cached bundle and print its summary")
    add_data_args(p)
    p.add_argument("--out", dest="bundle_out", metavar="DIR", help="write the bundle here instead of the cache")
    p.set_defaults(func=cmd_data_prepare)
    p = data_sub.add_parser("download", help="download a MovieLens release (checksum-verified)")
    p.add_argument("name", help="ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest-small, ml-latest")
    p.add_argument("--dest", default=None, metavar="DIR", help="where to unpack (default: the raytower cache)")
    p.set_defaults(func=cmd_data_download)

    p = sub.add_parser("train", help="train one configuration: pretraining (cached), the curriculum, test once")
    add_data_args(p)
    p.add_argument("--config", metavar="FILE", help="config fields as JSON or YAML, or a best_config.json")
    p.add_argument("--epochs", type=_non_negative_int, help="override the config's epochs")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/train-<dataset>)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads (fix it for reproducible runs; default: torch's choice)")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RaytowerError as e:
        print(f"raytower: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raytower: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
