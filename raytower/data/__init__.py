"""Data: any interaction log in, a cached leave-last-out bundle out.

    bundle = raytower.data.load_bundle("ml-100k")      # a dataset name, downloaded if missing
    bundle = raytower.data.load_bundle("path/to/dir")   # any MovieLens layout, auto-detected
    bundle = raytower.data.load_bundle("log.parquet:user=uid,item=sku,time=ts")
    bundle = raytower.data.load_bundle("ml-1m.txt")     # `user item` lines, in time order (see _sequence)
    bundle = raytower.data.load_bundle("synthetic:n_users=500,seed=1")   # the embedded default

The bundle is keyed by a content fingerprint, so the second call is a cache hit.
"""
# Importing the package imports nothing heavy: each name comes in on first use (PEP 562), so the
# command line reads PrepareOptions (raytower.data.options, standard library only) before it parses.
__all__ = ["Bundle", "EvalSet", "PrepareOptions", "load_bundle", "summary_rows", "DEFAULT_SOURCE", "cached_dataset",
           "download", "RawData", "generate", "prepare"]  # the last three: a log's steps one at a time (bench_prepare)
_HOME = {"Bundle": "_bundle", "EvalSet": "_bundle", "PrepareOptions": "options", "load_bundle": "_load",
         "summary_rows": "_load", "DEFAULT_SOURCE": "_load", "cached_dataset": "_download", "download": "_download",
         "RawData": "_raw", "generate": "_synthetic", "prepare": "_prepare"}


def __getattr__(name: str):
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f"raytower.data.{_HOME[name]}"), name)
    raise AttributeError(f"module 'raytower.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
