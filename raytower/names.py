"""The names modules agree on: the selection metric, the user features, the files of a search, the study.

One place, so a metric key or a file name is never spelled twice. With one held-out item per user
(leave-last-out), Recall@K is the hit rate: 1 when that item is in the top K, else 0.
"""

from __future__ import annotations

from enum import Enum

from raytower.errors import ConfigError

KS = (10, 20, 50, 100)
# What a search may select on (``--metric``): validation Recall@K or NDCG@K, full ranking.
METRICS = tuple(f"{m}@{k}" for m in ("recall", "ndcg") for k in KS)
DEFAULT_METRIC = "recall@100"
# The user features a bundle carries (users.parquet) and the user tower reads, in this order.
META_COLUMNS = ("age_bucket", "gender_idx", "occupation_idx")

# A search's directory (``--out``): files raytower writes beside Tune's experiment.
SEARCH_RECORD = "setup.json"  # the search's record (raytower.tune.record.SearchRecord); the name is 0.x's
BEST_CONFIG = "best_config.json"
TRIALS = "trials.parquet"
STOPS = "stops.json"
OPTUNA_DB = "optuna.db"
DRIVER_MEMORY = "driver_memory.json"
RAY_LOG = "ray.log"
EXPERIMENT = "tune"  # Tune's experiment directory under the storage path
TRAIN_RUNS = "train"  # Ray Train runs (executor "train")
STUDY = "raytower"  # the Optuna study's name in searches recorded before each had its own (--study-name)
TRIAL_STATE = "state.pt"  # in each Tune checkpoint: a trial's trainable state (trainables/curriculum.py)

# A `raytower train` run's directory (raytower.train.run writes it; export, resume and evaluate read it)
RUN_RECORD = "run.json"  # what the run was asked to do: enough for --resume and --evaluate
BEST_CHECKPOINT = "checkpoints/best.pt"  # the best validation epoch's state: the one tested and exported
LAST_CHECKPOINT = "checkpoints/last.pt"  # the latest epoch's state: where --resume continues
RUN_METRICS = "metrics.json"  # the result, written once at the end

# What `raytower submit --out` fetches (raytower.submit writes it; export reads it)
FETCHED_CHECKPOINT = "checkpoint.pt"  # the chosen trial's best epoch
FETCHED_FILES = (BEST_CONFIG, TRIALS, SEARCH_RECORD)
# Optuna user attributes that link a study's trials to the search's records
TUNE_TRIAL_ID = "tune_trial_id"  # the Tune trial (trials.parquet's trial_id, tune/trial_<id>/)
STOP_REASON = "stop_reason"  # completed, plateau, asha, chance, collapsed, diverged, error
EPOCHS = "epochs"  # epochs the trial ran
WARM_START_FROM = "warm_start_from"  # a trial copied from an earlier search's study (--warm-start)
WARM_START_NUMBER = "warm_start_number"  # its number in that study
# Optuna user attributes of the study itself: the search that owns it (raytower.tune._study)
STUDY_SEARCH_ID = "raytower_search_id"  # setup.json's search_id
STUDY_OUT = "raytower_out"  # that search's --out, for the line that refuses another search


class StopReason(str, Enum):
    """Why a trial (or a ``raytower train`` run) ended. A str, so it compares, prints and is stored
    as its value ("diverged"), in JSON, Parquet and Optuna's user attributes alike."""

    COMPLETED = "completed"  # ran its epochs
    PLATEAU = "plateau"  # no better validation metric for ``patience`` epochs: converged
    ASHA = "asha"  # stopped by ASHA at a rung
    CHANCE = "chance"  # training loss at or above the random guess's for ``chance_patience`` epochs
    COLLAPSED = "collapsed"  # the item vectors' effective rank fell under collapse_frac x their width
    DIVERGED = "diverged"  # a NaN or infinite loss
    ERROR = "error"  # the trial raised
    UNFINISHED = "unfinished"  # still running when the search was interrupted
    TIME_BUDGET = "time_budget"  # ended by the search's time budget
    CUT_SHORT = "cut_short"  # a train run stopped from outside, tested on request (--evaluate)

    __str__ = str.__str__  # "diverged", not "StopReason.DIVERGED", on every Python
    __format__ = str.__format__


# Why a trial ended early. A trial stopped for one of BROKEN never wins, whatever its best reads.
STOP_REASONS = (StopReason.ASHA, StopReason.PLATEAU, StopReason.CHANCE, StopReason.COLLAPSED, StopReason.DIVERGED)
BROKEN = (StopReason.DIVERGED, StopReason.CHANCE, StopReason.COLLAPSED, StopReason.ERROR)


def check_metric(metric: str, name: str = "--metric") -> str:
    """``metric`` if raytower can select on it, else a one-line error naming the choices (and the
    flag, or the keyword, ``name``)."""
    if metric not in METRICS:
        raise ConfigError(f"{name} must be one of {', '.join(METRICS)}, got {metric!r}")
    return metric


def val_key(metric: str = DEFAULT_METRIC) -> str:
    """The key of a validation metric in a trial's per-epoch row: ``val/recall@100``."""
    return f"val/{metric}"


def best_key(metric: str = DEFAULT_METRIC) -> str:
    """The key of a trial's best validation value so far: ``best/val/recall@100``."""
    return f"best/{val_key(metric)}"


def label(metric: str) -> str:
    """Short, for tables and console lines: ``R@100``, ``NDCG@10``."""
    name, k = metric.split("@")
    return f"{'R' if name == 'recall' else name.upper()}@{k}"


def title(metric: str) -> str:
    """For prose: ``Recall@100``, ``NDCG@10``."""
    name, k = metric.split("@")
    return f"{'Recall' if name == 'recall' else name.upper()}@{k}"


def trial_dirname(trial_id: str) -> str:
    return f"trial_{trial_id}"


def train_run_name(trial_id: str) -> str:
    """The Ray Train run of a trial with executor "train": stable, so a restarted trial resumes it."""
    return f"train-{trial_id}"
