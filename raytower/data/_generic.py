"""Read any interaction log (CSV/TSV/Parquet) into RawData, and the checks every reader shares.

    raw = read_interactions_file("log.parquet", user_col="uid", item_col="sku", time_col="ts")

Readers only parse (see ``_raw``). Every failure a user can cause -- a missing or empty file, a
missing column, a bad timestamp or rating, a file that is not what its name says -- becomes a
one-line ``DataError`` naming the file, the problem and the first bad row, because a traceback
from deep inside pandas or pyarrow tells the user nothing about what to fix.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raytower.data._raw import RawData
from raytower.errors import DataError

TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}  # pandas reads these too
_SEP_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}
_SNIFF_SEPS = ("\t", ",", ";", "|")  # on a tie the earlier one wins
_SAMPLE_BYTES = 1 << 16
# Text ids that survive int() and back unchanged; "007" stays a str so it never meets "7".
_INT_ID = r"0|-?[1-9][0-9]{0,17}"
YEAR_IN_TITLE = r"\((\d{4})\)\s*$"  # "Toy Story (1995)" -> 1995; ranges like "(2006-2007)" -> <NA>


def read_interactions_file(
    path: str | os.PathLike,
    *,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str = "timestamp",
    rating_col: str | None = None,
    items_path: str | os.PathLike | None = None,
    users_path: str | os.PathLike | None = None,
    item_col_in_items: str | None = None,
    sep: str | None = None,
) -> RawData:
    """Read one interaction log (.csv/.tsv/.txt, optionally .gz/.bz2/.xz, or .parquet/.pq).

    ``rating_col=None`` uses a column named ``rating`` if the file has one. ``sep`` is sniffed
    from the header line when None; 'tab', 'comma', 'semicolon', 'pipe' and 'space' name
    separators that are awkward to type. Raises DataError for any bad input.
    """
    src = open_table(path, sep)
    wanted = {"user": user_col, "item": item_col, "timestamp": time_col}
    if rating_col is not None:
        wanted["rating"] = rating_col
    elif "rating" in src.columns:
        wanted["rating"] = "rating"
    src.require(list(wanted.values()), hint=" (name yours as FILE:user=COL,item=COL,time=COL)")
    df = src.load(list(dict.fromkeys(wanted.values())), str_cols=[user_col, item_col])

    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    out["user"] = ids(df[user_col], src, user_col, parse_text=src.is_text)
    out["item"] = ids(df[item_col], src, item_col, parse_text=src.is_text)
    out["timestamp"] = to_seconds(df[time_col], src, f"column {time_col!r}")
    if "rating" in wanted:
        out["rating"] = to_float(df[wanted["rating"]], src, f"column {wanted['rating']!r}")

    items = _read_items(items_path, item_col_in_items or item_col, sep) if items_path else None
    users = _read_users(users_path, user_col, sep) if users_path else None
    files = [str(p) for p in (path, items_path, users_path) if p]
    return RawData(name=src.path.stem, interactions=out, items=items, users=users, files=files)


# ---------------------------------------------------------------- side tables


def _read_items(path, id_col: str, sep: str | None) -> pd.DataFrame:
    """An item table: the id plus any of title, genres ('|'-joined or a list), year."""
    src = open_table(path, sep)
    id_col = src.pick_id(id_col, "item")
    df = src.load([id_col] + src.present("title", "genres", "year"), str_cols=[id_col])
    out = pd.DataFrame({"item": ids(df[id_col], src, id_col, parse_text=src.is_text)})
    if "title" in df:
        out["title"] = df["title"].fillna("").astype(str).to_numpy()
    if "genres" in df:
        out["genres"] = join_genres(df["genres"]).to_numpy()
    if "year" in df:
        out["year"] = pd.to_numeric(df["year"], errors="coerce").round().astype("Int64").array
    elif "title" in out:  # MovieLens-style titles carry the year; use it rather than drop it
        out["year"] = year_from_title(out["title"]).array
    return out.drop_duplicates("item").reset_index(drop=True)


def _read_users(path, id_col: str, sep: str | None) -> pd.DataFrame:
    """A user table: the id plus any of age, gender, occupation."""
    src = open_table(path, sep)
    id_col = src.pick_id(id_col, "user")
    df = src.load([id_col] + src.present("age", "gender", "occupation"), str_cols=[id_col])
    out = pd.DataFrame({"user": ids(df[id_col], src, id_col, parse_text=src.is_text)})
    if "age" in df:
        out["age"] = pd.to_numeric(df["age"], errors="coerce").round().astype("Int64").array
    for col in ("gender", "occupation"):
        if col in df:
            out[col] = df[col].fillna("").astype(str).to_numpy()
    return out.drop_duplicates("user").reset_index(drop=True)


def join_genres(values: pd.Series) -> pd.Series:
    """Genres as one '|'-joined str: lists (Parquet) are joined, missing becomes ''."""
    first = values.dropna().head(1)
    if len(first) and pd.api.types.is_list_like(first.iloc[0]):  # a Parquet list column
        values = values.map(lambda v: "|".join(map(str, v)) if pd.api.types.is_list_like(v) else v)
    return values.fillna("").astype(str).replace("(no genres listed)", "")


def year_from_title(titles: pd.Series) -> pd.Series:
    """The trailing "(YYYY)" of each title as Int64, <NA> where there is none."""
    return pd.to_numeric(titles.astype(str).str.extract(YEAR_IN_TITLE, expand=False), errors="coerce").astype("Int64")


# ---------------------------------------------------------------- opening files


@dataclass
class Table:
    """An opened, checked file: its kind, columns and how to read it."""

    path: Path
    kind: str  # "text" or "parquet"
    columns: list[str]
    sep: str | None = None
    encoding: str = "utf-8"
    first_line: int = 2  # text files: the line number of the first data row (1 when headerless)

    @property
    def is_text(self) -> bool:
        return self.kind == "text"

    def where(self, pos: int) -> str:
        """Where row ``pos`` (0-based, data rows) is, in the user's terms."""
        return f"line {pos + self.first_line}" if self.is_text else f"row {pos + 1}"

    def require(self, names: list[str], hint: str = "") -> None:
        missing = [c for c in dict.fromkeys(names) if c not in self.columns]
        if missing:
            raise DataError(f"missing column(s) {_names(missing)}; the file has {_names(self.columns)}"
                            f"{_header_hint(self.columns) or hint}", self.path)

    def present(self, *names: str) -> list[str]:
        return [c for c in names if c in self.columns]

    def pick_id(self, preferred: str, fallback: str) -> str:
        """The id column of a side table: ``preferred`` (the log's name) or the plain ``fallback``."""
        for name in (preferred, fallback):
            if name in self.columns:
                return name
        self.require([preferred])
        return preferred  # unreachable: require() raised

    def load(self, columns: list[str], str_cols: list[str] = ()) -> pd.DataFrame:
        """Read ``columns`` (ids in ``str_cols`` as text, so "007" keeps its zeros)."""
        df = _load_parquet(self, columns) if self.kind == "parquet" else _load_text(self, columns, str_cols)
        if len(df) == 0:
            raise DataError("the file has a header but no rows" if self.is_text else "the file has no rows", self.path)
        return df


def open_table(path: str | os.PathLike, sep: str | None = None) -> Table:
    """Check that ``path`` is a non-empty CSV/TSV/Parquet file of the kind its name says; read its header."""
    path = check_file(path)
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in _OPENERS
    kind_suffix = suffixes[-2] if compressed and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    if kind_suffix in PARQUET_SUFFIXES and not compressed:
        return _open_parquet(path)
    if kind_suffix in TEXT_SUFFIXES:
        return _open_text(path, sep, _OPENERS[suffixes[-1]] if compressed else open, kind_suffix)
    known = ", ".join(TEXT_SUFFIXES + PARQUET_SUFFIXES)
    raise DataError(f"unsupported file type {''.join(path.suffixes) or '(no extension)'!r}: expected {known}", path)


def check_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, if it is a non-empty regular file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError("is a directory, expected a file", path)
    if not path.is_file():
        raise DataError("no such file", path)
    if path.stat().st_size == 0:
        raise DataError("the file is empty (0 bytes)", path)
    return path


def _open_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as exc:  # pyarrow raises several types for garbage; all mean "not Parquet"
        raise DataError(f"not a readable Parquet file ({_first_line(exc)})", path) from None
    return Table(path, "parquet", names)


def _load_parquet(src: Table, columns: list[str]) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(src.path, columns=columns).to_pandas()
    except Exception as exc:  # a file with a good footer but corrupt pages fails only here
        raise DataError(f"not a readable Parquet file ({_first_line(exc)})", src.path) from None


def _open_text(path: Path, sep: str | None, opener, kind_suffix: str) -> Table:
    try:
        with opener(path, "rb") as f:
            sample = f.read(_SAMPLE_BYTES)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"cannot decompress the file ({_first_line(exc)})", path) from None
    if not sample.strip():
        raise DataError("the file is empty", path)
    if sample.startswith(b"PAR1"):
        raise DataError("looks like a Parquet file, not text: rename it to .parquet", path)
    if _looks_binary(sample):
        raise DataError(f"looks binary, not a text {kind_suffix} file", path)
    encoding = _guess_encoding(sample)
    if sep is None:
        sep = "\t" if kind_suffix == ".tsv" else _sniff_sep(sample.decode(encoding, errors="replace"))
    sep = _SEP_NAMES.get(sep, sep)
    try:
        header = pd.read_csv(path, sep=sep, nrows=0, encoding=encoding, engine=_engine(sep))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the header ({_first_line(exc)})", path) from None
    return Table(path, "text", [str(c) for c in header.columns], sep, encoding)


def _load_text(src: Table, columns: list[str], str_cols) -> pd.DataFrame:
    # All columns, then pick: with usecols pandas silently takes the first fields of a line that
    # has too many (an unquoted "Lamp, Brass"); without it, that line is a ParserError we report.
    kwargs = dict(sep=src.sep, engine=_engine(src.sep), dtype={c: str for c in str_cols if c in columns})
    if kwargs["engine"] == "c":
        kwargs["low_memory"] = False  # one dtype per column, not one per chunk
    try:
        try:
            df = pd.read_csv(src.path, encoding=src.encoding, **kwargs)
        except UnicodeDecodeError:  # the sample was utf-8 but a later byte is not: old latin-1 exports
            df = pd.read_csv(src.path, encoding="latin-1", **kwargs)
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"cannot parse the file ({_first_line(exc)})", src.path) from None
    return df[columns]


def _engine(sep: str) -> str:
    # The C parser takes one character (or whitespace runs); longer separators are regexes.
    return "c" if len(sep) == 1 or sep == r"\s+" else "python"


def _sniff_sep(text: str) -> str:
    """The separator, from the header line alone: data rows may hold quoted separators, headers rarely do."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    best = max(_SNIFF_SEPS, key=header.count)  # max keeps the first of equal counts
    if header.count(best):
        return best
    return r"\s+" if len(header.split()) > 1 else ","


def _looks_binary(sample: bytes) -> bool:
    """NUL bytes or many control characters: no CSV/TSV export has them."""
    if b"\x00" in sample:
        return True
    control = sum(sample.count(bytes([b])) for b in range(32) if b not in (9, 10, 12, 13))
    return control > len(sample) // 100


def _guess_encoding(sample: bytes) -> str:
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 3:  # not just a character cut at the sample's end
            return "latin-1"
    return "utf-8"


# ---------------------------------------------------------------- column checks


def ids(values: pd.Series, src: Table, col: str, parse_text: bool) -> pd.Series:
    """Ids as read: int64 where every id is an integer, else str. Missing ids are an error."""
    bad = values.isna().to_numpy()
    bad_rows(bad, values, src, f"column {col!r}: {{n}} no id")
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.astype("int64")
    if pd.api.types.is_float_dtype(values.dtype) and (values % 1 == 0).all():
        return values.astype("int64")  # an int column that once held NaN, e.g. from pandas
    text = values.astype(str)
    if parse_text and text.str.fullmatch(_INT_ID).all():
        # pyarrow's cast parses in C; Series.astype goes through Python objects (4x slower).
        return pd.Series(pc.cast(pa.array(text.array), pa.int64()).to_numpy(), index=text.index)
    return text


def to_seconds(values: pd.Series, src: Table, label: str) -> pd.Series:
    """Timestamps as int64 seconds, from int/float seconds, datetimes or ISO 8601 strings.

    ``label`` names the column in messages, e.g. "column 'ts'".
    """
    if pd.api.types.is_integer_dtype(values.dtype) and values.dtype != np.uint64:
        return values.astype("int64")
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _datetime_seconds(values, src, label)
    if not pd.api.types.is_numeric_dtype(values.dtype):
        sample = values.dropna().head(1000)
        if pd.to_numeric(sample, errors="coerce").isna().mean() > 0.5:  # mostly text dates, not numbers
            parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
            return _datetime_seconds(parsed, src, label, raw=values)
    num = pd.to_numeric(values, errors="coerce").astype("float64")
    # Past +-2**62 seconds int64 arithmetic on times overflows (it once made every time INT64_MIN).
    bad_rows(~(np.abs(num.to_numpy()) < _MAX_SECONDS), values, src, label + _BAD_TIME)
    return np.floor(num).astype("int64")


_MAX_SECONDS = 2.0**62
_BAD_TIME = (": {n} a missing or unparseable timestamp (or one out of range), expected integer seconds "
             "(|t| < 2**62) or ISO 8601 datetimes")


def _datetime_seconds(dt: pd.Series, src: Table, label: str, raw: pd.Series | None = None) -> pd.Series:
    bad_rows(dt.isna().to_numpy(), dt if raw is None else raw, src, label + _BAD_TIME)
    if dt.dt.tz is None:
        dt = dt.dt.tz_localize("UTC")  # naive datetimes are taken as UTC, like naive ISO strings
    return ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype("int64")


def to_float(values: pd.Series, src: Table, label: str) -> pd.Series:
    """A numeric column as float64; missing or non-numeric values are an error."""
    num = pd.to_numeric(values, errors="coerce").astype("float64")
    bad_rows(~np.isfinite(num.to_numpy()), values, src, f"{label}: {{n}} a missing or non-numeric value")
    return num


def to_int(values: pd.Series, src: Table, label: str) -> pd.Series:
    """An integer column (MovieLens ids, codes) as int64; anything else is an error."""
    num = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
    bad_rows(~(np.abs(num) < 2.0**63) | (num % 1 != 0), values, src,
             f"{label}: {{n}} a missing, non-integer or out-of-range value")
    return pd.Series(num.astype("int64"), index=values.index)


def bad_rows(bad: np.ndarray, values: pd.Series, src: Table, problem: str) -> None:
    """Raise if any row is ``bad``: how many, and the first one with its value.

    ``problem`` holds ``{n}``, which becomes "3 rows have" / "1 row has".
    """
    n = int(np.count_nonzero(bad))
    if not n:
        return
    pos = int(np.argmax(bad))
    value = values.iloc[pos]
    shown = "empty" if pd.isna(value) or str(value).strip() == "" else repr(_clip(str(value)))
    rows = f"{n:,} rows have" if n > 1 else "1 row has"
    # replace, not format: column names are the user's and may hold braces
    raise DataError(f"{problem.replace('{n}', rows)} (first at {src.where(pos)}: {shown})", src.path)


def _names(columns: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(_clip(str(c))) for c in columns[:limit])
    return f"[{shown}{', ...' if len(columns) > limit else ''}]"


def _header_hint(columns: list[str]) -> str:
    # A header of numbers is the first data row: MovieLens-style files have no header.
    if columns and all(str(c).replace(".", "", 1).lstrip("-").isdigit() for c in columns):
        return " (the first line looks like data: the file needs a header row naming its columns)"
    return ""


def _clip(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _first_line(exc: BaseException) -> str:
    """An exception's message, one line, without pandas' "Error tokenizing data. C error: " noise."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace("Error tokenizing data. C error: ", "")
