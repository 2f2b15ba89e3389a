"""The one place raytower reaches into Ray's and Optuna's private internals, and the versions that
reach is tested with. A version outside the range fails in one line before a search starts.

``_callbacks.TruthfulOptunaSearch`` subclasses Ray's OptunaSearch and ``RecordingASHA`` Ray's ASHA;
what they read of their parents' state, they read through the functions here. ``_tuner_state``
takes over the writes of Tune's experiment state through ``after_experiment_saves``.
"""

from __future__ import annotations

import contextlib
from importlib.metadata import PackageNotFoundError, version

from raytower.errors import RaytowerError

# [lowest, highest) of the versions the test suite runs on; pyproject.toml pins the same.
SUPPORTED = {"ray": ("2.59", "2.61"), "optuna": ("4.0", "6.0")}


def _key(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_dashboard(find_spec=None) -> None:
    """A search starts Ray's dashboard (Train V2's placement-group cleaner reads its State API):
    without ray[default] ray.init fails, after pretraining, with a traceback. Say so first, in a line
    (benchmarks/results/cluster_extra.md)."""
    import importlib.util

    if (find_spec or importlib.util.find_spec)("aiohttp") is None:
        raise RaytowerError("Ray's dashboard packages are missing (aiohttp): a search starts Ray's dashboard, "
                            "which Ray Train's placement-group cleaner reads; pip install 'ray[default]'")


def check_versions(installed=version) -> None:
    for name, (low, high) in SUPPORTED.items():
        try:
            got = installed(name)
        except PackageNotFoundError:
            raise RaytowerError(f"{name} is not installed; raytower needs {name} >= {low}, < {high}") from None
        if not _key(low) <= _key(got) < _key(high):
            raise RaytowerError(f"{name} {got} is installed; raytower reaches into {name}'s internals and is tested "
                                f"with {name} >= {low}, < {high}: install a version in that range")


def published_node_groups() -> list[dict] | None:
    """The resources of the node groups an autoscaler may publish in GCS (Ray's private state API;
    Ray 2.60 itself does not write it yet). None when absent or unreadable."""
    try:
        from ray._private.state import state

        cfg = state.get_cluster_config()
        if cfg is None:
            return None
        return [dict(g.resources) for g in cfg.node_group_configs if g.max_count != 0]
    except Exception:
        return None


def add_trials(searcher, trials) -> None:
    """Add finished Optuna trials to the study behind Ray's OptunaSearch (a warm start)."""
    study(searcher).add_trials(trials)


# --- Ray's OptunaSearch: its study, its Tune trial id -> Optuna trial map, the trials it has told ---


def study(searcher):
    """The Optuna study behind Ray's OptunaSearch."""
    return searcher._ot_study


def optuna_trials(searcher) -> dict:
    """Tune trial id -> the optuna.Trial Ray's OptunaSearch asked for it (live: the searcher's own dict)."""
    return searcher._ot_trials


def told(searcher) -> set:
    """Tune trial ids whose Optuna trial has been told its end (live: the searcher's own set)."""
    return searcher._completed_trials


def optuna_trial_id(trial) -> int:
    """The study-wide id of an optuna.Trial or FrozenTrial (its storage key, not its number)."""
    return trial._trial_id


def optuna_trial(study_, trial_id: int):
    """An optuna.Trial handle on the stored trial ``trial_id`` (to take over one left RUNNING)."""
    import optuna

    return optuna.trial.Trial(study_, trial_id)


def asha_max_t(scheduler) -> int:
    """Ray's ASHA's last rung (max_t)."""
    return scheduler._max_t


# --- Ray Tune's experiment state: where TuneController saves it ---


@contextlib.contextmanager
def after_experiment_saves(handle):
    """While in the block, ``handle(staging_dir, filesystem, experiment_fs_path)`` runs right after
    each save of Tune's experiment state, in the driver's thread that saved it.

    Ray 2.60 (ray/tune/execution/tune_controller.py, experiment_state.py): ``TuneController.save_to_dir``
    writes ``experiment_state-*.json`` and, through the searcher and the callbacks, ``searcher-state-*.pkl``,
    ``search_gen_state-*.json`` and ``callback-states-*.pkl`` into the driver's staging folder
    (``StorageContext.experiment_driver_staging_path``, under /tmp/ray); a background thread then
    copies that folder to the experiment folder (``experiment_fs_path`` on ``storage_filesystem``).
    Whatever ``handle`` takes out of the staging folder, that copy leaves alone."""
    from ray.tune.execution.tune_controller import TuneController

    original = TuneController.save_to_dir

    def save_to_dir(self):
        original(self)
        storage = self._storage
        handle(storage.experiment_driver_staging_path, storage.storage_filesystem, storage.experiment_fs_path)

    TuneController.save_to_dir = save_to_dir
    try:
        yield
    finally:
        TuneController.save_to_dir = original
