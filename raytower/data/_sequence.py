"""Read the sequence-file layout of the sequential-recommendation literature into RawData.

SASRec, BERT4Rec, gSASRec and SASRec+ ship their data as ``user item`` lines: whitespace-separated,
no header, each user's items in time order (SASRec's ``ml-1m.txt``). The file has no time column,
so a row's time is its line's position in the file: leave-last-out then holds out each user's last
two lines, which is the published protocol. (A global ``--split temporal`` is only meaningful when
the whole file is in time order.)

    raw = read_sequence_file("ml-1m.txt")   # ids as in the file, no metadata
    raw = read_sequence_file("ml-1m.txt", items_path="items.csv", users_path="users.csv",
                             ids_path="interactions.csv")

Metadata. The literature renumbers ids, while metadata tables (``items.csv``: item, title, genres,
year; ``users.csv``: user, age, gender, occupation; as in the generic reader) are usually keyed by
the original ones. An *ids file* bridges them: an interactions file (CSV/Parquet with ``user`` and
``item`` columns) whose row i is the sequence file's row i, in the original ids (ML-1M's
``interactions.csv``). Each renumbered id must match one original id and back; the tables are then
re-keyed to the file's own ids, which the bundle keeps. Without an ids file the tables are keyed by
the file's own ids.

``--data FILE`` picks up ``items.csv``, ``users.csv`` and ``interactions.csv`` beside the file when
they are there; ``FILE:items=PATH,users=PATH,ids=PATH`` names others, and ``none`` turns one off
(``ml-1m.txt:ids=none`` keys the tables by the file's ids).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from raytower.data._generic import (
    _OPENERS, Table, _first_line, _read_items, _read_users, check_file, ids, open_table,
)
from raytower.data._prepare import hash_files
from raytower.data._raw import RawData
from raytower.errors import DataError

SEQUENCE_OPTIONS = ("items", "users", "ids")
BESIDE = {"items": "items.csv", "users": "users.csv", "ids": "interactions.csv"}  # picked up when present
OFF = "none"
READER_VERSION = 1  # part of the fingerprint: a change in how the file is read makes a new bundle
_PAIR_LINE = re.compile(rb"[ \t]*-?\d+[ \t]+-?\d+[ \t]*\r?")
_SAMPLE_BYTES = 1 << 12


def is_sequence_file(path: Path) -> bool:
    """Whether ``path``'s first non-empty line is two whitespace-separated integers: a headerless
    ``user item`` file. A generic log always has a header naming its columns, so none looks so."""
    suffix = path.suffix.lower()
    opener = _OPENERS.get(suffix, open)
    try:
        with opener(path, "rb") as f:
            sample = f.read(_SAMPLE_BYTES)
    except (OSError, EOFError, ValueError):
        return False  # the generic reader reports what is wrong with it
    first = next((line for line in sample.split(b"\n") if line.strip()), b"")
    return bool(_PAIR_LINE.fullmatch(first))


def resolve(path: Path, params: dict[str, str]):
    """(name, source_key, reader) of a sequence file for ``load_bundle``: the key hashes the file and
    every side file, with its role."""
    unknown = sorted(set(params) - set(SEQUENCE_OPTIONS))
    if unknown:
        raise DataError(f"unknown option(s) {unknown} for a `user item` sequence file; known: "
                        f"{list(SEQUENCE_OPTIONS)} (a file path, or none)", path)
    side = side_files(path, params)
    roles = {role: p.name for role, p in side.items() if p}
    key = {"file": hash_files([path, *(p for p in side.values() if p)]), "sequence_reader": READER_VERSION,
           "roles": roles}
    return path.stem, key, lambda: read_sequence_file(path, side["items"], side["users"], side["ids"])


def side_files(path: Path, params: dict[str, str]) -> dict[str, Path | None]:
    """The metadata and ids files to read: as named (``none``: off), else the one beside ``path``."""
    out: dict[str, Path | None] = {}
    for role, default in BESIDE.items():
        given = params.get(role)
        if given is None:
            beside = path.parent / default
            out[role] = beside if beside.is_file() and beside.resolve() != path.resolve() else None
        elif given.strip().lower() == OFF:
            out[role] = None
        else:
            out[role] = check_file(given)
    if out["items"] is None and out["users"] is None:
        out["ids"] = None  # nothing to re-key
    return out


def read_sequence_file(
    path: str | os.PathLike,
    items_path: str | os.PathLike | None = None,
    users_path: str | os.PathLike | None = None,
    ids_path: str | os.PathLike | None = None,
) -> RawData:
    """Read a ``user item`` file; ``items_path``/``users_path`` keyed by the ids of ``ids_path`` (a
    row-aligned interactions file), or by the file's own ids when there is none."""
    path = check_file(path)
    inter = _read_pairs(path)
    inter["timestamp"] = np.arange(len(inter), dtype=np.int64)  # the position in the file
    keys = _key_maps(Path(ids_path), inter, path) if ids_path and (items_path or users_path) else None
    items = users = None
    if items_path:
        items = _rekey(_read_items(items_path, "item", None), "item", keys)
    if users_path:
        users = _rekey(_read_users(users_path, "user", None), "user", keys)
    files = [str(p) for p in (path, items_path, users_path, ids_path if keys else None) if p]
    return RawData(name=path.stem, interactions=inter, items=items, users=users, files=files)


def _read_pairs(path: Path) -> pd.DataFrame:
    """The ``user item`` lines, ids as read (int64 where all are integers), in file order."""
    src = Table(path, "text", ["user", "item"], sep=r"\s+", first_line=1)
    try:
        df = pd.read_csv(path, sep=r"\s+", header=None, dtype=str, engine="c", low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"cannot read `user item` lines ({_first_line(exc)})", path) from None
    if df.shape[1] != 2:
        raise DataError(f"expected `user item` lines (two fields), found {df.shape[1]} field(s) a line", path)
    return pd.DataFrame({
        "user": ids(df[0], src, "user", parse_text=True).to_numpy(),
        "item": ids(df[1], src, "item", parse_text=True).to_numpy(),
    })


def _key_maps(ids_path: Path, inter: pd.DataFrame, path: Path) -> dict[str, pd.DataFrame]:
    """Per column, the one-to-one pairs (own id, key id) that row i of both files gives."""
    src = open_table(ids_path)
    src.require(["user", "item"])
    df = src.load(["user", "item"], str_cols=["user", "item"])
    if len(df) != len(inter):
        raise DataError(f"has {len(df):,} rows but {path.name} has {len(inter):,}: an ids file must hold the "
                        f"same interactions row for row (or give ids=none)", ids_path)
    maps = {}
    for col in ("user", "item"):
        key = ids(df[col], src, col, parse_text=src.is_text)
        pairs = pd.DataFrame({"own": inter[col].to_numpy(), "key": key.to_numpy()}).drop_duplicates()
        for side, other, where in (("own", "key", f"of {path.name}"), ("key", "own", "here")):
            clash = pairs[side].duplicated(keep=False).to_numpy()
            if clash.any():
                first = pairs[clash]
                first = first[first[side] == first[side].iloc[0]]
                raise DataError(f"{col} {first[side].iloc[0]} {where} matches {len(first)} different {col}s "
                                f"({', '.join(map(str, first[other].head(3)))}): row i of the ids file must be "
                                f"row i of {path.name}", ids_path)
        maps[col] = pairs
    return maps


def _rekey(table: pd.DataFrame, col: str, keys: dict[str, pd.DataFrame] | None) -> pd.DataFrame:
    """``table`` keyed by the sequence file's ids: through the ids file's pairs, when there is one.
    Ids are compared as text, as ``_prepare`` aligns tables (an int in one file, a str in another)."""
    if keys is None:
        return table
    pairs = keys[col].assign(key=keys[col]["key"].astype(str))
    t = table.assign(**{col: table[col].astype(str)}).rename(columns={col: "key"})
    out = pairs.merge(t, on="key", how="inner").drop(columns="key").rename(columns={"own": col})
    return out.reset_index(drop=True)
