"""service/preprocess_pool.py: small uploads preprocessed by worker processes while the loop is busy.

What a user sees: the same digits, boxes and errors whichever process did the work; a busy server
hands uploads to the worker (its metrics say so) and a lone request stays on the loop; a worker that
dies costs no request its answer and is replaced; stopping the server stops the workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service import imaging
from service.preprocess_pool import BACKLOG, PreprocessPool, WorkerLost, default_processes
from testkit import handwriting
from testkit.live_server import LiveServer

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def uploads(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> list[handwriting.Sample]:
    """Drawing-pad PNGs of real test digits (transparent and white on black), and two numbers."""
    digits, labels = mnist_test_sample
    pads = list(handwriting.canvases(digits, labels, 24, seed=41))
    numbers = [s for s in handwriting.numbers(digits, labels, 12, seed=42) if s.data.startswith(b"\x89PNG")][:2]
    return pads + numbers


def _blank_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGBA", (280, 280), (0, 0, 0, 0)).save(out, "PNG")
    return out.getvalue()


def test_a_worker_gives_what_the_loop_gives(uploads: list[handwriting.Sample]) -> None:
    """Digits, numbers and errors from the worker process are exactly the loop's own; closing the pool
    ends the process."""
    corrupt = bytearray(uploads[0].data)
    corrupt[corrupt.index(b"IDAT") + 20] ^= 0xFF
    bad = [_blank_png(), bytes(corrupt), b"not an image"]

    async def scenario() -> tuple[list[object], list[object], list[BaseException], int]:
        pool = PreprocessPool(1)
        await pool.start()
        assert pool.running
        pid = pool.workers[0].process.pid  # type: ignore[union-attr]
        try:
            digits = await asyncio.gather(*(pool.run(imaging.preprocess_image_bytes, s.data, 10**7) for s in uploads))
            numbers = await asyncio.gather(*(pool.run(imaging.read_number_bytes, s.data, 10**7) for s in uploads[-2:]))
            errors = await asyncio.gather(*(pool.run(imaging.preprocess_image_bytes, data, 10**7) for data in bad),
                                          return_exceptions=True)
        finally:
            await pool.close()
        return digits, numbers, list(errors), pid  # type: ignore[return-value]

    digits, numbers, errors, pid = asyncio.run(scenario())
    for sample, digit in zip(uploads, digits, strict=True):
        np.testing.assert_array_equal(digit, imaging.preprocess_image_bytes(sample.data))
    for sample, number in zip(uploads[-2:], numbers, strict=True):
        here = imaging.read_number_bytes(sample.data)
        assert [d.box for d in number] == [d.box for d in here]  # type: ignore[attr-defined]
        for theirs, ours in zip(number, here, strict=True):  # type: ignore[call-overload]
            np.testing.assert_array_equal(theirs.pixels, ours.pixels)
    for data, error in zip(bad, errors, strict=True):
        with pytest.raises(imaging.ImagingError) as raised:
            imaging.preprocess_image_bytes(data)
        assert type(error) is type(raised.value) and str(error) == str(raised.value)
    assert not _alive(pid)


def test_the_split_keeps_lone_requests_on_the_loop_and_gives_each_worker_its_share() -> None:
    """Nothing goes to a worker while the loop has nothing else to do, or while no worker runs; under
    load a worker takes uploads until it holds its share of the requests in flight (half of them with
    one worker, a third each with two) or BACKLOG, and the least busy one is asked."""

    class Held:
        def __init__(self, jobs: int = 0) -> None:
            self.pending: dict[int, object] = dict.fromkeys(range(jobs))

    pool = PreprocessPool(1)
    assert not pool.take(64)  # no worker running
    worker = Held()
    pool.workers = [worker]  # type: ignore[list-item]
    assert not pool.take(1)
    assert pool.take(2)
    worker.pending = dict.fromkeys(range(1))
    assert not pool.take(2) and not pool.take(3) and pool.take(4)
    worker.pending = dict.fromkeys(range(31))
    assert pool.take(64)
    worker.pending = dict.fromkeys(range(32))
    assert not pool.take(64) and pool.take(66)
    worker.pending = dict.fromkeys(range(BACKLOG))
    assert not pool.take(100_000)
    pool.workers = [Held(10), Held(3)]  # type: ignore[list-item]
    assert pool.take(12) and not pool.take(11)  # the least busy holds 3; a third of 12 is 4
    pool.stopped = True
    assert not pool.take(64)


def test_default_processes_follow_the_cores_each_server_process_has() -> None:
    assert default_processes(1, 1) == 0
    assert default_processes(2, 1) == 1
    assert default_processes(2, 2) == 0  # two uvicorn workers already fill two cores
    assert default_processes(4, 2) == 1
    assert default_processes(16, 1) == 2


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def _workers_of(server_pid: int) -> list[int]:
    """The server's preprocessing worker processes (its children running multiprocessing's spawn)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.split(") ")[1].split()[1]) == server_pid and b"spawn_main" in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _counts(http: httpx.Client) -> dict[str, float]:
    counts = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("digits_preprocessed_uploads_total{"):
            where = line.split('where="')[1].split('"')[0]
            counts[where] = float(line.rsplit(" ", 1)[1])
    return counts


async def _burst(url: str, samples: list[handwriting.Sample], clients: int) -> list[tuple[int, str]]:
    """Every sample uploaded once, `clients` at a time: (status, digit read) for each, in order."""
    semaphore = asyncio.Semaphore(clients)

    async def one(http: httpx.AsyncClient, sample: handwriting.Sample) -> tuple[int, str]:
        async with semaphore:
            answer = await http.post("/predict", files={"file": ("pad.png", sample.data, "image/png")})
        return answer.status_code, str(answer.json()["predictions"][0]["digit"]) if answer.status_code == 200 else ""

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        return list(await asyncio.gather(*(one(http, s) for s in samples)))


def test_a_busy_server_hands_uploads_to_its_worker_with_the_same_answers(
    models_dir: Path, uploads: list[handwriting.Sample]
) -> None:
    """One request at a time stays on the loop; 16 at once go partly to the worker; every answer is the
    one the loop gave, and the metrics count where each upload went."""
    pads = uploads[:24]
    with LiveServer(models_dir, env={"DIGITS_DECODE_PROCESSES": "1"}) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        assert len(_workers_of(server.pid)) == 1
        alone = [asyncio.run(_burst(server.url, [s], 1))[0] for s in pads]
        assert _counts(http) == {"loop": len(pads), "worker": 0, "thread": 0}
        busy = asyncio.run(_burst(server.url, pads * 4, 16))
        counts = _counts(http)
    assert busy == alone * 4
    assert all(status == 200 for status, _ in alone)
    assert sum(digit == s.text for (_, digit), s in zip(alone, pads, strict=True)) >= 22
    assert counts["worker"] >= len(pads), counts  # about two thirds of 96 under load
    assert counts["loop"] + counts["worker"] == 5 * len(pads)


def test_a_worker_killed_under_load_costs_no_answer_and_is_replaced(
    models_dir: Path, uploads: list[handwriting.Sample]
) -> None:
    """SIGKILL to the worker in the middle of a burst: every upload still answered right (those it held
    are preprocessed on the loop), a new worker starts, and takes uploads again; the server's exit ends
    it."""
    pads = uploads[:24]
    with LiveServer(models_dir, env={"DIGITS_DECODE_PROCESSES": "1"}) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        (first,) = _workers_of(server.pid)
        expected = [asyncio.run(_burst(server.url, [s], 1))[0] for s in pads]  # one at a time: the loop's

        async def burst_and_kill() -> list[tuple[int, str]]:
            burst = asyncio.ensure_future(_burst(server.url, pads * 8, 16))
            while _counts(http).get("worker", 0) < 4:  # the worker is busy
                await asyncio.sleep(0.01)
            os.kill(first, signal.SIGKILL)
            return await burst

        answers = asyncio.run(burst_and_kill())
        deadline = time.monotonic() + 60
        while not (replacement := _workers_of(server.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert replacement and replacement != [first], server.log()
        before = _counts(http)["worker"]
        again = asyncio.run(_burst(server.url, pads * 2, 16))
        assert _counts(http)["worker"] > before
        assert "preprocessing worker process exited (code -9); starting another" in server.log()
        pid = server.pid
    assert answers == expected * 8
    assert again == expected * 2
    deadline = time.monotonic() + 10  # the server was killed: the worker sees its socket close and exits
    while _alive(replacement[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(replacement[0]), f"worker {replacement[0]} outlived server {pid}"


def test_with_no_processes_nothing_is_started(models_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(models_dir=models_dir, decode_processes=0))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert app.state.preprocess_pool.workers == []
    with pytest.raises(WorkerLost):
        asyncio.run(PreprocessPool(0).run(imaging.preprocess_image_bytes, b"", 1))
