"""What every reader returns: one interaction log plus optional item and user tables.

Readers (MovieLens layouts, generic files, the synthetic generator) only parse; all filtering,
splitting and id mapping happens once, in ``_prepare``, so every source gets the same treatment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

INTERACTION_COLUMNS = ("user", "item", "timestamp")  # plus optional "rating"
ITEM_COLUMNS = ("item",)  # plus optional "title", "genres" ('|'-joined), "year" (nullable Int64)
USER_COLUMNS = ("user",)  # plus optional "age" (Int64), "gender" (str), "occupation" (str)


@dataclass
class RawData:
    """A parsed source, in the source file's row order (ties in timestamp keep that order).

    interactions: columns ``user``, ``item`` (ids as read: int or str), ``timestamp`` (int64,
        seconds), optionally ``rating`` (float).
    items: one row per item id, columns ``item`` and any of ``title`` (str), ``genres``
        ('|'-joined str, '' for none) and ``year`` (pandas nullable Int64, <NA> where unknown).
    users: one row per user id, columns ``user`` and any of ``age`` (Int64), ``gender`` (str),
        ``occupation`` (str).
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    files: list[str] = field(default_factory=list)  # the files read, for fingerprints and errors
