"""The search: check everything, prepare what the trials share, run the Tuner, export the best.

    settings = SearchSettings(space="quick", num_samples=8, max_epochs=6, out="runs/s")  # tune/settings.py
    result = run_search(settings, data="synthetic")

``run_search`` reads top to bottom; each step is one call into the module that does that job:

    raytower.tune._preflight   every check before Ray starts or the data is read
    raytower.tune._session     the Ray session: a local Ray, or a cluster joined and judged
    raytower.tune.artifacts    what the trials share: popularity, pretraining, published to the storage path
    raytower.tune._tuner       the Tuner and its trainable (raytower.trainables.curriculum), new or restored
    raytower.tune.results      trials.parquet and best_config.json, from the files the trials wrote

Layout of the experiment directory (``out``):

    setup.json            the search's record (raytower.tune.record): settings, data, what every trial shares
    optuna.db             the Optuna study (SQLite; any RDB URL with --study-url)
    stops.json            why each early-stopped trial ended (asha, plateau, chance, collapsed, diverged)
    driver_memory.json    the search driver's resident memory each time a trial ended
    tune/                 Ray Tune's experiment: one directory per trial (checkpoints, TensorBoard)
    train/                Ray Train runs (executor "train" only)
    trials.parquet        one row per trial
    best_config.json      the chosen configuration, its validation and (once) test figures
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import asdict
from pathlib import Path

from raytower._io import claim_output_dir, output_kind, writing_in_place
from raytower._lock import refuse_if_held
from raytower._storage import ExperimentStore, experiment_uri, join_uri
from raytower._trial import TrialContext
from raytower.errors import ConfigError
from raytower.names import EXPERIMENT, OPTUNA_DB, RAY_LOG, SEARCH_RECORD
from raytower._log import lines_to
from raytower.tune._plugins import Plugins, logger_destinations
from raytower.tune._preflight import check_output_dir, check_where_it_runs, preflight
from raytower.tune._session import init_ray, join_cluster
from raytower.tune._study import StudyRef, absolute_study_url, claim_study, study_of
from raytower.tune._tuner import make_trainable, new_tuner, restore_tuner, run_then_sign

# Tune pickled the trial directories' namer by this name into the tune/tuner.pkl of searches started
# before it moved to raytower.tune._tuner: --resume of such a search unpickles it from here.
from raytower.tune._tuner import trial_dir_name as _trial_dirname  # noqa: F401
from raytower.tune.artifacts import prepare_shared
from raytower.tune.record import SearchRecord
from raytower.tune.settings import SearchSettings
from raytower.tune.space import SearchSpace, load_space

__all__ = ["SearchInterrupted", "default_grace_period", "init_ray", "prepare_shared", "run_search"]


class SearchInterrupted(Exception):
    """Ctrl-C (or SIGUSR1) stopped the search; Tune saved it, and ``--resume`` continues it."""

    def __init__(self, out: Path, ended: int, total: int):
        self.out, self.ended, self.total = out, ended, total
        super().__init__(f"interrupted: {ended} of {total} trials ended; the search is saved in {out}")


def default_grace_period(space: SearchSpace, max_epochs: int) -> int:
    """ASHA's first rung must come after the latest possible Stage 2 switch and the logQ ramp's
    start, plus a few epochs, or the Stage 2 and logQ knobs cannot change which trials survive."""
    stage1, warmup = (space.largest(name) for name in ("stage1_max_epochs", "logq_warmup_epochs"))
    return max(1, min(max_epochs, int(max(stage1, warmup)) + 3))


def run_search(settings: SearchSettings, data: str = "synthetic", prepare_options=None, log=print,
               given: frozenset[str] | None = None, plugins: Plugins | None = None) -> dict:
    """Preflight, reconcile with an earlier session (``--resume``), prepare what the trials share
    and write the record, run the Tuner, finish. ``settings`` is never changed. ``given``: the settings the
    caller named (``settings.given_fields``); on --resume each must equal the recorded value.
    ``plugins``: callbacks, a sampler, loggers (raytower.tune._plugins), checked by the caller;
    Tune's ResultGrid is left in ``plugins.result_grid``. Every line goes to the ``raytower``
    logger and to ``log`` (None: the logger only), trial and progress lines included.

    One search writes an --out at a time: another is refused, naming its PID. --resume of a killed
    search first stops the Ray processes that search left running."""
    with lines_to(log) as say:
        return _claimed(settings, data, prepare_options, say, given, plugins or Plugins())


def _claimed(settings: SearchSettings, data: str, prepare_options, log, given, plugins: Plugins) -> dict:
    out = Path(settings.out).resolve()
    # recorded as an absolute path: a relative sqlite:///x.db read from another directory made a new, empty db
    settings = dataclasses.replace(settings, study_url=absolute_study_url(settings.study_url))
    refuse_if_held(out)  # a search already writing there: said first
    study = study_of(settings, out)  # its own study, named after it; on --resume the recorded one
    space = preflight(settings, log, study)
    with writing_in_place(out, "search", "--out"):
        check_output_dir(out, settings.resume, settings.min_free_gb)  # again, now that no other search can start
        if settings.resume:
            from raytower.tune._leftovers import stop_leftover_ray

            stop_leftover_ray(out, log)
        return _search(settings, space, out, data, prepare_options, log, given, plugins, study)


def _search(settings: SearchSettings, space: SearchSpace, out: Path, data: str, prepare_options, log,
            given: frozenset[str] | None, plugins: Plugins, study: StudyRef) -> dict:
    previous = _previous_record(settings, out)
    if previous:  # the search goes on as it was started: Tune restores its own state from it too
        settings = _as_recorded(settings, previous, given)
        space = load_space(settings.space)  # the recorded space, when --space was left off
    # The resolved grace period is what the record (and best_config.json) says, never null.
    settings = dataclasses.replace(settings, grace_period=settings.grace_period
                                   or default_grace_period(space, settings.max_epochs), study_name=study.name)
    uri = experiment_uri(out, settings.storage_path)
    check_where_it_runs(settings, uri)
    if settings.resume:  # before anything is written: Tune's restore unpickles its state in tune/
        from raytower.tune._tuner_state import verify_tune_state

        verify_tune_state(uri)
    import ray

    if settings.address:
        join_cluster(settings, log)  # first: a trial the cluster can never place fails now, not later
    from raytower.data import load_bundle

    bundle = load_bundle(data, prepare_options, progress=True)
    if previous and previous.dataset.get("fingerprint") != bundle.fingerprint:
        raise ConfigError(f"--resume: this search ran on data with fingerprint {previous.dataset.get('fingerprint')} "
                          f"({previous.data}), but --data {data} prepares to {bundle.fingerprint}: give the same "
                          "--data and preparation flags", out / SEARCH_RECORD)
    info = _dataset_info(bundle)
    _log_header(settings, space, info, out, log, plugins)  # before the pretraining, which says what it will take
    record = SearchRecord(settings=asdict(settings), data=data, dataset=info,
                          shared=prepare_shared(space, bundle, settings, uri, log),
                          elapsed_s=previous.elapsed_s if previous else 0.0, search_id=study.search_id,
                          plugins=previous.plugins if previous else plugins.describe())
    if not settings.resume:  # --out is created only now: a start that failed before left it untouched
        claim_output_dir(out, "search", force=output_kind(out) == "search")
    record.write(out)
    claim_study(study)  # before Tune's searcher opens it by name

    from raytower.tune._console import ray_logs_to

    plugins.import_loggers()  # their own log lines go to ray.log with Ray's
    with contextlib.nullcontext() if settings.verbose else ray_logs_to(out / RAY_LOG):
        if not settings.address:
            init_ray(settings)
            from raytower.tune._leftovers import record_ray_processes

            record_ray_processes(out)  # what --resume stops if this driver is killed
        start = time.monotonic()
        try:
            plugins.result_grid = _run_tuner(settings, space, record.shared, out, uri, plugins)
        finally:
            ray.shutdown()
    return _finish(settings, record, out, uri, record.elapsed_s + time.monotonic() - start, log)


def _run_tuner(settings: SearchSettings, space: SearchSpace, shared: TrialContext, out: Path, uri: str,
               plugins: Plugins):
    """Tune's run of the trials: the Tuner an interrupted session saved (--resume), else a new one."""
    from ray import tune

    trainable = make_trainable(settings, shared)
    experiment = join_uri(uri, EXPERIMENT)
    if settings.resume and tune.Tuner.can_restore(experiment):
        tuner = restore_tuner(experiment, trainable, uri)
    else:  # a fresh search, or a resumed one whose start failed before Tune saved anything: it starts now
        tuner = new_tuner(settings, space, trainable, out, uri, plugins)
    return run_then_sign(tuner, uri)


def _finish(settings: SearchSettings, record: SearchRecord, out: Path, uri: str, elapsed: float, log=print) -> dict:
    """Record the session's time; export the results, or raise SearchInterrupted when trials are left.

    Wall time is summed over sessions: whether Tune restarts the budget on --resume or not, a
    search that ended short of num_samples after the budget was spent ended for the budget."""
    from raytower.tune.results import export_results, tune_statuses

    statuses = tune_statuses(out)
    budget_spent = settings.time_budget_s is not None and elapsed >= settings.time_budget_s
    record.finish(out, elapsed, budget_spent)
    ended = sum(s in ("TERMINATED", "ERROR") for s in statuses.values())
    if ended < len(statuses) or (len(statuses) < settings.num_samples and not budget_spent):
        # Tune catches the first Ctrl-C itself, saves the experiment and returns: what ended is
        # exported (without test figures), and --resume picks up the rest.
        try:
            export_results(out, log=log)
        except ConfigError:
            pass  # no trial had reported yet
        raise SearchInterrupted(out, ended, settings.num_samples)
    _close_study(settings.study_url or f"sqlite:///{out / OPTUNA_DB}", settings.study_name, log)
    doc = export_results(out, log=log)
    if settings.storage_path:
        # The SQLite study lived on the driver's disk (never on object storage or a network
        # filesystem); a copy goes beside the Tune state now that nothing writes to it.
        copied = ExperimentStore(uri).publish(out)
        log(f"copied {', '.join(copied)} to {uri}")
    return doc


def _log_header(settings: SearchSettings, space: SearchSpace, info: dict, out: Path, log=print,
                plugins: Plugins | None = None) -> None:
    stopping = (f"ASHA grace period {settings.grace_period} epochs, reduction factor {settings.reduction_factor}"
                if settings.scheduler == "asha" else "no early stopping")
    plugins = plugins or Plugins()
    searcher = type(plugins.sampler).__name__ if plugins.sampler is not None else settings.searcher.upper()
    log(f"search: {settings.num_samples} trials of up to {settings.max_epochs} epochs on {info['name']} "
        f"({info['n_users']:,} users, {info['n_items']:,} items, {info['n_interactions']:,} interactions); "
        f"space {settings.space} ({len(space.knobs)} knobs); {searcher} on validation "
        f"{settings.metric}, {stopping}; results in {out}"
        + (f"; logging to {logger_destinations(plugins.loggers, out)}" if plugins.loggers else "")
        + ("" if settings.verbose else f" (Ray's own log: {out / RAY_LOG})"))


def _close_study(storage_url: str, study_name: str, log=print) -> None:
    """No trial stays RUNNING in the study once the search has ended.

    A driver killed just after the searcher asked Optuna for a trial, and before Tune saved that
    trial, leaves it RUNNING in the study with no Tune trial behind it. The resumed searcher reuses
    such trials (TruthfulOptunaSearch.restore); any left over are closed as FAIL here."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=optuna.storages.RDBStorage(storage_url))
    left = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in left:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    if left:
        log(f"closed {len(left)} Optuna trial(s) left RUNNING by an earlier interruption as FAIL")


def _dataset_info(bundle) -> dict:
    return {"name": bundle.name, "fingerprint": bundle.fingerprint, "n_users": bundle.n_users,
            "n_items": bundle.n_items, "n_interactions": bundle.manifest["n_interactions"]}


# --- --resume: the search goes on as it was started ---------------------------------------------


def _previous_record(settings: SearchSettings, out: Path) -> SearchRecord | None:
    """The record of the session a --resume continues; its storage path must be the one given."""
    if not (settings.resume and (out / SEARCH_RECORD).is_file()):
        return None
    previous = SearchRecord.read(out)
    recorded = previous.settings.get("storage_path")
    if settings.storage_path and settings.storage_path != recorded:
        how = (f"in {recorded}; resume it with that storage path" if recorded else
               "in its --out directory; resume it without --storage-path (and with RAYTOWER_STORAGE unset)")
        raise ConfigError(f"--storage-path {settings.storage_path}: this search keeps its Tune state {how}",
                          out / SEARCH_RECORD)
    return previous


# What --resume may change; every other setting is the recorded one (Tune restores the scheduler,
# the searcher and the trials from the first session, so a new value would only skew the record).
RESUME_MAY_CHANGE = ("resume", "verbose", "address", "min_free_gb", "out")


def _as_recorded(settings: SearchSettings, previous: SearchRecord,
                 named: frozenset[str] | None = None) -> SearchSettings:
    """The recorded settings, with this session's RESUME_MAY_CHANGE. A flag given (``named``) with
    another value than the recorded one is refused in one line, even when that value is the
    default; one left off takes the recorded value. Without ``named``, a value other than the
    default counts as given."""
    from raytower.tune.settings import flag_of

    defaults, kept = SearchSettings(), {}
    for f in dataclasses.fields(SearchSettings):
        if f.name in RESUME_MAY_CHANGE or f.name not in previous.settings:  # (a record older than the field)
            continue
        given, recorded = getattr(settings, f.name), previous.settings[f.name]
        named_here = f.name in named if named is not None else given != getattr(defaults, f.name)
        if named_here and given != recorded:
            raise ConfigError(f"{flag_of(f.name)} {given}: this search ran with {recorded}; --resume continues it "
                              "as it was started (leave the flag off)", Path(settings.out).resolve() / SEARCH_RECORD)
        kept[f.name] = recorded
    return dataclasses.replace(settings, **kept)
