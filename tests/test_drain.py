"""Graceful drain (DIGITS_SHUTDOWN_DRAIN_S): on SIGTERM, /readyz turns 503 at once, every response
closes its connection, the process keeps serving for the drain period, then stops as before.

The load test runs two real `digits serve` replicas and clients that do what a health-checking
load balancer and an HTTP client do together: new connections go only to replicas whose /readyz
answered 200 when last polled, and a connection is not reused after a `Connection: close` answer.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.drain import DRAINING, Drain
from testkit.live_server import free_port
from tests.deploy_helpers import Replica

DRAIN_S = 2.0
STARTUP_S = 90.0


# --------------------------------------------------------------------------- the SIGTERM hand-over


def test_sigterm_drains_then_hands_over_to_the_servers_handler() -> None:
    """In this (main) thread, as under uvicorn: the server's handler is chained, called once the
    drain period is over, and put back; a second SIGTERM stops at once."""
    calls: list[tuple[int, float]] = []
    original = signal.getsignal(signal.SIGTERM)

    def server_handler(sig: int, frame: Any) -> None:
        calls.append((sig, time.monotonic()))

    async def scenario(period_s: float, signals: int) -> tuple[Drain, float, bool]:
        drain = Drain(period_s, lambda: ["lenet5"])
        assert drain.install(asyncio.get_running_loop())
        sent = time.monotonic()
        for _ in range(signals):
            signal.raise_signal(signal.SIGTERM)
            await asyncio.sleep(0.05)
        draining_at_once = drain.draining
        for _ in range(100):  # bounded: at most 10 s
            if calls:
                break
            await asyncio.sleep(0.1)
        return drain, sent, draining_at_once

    signal.signal(signal.SIGTERM, server_handler)
    try:
        drain, sent, draining_at_once = asyncio.run(scenario(0.5, signals=1))
        assert draining_at_once
        assert [sig for sig, _ in calls] == [signal.SIGTERM]
        assert calls[0][1] - sent >= 0.5 - 0.01, "the server's handler ran before the drain period was over"
        assert signal.getsignal(signal.SIGTERM) == server_handler, "the server's handler was not put back"
        assert drain.readiness() == {"ready": False, "models": {"lenet5": DRAINING}}

        calls.clear()
        drain, sent, _ = asyncio.run(scenario(60.0, signals=2))  # the second signal does not wait a minute
        assert [sig for sig, _ in calls] == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) == server_handler
    finally:
        signal.signal(signal.SIGTERM, original)


def test_no_drain_period_or_no_server_handler_changes_nothing() -> None:
    original = signal.getsignal(signal.SIGTERM)

    async def install(period_s: float) -> bool:
        return Drain(period_s, list).install(asyncio.get_running_loop())

    try:
        signal.signal(signal.SIGTERM, lambda sig, frame: None)
        assert not asyncio.run(install(0.0))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # no server handler to hand over to
        assert not asyncio.run(install(5.0))
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, original)


# --------------------------------------------------------------------------- what a draining app answers


def test_a_draining_app_is_not_ready_and_closes_every_connection(client: Any) -> None:
    drain: Drain = client.app.state.drain
    assert client.get("/readyz").status_code == 200
    assert "close" not in client.get("/healthz").headers.get("connection", "")
    drain.begin()
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
        assert set(ready.json()["models"].values()) == {DRAINING} and ready.json()["models"]
        assert ready.headers["connection"] == "close"
        predicted = client.post("/predict", json={"pixels": np.eye(28, dtype=int).tolist()})
        assert predicted.status_code == 200  # still serving
        assert predicted.headers["connection"] == "close"
        too_big = client.post("/predict", content=b"x" * (6 * 1024 * 1024), headers={"content-type": "image/png"})
        assert too_big.status_code == 413
        assert too_big.headers.get_list("connection") == ["close"]
    finally:
        drain.draining = False


# --------------------------------------------------------------------------- under load, real processes


@dataclass
class Outcome:
    statuses: Counter[int | str] = field(default_factory=Counter)
    digits: Counter[int] = field(default_factory=Counter)
    # Every answer: (replica, when its request was sent, whether it closed the connection).
    answers: list[tuple[str, float, bool]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class ReadinessRotation:
    """A health-checking balancer's view: the replicas whose /readyz answered 200 at the last poll."""

    def __init__(self, replicas: list[Replica], period_s: float = 0.1) -> None:
        self.replicas = replicas
        self.period_s = period_s
        self.ready = {r.address for r in replicas}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._picks = 0
        self._thread = threading.Thread(target=self._poll, name="readiness", daemon=True)

    def __enter__(self) -> ReadinessRotation:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _poll(self) -> None:
        with httpx.Client(timeout=2.0) as http:
            while not self._stop.wait(self.period_s):
                for replica in self.replicas:
                    try:
                        ok = http.get(f"http://{replica.address}/readyz").status_code == 200
                    except httpx.TransportError:
                        ok = False
                    with self._lock:
                        (self.ready.add if ok else self.ready.discard)(replica.address)

    def pick(self) -> str:
        """The next replica in rotation (round robin), for a new connection."""
        for _ in range(100):  # bounded: 10 s without any ready replica fails the request
            with self._lock:
                ready = sorted(self.ready)
                self._picks += 1
                if ready:
                    return ready[self._picks % len(ready)]
            time.sleep(0.1)
        raise AssertionError("no replica in rotation for 10 s")


@pytest.fixture()
def two_draining_replicas(tmp_path: Path, models_dir: Path) -> Iterator[list[Replica]]:
    replicas = [Replica(free_port(), models_dir, tmp_path / f"replica-{i}.log",
                        settings={"DIGITS_SHUTDOWN_DRAIN_S": str(DRAIN_S)}) for i in range(2)]
    try:
        for replica in replicas:
            replica.start()
        deadline = time.monotonic() + STARTUP_S
        for replica in replicas:
            replica.wait_ready(deadline)
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


def test_sigterm_under_load_with_a_drain_period_fails_no_request(
    two_draining_replicas: list[Replica], mnist_test_sample: tuple[np.ndarray, np.ndarray]
) -> None:
    """6 clients send predictions back to back for 1 + DRAIN_S + 2 s; one replica gets SIGTERM 1 s in."""
    images, labels = mnist_test_sample
    body, label = {"pixels": images[0].tolist()}, int(labels[0])
    victim, survivor = two_draining_replicas
    outcome = Outcome()
    lock = threading.Lock()
    deadline = time.monotonic() + 1.0 + DRAIN_S + 2.0

    with ReadinessRotation(two_draining_replicas) as rotation:

        def client() -> None:
            # httpx honours Connection: close: that connection is closed, the next request opens another.
            with httpx.Client(timeout=30.0) as http:
                address = rotation.pick()
                while time.monotonic() < deadline:
                    sent = time.monotonic()
                    try:
                        response = http.post(f"http://{address}/predict", json=body)
                    except httpx.TransportError as exc:
                        with lock:
                            outcome.statuses[type(exc).__name__] += 1
                            outcome.failures.append(f"{address}: {type(exc).__name__}: {exc}")
                        address = rotation.pick()
                        continue
                    closes = response.headers.get("connection", "").lower() == "close"
                    with lock:
                        outcome.statuses[response.status_code] += 1
                        if response.status_code == 200:
                            outcome.digits[response.json()["predictions"][0]["digit"]] += 1
                        else:
                            outcome.failures.append(f"{address}: {response.status_code} {response.text[:200]}")
                        outcome.answers.append((address, sent, closes))
                    if closes:
                        address = rotation.pick()

        threads = [threading.Thread(target=client, name=f"load-{i}", daemon=True) for i in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        victim.send(signal.SIGTERM)
        # Soon (the signal reaches the victim's event loop a moment later): not ready, yet still serving,
        # and closing the connection after each answer.
        ready = httpx.get(f"http://{victim.address}/readyz", timeout=10)
        for _ in range(50):
            if ready.status_code == 503:
                break
            time.sleep(0.02)
            ready = httpx.get(f"http://{victim.address}/readyz", timeout=10)
        draining_since = time.monotonic()
        alive = httpx.get(f"http://{victim.address}/healthz", timeout=10)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()) + 35.0)
        assert not any(t.is_alive() for t in threads), "a load client did not finish in time"

    assert ready.status_code == 503 and ready.json()["ready"] is False, ready.text
    assert alive.status_code == 200 and alive.headers["connection"] == "close"
    assert outcome.failures == [], outcome.statuses
    assert set(outcome.statuses) == {200} and set(outcome.digits) == {label}
    # The draining replica answered the requests on its connections, closing them, and every request
    # sent to it once it was draining was answered and closed its connection; the traffic moved to the
    # other replica, whose connections stayed open.
    victim_answers = [(sent, closes) for address, sent, closes in outcome.answers if address == victim.address]
    assert any(closes for _, closes in victim_answers), "the draining replica closed no connection"
    assert all(closes for sent, closes in victim_answers if sent >= draining_since)
    assert any(address == survivor.address and sent >= draining_since for address, sent, _ in outcome.answers)
    assert not any(closes for address, _, closes in outcome.answers if address == survivor.address)
    # Then it stopped as uvicorn stops on SIGTERM: killed by the signal it re-raises.
    assert victim.wait_exit(60) == -signal.SIGTERM, "the replica should exit once the drain is over"
    assert survivor.alive
