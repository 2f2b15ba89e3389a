"""Flags that more than one command parses: the data flags, ``--force``, and the whole ``tune``
command, which ``raytower submit`` parses too (a bad flag fails before a job is submitted).

The tune flags are generated from ``SearchSettings``' fields (``raytower.tune.settings``).
"""

from __future__ import annotations

import argparse

DATA_HELP = (
    "data source: a directory (MovieLens layout auto-detected), an interactions file "
    "(.csv/.parquet, options as FILE:user=COL,item=COL,time=COL,rating=COL,items=FILE,users=FILE), "
    "a headerless `user item` sequence file in time order (SASRec's ml-1m.txt; FILE:items=FILE,users=FILE,ids=FILE), "
    "a dataset name (ml-100k, ml-1m, ...; downloaded if missing), a prepared bundle directory, or "
    "synthetic[:key=value,...] (default: synthetic)"
)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage block), like every other raytower error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def add_force(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--force", action="store_true",
                   help=f"replace an earlier raytower {kind} at the destination (never anything else)")


def add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data preparation")
    g.add_argument("--data", default="synthetic", metavar="SOURCE", help=DATA_HELP)
    g.add_argument("--split", choices=["leave_last_out", "temporal"], default="leave_last_out",
                   help="leave-last-out per user (default) or a global temporal split")
    g.add_argument("--cold-frac", type=fraction, default=0.1,
                   help="fraction of users kept out of the LightGCN graph (cold start), seeded (default 0.1)")
    g.add_argument("--k-core", type=non_negative_int, default=0, help="k-core filter (default 0: off)")
    g.add_argument("--min-rating", type=float, default=None,
                   help="implicit feedback: keep interactions with rating >= this (default: keep all)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the cold-start draw (default 0)")


def prepare_options(args):
    from raytower.data import PrepareOptions

    return PrepareOptions(split=args.split, cold_frac=args.cold_frac, k_core=args.k_core,
                          min_rating=args.min_rating, seed=args.data_seed)


def add_tune_flags(p: argparse.ArgumentParser) -> None:
    from raytower.tune.settings import add_flags

    add_data_flags(p)
    add_flags(p)


def parse_tune(argv: list[str]):
    """``tune`` flags -> (parsed args, validated SearchSettings); one-line errors (exit 2 / ConfigError)."""
    from raytower.tune.settings import from_args

    p = Parser(prog="raytower tune")
    add_tune_flags(p)
    args = p.parse_args(argv)
    return args, from_args(args)
