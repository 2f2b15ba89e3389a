"""A search's record (``OUT/setup.json``): its settings, its data, what the trials share.

    record = SearchRecord.read(out)
    record.shared.bundle, record.shared.artifact_path(cfg), record.metric
    store = store_of(out)      # where its Tune and Train state lives

Written once when the search starts (``write``) and updated once when it ends (``finish``); every
module that reads a search directory reads it through this class, not by raw keys.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raytower._io import write_json
from raytower._storage import ExperimentStore
from raytower._trial import TrialContext
from raytower.errors import ConfigError
from raytower.names import DEFAULT_METRIC, SEARCH_RECORD, STUDY
from raytower.tune.settings import with_current_names


@dataclass
class SearchRecord:
    settings: dict[str, Any]  # SearchSettings as given (asdict), the storage path reconciled on resume
    data: str  # the --data source
    shared: TrialContext  # what every trial is handed; the key "shared" in the file
    dataset: dict[str, Any]  # name, fingerprint, n_users, n_items, n_interactions
    elapsed_s: float = 0.0  # wall time summed over sessions (a resumed search adds to it)
    time_budget_spent: bool = False
    # A random id, also the study's user attribute STUDY_SEARCH_ID (raytower.tune._study): which
    # search owns a study. "": a record from before it existed.
    search_id: str = ""
    # What a caller plugged in (Plugins.describe: a sampler that replaced settings' searcher, callbacks,
    # loggers), by class name; {} for a record from before it existed or a search with none
    plugins: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer raytower wrote: kept, not read

    @property
    def metric(self) -> str:
        """The selection metric (``--metric``); records written before it existed used Recall@100."""
        return self.settings.get("metric") or DEFAULT_METRIC

    @property
    def study_url(self) -> str | None:
        """The --study-url the search ran with (None: OUT/optuna.db)."""
        return self.settings.get("study_url")

    @property
    def study_name(self) -> str:
        """The Optuna study's name: --study-name, or its default; "raytower" in a record older than both."""
        return self.settings.get("study_name") or STUDY

    @property
    def num_samples(self) -> int:
        return int(self.settings["num_samples"])

    @property
    def max_epochs(self) -> int:
        return int(self.settings["max_epochs"])

    @classmethod
    def read(cls, out: str | Path) -> "SearchRecord":
        path = Path(out) / SEARCH_RECORD
        try:
            doc = json.loads(path.read_text())
            known = {f.name for f in dataclasses.fields(cls)} - {"shared", "extra", "settings"}
            return cls(**{k: doc[k] for k in known if k in doc},
                       settings=with_current_names(doc["settings"]),  # a record older than a rename
                       # "setup" is the key raytower 0.x used for the shared part
                       shared=TrialContext.from_dict(doc.get("shared") or doc["setup"]),
                       extra={k: v for k, v in doc.items() if k not in known | {"settings", "shared", "setup"}})
        except FileNotFoundError:
            raise ConfigError("not a raytower search directory (no setup.json)", Path(out)) from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"damaged search record ({type(e).__name__}: {e})", path) from None

    def to_dict(self) -> dict:
        doc = asdict(self)
        return {**doc.pop("extra"), **doc}

    def write(self, out: str | Path) -> None:
        write_json(Path(out) / SEARCH_RECORD, self.to_dict())

    def finish(self, out: str | Path, elapsed_s: float, budget_spent: bool) -> None:
        """The one update after the search: its total wall time, and whether the budget ended it."""
        self.elapsed_s = round(elapsed_s, 1)
        self.time_budget_spent = budget_spent
        self.write(out)


def store_of(out: str | Path) -> ExperimentStore:
    """Where the search in ``out`` keeps its Tune and Train state: its storage path, or ``out``."""
    return ExperimentStore(SearchRecord.read(out).shared.experiment_uri or str(Path(out).resolve()))
