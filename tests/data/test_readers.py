"""Readers: each MovieLens layout and any generic log parse to the RawData contract, and bad input
is always a one-line DataError that names the file.

The fixtures under fixtures/ are tiny invented rows in the published formats, never real
MovieLens data (every user has at least 3 interactions, so they also survive ``prepare``'s
defaults); the real ml-100k comes from the ``ml100k_dir`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytower.data._generic import read_interactions_file
from raytower.data._movielens import ML100K_GENRES, detect_layout, read_movielens
from raytower.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


def genres_of(items: pd.DataFrame) -> set[str]:
    return set(items["genres"].str.split("|").explode()) - {""}


def raises_one_line(fn, *args, file: str, match: str, **kwargs) -> str:
    """Call ``fn``; it must raise a one-line DataError naming ``file`` and matching ``match``."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert file in message, message
    assert re.search(match, message), message
    return message


def assert_contract(raw) -> None:
    """The column types every reader promises (see raytower/data/_raw.py)."""
    inter = raw.interactions
    assert list(inter.columns[:3]) == ["user", "item", "timestamp"]
    assert inter["timestamp"].dtype == "int64"
    if "rating" in inter:
        assert inter["rating"].dtype == "float64"
    for table, key in ((raw.items, "item"), (raw.users, "user")):
        if table is not None:
            assert table[key].is_unique
    if raw.items is not None and "year" in raw.items:
        assert raw.items["year"].dtype == "Int64"
    if raw.users is not None and "age" in raw.users:
        assert raw.users["age"].dtype == "Int64"


# ---------------------------------------------------------------- the real ml-100k


@pytest.fixture(scope="module")
def ml100k(ml100k_dir):
    return read_movielens(ml100k_dir)


def test_ml100k_counts_and_types(ml100k, ml100k_dir):
    assert detect_layout(ml100k_dir) == "ml-100k"
    assert ml100k.name == "ml-100k"
    assert_contract(ml100k)
    inter = ml100k.interactions
    assert len(inter) == 100_000
    assert inter["user"].nunique() == 943 and len(ml100k.users) == 943
    assert inter["item"].nunique() == 1682 and len(ml100k.items) == 1682
    assert inter["user"].dtype == "int64" and inter["item"].dtype == "int64"
    # Source row order: u.data's first line is "196 242 3 881250949".
    assert inter.iloc[0].tolist() == [196, 242, 881250949, 3.0]


def test_ml100k_items(ml100k, ml100k_dir):
    items = ml100k.items.set_index("item")
    assert genres_of(ml100k.items) == set(ML100K_GENRES) and len(ML100K_GENRES) == 19
    assert items.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert items.loc[1, "year"] == 1995
    assert pd.isna(items.loc[267, "year"])  # "unknown": no title year, no release date
    titles = ml100k.items["title"]
    assert not titles.str.contains("Ã").any()  # latin-1 read as latin-1, not as utf-8 mojibake
    raw = (ml100k_dir / "u.item").read_bytes()
    if b"Mis\xe9rables" in raw or "Misérables".encode() in raw:
        assert items.loc[543, "title"] == "Misérables, Les (1995)"
    else:  # a copy whose accents were replaced by U+FFFD upstream; the mini fixture covers latin-1
        assert items.loc[543, "title"].startswith("Mis") and items.loc[543, "title"].endswith("rables, Les (1995)")


def test_ml100k_users(ml100k):
    users = ml100k.users.set_index("user")
    assert {"age", "gender", "occupation"} <= set(users.columns)
    assert users.loc[1].tolist() == [24, "M", "technician"]
    assert set(users["gender"]) == {"M", "F"}
    assert users["occupation"].nunique() == 21


# ---------------------------------------------------------------- the fixture layouts


@pytest.mark.parametrize("directory, layout", [
    ("ml-100k-mini", "ml-100k"),
    ("ml-1m", "ml-1m"),
    ("ml-10m", "ml-10m"),  # the parent of ml-10M100K/, as the zip unpacks
    ("ml-10m/ml-10M100K", "ml-10m"),
    ("ml-latest-small", "ml-csv"),
    ("generic", None),
])
def test_detect_layout(directory, layout):
    assert detect_layout(FIXTURES / directory) == layout


def test_detect_layout_rejects_files_and_ambiguous_parents(tmp_path):
    assert detect_layout(FIXTURES / "ml-1m" / "ratings.dat") is None
    assert detect_layout(tmp_path / "missing") is None
    with pytest.raises(DataError, match="holds 3 data sets"):  # several releases below: name them, pick none
        detect_layout(FIXTURES)


def test_ml100k_format_latin1_without_u_genre():
    raw = read_movielens(FIXTURES / "ml-100k-mini")
    assert_contract(raw)
    items = raw.items.set_index("item")
    assert items.loc[2, "title"] == "Rêves d'été (1996)"
    assert items.loc[1, "genres"] == "Comedy|Drama"  # flags 5 and 8 of the published list
    assert items.loc[3, "genres"] == "unknown" and pd.isna(items.loc[3, "year"])
    assert raw.users.set_index("user").loc[2].tolist() == [53, "F", "other"]


def test_ml1m():
    raw = read_movielens(FIXTURES / "ml-1m")
    assert raw.name == "ml-1m"
    assert_contract(raw)
    assert len(raw.interactions) == 9
    assert raw.interactions["item"].tolist() == [1, 3, 2, 1, 4, 1, 2, 4, 3]  # file order, not time order
    items = raw.items.set_index("item")
    assert items.loc[2, "title"] == "Storm Over Ashbury: A Tale (1996)"  # ':' inside a '::' file
    assert items.loc[3, "title"] == "Café Brûlé (1998)"  # latin-1
    assert items.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert items["year"].tolist() == [1994, 1996, 1998, 1972]
    users = raw.users.set_index("user")
    assert users["age"].tolist() == [1, 56, 25]  # age codes kept as the bucket's lower bound
    assert users["occupation"].tolist() == ["K-12 student", "self-employed", "scientist"]  # codes 10, 16, 15
    assert users["gender"].tolist() == ["F", "M", "M"]
    assert [Path(f).name for f in raw.files] == ["ratings.dat", "movies.dat", "users.dat"]


def test_ml10m_in_its_subdirectory():
    raw = read_movielens(FIXTURES / "ml-10m")
    assert raw.name == "ml-10m"
    assert_contract(raw)
    assert raw.users is None
    assert raw.interactions["rating"].tolist() == [3.5, 4.0, 0.5, 5.0, 2.5, 1.5, 3.0, 4.5, 2.0]
    items = raw.items.set_index("item")
    assert items.loc[10, "title"] == "Água Viva (2001)"  # utf-8
    assert items.loc[30, "genres"] == ""  # "(no genres listed)"
    assert items["year"].tolist() == [2001, 1988, 1958]
    assert "tags.dat" not in " ".join(raw.files)


def test_ml_latest_small_csv():
    raw = read_movielens(FIXTURES / "ml-latest-small")
    assert raw.name == "ml-latest-small"
    assert_contract(raw)
    assert len(raw.interactions) == 9 and raw.users is None
    items = raw.items.set_index("item")
    assert items.loc[2, "title"] == "Clockmaker, The (2004)"  # a quoted title with a comma
    assert pd.isna(items.loc[3, "year"])  # a title without "(YYYY)"
    assert items.loc[4, "genres"] == "" and items.loc[4, "title"] == "Zoë's Garden (2011)"
    assert genres_of(raw.items) == {"Drama", "Romance", "Mystery", "Sci-Fi", "Comedy"}
    assert [Path(f).name for f in raw.files] == ["ratings.csv", "movies.csv"]  # links/tags ignored


def test_name_falls_back_to_the_layout(tmp_path):
    d = tmp_path / "downloads"
    d.mkdir()
    for f in (FIXTURES / "ml-latest-small").glob("*.csv"):
        (d / f.name).write_bytes(f.read_bytes())
    assert read_movielens(d).name == "ml-csv"


# ---------------------------------------------------------------- generic files


def test_generic_csv_string_ids_iso_times_and_tables():
    g = FIXTURES / "generic"
    raw = read_interactions_file(g / "log.csv", user_col="user_id", item_col="item_id", time_col="ts",
                                 rating_col="stars", items_path=g / "items.csv", users_path=g / "users.csv")
    assert_contract(raw)
    inter = raw.interactions
    assert inter["user"].tolist()[:5] == ["u_ana", "u_ana", "u_ben", "u_ben", "u_cat"]
    assert inter["item"].iloc[0] == "sku-001"
    # "Z", a naive time (taken as UTC) and "+02:00" all become epoch seconds.
    assert inter["timestamp"].tolist()[:3] == [1704448800, 1704454200, 1704525300]
    assert inter["rating"].tolist() == [5.0, 3.0, 4.0, 1.0, 2.0, 4.0, 3.0, 5.0, 2.0]
    items = raw.items.set_index("item")
    assert items.loc["sku-002", "title"] == "Lamp, Brass" and pd.isna(items.loc["sku-002", "year"])
    assert items.loc["sku-001", "genres"] == "Kitchen|Home" and items.loc["sku-003", "year"] == 2022
    users = raw.users.set_index("user")
    assert users.loc["u_ben"].tolist() == [51, "M", "teacher"]
    assert pd.isna(users.loc["u_cat", "age"]) and users.loc["u_cat", "gender"] == ""
    assert len(raw.files) == 3 and raw.name == "log"


def test_generic_int_ids_sniffed_separators_and_auto_rating(tmp_path):
    for name, text in {
        "a.tsv": "user\titem\ttimestamp\trating\n1\t10\t100\t4\n2\t007\t90.7\t5\n",
        "b.txt": "user;item;timestamp;rating\n1;10;100;4\n2;007;90.7;5\n",
        "c.csv": "user|item|timestamp|rating\n1|10|100|4\n2|007|90.7|5\n",
    }.items():
        (tmp_path / name).write_text(text)
        raw = read_interactions_file(tmp_path / name)
        assert_contract(raw)
        assert raw.interactions["user"].dtype == "int64" and raw.interactions["user"].tolist() == [1, 2]
        assert raw.interactions["item"].tolist() == ["10", "007"]  # "007" must not become 7
        assert raw.interactions["timestamp"].tolist() == [100, 90]  # float seconds floored
        assert raw.interactions["rating"].tolist() == [4.0, 5.0]  # a 'rating' column is used by default
    (tmp_path / "d.csv").write_text("user\titem\ttimestamp\n1\t2\t3\n")
    assert read_interactions_file(tmp_path / "d.csv", sep="tab").interactions["item"].tolist() == [2]


def test_generic_compressed_and_bom(tmp_path):
    import gzip

    with gzip.open(tmp_path / "log.csv.gz", "wt") as f:
        f.write("user,item,timestamp\n1,2,3\n")
    assert read_interactions_file(tmp_path / "log.csv.gz").interactions["item"].tolist() == [2]
    write(tmp_path / "bom.csv", "\ufeffuser,item,timestamp\n1,2,3\n".encode("utf-8"))
    assert read_interactions_file(tmp_path / "bom.csv").interactions["user"].tolist() == [1]


def test_generic_parquet_with_datetimes_and_list_genres(tmp_path):
    log = pd.DataFrame({"uid": [3, 1, 3], "sku": [7, 8, 9],
                        "ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-01 00:00:30"], format="ISO8601")})
    log.to_parquet(tmp_path / "log.parquet")
    items = pa.table({"product": [7, 8, 9], "title": ["A (2001)", "B", "C"], "genres": [["x", "y"], [], None]})
    pq.write_table(items, tmp_path / "items.pq")
    raw = read_interactions_file(tmp_path / "log.parquet", user_col="uid", item_col="sku", time_col="ts",
                                 items_path=tmp_path / "items.pq", item_col_in_items="product")
    assert_contract(raw)
    assert raw.interactions["user"].tolist() == [3, 1, 3]
    assert raw.interactions["timestamp"].tolist() == [1704067200, 1704153600, 1704067230]
    assert raw.items["genres"].tolist() == ["x|y", "", ""]
    assert raw.items["year"].tolist()[0] == 2001  # no year column: taken from the title


# ---------------------------------------------------------------- bad input


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_missing_and_empty_files(tmp_path):
    raises_one_line(read_interactions_file, tmp_path / "nope.csv", file="nope.csv", match="no such file")
    empty = write(tmp_path / "empty.csv", b"")
    raises_one_line(read_interactions_file, empty, file="empty.csv", match="empty")
    blank = write(tmp_path / "blank.csv", "\n\n")
    raises_one_line(read_interactions_file, blank, file="blank.csv", match="empty")
    header = write(tmp_path / "header.csv", "user,item,timestamp\n")
    raises_one_line(read_interactions_file, header, file="header.csv", match="header but no rows")
    pd.DataFrame({"user": [], "item": [], "timestamp": []}).to_parquet(tmp_path / "none.parquet")
    raises_one_line(read_interactions_file, tmp_path / "none.parquet", file="none.parquet", match="no rows")
    log = write(tmp_path / "ok.csv", "user,item,timestamp\n1,2,3\n")
    raises_one_line(read_interactions_file, log, items_path=tmp_path / "gone.csv", file="gone.csv",
                    match="no such file")


def test_a_line_with_extra_fields_is_an_error_not_a_shift(tmp_path):
    log = write(tmp_path / "ragged.csv", "user,item,timestamp\n1,2,3\n1,2,3,4,5\n")
    raises_one_line(read_interactions_file, log, file="ragged.csv", match="Expected 3 fields in line 3, saw 5")
    bad_gz = write(tmp_path / "log.csv.gz", b"not gzip")
    raises_one_line(read_interactions_file, bad_gz, file="log.csv.gz", match="cannot decompress")


def test_missing_columns_are_named(tmp_path):
    log = write(tmp_path / "cols.csv", "uid,item,when\n1,2,3\n")
    msg = raises_one_line(read_interactions_file, log, file="cols.csv", match="missing column")
    assert "'user'" in msg and "'timestamp'" in msg and "'uid'" in msg and "'when'" in msg
    headerless = write(tmp_path / "u.data.csv", "196,242,3,881250949\n186,302,3,891717742\n")
    raises_one_line(read_interactions_file, headerless, file="u.data.csv", match="header row")
    items = write(tmp_path / "items.csv", "title,genres\nA,B\n")
    raises_one_line(read_interactions_file, log, user_col="uid", time_col="when", items_path=items,
                    file="items.csv", match="missing column.*'item'")


def test_timestamps_beyond_int64_are_refused(tmp_path):
    # They were accepted, and every one became INT64_MIN.
    huge = write(tmp_path / "huge.csv", "user,item,timestamp\n1,2,10\n1,3,1e30\n")
    raises_one_line(read_interactions_file, huge, file="huge.csv", match=r"out of range.*line 3: '1e\+30'")
    big = write(tmp_path / "big.csv", "user,item,timestamp\n1,2,10\n1,3,18446744073709551615\n")
    raises_one_line(read_interactions_file, big, file="big.csv", match="out of range")


def test_bad_timestamps(tmp_path):
    nan = write(tmp_path / "nan.csv", "user,item,timestamp\n1,2,10\n1,3,\n2,3,\n")
    raises_one_line(read_interactions_file, nan, file="nan.csv", match=r"2 rows have a missing .*timestamp.*line 3")
    iso = write(tmp_path / "iso.csv", "user,item,timestamp\na,b,2024-01-01T00:00:00\na,c,yesterday\n")
    raises_one_line(read_interactions_file, iso, file="iso.csv", match=r"1 row has .*line 3: 'yesterday'")
    mixed = write(tmp_path / "mixed.csv", "user,item,timestamp\n1,2,10\n1,3,soon\n")
    raises_one_line(read_interactions_file, mixed, file="mixed.csv", match=r"unparseable timestamp.*'soon'")
    pd.DataFrame({"user": [1, 2], "item": [1, 1], "timestamp": [1.0, float("nan")]}).to_parquet(tmp_path / "t.parquet")
    raises_one_line(read_interactions_file, tmp_path / "t.parquet", file="t.parquet", match="row 2")


def test_bad_ratings_and_ids(tmp_path):
    log = write(tmp_path / "stars.csv", "user,item,timestamp,stars\n1,2,3,4\n1,3,4,good\n")
    raises_one_line(read_interactions_file, log, rating_col="stars", file="stars.csv",
                    match=r"'stars'.*non-numeric.*line 3: 'good'")
    noid = write(tmp_path / "noid.csv", "user,item,timestamp\n1,2,3\n,3,4\n")
    raises_one_line(read_interactions_file, noid, file="noid.csv", match=r"'user'.*no id.*line 3")


def test_files_that_are_not_what_their_name_says(tmp_path):
    garbage = write(tmp_path / "garbage.parquet", bytes(range(256)) * 8)
    raises_one_line(read_interactions_file, garbage, file="garbage.parquet", match="not a readable Parquet")
    text = write(tmp_path / "text.parquet", "user,item,timestamp\n1,2,3\n")
    raises_one_line(read_interactions_file, text, file="text.parquet", match="not a readable Parquet")
    binary = write(tmp_path / "binary.csv", bytes(range(256)) * 8)
    raises_one_line(read_interactions_file, binary, file="binary.csv", match="binary")
    pd.DataFrame({"user": [1], "item": [2], "timestamp": [3]}).to_parquet(tmp_path / "renamed.csv")
    raises_one_line(read_interactions_file, tmp_path / "renamed.csv", file="renamed.csv", match="Parquet")
    sheet = write(tmp_path / "log.xlsx", b"PK\x03\x04")
    raises_one_line(read_interactions_file, sheet, file="log.xlsx", match="unsupported file type")
    raises_one_line(read_interactions_file, tmp_path, file=tmp_path.name, match="directory")


@pytest.mark.parametrize("files,match", [
    ({"u.data": "1\t2\t3\t4\n", "u.item": "x", "u.user": "x", "ratings.csv": "userId,movieId\n",
      "movies.csv": "movieId\n"}, r"holds two data sets \(ml-100k: u.data, ml-latest \(csv\): ratings.csv\)"),
    ({"u.data": "1\t2\t3\t4\n", "u.user": "x"}, "ml-100k release without u.item"),  # not 'a problem with u.data'
    ({"ratings.dat": "1::2::3::4\n"}, "without movies.dat"),
])
def test_a_directory_is_one_whole_data_set(tmp_path, files, match):
    for name, content in files.items():
        write(tmp_path / name, content)
    raises_one_line(read_movielens, tmp_path, file=tmp_path.name, match=match)


def test_unknown_directory_layout(tmp_path):
    write(tmp_path / "notes.txt", "hello\n")
    write(tmp_path / "ratings.dat", "1,2,3,4\n")  # not '::'-separated
    assert detect_layout(tmp_path) is None
    raises_one_line(read_movielens, tmp_path, file=tmp_path.name, match="unknown data layout")


def copy_release(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


@pytest.mark.parametrize("release, file, content, match", [
    ("ml-1m", "ratings.dat", "1::1::5::978300760\n1::x::4::978300761\n", r"item field.*line 2: 'x'"),
    ("ml-1m", "ratings.dat", "1::1::5::978300760\n1::2::4::97830::0761\n", r"line 2 has 5 '::'-separated fields, expected 4"),
    ("ml-1m", "ratings.dat", "1::1::5::978300760\n1::2::4\n", r"timestamp field.*line 2"),
    ("ml-1m", "ratings.dat", "", r"empty"),
    ("ml-1m", "movies.dat", "1::Paper Lanterns (1994)::Comedy\nno separators here\n", r"wrong shape.*MovieID::Title::Genres.*line 2"),
    ("ml-1m", "users.dat", "1::F::1::10::48067\n2::M::56::99::70072\n", r"occupation code.*line 2"),
    ("ml-latest-small", "ratings.csv", "user,movie,rating,time\n1,1,4.0,5\n", r"expected the columns.*'userId'"),
    ("ml-latest-small", "ratings.csv", "userId,movieId,rating,timestamp\n", r"no rows"),
    ("ml-latest-small", "ratings.csv", "userId,movieId,rating,timestamp\n1,1,lots,5\n", r"rating field.*line 2: 'lots'"),
    ("ml-100k-mini", "u.item", "1|A (1995)|01-Jan-1995||url|0|1\n", r"wrong shape.*genre flags.*line 1"),
    ("ml-100k-mini", "u.data", "1\t1\t5\t881250949\n1\t2\t5\n", r"timestamp field.*line 2"),
])
def test_bad_movielens_files(tmp_path, release, file, content, match):
    root = copy_release(FIXTURES / release, tmp_path / release)
    write(root / file, content)
    raises_one_line(read_movielens, root, file=file, match=match)


LOG = "user,item,timestamp\n" + "".join(f"u{u},i{(u * 7 + k) % 13},{k}\n" for u in range(30) for k in range(6))


def test_a_spec_that_is_an_existing_path_is_that_path(tmp_path):
    """`d/we:ird=1.csv` was split at its ':' into 'd/we' and an option."""
    from raytower.data import load_bundle

    odd = tmp_path / "we:ird=1.csv"
    odd.write_text(LOG)
    assert load_bundle(str(odd)).n_users == 30


def test_the_default_column_names_work_as_option_names(tmp_path):
    from raytower.data import load_bundle

    log = tmp_path / "log.csv"
    log.write_text(LOG.replace("timestamp", "ts"))
    assert load_bundle(f"{log}:timestamp=ts").n_users == load_bundle(f"{log}:time=ts").n_users == 30
    err = raises_one_line(load_bundle, str(log), file="log.csv", match="missing column")
    assert "FILE:user=COL,item=COL,time=COL" in err


def test_a_csv_and_a_parquet_named_alike_are_two_data_sets(tmp_path):
    from raytower.data import load_bundle

    (tmp_path / "log.csv").write_text(LOG)
    pd.read_csv(tmp_path / "log.csv").to_parquet(tmp_path / "log.parquet")
    assert {load_bundle(str(tmp_path / f)).name for f in ("log.csv", "log.parquet")} == {"log-csv", "log-parquet"}
