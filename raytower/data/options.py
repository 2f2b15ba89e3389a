"""How a log becomes a bundle: ``PrepareOptions``, standard library only, so the command line builds
its data flags from it (``raytower._flags``) before it imports NumPy or pandas."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from raytower.errors import DataError


@dataclass(frozen=True)
class PrepareOptions:
    """How a log becomes a bundle. Part of the fingerprint: change one and you get a new bundle."""

    # A field with "help" in its metadata is a flag of every command that prepares data
    # (raytower._flags.add_data_flags), "--" + its name unless "flag" says otherwise.
    split: str = field(default="leave_last_out", metadata={
        "help": "leave-last-out per user (default) or a global temporal split",
        "choices": ("leave_last_out", "temporal")})
    temporal_val_frac: float = 0.1  # temporal split: the last fractions of all interactions by time
    temporal_test_frac: float = 0.1
    cold_frac: float = field(default=0.1, metadata={  # users kept out of the LightGCN graph: cold start apart
        "help": "fraction of users kept out of the LightGCN graph (cold start), seeded (default 0.1; the "
                "literature's protocol evaluates every user: 0)"})
    seed: int = field(default=0, metadata={"help": "seed of the cold-start draw (default 0)", "flag": "--data-seed"})
    min_user_interactions: int = 3  # leave-last-out needs train + validation + test
    k_core: int = field(default=0, metadata={  # a 5-core filter would drop 333 of ml-100k's 1,682 items
        "help": "k-core filter (default 0: off)"})
    min_rating: float | None = field(default=None, metadata={
        "help": "implicit feedback: keep interactions with rating >= this (default: keep all)"})

    def __post_init__(self) -> None:
        for f in fields(self):  # the Python API passes values as they come: "3" is no k_core
            value = getattr(self, f.name)
            if type(value) not in _TYPES[str(f.type)]:
                raise DataError(f"{f.name} must be {f.type}, got {value!r}")
        if self.seed < 0:
            raise DataError(f"seed must be >= 0, got {self.seed}")
        if self.split not in ("leave_last_out", "temporal"):
            raise DataError(f"unknown split {self.split!r}: use leave_last_out or temporal")
        if not 0.0 <= self.cold_frac < 1.0:
            raise DataError(f"cold_frac must be in [0, 1), got {self.cold_frac}")
        if self.min_user_interactions < 3:
            raise DataError("min_user_interactions must be at least 3 (train, validation, test)")
        if self.k_core < 0:
            raise DataError(f"k_core must be >= 0, got {self.k_core}")
        for name in ("temporal_val_frac", "temporal_test_frac"):
            if not 0.0 < getattr(self, name) < 0.5:
                raise DataError(f"{name} must be in (0, 0.5), got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PrepareOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"unknown preparation option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)




# A field's annotation -> the types its value may have (an int is a float; a bool is neither).
_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "float | None": (int, float, type(None))}


def flag_fields() -> list:
    """The fields that are command-line flags, in order."""
    return [f for f in fields(PrepareOptions) if "help" in f.metadata]


def flag_name(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")
