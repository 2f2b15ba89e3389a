"""The Tuner of a search and its trainable: Optuna's sampler and the searcher around it (with the
space's start points and a warm start), ASHA, the stopper, the callbacks; or the Tuner restored
from an interrupted search. Tune keeps its state as pickles, so each of its files in ``tune/`` is
signed whenever Ray writes it (raytower.tune._tuner_state).

    trainable = make_trainable(settings, shared)
    tuner = new_tuner(settings, space, trainable, out, uri)     # or restore_tuner(experiment, trainable, uri)
    run_then_sign(tuner, uri)
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from raytower._trial import TrialContext
from raytower.errors import ConfigError
from raytower.names import (DRIVER_MEMORY, EXPERIMENT, OPTUNA_DB, SEARCH_RECORD, STOPS, STUDY, WARM_START_FROM,
                            WARM_START_NUMBER, trial_dirname, val_key)
from raytower.tune._tuner_state import sign_tuner_state, signed_state_writes, verify_tune_state
from raytower.tune.settings import SearchSettings
from raytower.tune.space import SearchSpace


def make_trainable(settings: SearchSettings, shared: TrialContext):
    """The curriculum as a Tune trainable (raytower.trainables.curriculum), with the resources of
    one trial; ``shared`` is bound to it as plain data, out of the trial's config."""
    from ray import tune

    from raytower.trainables.curriculum import function_trainable, train_driver

    context = asdict(shared)  # plain data to the trials: they need not import this module
    if settings.resolved_executor == "function":
        return tune.with_resources(tune.with_parameters(function_trainable, context=context),
                                   {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    # The trial is only the Train run's driver: it holds a raytower_driver slot, no CPU. Its
    # workers get their own placement group; reserving their CPUs in the trial too deadlocks.
    return tune.with_resources(tune.with_parameters(train_driver, context=context), {"cpu": 0, "raytower_driver": 1})


def new_tuner(settings: SearchSettings, space: SearchSpace, trainable, out: Path, uri: str, plugins=None):
    """A fresh search's Tuner: TPE (or random) through Optuna's study, ASHA, the curriculum's stopper;
    ``plugins`` (raytower.tune._plugins): a caller's sampler instead, its loggers and callbacks after ours."""
    import optuna
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from raytower.tune._callbacks import CurriculumStopper, DriverMemory, RecordingASHA, StopLog, TruthfulOptunaSearch
    from raytower.tune._console import ConsoleReporter

    metric = val_key(settings.metric)
    stops = StopLog(str(out / STOPS))
    storage = optuna.storages.RDBStorage(settings.study_url or f"sqlite:///{out / OPTUNA_DB}")
    sampler = plugins.sampler if plugins and plugins.sampler is not None else make_sampler(settings)
    warm = warm_trials(Path(settings.warm_start)) if settings.warm_start else []
    searcher = TruthfulOptunaSearch(
        space=space.define_by_run, metric=metric, mode="max", sampler=sampler, storage=storage,
        study_name=settings.study_name, points_to_evaluate=_not_run_yet(list(space.start_from), warm) or None,
        log=stops, truthful=settings.truthful_pruning,
    )
    scheduler = (RecordingASHA(stops, max_t=settings.max_epochs, grace_period=settings.grace_period,
                               reduction_factor=settings.reduction_factor)
                 if settings.scheduler == "asha" else None)
    param_space = {"epochs": settings.max_epochs, "val_users": settings.val_users}
    stopper = CurriculumStopper(stops, settings.chance_patience, settings.collapse_frac,
                                patience=settings.patience, grace=settings.grace_period, metric=metric)
    # The trainable writes the curriculum's scalars to TensorBoard under stable names; Tune's own
    # TBX logger would write a second copy of every metric. Keep its JSON and CSV loggers only.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    run_config = tune.RunConfig(
        name=EXPERIMENT, storage_path=uri, stop=stopper, verbose=1 if settings.verbose else 0,
        # Trial directories (TensorBoard files) go to the storage path too, not only checkpoints.
        sync_config=tune.SyncConfig(sync_artifacts=bool(settings.storage_path)),
        callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), DriverMemory(str(out / DRIVER_MEMORY))]
        + ([] if settings.verbose else [ConsoleReporter(settings.num_samples, space.names, stops, settings.max_epochs,
                                                       settings.metric)])
        + (plugins.tune_callbacks(out) if plugins else []),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=metric,
                                                checkpoint_score_order="max"),
        failure_config=tune.FailureConfig(max_failures=2),
    )
    if warm:
        from raytower.tune._adapter import add_trials

        add_trials(searcher, warm)
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=settings.num_samples,
                                    max_concurrent_trials=settings.max_concurrent,
                                    time_budget_s=settings.time_budget_s,
                                    # metric/mode here (not on ASHA) so the progress table shows the best trial
                                    metric=metric, mode="max", trial_dirname_creator=trial_dir_name),
        run_config=run_config,
    )
    sign_tuner_state(uri)  # Tuner() wrote tune/tuner.pkl: Ray's only write of it
    return tuner


def restore_tuner(experiment: str, trainable, uri: str):
    """The Tuner of an interrupted search, as Tune saved it: the searcher (TPE state, the study's
    trial map), the stopper and every unfinished trial from its newest checkpoint. Building a new
    searcher instead would enqueue the start points into the study a second time. Tune keeps this
    state as pickles: resume only directories raytower wrote, and its files only as this user's key
    signed them."""
    from ray import tune

    verify_tune_state(uri)  # again, just before Ray unpickles it
    tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    sign_tuner_state(uri)
    return tuner


def run_then_sign(tuner, uri: str):
    """``tuner.fit()``, each save of Tune's experiment state written signed, then the signature of
    tune/tuner.pkl as Ray left it, however fit ended."""
    try:
        with signed_state_writes():
            return tuner.fit()
    finally:  # however fit ended (done, interrupted, failed), the file is as Ray left it: sign that
        sign_tuner_state(uri)


def trial_dir_name(trial) -> str:
    return trial_dirname(trial.trial_id)


def startup_trials(num_samples: int) -> int:
    """TPE's random start-up trials: a quarter of the search, at least 4, at most Optuna's 10."""
    # Optuna's 10 random start-up trials are half of a 20-trial search; a quarter of the budget
    # (the start points among them) leaves TPE most of it.
    return min(10, max(4, num_samples // 4))


def make_sampler(settings: SearchSettings):
    """Optuna's sampler for ``--searcher``. tpe-mv is TPE over the joint distribution of knobs that
    are sampled together (Falkner et al.'s multivariate TPE); ``group=True`` splits the space by which
    knobs each trial has, so the conditional ``lr_ratio`` (only with unfreeze_depth > 0) is modelled
    jointly where present instead of falling back to independent sampling."""
    import warnings

    import optuna

    if settings.searcher == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    # Both spelled out: Optuna 5 made multivariate (None -> True for one objective) and the constant
    # liar (penalise configurations near running trials) the defaults, Optuna 4 had neither; "tpe"
    # means the same, independent TPE on every supported version.
    multivariate = settings.searcher == "tpe-mv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate, group, liar
        return optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=startup_trials(settings.num_samples),
                                          multivariate=multivariate, group=multivariate, constant_liar=True)


def warm_trials(earlier: Path) -> list:
    """The earlier study's finished trials (values and pruned histories), each marked with where it
    came from, so the new study tells them apart from its own trials."""
    import optuna

    from raytower.tune.record import SearchRecord

    # its own study (--study-url, else optuna.db) by its name; "raytower" where its record is older than names
    record = SearchRecord.read(earlier) if (earlier / SEARCH_RECORD).is_file() else None
    where = (record and record.study_url) or earlier / OPTUNA_DB
    try:
        old = optuna.load_study(study_name=record.study_name if record else STUDY,
                                storage=where if isinstance(where, str) else f"sqlite:///{where}")
    except Exception as e:  # not a raytower study
        raise ConfigError(f"--warm-start: cannot read the study ({type(e).__name__})", where) from None
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [optuna.trial.create_trial(
        state=t.state, value=t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
        params=t.params, distributions=t.distributions, intermediate_values=t.intermediate_values,
        user_attrs={**t.user_attrs, WARM_START_FROM: str(earlier.resolve()), WARM_START_NUMBER: t.number},
    ) for t in old.trials if t.state in done]


def _not_run_yet(points: list[dict], trials: list) -> list[dict]:
    """Start points that no warm-start trial has already run (they would only be run again)."""
    return [p for p in points if not any(t.params == p for t in trials)]
