"""`raytower data ...`: the summary table, --help, and bad input as one line on stderr, exit 2.

Most cases drive ``raytower.cli.main`` in-process (capsys); a few run the real console script in a
subprocess, so the entry point, the exit status and the absence of a traceback are checked as a
user sees them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytower.cli import main
from tests.data.test_download import Server, make_zip

FIXTURES = Path(__file__).parent / "data" / "fixtures"
GOOD_LOG = "user,item,timestamp,rating\n1,1,10,4\n1,2,11,5\n1,3,12,3\n2,1,10,2\n2,3,11,4\n2,2,13,1\n"


def console_script() -> list[str]:
    """The installed `raytower` entry point beside this interpreter, else `python -m raytower.cli`."""
    exe = Path(sys.executable).with_name("raytower")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "raytower.cli"]


def run_cli(args: list[str], cache: Path, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "RAYTOWER_CACHE": str(cache), **env}
    return subprocess.run(console_script() + args, capture_output=True, text=True, env=full_env, timeout=300)


# ---------------------------------------------------------------- success


def test_prepare_ml100k_prints_the_summary(ml100k_dir, capsys):
    assert main(["data", "prepare", "--data", str(ml100k_dir)]) == 0
    out, err = capsys.readouterr()
    for text in ("943", "1,682", "100,000", "ml-100k", "train / val / test", "bundle"):
        assert text in out, out
    assert err == ""  # no progress-bar residue when stderr is not a terminal
    assert main(["data", "prepare", "--data", str(ml100k_dir)]) == 0
    assert "(cached)" in capsys.readouterr().out


def test_prepare_ml100k_in_a_real_process(ml100k_dir, tmp_path):
    r = run_cli(["data", "prepare", "--data", str(ml100k_dir), "--out", str(tmp_path / "bundle")],
                tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert "943" in r.stdout and "1,682" in r.stdout and "100,000" in r.stdout
    assert r.stderr == ""
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    assert not (tmp_path / "cache").exists()  # --out: the cache is not touched


def test_prepare_options_reach_the_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "cache"))
    log = tmp_path / "log.csv"
    log.write_text(GOOD_LOG)
    assert main(["data", "prepare", "--data", str(log), "--split", "temporal", "--min-rating", "2",
                 "--k-core", "1", "--cold-frac", "0", "--data-seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "temporal" in out and "rows below min rating (dropped)" in out
    assert "items dropped by k-core" in out and "users dropped by k-core" in out


@pytest.mark.parametrize("argv", [
    [], ["data"], ["data", "prepare"], ["data", "download"], ["train"],
], ids=lambda a: " ".join(["raytower"] + a))
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: raytower")
    if argv[-1:] in (["prepare"], ["train"]):
        assert "--data SOURCE" in out and "--min-rating" in out


def test_help_in_a_real_process(tmp_path):
    r = run_cli(["data", "prepare", "--help"], tmp_path / "cache")
    assert r.returncode == 0 and "usage: raytower data prepare" in r.stdout and r.stderr == ""


# ---------------------------------------------------------------- bad input: one table, one line a case


@dataclass
class Ctx:
    """What a case builds its input with: a scratch folder, the cache, a local HTTP server."""

    tmp: Path
    cache: Path
    server: Server
    monkeypatch: pytest.MonkeyPatch

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def prepare(self, source, *flags: str, named=None):
        """`data prepare --data SOURCE FLAGS`; the error must name ``named`` (default: SOURCE)."""
        return ["data", "prepare", "--data", str(source), *flags], str(named or source)

    def download_truncated(self, name: str):
        """Serve ``name``'s zip cut short; `data download` it into the cache. The error names the URL."""
        body = make_zip(name, {"ratings.csv": "userId,movieId,rating,timestamp\n1,2,3,4\n"})[:-40]
        self.server.serve(f"{name}.zip", body)
        self.monkeypatch.setenv("RAYTOWER_MOVIELENS_URL", self.server.url)
        return (["data", "download", name, "--dest", str(self.cache / "datasets")],
                f"{self.server.url}/{name}.zip")


def _garbage_parquet() -> bytes:
    return b"PAR1" + bytes(range(256)) * 4 + b"PAR1"


def _parquet_footer_ok_pages_bad(tmp: Path) -> bytes:
    p = tmp / "good.parquet"
    pq.write_table(pa.table({"user": [1, 1, 1] * 50, "item": list(range(150)), "timestamp": list(range(150))}), p)
    body = bytearray(p.read_bytes())
    p.unlink()
    for i in range(8, 200):  # scribble over the first column chunk, keep the footer readable
        body[i] = 0xAB
    return bytes(body)


# One row per case: (build(ctx) -> (argv, text the error line must name)). A new case is one line.
BAD_INPUT = [
    pytest.param(lambda c: c.prepare(c.file("log.csv", "user,item\n1,2\n1,3\n1,4\n")), id="missing-columns"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", "user_id,item_id,timestamp\n1,2,3\n"),), id="misnamed-columns"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", b"")), id="empty-file"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", "\n\n  \n")), id="blank-file"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", "user,item,timestamp\n")), id="header-only"),
    pytest.param(lambda c: c.prepare(c.file("log.parquet", _empty_parquet(c.tmp))), id="parquet-no-rows"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", "user,item,timestamp\n1,1,10\n1,2,\n1,3,12\n")), id="nan-timestamp"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", "user,item,timestamp\n1,1,10\n1,2,NaN\n1,3,12\n")), id="NaN-timestamp"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", "user,item,timestamp\n1,1,yesterday\n1,2,soon\n1,3,x\n")), id="unparseable-timestamps"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", "user,item,timestamp\n1,1,2024-01-01\n1,2,2024-13-45\n1,3,2024-01-03\n")), id="bad-date"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", "user,item,timestamp,rating\n1,1,1,x\n1,2,2,3\n1,3,3,4\n"), "--min-rating", "1"), id="bad-rating"),
    pytest.param(lambda c: c.prepare(c.file("notes/readme.txt", "hello").parent), id="unknown-directory-layout"),
    pytest.param(lambda c: c.prepare(c.tmp / "in" / "nowhere.csv"), id="no-such-file"),
    pytest.param(lambda c: c.download_truncated("ml-latest-small"), id="truncated-zip-download"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", bytes(range(256)) * 64)), id="binary-csv"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", b"PAR1" + b"\x00" * 64)), id="parquet-named-csv"),
    pytest.param(lambda c: c.prepare(c.file("log.parquet", _garbage_parquet())), id="garbage-parquet"),
    pytest.param(lambda c: c.prepare(c.file("log.parquet", GOOD_LOG)), id="csv-named-parquet"),
    pytest.param(lambda c: c.prepare(c.file("log.parquet", _parquet_footer_ok_pages_bad(c.tmp))), id="corrupt-parquet-pages"),
    pytest.param(lambda c: c.prepare(c.file("log.json", GOOD_LOG)), id="unsupported-suffix"),
    pytest.param(lambda c: c.prepare("ml-7k"), id="unknown-dataset-name"),
    pytest.param(lambda c: (["data", "download", "ml-7k"], "ml-7k"), id="download-unknown-dataset"),
    pytest.param(lambda c: c.prepare("synthetic:n_users=50,bogus=1"), id="unknown-synthetic-key"),
    pytest.param(lambda c: c.prepare("synthetic:n_users=lots"), id="bad-synthetic-value"),
    pytest.param(lambda c: c.prepare(f"{c.file('log.csv', GOOD_LOG)}:usr=user"), id="unknown-file-option"),
    pytest.param(lambda c: c.prepare(f"{c.file('log.csv', GOOD_LOG)}:items={c.tmp / 'no.csv'}", named=c.tmp / "no.csv"), id="missing-items-file"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", GOOD_LOG), "--min-rating", "99"), id="empty-after-min-rating"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", "user,item,timestamp\n1,1,1\n1,2,2\n2,1,1\n")), id="all-users-too-short"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", "user,item,timestamp\n1,1,1\n1,2,2\n"), "--min-rating", "3"), id="min-rating-without-ratings"),
]


def _empty_parquet(tmp: Path) -> bytes:
    p = tmp / "empty.parquet"
    pq.write_table(pa.table({"user": pa.array([], pa.int64()), "item": pa.array([], pa.int64()),
                             "timestamp": pa.array([], pa.int64())}), p)
    body = p.read_bytes()
    p.unlink()
    return body


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RAYTOWER_CACHE", str(cache))  # a fresh, empty cache per case
    monkeypatch.delenv("RAYTOWER_MOVIELENS_URL", raising=False)
    server = Server()
    yield Ctx(tmp_path, cache, server, monkeypatch)
    server.close()


def assert_one_error_line(code: int, out: str, err: str, named: str) -> None:
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert err.count("\n") == 1 and err.endswith("\n") and "\r" not in err, repr(err)
    assert err.startswith("raytower: error: "), err
    assert named in err, (named, err)
    assert out == "", out


def assert_nothing_written(cache: Path) -> None:
    """No bundle, no download and no temp folder: an empty cache, or empty folders only."""
    left = [p for p in cache.rglob("*") if p.is_file() or p.name.startswith(".")] if cache.exists() else []
    assert left == [], left
    bundles = cache / "bundles"
    assert not bundles.exists() or list(bundles.iterdir()) == []


@pytest.mark.parametrize("build", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(build, ctx, capsys):
    argv, named = build(ctx)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert_one_error_line(code, out, err, named)
    assert_nothing_written(ctx.cache)


@pytest.mark.parametrize("build", [
    pytest.param(lambda c: c.prepare(c.file("log.parquet", _garbage_parquet())), id="garbage-parquet"),
    pytest.param(lambda c: c.prepare(c.file("log.csv", GOOD_LOG), "--min-rating", "99"), id="empty-after-filtering"),
    pytest.param(lambda c: c.prepare("synthetic:bogus=1"), id="unknown-synthetic-key"),
])
def test_bad_input_in_a_real_process(build, ctx):
    argv, named = build(ctx)
    r = run_cli(argv, ctx.cache)
    assert_one_error_line(r.returncode, r.stdout, r.stderr, named)
    assert_nothing_written(ctx.cache)


def test_bad_flag_values_are_one_line_errors(capsys):
    for argv in (["data", "prepare", "--cold-frac", "1.5"], ["data", "prepare", "--k-core", "-1"],
                 ["data", "prepare", "--split", "random"], ["data", "frobnicate"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("raytower ") and err.count("\n") == 1 and "Traceback" not in err


def test_truncated_download_fails_cleanly(ctx, capsys):
    """A truncated download through the CLI: exit 2, the URL named, nothing left behind."""
    argv, url = ctx.download_truncated("ml-latest-small")
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("raytower: error: ") and url in last and "zip" in last
    assert_nothing_written(ctx.cache)


def test_download_without_dest_goes_to_the_cache(ctx, capsys):
    """`data download NAME` with no --dest: the help says the raytower cache."""
    body = make_zip("ml-latest-small", {"ratings.csv": "userId,movieId,rating,timestamp\n1,2,3,4\n"})
    ctx.server.serve("ml-latest-small.zip", body)
    ctx.monkeypatch.setenv("RAYTOWER_MOVIELENS_URL", ctx.server.url)
    assert main(["data", "download", "ml-latest-small"]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == str(ctx.cache / "datasets" / "ml-latest-small")
    assert (ctx.cache / "datasets" / "ml-latest-small" / "ratings.csv").is_file()


def test_the_retrain_hint_keeps_every_data_flag():
    from raytower._hints import retrain_command
    from raytower.cli import build_parser

    argv = ["tune", "--data", "ml-100k", "--split", "temporal", "--cold-frac", "0.2", "--k-core", "5",
            "--min-rating", "4", "--data-seed", "3", "--out", "runs/s"]
    hint = retrain_command(build_parser().parse_args(argv))
    assert hint.endswith(" train --config runs/s/best_config.json --data ml-100k --split temporal "
                         "--cold-frac 0.2 --data-seed 3 --k-core 5 --min-rating 4.0")
    assert retrain_command(build_parser().parse_args(["tune", "--out", "o"])).endswith("--data synthetic")


def test_hints_print_a_command_that_runs_in_a_fresh_shell():
    """After `make`, raytower is .venv/bin/raytower, which a fresh shell's PATH does not have: the hint
    names the script that ran, or `python -m raytower.cli`, never a bare `raytower` that is not there."""
    from raytower import _hints

    fresh = {**os.environ, "PATH": "/usr/bin:/bin"}
    script = Path(sys.executable).parent / "raytower"
    code = f"import sys; sys.argv[0] = {str(script)!r}; from raytower._hints import this_command; print(this_command())"
    words = eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=fresh).stdout)
    assert len(words) == 1 and Path(words[0]).resolve() == script.resolve()  # not on PATH: its path
    assert subprocess.run([*words, "--help"], capture_output=True, env=fresh).returncode == 0
    assert _hints.this_command()[-2:] == ["-m", "raytower.cli"]  # under pytest: not the console script


def test_a_finished_search_says_what_to_do_next(tmp_path):
    """The footer named best_config.json and trials.parquet only: report, export, TensorBoard and
    optuna-dashboard are the next steps, each a command that runs from here."""
    import shlex

    from raytower._hints import next_steps

    lines = next_steps(tmp_path / "s", None)
    text = "\n".join(lines)
    for word in (" report ", " export ", "tensorboard --logdir", "optuna-dashboard sqlite:///"):
        assert word in text, text
    report = shlex.split(lines[0].split(":", 1)[1].split("(")[0])
    out = subprocess.run(report, capture_output=True, text=True)
    assert out.returncode == 2 and "not a raytower search directory" in out.stderr  # the command ran
