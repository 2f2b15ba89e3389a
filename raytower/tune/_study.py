"""A search's Optuna study: where it is, its name, and the search that owns it.

    study = study_of(settings, out)    # a new search: a fresh id and name; --resume: setup.json's
    check_study_owner(study)           # preflight: a study another search recorded is refused, nothing written
    claim_study(study)                 # before Tune's searcher opens it: created, with its owner

Several searches may share one --study-url (a team's database). Each gets its own study, named after
its --out folder and a short id unless --study-name names it; the study's user attributes record the
search that created it (STUDY_SEARCH_ID, setup.json's search_id), so a second search never joins it
by accident: Ray's OptunaSearch would load any study of that name and merge the two searches.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from raytower.errors import ConfigError
from raytower.names import OPTUNA_DB, SEARCH_RECORD, STUDY_OUT, STUDY_SEARCH_ID
from raytower.tune.settings import SearchSettings


@dataclass(frozen=True)
class StudyRef:
    url: str  # the Optuna storage URL: --study-url, or OUT/optuna.db
    name: str
    search_id: str  # "": a search recorded before studies had owners (it owns the study named "raytower")
    out: Path


def study_of(settings: SearchSettings, out: Path) -> StudyRef:
    """The study this search writes: on --resume the one its setup.json records, else a new name
    (--study-name, or the name of --out's folder and the first characters of a new search id)."""
    from raytower.tune.record import SearchRecord

    if settings.resume and (out / SEARCH_RECORD).is_file():
        record = SearchRecord.read(out)
        if settings.study_name and settings.study_name != record.study_name:
            raise ConfigError(f"--study-name {settings.study_name}: this search's study is {record.study_name!r}; "
                              "--resume continues it (leave the flag off)", out / SEARCH_RECORD)
        return StudyRef(_url(record.study_url, out), record.study_name, record.search_id, out)
    search_id = uuid.uuid4().hex
    return StudyRef(_url(settings.study_url, out), settings.study_name or f"{out.name}-{search_id[:6]}",
                    search_id, out)


def _url(study_url: str | None, out: Path) -> str:
    return study_url or f"sqlite:///{out / OPTUNA_DB}"


def check_study_owner(study: StudyRef) -> None:
    """A study of this name that another search recorded (or that no raytower search recorded) is
    refused in one line. Nothing is created: a SQLite file that is not there holds no study."""
    if missing_sqlite(study.url):
        return
    import optuna

    storage = optuna.storages.RDBStorage(study.url)
    try:
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(study.name))
    except KeyError:
        return  # no study of that name yet
    _refuse_unless_owner(study, attrs)


def claim_study(study: StudyRef) -> None:
    """Create the study, its owner in its user attributes, before Tune's searcher opens it by name
    (OptunaSearch loads an existing study). One that exists must be this search's: a search started
    at the same moment with the same --study-name loses here, before any trial."""
    import optuna

    storage = optuna.storages.RDBStorage(study.url)
    try:
        study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], study.name)
    except optuna.exceptions.DuplicatedStudyError:
        _refuse_unless_owner(study, storage.get_study_user_attrs(storage.get_study_id_from_name(study.name)))
        return
    storage.set_study_user_attr(study_id, STUDY_SEARCH_ID, study.search_id)
    storage.set_study_user_attr(study_id, STUDY_OUT, str(study.out))


def _refuse_unless_owner(study: StudyRef, attrs: dict) -> None:
    owner = attrs.get(STUDY_SEARCH_ID, "")
    if owner == study.search_id:
        return
    by = f"the search in {attrs[STUDY_OUT]}" if attrs.get(STUDY_OUT) else "another search"
    raise ConfigError(f"study {study.name!r} in {study.url} was recorded by {by}: give this search its own "
                      "--study-name, or --resume the search that owns it")


def in_memory_sqlite(url: str) -> bool:
    """sqlite://, sqlite:///:memory: or a memory URI: a database that lives in one connection."""
    parsed = _parsed_sqlite(url)
    return parsed is not None and (not parsed.database or parsed.database == ":memory:"
                                   or "mode=memory" in parsed.database or parsed.query.get("mode") == "memory")


def absolute_study_url(url: str | None) -> str | None:
    """A SQLite URL with a relative path made absolute, so that the search record names the same file
    from any working directory (--resume, report, best, SearchResult.study)."""
    parsed = _parsed_sqlite(url) if url else None
    if parsed is None or in_memory_sqlite(url) or parsed.database.startswith("file:") \
            or Path(parsed.database).is_absolute():
        return url
    return parsed.set(database=str(Path(parsed.database).resolve())).render_as_string(hide_password=False)


def _parsed_sqlite(url: str):
    """The URL parsed, when it is a SQLite one (None for another dialect or a malformed URL)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - a bad URL is _check_study_url's to report
        return None
    return parsed if parsed.get_backend_name() == "sqlite" else None


def missing_sqlite(url: str) -> bool:
    """A sqlite URL whose file does not exist (opening it would create it)."""
    parsed = _parsed_sqlite(url)
    return parsed is not None and bool(parsed.database) and not Path(parsed.database).exists()
