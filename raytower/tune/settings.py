"""A search's settings: one dataclass, and the ``raytower tune`` flags generated from its fields.

    settings = SearchSettings(space="quick", num_samples=8, max_epochs=6, out="runs/s")
    add_flags(parser); settings = from_args(parser.parse_args(argv))

Each field's flag, type and help live in its ``metadata``, so the dataclass, the CLI and
``raytower submit`` (which parses the same flags before submitting) cannot drift apart. Validation
is ``validate()``: a flag and the Python API give the same one-line error.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import MISSING, dataclass, field, fields

from raytower.errors import ConfigError
from raytower.names import DEFAULT_METRIC, METRICS, check_metric
from raytower.train.config import VAL_USERS_AUTO, TrainConfig

EXECUTORS = ("auto", "function", "train")
SCHEDULERS = ("asha", "none")
SEARCHERS = ("tpe", "tpe-mv", "random")  # tpe-mv: multivariate TPE over groups of knobs


def _flag(help: str, flag: str | None = None, alias: str | None = None, **argparse_kw) -> dict:
    """A field's flag: its help, its spelling when not --field-name, and an older spelling still
    accepted for one release (``alias``, deprecated: it says so on stderr)."""
    return {"help": help, "flag": flag, "alias": alias, **argparse_kw}


# Fields renamed, old name -> new: the old keyword (raytower.search), flag and record key are read
# for one release after the rename.
RENAMED = {"storage": "study_url"}  # 0.x: --storage, the Optuna study's URL, beside Ray's --storage-path


@dataclass
class SearchSettings:
    space: str = field(default="default", metadata=_flag(
        "search space: quick or default (shipped with raytower; copies in the repository's search_spaces/), "
        "or a YAML file (default %(default)s)", metavar="SPACE"))
    num_samples: int = field(default=20, metadata=_flag("trials (default %(default)s)"))
    max_epochs: int = field(default=30, metadata=_flag("epochs of a trial that is never stopped (default %(default)s)"))
    metric: str = field(default=DEFAULT_METRIC, metadata=_flag(
        "the validation metric the search selects on: ASHA, TPE, the plateau stop, the kept checkpoints and "
        "the final choice all use it. With one held-out item per user, Recall@K is the hit rate "
        "(default %(default)s)", choices=METRICS))
    out: str = field(default="runs/search", metadata=_flag("experiment directory (default %(default)s)",
                                                           metavar="DIR"))
    address: str | None = field(default=None, metadata=_flag(
        "join a Ray cluster ('auto' on a cluster node, or host:port); default: a private local Ray"))
    executor: str = field(default="auto", metadata=_flag(
        "function: the loop runs in the Tune trial (one CPU worker, least overhead); train: a Ray Train "
        "TorchTrainer per trial (DDP, GPUs); auto: train when GPUs or several workers are asked for",
        choices=EXECUTORS))
    cpus_per_trial: float = field(default=1.0, metadata=_flag("CPUs per trial worker (default %(default)s)"))
    gpus_per_trial: float = field(default=0.0, metadata=_flag("fractions allowed, e.g. 0.5"))
    workers_per_trial: int = field(default=1, metadata=_flag("DDP workers (executor train)"))
    threads_per_trial: int | None = field(default=None, metadata=_flag(
        "torch threads in each trial (default: --cpus-per-trial, at least 1)"))
    max_concurrent: int | None = field(default=None, metadata=_flag("default: as many as resources allow"))
    seed: int = field(default=0, metadata=_flag("seed of the TPE sampler"))
    time_budget_s: float | None = field(default=None, metadata=_flag(
        "stop starting trials after this", flag="--time-budget", metavar="SECONDS"))
    grace_period: int | None = field(default=None, metadata=_flag(
        "ASHA's first rung in epochs (default: after the latest Stage 2 switch + 3)"))
    # 3: with the default space's grace period of 9, 30-epoch trials get rungs at 9 and 27, the
    # setting every ASHA figure in docs/studies.md and benchmarks/results/search.md was measured with.
    reduction_factor: int = field(default=3, metadata=_flag("ASHA's reduction factor (default %(default)s)"))
    scheduler: str = field(default="asha", metadata=_flag("early stopping (default %(default)s)", choices=SCHEDULERS))
    searcher: str = field(default="tpe", metadata=_flag(
        "tpe: Optuna's TPE, each knob on its own; tpe-mv: multivariate TPE (multivariate=True, group=True), "
        "which models knobs that move together, such as temperature and its anneal; random (default %(default)s)",
        choices=SEARCHERS))
    truthful_pruning: bool = field(default=True, metadata=_flag(
        "tell Optuna what Ray's OptunaSearch does (early-stopped = COMPLETE) instead of PRUNED",
        flag="--no-truthful-pruning"))
    study_url: str | None = field(default=None, metadata=_flag(
        "where the Optuna study lives: an RDB URL such as postgresql://... (default: sqlite in OUT, optuna.db)",
        metavar="URL", alias="--storage"))
    study_name: str | None = field(default=None, metadata=_flag(
        "the Optuna study's name in --study-url (default: the name of --out's folder and a short id, as setup.json "
        "records it). A study another search recorded is refused, so two searches never merge into one",
        metavar="NAME"))
    storage_path: str | None = field(default=None, metadata=_flag(
        "where Ray keeps trial results and checkpoints on a cluster: s3://BUCKET/PREFIX, gs://..., or a "
        "directory every node mounts (default: $RAYTOWER_STORAGE, else OUT). The search goes in URI/<name of "
        "OUT>; the Optuna study stays in OUT and is copied there at the end", metavar="URI",
        env="RAYTOWER_STORAGE"))
    chance_patience: int = field(default=3, metadata=_flag(
        "epochs at or above the random-guess loss before a trial is stopped as 'chance' (default %(default)s)"))
    patience: int = field(default=5, metadata=_flag(
        "stop a trial as 'plateau' when its validation metric has not improved for this many epochs, counted "
        "from ASHA's grace period on; 0 turns it off (default %(default)s)"))
    # 0.25: in issue 17's study the whole item tower at LR 1e-2 fell to effective rank 8.5 to 13.4 of 64
    # (3 seeds) and ended at popularity's level; healthy runs stayed above 50, a poor one at 27.6
    collapse_frac: float = field(default=0.25, metadata=_flag(
        "stop a trial as 'collapsed' when its item vectors' effective rank falls under this x dim in Stage 2 "
        "(default %(default)s)"))
    resume: bool = field(default=False, metadata=_flag(
        "continue the interrupted search in --out (only directories raytower wrote: Ray Tune restores its "
        "state from pickles)"))
    warm_start: str | None = field(default=None, metadata=_flag(
        "seed TPE with the finished trials of an earlier search's study", metavar="DIR"))
    min_free_gb: float = field(default=1.0, metadata=_flag(
        "refuse to start with less free disk than this under --out (default %(default)s)"))
    # raytower train's --val-users too (raytower._flags.add_val_users), its default the config's
    val_users: int = field(default=TrainConfig.val_users, metadata=_flag(
        "validate each epoch on a seeded sample of N users, the same in every epoch and trial (its standard "
        f"error is printed beside Recall@100); 0: all; -1: all up to {VAL_USERS_AUTO:,} users, a sample of "
        f"{VAL_USERS_AUTO:,} above (default %(default)s). Test always ranks every user", metavar="N"))
    verbose: int = field(default=0, metadata=_flag(
        "also show Ray's own output (progress tables, trial logs); by default it goes to OUT/ray.log",
        flag="-v", action="count"))

    def validate(self, api: bool = False) -> None:
        """One-line errors, named by flag, or with ``api`` by keyword (the Python API's names)."""
        def name(field_name: str) -> str:
            return field_name if api else flag_of(field_name)

        self._check_types(name)
        positive = ("num_samples", "max_epochs", "workers_per_trial", "threads_per_trial", "max_concurrent",
                    "grace_period", "chance_patience")
        for field_name in positive:
            v = getattr(self, field_name)
            if v is not None and v < 1:
                raise ConfigError(f"{name(field_name)} must be >= 1, got {v}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError(f"{name('cpus_per_trial')} must be > 0 and {name('gpus_per_trial')} >= 0")
        for field_name, choices in (("executor", EXECUTORS), ("scheduler", SCHEDULERS), ("searcher", SEARCHERS)):
            if getattr(self, field_name) not in choices:
                raise ConfigError(f"{name(field_name)} must be one of {', '.join(choices)}, got "
                                  f"{getattr(self, field_name)!r}")
        check_metric(self.metric, name("metric"))
        if self.patience < 0:
            raise ConfigError(f"{name('patience')} must be >= 0, got {self.patience}")
        if self.reduction_factor < 2:
            raise ConfigError(f"{name('reduction_factor')} must be >= 2, got {self.reduction_factor}")
        if not 0 < self.collapse_frac < 1:
            raise ConfigError(f"{name('collapse_frac')} must be in (0, 1), got {self.collapse_frac}")
        if not 0 <= self.seed < 2**32:  # the TPE sampler's numpy seed
            raise ConfigError(f"{name('seed')} must be in [0, 2**32), got {self.seed}")
        if self.val_users < -1:
            raise ConfigError(f"{name('val_users')} must be -1 (auto), 0 (all) or a number of users, got "
                              f"{self.val_users}")
        if self.study_name is not None and not (0 < len(self.study_name.strip()) <= 512  # Optuna's column
                                                and self.study_name.isprintable()):  # a newline split the lines
            raise ConfigError(f"{name('study_name')} must be 1 to 512 printable characters, got "
                              f"{self.study_name!r}"[:200])
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(f"{name('time_budget_s')} must be > 0 seconds, got {self.time_budget_s}")

    def _check_types(self, name) -> None:
        """Each value of its field's type (an int where a float is asked is fine): the CLI converts
        its flags, the Python API does not (``max_epochs="3"`` is a UsageError, not a TypeError later)."""
        from raytower.errors import UsageError

        for f in fields(self):
            v, kind = getattr(self, f.name), _scalar_type(f.type)
            if v is None and "None" in f.type:
                continue
            ok = isinstance(v, kind) and not (isinstance(v, bool) and kind is not bool)
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                ok = True
            if not ok:
                raise UsageError(f"{name(f.name)} must be {kind.__name__}, got {type(v).__name__} {v!r}"[:200])

    @property
    def resolved_executor(self) -> str:
        if self.executor != "auto":
            return self.executor
        # One CPU worker: the Tune function is the same loop without a Train run's start-up cost.
        return "train" if self.gpus_per_trial > 0 or self.workers_per_trial > 1 else "function"


def with_current_names(given: dict) -> dict:
    """``given`` (keywords, or a record's settings) with each RENAMED field under its current name;
    where both names are there, the current one wins."""
    out = dict(given)
    for old, new in RENAMED.items():
        if old in out:
            out.setdefault(new, out.pop(old))
    return out


def flag_of(name: str) -> str:
    f = next(f for f in fields(SearchSettings) if f.name == name)
    return f.metadata.get("flag") or "--" + name.replace("_", "-")


def _scalar_type(annotation: str):
    """``int | None`` -> int: the type a flag's text converts to."""
    return {"int": int, "float": float, "str": str, "bool": bool}[annotation.split("|")[0].strip()]


class _DeprecatedAlias(argparse.Action):
    """A flag's older spelling, kept for one release: it sets the same field and says so on stderr
    (``quiet``: a second parse of the same command line says nothing more)."""

    def __init__(self, option_strings, dest, new_flag: str, quiet: bool = False, **kw):
        super().__init__(option_strings, dest, **kw)
        self.new_flag, self.quiet = new_flag, quiet

    def __call__(self, parser, namespace, values, option_string=None):
        if not self.quiet:
            print(f"raytower: warning: {option_string} is deprecated and goes in the next release; use {self.new_flag}",
                  file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_flags(parser: argparse.ArgumentParser, defaults: bool = True, quiet: bool = False) -> None:
    """One flag per field of SearchSettings, its default the field's (``out``: required by none).
    ``defaults=False``: no defaults at all, so a parse holds only the flags given. ``quiet``: no
    deprecation note for an old spelling."""
    for f in fields(SearchSettings):
        default = f.default if f.default is not MISSING else None
        if f.metadata.get("env"):
            default = os.environ.get(f.metadata["env"]) or default
        add_flag(parser, f.name, default if defaults else argparse.SUPPRESS, quiet=quiet)


def add_flag(parser: argparse.ArgumentParser, name: str, default, quiet: bool = False,
             default_text: str | None = None) -> None:
    """The flag of one field: its spelling, type, help and older spelling, from the field's metadata.
    ``default_text``: what the help calls the default, for a command whose default is not the
    field's (``raytower train --val-users``: the config's)."""
    f = next(f for f in fields(SearchSettings) if f.name == name)
    meta = dict(f.metadata)
    flag, help_, alias = meta.pop("flag") or "--" + name.replace("_", "-"), meta.pop("help"), meta.pop("alias", None)
    meta.pop("env", None)
    if default_text is not None:
        help_ = help_.replace("default %(default)s", f"default: {default_text}")
    # the old spelling and the new one together: the last given won, silently (search() refuses both)
    target = parser.add_mutually_exclusive_group() if alias else parser
    if alias:
        target.add_argument(alias, dest=name, type=_scalar_type(f.type), default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS, action=_DeprecatedAlias, new_flag=flag, quiet=quiet)
    kind = _scalar_type(f.type)
    if kind is bool:  # a switch that flips the field's default
        action = "store_false" if f.default else "store_true"
        target.add_argument(flag, dest=name, action=action, default=default, help=help_)
    elif meta.get("action") == "count":
        target.add_argument(flag, "--" + name, dest=name, default=default, help=help_, **meta)
    else:
        target.add_argument(flag, dest=name, type=kind, default=default, help=help_, **meta)


def given_fields(argv: list[str]) -> frozenset[str]:
    """The fields a ``raytower tune`` command line names, whatever their values: ``--resume``
    compares each with the record, so ``--max-epochs 30`` is refused on a search started with 60
    although 30 is the default."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add_flags(parser, defaults=False, quiet=True)
    known, _ = parser.parse_known_args(argv)  # argv was parsed once already: it holds no bad flag
    return frozenset(vars(known))


def from_args(args: argparse.Namespace) -> SearchSettings:
    """The settings a parsed ``raytower tune`` command line asks for, validated."""
    settings = SearchSettings(**{f.name: getattr(args, f.name) for f in fields(SearchSettings)})
    settings.validate()
    return settings
