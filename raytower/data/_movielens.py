"""Read any MovieLens release directory into RawData, whichever of its three layouts it uses.

    ml-100k   u.data (tab-separated), u.item / u.user / u.genre ('|'-separated, latin-1)
    ml-1m     ratings.dat, movies.dat, users.dat ('::'-separated; latin-1)
    ml-10m    ratings.dat, movies.dat ('::'-separated; utf-8; no users), often inside ml-10M100K/
    ml-csv    ratings.csv, movies.csv (ml-20m, -25m, -32m, -latest, -latest-small)

Everything is vectorised pandas: ml-25m has 25M ratings, so no Python loop ever visits a row.
Interactions keep the source's row order; tags and links files are ignored.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd

from raytower.data._generic import (
    Table, bad_rows, check_file, join_genres, to_float, to_int, year_from_title, _first_line, _names,
)
from raytower.data._raw import RawData
from raytower.errors import DataError

# The published ml-100k genre list, for a copy without u.genre. Order = u.item's flag columns.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
# ml-1m users.dat stores occupations as codes (see its README).
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
_RATING_FIELDS = ("user", "item", "rating", "timestamp")


def detect_layout(path: Path) -> str | None:
    """Return "ml-100k", "ml-1m", "ml-10m" or "ml-csv" for a MovieLens directory, else None.

    A directory holding exactly one matching subdirectory (ml-10m unzips to ml-10M100K/)
    counts as that subdirectory.
    """
    found = _locate(Path(path))
    return found[1] if found else None


def read_movielens(path: Path) -> RawData:
    """Read the MovieLens release at ``path``. Raises DataError for an unknown layout or bad files."""
    path = Path(path)
    found = _locate(path)
    if found is None:
        raise DataError("unknown data layout: expected a MovieLens release (u.data; ratings.dat; ratings.csv)", path)
    root, layout = found
    read = {"ml-100k": _read_100k, "ml-1m": _read_dat, "ml-10m": _read_dat, "ml-csv": _read_csv}[layout]
    interactions, items, users, files = read(root)
    # Name it after the directory when that is a release name (ml-latest-small), else the layout.
    name = next((p.name for p in (path.resolve(), root.resolve()) if p.name.startswith("ml-")), layout)
    return RawData(name, interactions, items, users, [str(f) for f in files])


# ---------------------------------------------------------------- layout detection


def _locate(path: Path) -> tuple[Path, str] | None:
    """(directory holding the files, layout), looking one level down if need be."""
    layout = _layout_of(path)
    if layout is not None:
        return path, layout
    if not path.is_dir():
        return None
    matches = [(d, lay) for d in sorted(path.iterdir()) if d.is_dir() and (lay := _layout_of(d))]
    if len(matches) > 1:
        raise DataError(f"holds {len(matches)} data sets ({', '.join(d.name for d, _ in matches)}): "
                        "give --data one of them", path)
    return matches[0] if matches else None


# The file that carries a layout's interactions; two of them in one directory are two data sets.
_RATINGS = {"u.data": "ml-100k", "ratings.dat": "ml-1m/ml-10m", "ratings.csv": "ml-latest (csv)"}
_NEEDS = {"u.data": ("u.item", "u.user"), "ratings.dat": ("movies.dat",), "ratings.csv": ("movies.csv",)}


def _layout_of(d: Path) -> str | None:
    def has(*names: str) -> bool:
        return all((d / n).is_file() for n in names)

    if not d.is_dir():
        return None
    present = [n for n in _RATINGS if (d / n).is_file() and (n != "ratings.dat" or _double_colon(d / n))]
    if len(present) > 1:
        raise DataError(f"holds two data sets ({', '.join(f'{_RATINGS[n]}: {n}' for n in present)}): "
                        "move one out, or give --data a directory with one", d)
    if present:
        missing = [n for n in _NEEDS[present[0]] if not (d / n).is_file()]
        if missing:
            raise DataError(f"a {_RATINGS[present[0]]} release without {' and '.join(missing)} "
                            f"(beside {present[0]})", d)
    if has("u.data", "u.item", "u.user"):
        return "ml-100k"
    if has("ratings.dat", "movies.dat") and _double_colon(d / "ratings.dat"):
        return "ml-1m" if has("users.dat") else "ml-10m"
    if has("ratings.csv", "movies.csv"):
        return "ml-csv"
    return None


def _double_colon(path: Path) -> bool:
    """Whether the first line is '::'-separated. An empty file passes, to be reported as empty."""
    with open(path, "rb") as f:
        first = next((line for line in f if line.strip()), b"")
    return not first or b"::" in first


# ---------------------------------------------------------------- the layouts


def _read_100k(root: Path):
    ratings = _read_ratings(root / "u.data", sep="\t", names=list(_RATING_FIELDS))
    items = _read_100k_items(root / "u.item", _genre_names(root / "u.genre"))
    users = _read_fields(root / "u.user", "|", ["user", "age", "gender", "occupation", "zip"], header=False)
    src = Table(root / "u.user", "text", [], first_line=1)
    users = pd.DataFrame({
        "user": to_int(users["user"], src, "user id field"),
        "age": to_int(users["age"], src, "age field").astype("Int64"),
        "gender": users["gender"],
        "occupation": users["occupation"],
    })
    files = [root / n for n in ("u.data", "u.item", "u.user", "u.genre") if (root / n).is_file()]
    return ratings, items, users.drop_duplicates("user").reset_index(drop=True), files


def _read_100k_items(path: Path, genres: list[str]) -> pd.DataFrame:
    """u.item: id|title|release date|video release date|IMDb URL|19 genre flags."""
    check_file(path)
    lines = pd.Series(_decode(path.read_bytes()).splitlines(), dtype=object)
    src = Table(path, "text", [], first_line=1)
    blank = (lines.str.strip() == "").to_numpy()
    # The flags are the last 19 fields and the id and title the first two, whatever lies between:
    # copies of ml-100k differ in line 267 (an extra field), so fields are not counted from the left.
    flags = lines.str.rsplit("|", n=len(genres), expand=True)
    head = flags.pop(0).str.split("|", n=3, expand=True).reindex(columns=range(4))
    bad = ((~flags.isin(["0", "1"])).any(axis=1) | head[2].isna()).to_numpy() & ~blank
    bad_rows(bad, lines, src, f"{{n}} the wrong shape, expected id|title|date|...|{len(genres)} genre flags (0/1)")
    flags, head = flags[~blank], head[~blank]
    # One vectorised pass per genre column (19), never per row: "Action|Comedy", '' for none.
    joined = pd.Series("", index=flags.index, dtype=object)
    for name, col in zip(genres, flags.columns):
        joined = joined + np.where(flags[col].to_numpy() == "1", name + "|", "")
    # The film's year is in its title; the release date is the fallback (item 267 has neither).
    released = pd.to_numeric(head[2].str.extract(r"(\d{4})\s*$", expand=False), errors="coerce")
    items = pd.DataFrame({
        "item": to_int(head[0], src, "item id field"),
        "title": head[1].str.strip().astype(str),
        "genres": joined.str.rstrip("|").astype(str),
        "year": year_from_title(head[1]).fillna(released.astype("Int64")),
    })
    return items.drop_duplicates("item").reset_index(drop=True)


def _genre_names(path: Path) -> list[str]:
    """The 19 genre names in flag order, from u.genre ("name|index" lines) when it is there."""
    if not path.is_file():
        return list(ML100K_GENRES)
    df = _read_fields(path, "|", ["name", "index"], header=False)
    src = Table(path, "text", [], first_line=1)
    df["index"] = to_int(df["index"], src, "genre index field")
    if sorted(df["index"]) != list(range(len(ML100K_GENRES))):
        raise DataError(f"expected genre indexes 0..{len(ML100K_GENRES) - 1}, found {len(df)} genre lines", path)
    return df.sort_values("index")["name"].tolist()


def _read_dat(root: Path):
    names = ["user", "_1", "item", "_2", "rating", "_3", "timestamp"]  # '::' read as ':' plus empty fields
    ratings = _read_ratings(root / "ratings.dat", sep=":", names=names)
    movies = _read_dat_lines(root / "movies.dat", r"^(\d+)::(.*)::([^:]*)$", ["item", "title", "genres"],
                             "MovieID::Title::Genres")
    items = pd.DataFrame({
        "item": movies["item"].astype("int64"),
        "title": movies["title"].str.strip(),
        "genres": join_genres(movies["genres"].str.strip()),
        "year": year_from_title(movies["title"]),
    }).drop_duplicates("item").reset_index(drop=True)
    files = [root / "ratings.dat", root / "movies.dat"]
    users = None
    if (root / "users.dat").is_file():
        users = _read_1m_users(root / "users.dat")
        files.append(root / "users.dat")
    return ratings, items, users, files


def _read_1m_users(path: Path) -> pd.DataFrame:
    df = _read_dat_lines(path, r"^(\d+)::([^:]*)::(\d+)::(\d+)::(.*)$",
                         ["user", "gender", "age", "occupation", "zip"], "UserID::Gender::Age::Occupation::Zip-code")
    code = df["occupation"].astype("int64")
    src = Table(path, "text", [], first_line=1)
    bad_rows((code >= len(ML1M_OCCUPATIONS)).to_numpy(), df["occupation"], src,
             f"{{n}} an occupation code outside 0..{len(ML1M_OCCUPATIONS) - 1}")
    return pd.DataFrame({
        "user": df["user"].astype("int64"),
        "age": df["age"].astype("int64").astype("Int64"),  # the bucket's lower bound: 1, 18, 25, ..., 56
        "gender": df["gender"].str.strip(),
        "occupation": np.asarray(ML1M_OCCUPATIONS, dtype=object)[code.to_numpy()],
    }).drop_duplicates("user").reset_index(drop=True)


def _read_csv(root: Path):
    ratings = _read_ratings(root / "ratings.csv", sep=",", names=list(_RATING_FIELDS),
                            header=["userId", "movieId", "rating", "timestamp"])
    path = root / "movies.csv"
    df = _read_fields(path, ",", ["movieId", "title", "genres"], header=True)
    src = Table(path, "text", [])
    items = pd.DataFrame({
        "item": to_int(df["movieId"], src, "column 'movieId'"),
        "title": df["title"].str.strip(),
        "genres": join_genres(df["genres"].str.strip()),
        "year": year_from_title(df["title"]),
    }).drop_duplicates("item").reset_index(drop=True)
    return ratings, items, None, [root / "ratings.csv", path]


# ---------------------------------------------------------------- file readers


def _read_ratings(path: Path, sep: str, names: list[str], header: list[str] | None = None) -> pd.DataFrame:
    """user, item, rating, timestamp; the fast typed read, or a diagnosis of why it failed.

    ``header``: the exact header the file must have (None: the file has none).
    """
    check_file(path)
    if header is not None:
        _check_header(path, sep, header, exact=True)
    dtypes = {"user": "int64", "item": "int64", "rating": "float64", "timestamp": "int64"}
    dtypes |= {n: "float32" for n in names if n.startswith("_")}  # the empty halves of '::'
    try:
        df = pd.read_csv(path, sep=sep, header=0 if header else None, names=names, dtype=dtypes,
                         engine="c", quoting=csv.QUOTE_NONE)
    except ValueError:  # ParserError and EmptyDataError too: re-read as text to say which line
        df = None
    if df is None or any(df[n].notna().any() for n in names if n.startswith("_")):
        _diagnose_ratings(path, sep, names, header)
    if len(df) == 0:
        raise DataError("the file has a header but no rows", path)
    return df[["user", "item", "timestamp", "rating"]].reset_index(drop=True)  # the RawData order


def _diagnose_ratings(path: Path, sep: str, names: list[str], header) -> None:
    """Raise a DataError that says which line of a ratings file is bad, and how."""
    try:
        df = pd.read_csv(path, sep=sep, header=0 if header else None, names=names, dtype=str,
                         engine="c", quoting=csv.QUOTE_NONE, encoding="latin-1")
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty", path) from None
    except ValueError as exc:  # includes ParserError: "Expected 4 fields in line 7, saw 5"
        raise DataError(f"cannot parse the file ({_field_count_message(exc, sep)})", path) from None
    src = Table(path, "text", [], first_line=2 if header else 1)
    for n in names:
        if n.startswith("_"):
            bad_rows(df[n].notna().to_numpy(), df[n], src, "{n} fields not separated by '::'")
    for n in ("user", "item", "timestamp"):
        to_int(df[n], src, f"{n} field")
    to_float(df["rating"], src, "rating field")
    raise DataError("cannot parse the file (expected user, item, rating, timestamp on each line)", path)


def _field_count_message(exc: Exception, sep: str) -> str:
    """pandas counts ':'-fields in a '::' file (7 for 4); say it in the file's own terms."""
    text = _first_line(exc)
    m = re.search(r"Expected \d+ fields in line (\d+), saw (\d+)", text)
    if sep == ":" and m:
        return f"line {m[1]} has {(int(m[2]) + 1) // 2} '::'-separated fields, expected 4"
    return text


def _check_header(path: Path, sep: str, expected: list[str], exact: bool) -> None:
    """``exact``: the file is read by position, so extra columns would shift it; else by name."""
    try:
        found = pd.read_csv(path, sep=sep, nrows=0, encoding="utf-8-sig", encoding_errors="replace").columns.tolist()
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read the header ({_first_line(exc)})", path) from None
    if found != expected if exact else not set(expected) <= set(found):
        raise DataError(f"expected the columns {_names(expected)}; the file has {_names(found)}", path)


def _read_fields(path: Path, sep: str, names: list[str], header: bool) -> pd.DataFrame:
    """A small '|'- or ','-separated text table, every field as str ('' where empty)."""
    check_file(path)
    kwargs = dict(sep=sep, dtype=str, keep_default_na=False, engine="c")
    if header:  # read by name; not usecols, which would hide a line with extra fields
        _check_header(path, sep, names, exact=False)
    else:  # headerless MovieLens files never quote, and titles hold '"'
        kwargs |= dict(header=None, names=names, quoting=csv.QUOTE_NONE)
    try:
        df = pd.read_csv(path, encoding=_encoding(path), **kwargs)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot parse the file ({_first_line(exc)})", path) from None
    if len(df) == 0:
        raise DataError("the file has a header but no rows" if header else "the file is empty", path)
    return df[names].fillna("")  # short lines: their missing fields are '' like empty ones


def _read_dat_lines(path: Path, pattern: str, names: list[str], shape: str) -> pd.DataFrame:
    """A '::'-separated file whose text fields may hold ':' (titles), split by one anchored regex."""
    check_file(path)
    lines = pd.Series(_decode(path.read_bytes()).splitlines(), dtype=object)
    blank = lines.str.strip() == ""
    if blank.all():
        raise DataError("the file is empty", path)
    parts = lines.str.extract(pattern)
    parts.columns = names
    src = Table(path, "text", [], first_line=1)
    bad_rows((parts[names[0]].isna() & ~blank).to_numpy(), lines, src, f"{{n}} the wrong shape, expected {shape}")
    return parts[~blank.to_numpy()].reset_index(drop=True)


def _encoding(path: Path) -> str:
    """utf-8 if the whole file decodes as utf-8, else latin-1 (which decodes anything)."""
    try:
        path.read_bytes().decode("utf-8")  # metadata files are small (ml-32m movies.csv: 4 MB)
        return "utf-8"
    except UnicodeDecodeError:
        return "latin-1"


def _decode(data: bytes) -> str:
    """ml-1m is latin-1, ml-10m and the CSV releases utf-8: try utf-8 first, as it fails loudly."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")

