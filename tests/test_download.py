"""Mirror downloads, checksums and the cache (training/download.py) against a real local HTTP server.

The server serves the real MNIST files when $DIGITS_MNIST_DIR is set, else copies of the
test sample with a test-only spec whose checksums are the sample's own. Nothing leaves
127.0.0.1, and every network call has a short timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.files import DataError, file_digest, verify_checksum
from training import download as datasets
from training.download import DATASETS, ChecksumError, DownloadError, download, fetch, load_split

SAMPLE = Path(__file__).parent / "data" / "mnist-sample"
TIMEOUT = 2.0  # seconds, for every download in this file
MNIST_FILES = sorted(DATASETS["mnist"].files.values())


@dataclass
class MirrorServer:
    """Serves /good/NAME, /corrupt/NAME (same length, other bytes), /short/NAME (closes early),
    /hang/NAME (never answers) and a 404 for anything else; records every request path."""

    files: dict[str, bytes]
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.port}/{route}/"


class _Handler(BaseHTTPRequestHandler):
    mirror: MirrorServer  # set on a subclass per server

    def do_GET(self) -> None:
        self.mirror.requests.append(self.path)
        route, _, name = self.path.strip("/").partition("/")
        data = self.mirror.files.get(name)
        if route == "hang":
            self.mirror.release.wait(10)
            return
        if data is None or route not in ("good", "corrupt", "short"):
            self.send_error(404, "Not Found")
            return
        if route == "corrupt":
            data = bytes(b ^ 0x5A for b in data[:64]) + data[64:]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if route == "short" else data)

    def log_message(self, format: str, *args: object) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def mnist_source(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The bytes of the four MNIST files to serve; with the sample, DATASETS["mnist"] gets its checksums."""
    full = os.environ.get("DIGITS_MNIST_DIR")
    folder = Path(full) if full else SAMPLE
    if not full:
        checksums = {name: f"sha256:{file_digest(SAMPLE / name)}" for name in MNIST_FILES}
        monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], checksums=checksums))
    return {name: (folder / name).read_bytes() for name in MNIST_FILES}


@pytest.fixture
def server(mnist_source: dict[str, bytes]) -> Iterator[MirrorServer]:
    mirror = MirrorServer(files=mnist_source)
    handler = type("Handler", (_Handler,), {"mirror": mirror})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    mirror.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        mirror.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def assert_only_final_files(folder: Path, names: list[str]) -> None:
    """No temporary or partial file is ever left next to the data."""
    assert sorted(os.listdir(folder)) == sorted(names)


def requested(server: MirrorServer, route: str) -> list[str]:
    return [path for path in server.requests if path.startswith(f"/{route}/")]


def test_fetch_falls_through_dead_and_corrupt_mirrors_to_a_good_one(
    tmp_path: Path, server: MirrorServer, closed_port_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    mirrors = [closed_port_url, server.url("corrupt"), server.url("good")]
    with caplog.at_level(logging.WARNING, logger="training.download"):
        paths = fetch("mnist", cache_dir=cache, mirrors=mirrors, progress=False, timeout=TIMEOUT)
    assert_only_final_files(cache, MNIST_FILES)
    for key, path in paths.items():
        assert path == cache / DATASETS["mnist"].files[key]
        assert path.read_bytes() == server.files[path.name]
        assert verify_checksum(path, DATASETS["mnist"].checksums[path.name])
    assert sorted(requested(server, "corrupt")) == sorted(f"/corrupt/{name}" for name in MNIST_FILES)
    assert sorted(requested(server, "good")) == sorted(f"/good/{name}" for name in MNIST_FILES)
    warnings = [record.getMessage() for record in caplog.records]
    assert sum("Connection refused" in message for message in warnings) == 4
    assert sum("checksum mismatch" in message for message in warnings) == 4
    # The files now load as a verified split.
    images, labels = load_split("mnist", "test", cache_dir=cache, download_missing=False)
    assert len(images) == len(labels) and labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_a_second_fetch_is_a_cache_hit(tmp_path: Path, server: MirrorServer) -> None:
    cache = tmp_path / "cache"
    fetch("mnist", cache_dir=cache, mirrors=[server.url("good")], progress=False, timeout=TIMEOUT)
    count = len(server.requests)
    paths = fetch("mnist", cache_dir=cache, mirrors=[server.url("good")], progress=False, timeout=TIMEOUT)
    assert len(server.requests) == count  # nothing asked of the server
    assert sorted(p.name for p in paths.values()) == MNIST_FILES
    assert_only_final_files(cache, MNIST_FILES)


def test_a_corrupt_file_in_the_cache_is_downloaded_again(
    tmp_path: Path, server: MirrorServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    fetch("mnist", cache_dir=cache, mirrors=[server.url("good")], progress=False, timeout=TIMEOUT)
    damaged = cache / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(b"not the labels")
    count = len(server.requests)
    with caplog.at_level(logging.WARNING, logger="training.download"):
        fetch("mnist", cache_dir=cache, mirrors=[server.url("good")], progress=False, timeout=TIMEOUT)
    assert server.requests[count:] == ["/good/t10k-labels-idx1-ubyte.gz"]
    assert damaged.read_bytes() == server.files[damaged.name]
    assert any(
        str(damaged) in record.getMessage() and "downloading it again" in record.getMessage()
        for record in caplog.records
    )
    assert_only_final_files(cache, MNIST_FILES)


def test_a_corrupt_cached_file_without_downloads_is_a_checksum_error(
    tmp_path: Path, server: MirrorServer
) -> None:
    cache = tmp_path / "cache"
    fetch("mnist", cache_dir=cache, mirrors=[server.url("good")], progress=False, timeout=TIMEOUT)
    (cache / "train-labels-idx1-ubyte.gz").write_bytes(b"edited")
    with pytest.raises(ChecksumError) as info:
        fetch("mnist", cache_dir=cache, download_missing=False)
    message = str(info.value)
    assert str(cache / "train-labels-idx1-ubyte.gz") in message
    assert "delete it so it is downloaded again, or pass --no-verify" in message
    # verify=False accepts whatever is there (custom data), without asking any server.
    count = len(server.requests)
    fetch("mnist", cache_dir=cache, verify=False, mirrors=[server.url("good")], progress=False, timeout=TIMEOUT)
    assert len(server.requests) == count


def test_when_every_mirror_fails_the_error_lists_each_mirror_and_why(
    tmp_path: Path, server: MirrorServer, closed_port_url: str
) -> None:
    cache = tmp_path / "cache"
    mirrors = [
        closed_port_url,
        server.url("missing"),
        server.url("corrupt"),
        server.url("short"),
        server.url("hang"),
    ]
    with pytest.raises(DownloadError) as info:
        fetch("mnist", cache_dir=cache, mirrors=mirrors, progress=False, timeout=0.5)
    lines = str(info.value).splitlines()
    name = "train-images-idx3-ubyte.gz"  # the first file fetched
    assert lines[0] == f"could not download {name}; every mirror failed:"
    assert lines[1].startswith(f"  - {closed_port_url}{name}: ") and "Connection refused" in lines[1]
    assert lines[2] == f"  - {server.url('missing')}{name}: HTTP 404 Not Found"
    assert lines[3].startswith(f"  - {server.url('corrupt')}{name}: checksum mismatch: got sha256:")
    assert lines[4].startswith(f"  - {server.url('short')}{name}: the connection closed after ")
    assert lines[5] == f"  - {server.url('hang')}{name}: timed out after 0.5 s"
    assert f"place it in {cache} by hand" in lines[6]
    assert_only_final_files(cache, [])


def test_download_rejects_a_checksum_mismatch_and_leaves_nothing(
    tmp_path: Path, server: MirrorServer
) -> None:
    name = "t10k-labels-idx1-ubyte.gz"
    dest = tmp_path / name
    with pytest.raises(ChecksumError) as info:
        download(
            server.url("corrupt") + name,
            dest,
            DATASETS["mnist"].checksums[name],
            timeout=TIMEOUT,
            progress=False,
        )
    assert str(info.value).startswith(f"{server.url('corrupt')}{name}: checksum mismatch")
    assert_only_final_files(tmp_path, [])
    # An existing file is left untouched by a failed download.
    dest.write_bytes(b"previous")
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url("missing") + name, dest, None, timeout=TIMEOUT, progress=False)
    assert dest.read_bytes() == b"previous"
    assert_only_final_files(tmp_path, [name])


def test_download_without_a_checksum_keeps_the_bytes(tmp_path: Path, server: MirrorServer) -> None:
    name = "train-labels-idx1-ubyte.gz"
    dest = download(server.url("good") + name, tmp_path / "sub" / name, None, timeout=TIMEOUT, progress=False)
    assert dest.read_bytes() == server.files[name]


def test_fetch_without_downloads_names_missing_files_and_asks_nothing(
    tmp_path: Path, server: MirrorServer
) -> None:
    with pytest.raises(DataError) as info:
        fetch("mnist", cache_dir=tmp_path, mirrors=[server.url("good")], download_missing=False)
    assert "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in str(info.value)
    assert server.requests == []


def test_an_empty_mirror_list_fails_clearly(tmp_path: Path, mnist_source: dict[str, bytes]) -> None:
    with pytest.raises(DownloadError, match=r"every mirror failed:\n  \(no mirrors were given\)"):
        fetch("mnist", cache_dir=tmp_path, mirrors=[], progress=False, timeout=TIMEOUT)


def test_the_default_mirrors_are_the_specs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[str] = []

    def fake_download(url: str, dest: Path, expected: str | None, **kwargs: object) -> Path:
        seen.append(url)
        raise DownloadError(f"{url}: offline in tests")

    monkeypatch.setattr(datasets, "download", fake_download)
    with pytest.raises(DownloadError):
        fetch("fashion-mnist", cache_dir=tmp_path, progress=False)
    assert seen == [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/train-images-idx3-ubyte.gz",
    ]


# --------------------------------------------------------------------------- offline use and the user's data folder


def folder_state(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_given_data_dir_is_only_read_and_downloads_go_to_the_cache(
    tmp_path: Path, server: MirrorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "mine"
    given.mkdir()
    (given / "t10k-labels-idx1-ubyte.gz").write_bytes(server.files["t10k-labels-idx1-ubyte.gz"])
    before = folder_state(given)
    monkeypatch.setenv("DIGITS_MNIST_MIRRORS", f"{server.url('missing')}, {server.url('good')}")
    paths = fetch("mnist", given, cache_dir=tmp_path / "cache", progress=False, timeout=TIMEOUT)
    assert folder_state(given) == before  # nothing written into the user's folder
    assert paths["test_labels"] == given / "t10k-labels-idx1-ubyte.gz"
    for key in ("train_images", "train_labels", "test_images"):
        assert paths[key].parent == tmp_path / "cache"
    # The environment's mirrors, in order: the first has nothing, the second serves the files.
    assert requested(server, "missing") and len(requested(server, "good")) == 3


def test_valid_idx_files_that_are_not_the_official_ones_are_named_as_such(tmp_path: Path) -> None:
    given = tmp_path / "sample"
    given.mkdir()
    for name in MNIST_FILES:
        (given / name).write_bytes((SAMPLE / name).read_bytes())
    before = folder_state(given)
    with pytest.raises(ChecksumError) as info:
        fetch("mnist", given, mirrors=[], progress=False)
    message = str(info.value)
    assert "a valid IDX file of 2,000 images, but not the official mnist file" in message
    assert "--no-verify" in message
    assert folder_state(given) == before
    # With --no-verify (verify=False) the same folder is used as it is.
    assert fetch("mnist", given, verify=False, mirrors=[])["train_images"] == given / "train-images-idx3-ubyte.gz"


def test_offline_the_error_names_every_way_out(tmp_path: Path, closed_port_url: str) -> None:
    given = tmp_path / "empty"
    given.mkdir()
    with pytest.raises(DownloadError) as info:
        fetch("mnist", given, mirrors=[closed_port_url], progress=False, timeout=TIMEOUT)
    message = str(info.value)
    for way_out in ("--data-dir", "$DIGITS_DATA_DIR", "--mirror URL", "$DIGITS_MNIST_MIRRORS", "--no-verify"):
        assert way_out in message
    assert "mirrors=[" not in message  # no Python argument in a command-line message
    assert list(given.iterdir()) == []


def test_digits_train_passes_each_mirror_option(
    tmp_path: Path, server: MirrorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    import cli

    out = tmp_path / "run"
    argv = ["train", "--mirror", server.url("missing"), "--mirror", server.url("good"), "--dry-run", "--quiet",
            "--model", "mlp", "--hidden", "16", "--out", str(out)]
    assert cli.main(argv) == 0
    assert len(requested(server, "missing")) == 4 and len(requested(server, "good")) == 4
    assert (out / "results.json").is_file()
    assert "nan" not in capsys.readouterr().out  # a dry run's report: classes never predicted show "-"
