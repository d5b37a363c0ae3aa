"""`digits score --url`: against the real service on 127.0.0.1, and against a stub that answers 503 for a while.

Servers run in a thread of this process on a free port; every wait is bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from PIL import Image
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from clients.remote import RetryPolicy, parse_retry_after
from core.kaggle import write_kaggle_csv
from service.app import create_app
from service.settings import Settings
from testkit.data import SAMPLE_DIR
from tests.conftest import Score

IDX_IMAGES = SAMPLE_DIR / "t10k-images-idx3-ubyte.gz"
IDX_LABELS = SAMPLE_DIR / "t10k-labels-idx1-ubyte.gz"



@contextmanager
def serving(app: object) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on a free 127.0.0.1 port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive(), "the server thread died while starting"
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def service_url(models_dir: Path) -> Iterator[str]:
    """The real service with the shipped models."""
    with serving(create_app(Settings(models_dir=models_dir))) as url:
        yield url


@pytest.fixture
def inputs(tmp_path: Path, mnist_test_sample) -> list[str]:
    """Every input kind at once: a folder of PNGs with one bad file, IDX images, a Kaggle test.csv."""
    images, _ = mnist_test_sample
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(255 - images[i] if i % 2 else images[i]).resize((56, 56)).save(folder / f"{i:02d}.png")
    (folder / "17-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    test_csv = tmp_path / "test.csv"
    write_kaggle_csv(test_csv, images[500:650])
    return [str(folder), str(IDX_IMAGES), str(test_csv)]


def test_remote_mode_writes_exactly_what_local_mode_writes(
    tmp_path: Path, score: Score, service_url: str, inputs: list[str]
) -> None:
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    common = [*inputs, "--labels", str(IDX_LABELS)]

    code_local, report_local, _ = score(*common, "--jobs", "0", "--out", str(local))
    code_remote, report_remote, stderr = score(*common, "--url", service_url, "--concurrency", "3",
                                               "--batch-size", "100", "--out", str(remote))

    assert code_local == code_remote == 1  # the broken PNG
    assert remote.read_bytes() == local.read_bytes()
    assert len(remote.read_text().splitlines()) == 40 + 1000 + 150
    assert report_remote == report_local and "accuracy: " in report_remote
    broken = Path(inputs[0]) / "17-broken.png"
    assert f"skipped {broken}: the service refused it (HTTP 422): could not decode image" in stderr
    assert "1 bad input(s) skipped" in stderr


def test_a_batch_larger_than_the_service_accepts_is_split(
    tmp_path: Path, score: Score, service_url: str
) -> None:
    out = tmp_path / "sub.csv"
    code, _, stderr = score(str(IDX_IMAGES), "--url", service_url, "--batch-size", "1000", "--format", "kaggle",
                            "--out", str(out))
    assert code == 0, stderr
    assert out.read_text().count("\n") == 1001


# --- a service that is busy for a while -------------------------------------------------------------


class BusyService:
    """The real service behind a door that answers the first POSTs itself: ``answers`` gives their status
    and Retry-After (None: no header). A tiny ASGI app; the rest goes through to the service."""

    def __init__(self, models_dir: Path, answers: list[tuple[int, str | None]]) -> None:
        self.service = create_app(Settings(models_dir=models_dir))
        self.answers = list(answers)
        self.posts = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.posts += 1
            if self.answers:
                status, retry_after = self.answers.pop(0)
                headers = {"Retry-After": retry_after} if retry_after is not None else {}
                busy = JSONResponse({"detail": "queue full", "error": "queue full"}, status, headers)
                await busy(scope, receive, send)
                return
        await self.service(scope, receive, send)


def test_503_and_504_are_retried_honouring_retry_after_and_the_output_is_complete(
    tmp_path: Path, score: Score, models_dir: Path
) -> None:
    local, remote = tmp_path / "local.csv", tmp_path / "remote.csv"
    assert score(str(IDX_IMAGES), "--out", str(local))[0] == 0
    busy = BusyService(models_dir, [(503, "1"), (503, "1"), (504, None), (503, "0")])

    with serving(busy) as url:
        code, _, stderr = score(str(IDX_IMAGES), "--url", url, "--concurrency", "2", "--batch-size", "250",
                                "--out", str(remote))

    assert code == 0, stderr
    assert remote.read_bytes() == local.read_bytes()
    assert busy.posts == 4 + 4  # four refused, then the four batches of 250
    retries = [line for line in stderr.splitlines() if line.startswith("service busy: ")]
    assert len(retries) == 4
    assert sum("HTTP 503: queue full" in line and "Retry-After 1 s" in line for line in retries) == 2
    assert sum("HTTP 504" in line for line in retries) == 1
    assert "4 retries" in stderr


def test_it_gives_up_after_the_retries_and_writes_nothing(tmp_path: Path, score: Score, models_dir: Path) -> None:
    out = tmp_path / "out.csv"
    busy = BusyService(models_dir, [(503, "0")] * 50)
    with serving(busy) as url:
        code, _, stderr = score(str(IDX_IMAGES), "--url", url, "--concurrency", "1", "--retries", "2",
                                "--out", str(out))
    assert code == 1
    assert "HTTP 503: queue full; gave up after 2 retries of this request" in stderr
    assert "nothing was written" in stderr
    assert busy.posts == 3
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_run_s_retry_budget_bounds_all_retries(score: Score, models_dir: Path) -> None:
    busy = BusyService(models_dir, [(503, "0")] * 50)
    with serving(busy) as url:
        code, _, stderr = score(str(IDX_IMAGES), "--url", url, "--concurrency", "2", "--retries", "10",
                                "--retry-budget", "3")
    assert code == 1 and "gave up after the run's 3 retries" in stderr
    assert busy.posts <= 3 + 2  # the budget, plus one first attempt per request in flight


def test_an_unreachable_service_is_reported_before_scoring(score: Score) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        code, _, stderr = score(str(IDX_IMAGES), "--url", f"http://127.0.0.1:{port}")
    assert code == 2
    assert f"cannot reach the service at http://127.0.0.1:{port}" in stderr and "digits serve" in stderr


def test_a_model_the_service_does_not_serve_is_a_usage_error(score: Score, service_url: str) -> None:
    code, _, stderr = score(str(IDX_IMAGES), "--url", service_url, "--model", "resnet")
    assert code == 2 and "does not serve model 'resnet'; it serves: lenet5, mlp" in stderr


def test_retry_after_and_backoff() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    policy = RetryPolicy(base_s=0.25, cap_s=30)
    assert all(0.125 <= policy.delay(0, None) <= 0.25 for _ in range(20))
    assert all(1.0 <= policy.delay(3, None) <= 2.0 for _ in range(20))
    assert policy.delay(0, 4.0) == 4.0  # the service's Retry-After when it is longer
    assert policy.delay(10, None) == 30 and policy.delay(0, 3600) == 30  # capped


def test_a_service_behind_an_api_key(tmp_path: Path, score: Score, models_dir: Path) -> None:
    out = tmp_path / "out.csv"
    with serving(create_app(Settings(models_dir=models_dir, api_key="s3cret"))) as url:
        code, _, stderr = score(str(IDX_IMAGES), "--url", url, "--out", str(out))
        assert code == 1 and "answered HTTP 401" in stderr and "API key" in stderr
        assert not out.exists()
        code, _, stderr = score(str(IDX_IMAGES), "--url", url, "--api-key", "s3cret", "--out", str(out))
    assert code == 0, stderr
    assert out.read_text().count("\n") == 1001
