"""MovieLens downloads against a local HTTP server (loopback only, tiny invented files).

Every failure must be one DataError line naming the URL and the problem, and leave nothing
behind in the destination; a failed re-download must not damage an existing copy.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from raytower._io import MARKER
from raytower.data import _download
from raytower.data._download import DATASETS, cached_dataset, dataset_url, download
from raytower.errors import DataError
from tests._net import free_port

# Invented rows in ml-100k's layout (NOT real data).
FILES = {
    "u.data": "1\t10\t4\t881250949\n1\t20\t3\t881250950\n2\t10\t5\t881250951\n",
    "u.item": "10|Invented Film (1990)|01-Jan-1990||http://x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
              "20|Another Film (1995)|01-Jan-1995||http://x|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n",
    "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n",
    "README": "invented test data\n",
}


def make_zip(folder: str = "ml-100k", files=FILES, extra: dict[str, str] | None = None,
             compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        zf.writestr(f"{folder}/", "")  # a directory entry, as real releases have
        for name, text in files.items():
            zf.writestr(f"{folder}/{name}", text)
        for name, text in (extra or {}).items():
            zf.writestr(name, text)
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class Server:
    """Serves ``routes`` (URL path -> bytes) on 127.0.0.1; ``lie`` claims a longer body."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.lie: dict[str, int] = {}
        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits.append(self.path)
                body = outer.routes.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(outer.lie.get(self.path, len(body))))
                self.end_headers()
                self.wfile.write(body)  # then close: a short body is a truncated transfer

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/movielens"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def serve(self, zip_name: str, body: bytes, claim: int | None = None) -> None:
        self.routes[f"/movielens/{zip_name}"] = body
        if claim is not None:
            self.lie[f"/movielens/{zip_name}"] = claim

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch):
    monkeypatch.delenv("RAYTOWER_MOVIELENS_URL", raising=False)


def assert_clean(dest: Path) -> None:
    """Nothing left behind: no destination folder, or an empty one."""
    assert not dest.exists() or list(dest.iterdir()) == []


def assert_one_line(err: DataError, *parts: str) -> None:
    msg = str(err)
    assert "\n" not in msg
    for p in parts:
        assert p in msg, msg


def test_registry():
    assert set(DATASETS) == {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m",
                             "ml-latest-small", "ml-latest"}
    assert dataset_url("ml-10m") == "https://files.grouplens.org/datasets/movielens/ml-10m.zip"
    assert DATASETS["ml-10m"].folder == "ml-10M100K"
    for name, d in DATASETS.items():
        if name.startswith("ml-latest"):  # re-released in place: no pinned checksum
            assert d.md5 is None and d.check == _download.ZIP_ONLY
        else:
            assert len(d.md5) == 32 and d.check == _download.PUBLISHED


def test_success_unpacks_and_returns_the_dir(server, tmp_path):
    body = make_zip()
    server.serve("ml-100k.zip", body)
    dest = tmp_path / "data"
    path = download("ml-100k", dest, base_url=server.url, progress=False, md5=md5(body))
    assert path == dest / "ml-100k"
    assert {p.name for p in path.iterdir()} == set(FILES) | {MARKER}  # the marker: raytower's download
    assert (path / "u.data").read_text() == FILES["u.data"]
    assert [p.name for p in dest.iterdir()] == ["ml-100k"]  # no temp files left beside it


def test_no_published_checksum_relies_on_zip_integrity(server, tmp_path):
    server.serve("ml-latest-small.zip", make_zip("ml-latest-small", {"ratings.csv": "userId,movieId\n1,2\n"}))
    path = download("ml-latest-small", tmp_path, base_url=server.url, progress=False)
    assert (path / "ratings.csv").is_file()


def test_top_folder_is_stripped_whatever_its_name(server, tmp_path):
    server.serve("ml-10m.zip", make_zip("ml-10M100K", {"ratings.dat": "1::2::5::838985046\n"}))
    path = download("ml-10m", tmp_path, base_url=server.url, progress=False,
                    md5=md5(make_zip("ml-10M100K", {"ratings.dat": "1::2::5::838985046\n"})))
    assert path == tmp_path / "ml-10m" and (path / "ratings.dat").is_file()


def test_env_var_overrides_the_server(server, tmp_path, monkeypatch):
    body = make_zip()
    server.serve("ml-100k.zip", body)
    monkeypatch.setenv("RAYTOWER_MOVIELENS_URL", server.url + "/")
    path = download("ml-100k", tmp_path / "d", progress=False, md5=md5(body))
    assert (path / "u.item").is_file()
    assert server.hits == ["/movielens/ml-100k.zip"]


def test_published_checksum_mismatch_fails_cleanly(server, tmp_path):
    server.serve("ml-100k.zip", make_zip())  # not the real release: its MD5 differs
    dest = tmp_path / "data"
    with pytest.raises(DataError) as e:
        download("ml-100k", dest, base_url=server.url, progress=False)
    assert_one_line(e.value, "checksum mismatch", server.url + "/ml-100k.zip", DATASETS["ml-100k"].md5)
    assert_clean(dest)


def test_given_checksum_mismatch_fails_cleanly(server, tmp_path):
    server.serve("ml-100k.zip", make_zip())
    dest = tmp_path / "existing"
    dest.mkdir()
    with pytest.raises(DataError, match="checksum mismatch"):
        download("ml-100k", dest, base_url=server.url, progress=False, md5="0" * 32)
    assert_clean(dest)
    assert dest.is_dir()  # a folder the caller made stays


def test_truncated_zip_fails_cleanly(server, tmp_path):
    body = make_zip()[:-40]  # the server sends all of it: the file itself is cut short
    server.serve("ml-100k.zip", body)
    with pytest.raises(DataError) as e:
        download("ml-100k", tmp_path / "d", base_url=server.url, progress=False, md5=md5(body))
    assert_one_line(e.value, "zip", server.url)
    assert_clean(tmp_path / "d")


def test_truncated_transfer_fails_cleanly(server, tmp_path):
    body = make_zip()
    server.serve("ml-100k.zip", body[:100], claim=len(body))  # connection drops mid-file
    with pytest.raises(DataError) as e:
        download("ml-100k", tmp_path / "d", base_url=server.url, progress=False, md5=md5(body))
    assert_one_line(e.value, "truncated download", server.url)
    assert_clean(tmp_path / "d")


def test_corrupt_entry_fails_its_crc(server, tmp_path):
    body = bytearray(make_zip(compression=zipfile.ZIP_STORED))
    at = bytes(body).index(FILES["u.data"].encode())
    body[at] ^= 0xFF  # flip a byte of u.data's contents: the length is right, the CRC is not
    body = bytes(body)
    server.serve("ml-100k.zip", body)
    with pytest.raises(DataError) as e:
        download("ml-100k", tmp_path / "d", base_url=server.url, progress=False, md5=md5(body))
    assert_one_line(e.value, "corrupt zip", "u.data")
    assert_clean(tmp_path / "d")


def test_404_fails_cleanly(server, tmp_path):
    with pytest.raises(DataError) as e:
        download("ml-1m", tmp_path / "d", base_url=server.url, progress=False)
    assert_one_line(e.value, "HTTP error 404", server.url + "/ml-1m.zip")
    assert_clean(tmp_path / "d")


def test_network_error_fails_cleanly(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # a loopback port nobody listens on
    with pytest.raises(DataError) as e:
        download("ml-100k", tmp_path / "d", base_url=url, progress=False)
    assert_one_line(e.value, "network error", url)
    assert_clean(tmp_path / "d")


@pytest.mark.parametrize("evil", ["ml-100k/../../evil.txt", "/tmp/raytower-evil.txt", "..\\evil.txt"])
def test_zip_slip_is_refused(server, tmp_path, evil):
    body = make_zip(extra={evil: "pwned"})
    server.serve("ml-100k.zip", body)
    dest = tmp_path / "a" / "b"
    with pytest.raises(DataError) as e:
        download("ml-100k", dest, base_url=server.url, progress=False, md5=md5(body))
    assert_one_line(e.value, "unsafe path", server.url)
    assert_clean(dest)
    assert not list(tmp_path.rglob("evil.txt")) and not Path("/tmp/raytower-evil.txt").exists()


def test_failed_redownload_keeps_the_old_copy(server, tmp_path):
    good = make_zip()
    server.serve("ml-100k.zip", good)
    path = download("ml-100k", tmp_path, base_url=server.url, progress=False, md5=md5(good))
    server.serve("ml-100k.zip", good[:-40])
    with pytest.raises(DataError):
        download("ml-100k", tmp_path, base_url=server.url, progress=False, md5=md5(good[:-40]), force=True)
    assert (path / "u.data").read_text() == FILES["u.data"]
    assert [p.name for p in tmp_path.iterdir()] == ["ml-100k"]


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(DataError) as e:
        download("ml-7k", tmp_path, progress=False)
    assert_one_line(e.value, "unknown dataset 'ml-7k'", "ml-100k", "ml-latest-small")
    with pytest.raises(DataError, match="known"):
        cached_dataset("ml-7k")


def test_cached_dataset_downloads_once(server, tmp_path, monkeypatch):
    body = make_zip("ml-latest-small", {"ratings.csv": "userId,movieId\n1,2\n"})
    server.serve("ml-latest-small.zip", body)
    monkeypatch.setenv("RAYTOWER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RAYTOWER_MOVIELENS_URL", server.url)
    first = cached_dataset("ml-latest-small", progress=False)
    second = cached_dataset("ml-latest-small", progress=False)
    assert first == second == tmp_path / "cache" / "datasets" / "ml-latest-small"
    assert (first / "ratings.csv").is_file()
    assert server.hits == ["/movielens/ml-latest-small.zip"]
