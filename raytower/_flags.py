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
    """--data and a flag per PrepareOptions field that has one: one source for names, defaults, help."""
    from raytower.data.options import flag_fields, flag_name

    g = p.add_argument_group("data preparation")
    g.add_argument("--data", default="synthetic", metavar="SOURCE", help=DATA_HELP)
    for f in flag_fields():
        kind = {"cold_frac": fraction, "k_core": non_negative_int}.get(f.name) or _field_type(f.type)
        extra = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {"type": kind}
        g.add_argument(flag_name(f), dest=_dest(f), default=f.default, help=f.metadata["help"], **extra)


def _dest(f) -> str:
    """The attribute a data flag parses into: --data-seed -> data_seed."""
    from raytower.data.options import flag_name

    return flag_name(f).lstrip("-").replace("-", "_")


def _field_type(annotation: str):
    """``float | None`` -> float: what a flag's text converts to."""
    return {"int": int, "float": float, "str": str}[annotation.split("|")[0].strip()]


def prepare_options(args):
    """The PrepareOptions the data flags ask for."""
    from raytower.data.options import PrepareOptions, flag_fields

    return PrepareOptions(**{f.name: getattr(args, _dest(f)) for f in flag_fields()})


def data_flags_given(args) -> list[str]:
    """The data flags whose values differ from the defaults, as command-line words (a retrain hint
    prepares the data the same way)."""
    from raytower.data.options import flag_fields, flag_name

    words = []
    for f in flag_fields():
        value = getattr(args, _dest(f))
        if value != f.default:
            words += [flag_name(f), str(value)]
    return words


def add_val_users(p: argparse.ArgumentParser) -> None:
    """``raytower train --val-users``: the tune flag (SearchSettings.val_users, its one definition),
    with no default of its own: the config's holds."""
    from raytower.tune.settings import add_flag

    add_flag(p, "val_users", None, default_text="the config's")


def add_tune_flags(p: argparse.ArgumentParser) -> None:
    from raytower.tune.settings import add_flags

    add_data_flags(p)
    add_flags(p)
    p.add_argument("--logger", action="append", metavar="NAME",
                   help="also log every trial's results to mlflow or wandb (repeat it, or mlflow,wandb), through Ray's "
                        "MLflowLoggerCallback / WandbLoggerCallback; where they write is theirs to say: "
                        "MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME (default: the name of --out), WANDB_PROJECT "
                        "(default raytower), WANDB_MODE. Extras: pip install 'raytower[mlflow]' / 'raytower[wandb]'")


def parse_tune(argv: list[str]):
    """``tune`` flags -> (parsed args, validated SearchSettings); one-line errors (exit 2 / ConfigError)."""
    from raytower.tune.settings import from_args

    p = Parser(prog="raytower tune")
    add_tune_flags(p)
    args = p.parse_args(argv)
    return args, from_args(args)
