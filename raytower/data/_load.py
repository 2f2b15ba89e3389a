"""``load_bundle``: a data source (a name, a path, ``synthetic:...``) to a prepared, cached bundle."""


from __future__ import annotations

import dataclasses
import re
import sys
from functools import partial
from pathlib import Path
from typing import Any

from raytower._io import atomic_dir, cache_root, check_destination, output_dir
from raytower._lock import hold_cache_entry, hold_destination
from raytower.data._bundle import Bundle
from raytower.data._prepare import PrepareOptions, fingerprint, hash_files, is_bundle, prepare
from raytower.errors import DataError

DEFAULT_SOURCE = "synthetic"
_MOVIELENS_FILES = {
    "u.data", "u.item", "u.user", "u.genre", "u.occupation",
    "ratings.dat", "movies.dat", "users.dat", "ratings.csv", "movies.csv",
}
_FILE_OPTIONS = {"user", "item", "time", "rating", "items", "users", "sep"}
# The default column names work as option names too: FILE:timestamp=ts reads like FILE:time=ts.
_OPTION_ALIASES = {"timestamp": "time"}


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'base:key=value,key=value' -> ('base', {...}). A ':' inside a path without '=' after it stays,
    and so does a whole spec that is an existing path (a file named "we:ird=1.csv")."""
    if Path(spec).expanduser().exists():
        return spec, {}
    base, sep, rest = spec.rpartition(":")
    if not sep or "=" not in rest or not base:
        return spec, {}
    params = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise DataError(f"bad option {part!r}: expected key=value", spec)
        key = key.strip()
        params[_OPTION_ALIASES.get(key, key)] = value.strip()
    return base, params


def _resolve(spec: str):
    """Return (name, source_key, reader): source_key identifies the content without parsing it."""
    base, params = split_spec(spec)
    if base == "synthetic":
        from raytower.data._synthetic import GENERATOR_VERSION, generate, parse_synthetic_spec, source_key

        kwargs = parse_synthetic_spec(spec)
        key = {"synthetic": source_key(kwargs), "generator_version": GENERATOR_VERSION}
        return "synthetic", key, lambda: generate(**kwargs)
    path = Path(base).expanduser()
    if not path.exists() and re.fullmatch(r"ml-[\w-]+", base) and not params:
        from raytower.data._download import DATASETS, cached_dataset

        if base not in DATASETS:
            raise DataError(f"unknown dataset name; known: {', '.join(sorted(DATASETS))}", base)
        path = cached_dataset(base)
    if path.is_dir():
        from raytower.data._movielens import detect_layout, read_movielens

        layout = detect_layout(path)
        if layout is None:
            raise DataError(
                "unknown data layout: expected a MovieLens release (u.data; ratings.dat; "
                "ratings.csv) or give an interactions file (.csv/.parquet)",
                path,
            )
        files = [p for p in path.rglob("*") if p.is_file() and p.name in _MOVIELENS_FILES]
        return path.name, {"layout": layout, "files": hash_files(files)}, lambda: read_movielens(path)
    if path.is_file():
        from raytower.data._generic import read_interactions_file
        from raytower.data import _sequence

        if _sequence.is_sequence_file(path):  # headerless `user item` lines (SASRec's ml-1m.txt)
            return _sequence.resolve(path, params)
        unknown = sorted(set(params) - _FILE_OPTIONS)
        if unknown:
            raise DataError(f"unknown option(s) {unknown}; known: {sorted(_FILE_OPTIONS)}", spec)
        kwargs: dict[str, Any] = {
            "user_col": params.get("user", "user"),
            "item_col": params.get("item", "item"),
            "time_col": params.get("time", "timestamp"),
            "rating_col": params.get("rating"),
            "items_path": params.get("items"),
            "users_path": params.get("users"),
            "sep": params.get("sep"),
        }
        files = [path] + [Path(p) for p in (kwargs["items_path"], kwargs["users_path"]) if p]
        for f in files[1:]:
            if not f.is_file():
                raise DataError("no such file", f)
        key = {"file": hash_files(files), "reader": kwargs}
        name = _file_name(path)
        return name, key, lambda: dataclasses.replace(read_interactions_file(path, **kwargs), name=name)
    if path.exists():  # /dev/null, a pipe: it is there, and "no such file" would send the user looking
        raise DataError("not a regular file or a directory (a device, a pipe or a socket): give a data file", base)
    raise DataError("no such file, directory or dataset name (try `raytower data download ml-100k`)", base)


def _file_name(path: Path) -> str:
    """A data set's name from its file: the stem and the format (log-csv, log-parquet), so that two
    files named alike are two names in `raytower compare` and in run directories."""
    known = {"csv", "tsv", "txt", "dat", "parquet", "pq", "gz", "bz2", "xz"}
    suffixes: list[str] = []
    name = path.name
    while "." in name.strip(".") and name.rsplit(".", 1)[1].lower() in known:
        name, suffix = name.rsplit(".", 1)
        suffixes.insert(0, suffix.lower())
    return "-".join([name, *suffixes])


def load_bundle(
    spec: str = DEFAULT_SOURCE,
    options: PrepareOptions | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    refresh: bool = False,
    force: bool = False,
) -> Bundle:
    """Prepare ``spec`` (or reuse the cached bundle with the same fingerprint) and load it.

    ``out`` writes the bundle to that directory instead of the cache: a new or empty directory, or
    (with ``force``) one holding an earlier raytower bundle. The same bundle already there is reused.
    """
    options = options or PrepareOptions()
    spec = str(spec)
    if is_bundle(Path(spec)):  # an already-prepared bundle directory is a source too
        bundle = Bundle(spec)
        bundle.cache_hit = True  # nothing was prepared
        return bundle
    name, key, read = _resolve(spec)
    fp = fingerprint(key, options)
    dest = Path(out) if out else cache_root() / "bundles" / f"{name}-{fp}"
    hit = not refresh and is_bundle(dest, fp)
    if not hit:
        sink = atomic_dir
        if out:
            check_destination(dest, "bundle", force)  # before the data is read
            sink = partial(output_dir, kind="bundle", force=force)
        # --out is this process's alone; a cache entry another process is preparing is waited for and reused
        with hold_destination(dest, "--out") if out else hold_cache_entry(dest):
            hit = not refresh and not out and is_bundle(dest, fp)
            if not hit:
                bar = _progress_bar(progress, name)
                try:
                    bar("reading")
                    raw = read()
                    prepare(raw, options, fp, dest, progress=bar, sink=sink)
                finally:
                    bar(None)
    try:
        bundle = Bundle(dest)
    except DataError:
        if not hit or out:
            raise  # just written, or the user's own directory: report it
        return load_bundle(spec, options, out, progress, refresh=True)  # a damaged cache entry: make it again
    bundle.cache_hit = hit
    return bundle


def _progress_bar(enabled: bool, name: str):
    """A stage-by-stage progress bar on stderr (reading, filtering, ..., writing).

    Only on a terminal: redirected, its carriage-return redraws would land in the log around the
    one-line error message.
    """
    if not enabled or not sys.stderr.isatty():
        return lambda msg: None
    from tqdm import tqdm

    stages = ["reading", "filtering", "indexing", "splitting", "features", "writing"]
    bar = tqdm(total=len(stages), desc=f"preparing {name}", unit="step", leave=False)

    def update(msg):
        if msg is None:
            bar.close()
            return
        bar.set_postfix_str(msg)
        if msg != "reading":
            bar.update(1)

    return update


def summary_rows(manifest: dict) -> list[tuple[str, str]]:
    """The table `raytower data prepare` prints."""
    pct = manifest["seq_len_percentiles"]
    f = manifest["filters"]
    rows = [
        ("dataset", f"{manifest['name']} (fingerprint {manifest['fingerprint']})"),
        ("users", f"{manifest['n_users']:,}"),
        ("items", f"{manifest['n_items']:,}"),
        ("interactions", f"{manifest['n_interactions']:,}"),
        ("density", f"{manifest['density']:.4%}"),
        ("train / val / test", f"{manifest['n_train']:,} / {manifest['n_val']:,} / {manifest['n_test']:,}"),
        ("sequence length p5/p25/p50/p75/p95/max",
         "/".join(f"{pct[k]:.0f}" for k in ("p5", "p25", "p50", "p75", "p95")) + f"/{pct['max']}"),
        ("cold-start users (out of the graph)", f"{manifest['n_cold_users']:,}"),
        ("genres / year buckets", f"{len(manifest['genres'])} / {len(manifest['year_buckets'])}"),
        ("split", manifest["options"]["split"]),
    ]
    labels = {
        "rows_read": "rows read",
        "below_min_rating": "rows below min rating (dropped)",
        "duplicates_collapsed": "exact duplicates (collapsed)",
        "k_core_items_dropped": "items dropped by k-core",
        "k_core_users_dropped": "users dropped by k-core",
        "short_users_dropped": f"users with < {manifest['options']['min_user_interactions']} interactions (dropped)",
    }
    rows += [(labels.get(k, k), f"{v:,}") for k, v in f.items()]
    return rows
