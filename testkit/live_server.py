"""`digits serve` as a real process on 127.0.0.1, a bounded HTTP load generator to drive it, and
model files swapped in place as a deploy would.

Shared by the process tests (start-up, SIGTERM, SIGHUP, reload, overload, hostile uploads) and by
bench/bench_reliability.py, so a test and a benchmark start and load the server the same way.
Every wait has a deadline and every load run a duration; nothing here outlives its caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, models_dir: Path, *, output: IO[Any] | int = subprocess.PIPE,
                 **env: str) -> subprocess.Popen:
    """`digits serve` on 127.0.0.1:port with DIGITS_* overrides in ``env`` (one worker: its pid is the server)."""
    environment = {**os.environ, "DIGITS_MODELS_DIR": str(models_dir), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT, text=True,
    )


def wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 60, path: str = "/readyz") -> None:
    """Return once GET ``path`` answers 200; fail with the server's output if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"server exited early with {proc.returncode}: {output}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server not ready in time")


def stop_server(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL if it has not exited within ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of process ``pid`` in MiB: now (VmRSS), or its peak so far (``field="VmHWM"``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for process {pid}")


def install_model(models_dir: Path, name: str, blob: bytes, *, version: str | None = None,
                  update_manifest: bool = True) -> str:
    """Put ``blob`` in place as model ``name``'s file, each file replaced atomically as a deploy would;
    with ``update_manifest`` its checksum (and ``version``) go into manifest.json too. Returns the sha256."""
    manifest_path = models_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    (entry,) = [m for m in manifest["models"] if m["name"] == name]
    target = models_dir / entry["file"]
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, target)
    digest = hashlib.sha256(blob).hexdigest()
    if update_manifest:
        entry.update(sha256=digest, bytes=len(blob))
        if version is not None:
            entry["version"] = version
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, manifest_path)
    return digest


@dataclass
class LiveServer:
    """A `digits serve` process for a ``with`` block: started and ready on entry, stopped on exit.

    Its output goes to a temporary file (a pipe nobody reads could fill and stall the server);
    ``log()`` returns the end of it for assertion messages.
    """

    models_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    ready_timeout_s: float = 60.0
    proc: subprocess.Popen | None = None
    _output: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not running"
        return self.proc.pid

    def __enter__(self) -> LiveServer:
        self._output = tempfile.TemporaryFile("w+")  # closed in __exit__
        env = {"DIGITS_INTRA_OP_THREADS": "1", "DIGITS_DEVICE": "cpu", **self.env}
        self.proc = start_server(self.port, self.models_dir, output=self._output, **env)
        try:
            wait_ready(self.port, self.proc, self.ready_timeout_s)
        except AssertionError as exc:
            self.__exit__()
            raise AssertionError(f"{exc}\n{self.log()}") from None
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._output is not None:
            self._output.close()
            self._output = None

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None and self.proc.poll() is None, "the server is not running"
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout_s: float) -> int | None:
        """Exit status, or None if still running after ``timeout_s``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log(self) -> str:
        if self._output is None:
            return ""
        self._output.seek(0)
        return self._output.read()[-4000:]


# --- load ---------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 client on asyncio streams: with a hundred connections in flight httpx's own
# bookkeeping takes a whole core and the client, not the server, becomes the bottleneck.


@dataclass(frozen=True)
class Request:
    """One prepared request: its bytes are built once and sent as often as needed."""

    path: str
    body: bytes = b""
    content_type: str = "application/json"
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, host: str) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(self.body)}"]
        if self.body:
            lines.append(f"Content-Type: {self.content_type}")
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class _StaleConnectionError(ConnectionError):
    """The server had closed the connection before it read the request: nothing was answered."""


class Connection:
    """One keep-alive connection to 127.0.0.1:port, reopened when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, raw: bytes) -> Answer:
        """Send one request and read its answer. A kept-alive connection the server closed while it
        was idle (its keep-alive timeout) is reopened and the request sent again, as HTTP clients do."""
        if self._streams is not None:
            try:
                return await self._exchange(raw)
            except _StaleConnectionError:
                pass
        self._streams = await asyncio.open_connection("127.0.0.1", self.port)
        return await self._exchange(raw)

    async def _exchange(self, raw: bytes) -> Answer:
        assert self._streams is not None
        reader, writer = self._streams
        try:
            try:
                writer.write(raw)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise  # an answer had started: lost, not stale
                raise _StaleConnectionError from exc
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in header_lines if ": " in line)
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            else:  # no length: the body runs to the end of the connection
                body = await reader.read()
                headers["connection"] = "close"
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Answer(int(status_line.split()[1]), headers, body)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def exchange_once(port: int, request: Request, timeout_s: float = 30) -> tuple[str, Answer | None]:
    """Send ``request`` on a fresh connection and say what became of it: ("answered", the answer),
    or ("refused" | "reset before any answer" | "cut off mid-answer", None). Around a shutdown the
    first two are expected; the third means an answer was lost after it started."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return "refused", None
    except OSError:  # reset while connecting: the listener closed with the connection in its queue
        return "reset before any answer", None
    received = b""
    try:
        writer.write(request.encode(f"127.0.0.1:{port}"))
        await writer.drain()
        while chunk := await asyncio.wait_for(reader.read(65536), timeout_s):
            received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            fields = [line.partition(b": ") for line in head.split(b"\r\n")]
            length = [int(value) for name, _, value in fields if name.lower() == b"content-length"]
            if length and len(body) >= length[0]:
                status = int(head.split(b" ", 2)[1])
                headers = {name.decode().lower(): value.decode() for name, _, value in fields[1:]}
                return "answered", Answer(status, headers, body[: length[0]])
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()
    return ("cut off mid-answer" if received else "reset before any answer"), None


RequestFactory = Callable[[int], Request]  # request number -> the request to send
AnswerCheck = Callable[[Request, Answer], bool]  # whether a 200 answer to the request is right


@dataclass
class LoadResult:
    """What the clients of one load run saw: status counts, latencies by status, transport errors."""

    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: dict[int, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    retry_after: Counter[str] = field(default_factory=Counter)  # Retry-After values of the 503s
    wrong: int = 0  # 200 answers the check refused

    @property
    def tried(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def failed(self) -> int:
        """Requests without an answer, or with one that is neither a right success nor a shed (503)."""
        bad = sum(n for s, n in self.statuses.items() if s not in (200, 503))
        return bad + sum(self.errors.values()) + self.wrong

    def rate(self, status: int = 200) -> float:
        """Answers with ``status`` per second."""
        return self.statuses[status] / self.seconds

    def p(self, q: float, status: int = 200) -> float:
        """Latency percentile ``q`` (0-100) of the answers with ``status``, in seconds (nan if none)."""
        values = self.latencies.get(status)
        return float(np.percentile(values, q)) if values else float("nan")

    def summary(self) -> str:
        return (f"{self.tried} tried in {self.seconds:.1f} s: statuses {dict(sorted(self.statuses.items()))}, "
                f"errors {dict(self.errors)}, wrong answers {self.wrong}")


async def _one(connection: Connection, request: Request, result: LoadResult, check: AnswerCheck | None,
               timeout_s: float) -> None:
    started = time.perf_counter()
    try:
        answer = await asyncio.wait_for(connection.send(request.encode(f"127.0.0.1:{connection.port}")), timeout_s)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
        stale = isinstance(exc, _StaleConnectionError)  # on a fresh connection: reset before any answer
        result.errors["reset before any answer" if stale else type(exc).__name__] += 1
        return
    result.statuses[answer.status] += 1
    result.latencies.setdefault(answer.status, []).append(time.perf_counter() - started)
    if answer.status == 503:
        result.retry_after[answer.headers.get("retry-after", "(none)")] += 1
    elif answer.status == 200 and check is not None and not check(request, answer):
        result.wrong += 1


async def closed_loop(port: int, make: RequestFactory, *, clients: int, duration_s: float,
                      check: AnswerCheck | None = None, timeout_s: float = 30) -> LoadResult:
    """``clients`` concurrent clients, each on its own connection, each sending its next request as
    soon as the last is answered, for ``duration_s``."""
    result = LoadResult(seconds=duration_s)
    numbers = iter(range(1 << 62))
    started = time.perf_counter()
    deadline = started + duration_s

    async def client() -> None:
        connection = Connection(port)
        try:
            while time.perf_counter() < deadline:
                await _one(connection, make(next(numbers)), result, check, timeout_s)
        finally:
            connection.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    result.seconds = time.perf_counter() - started
    return result


async def open_loop(port: int, make: RequestFactory, *, rate: float, duration_s: float, max_in_flight: int = 1024,
                    check: AnswerCheck | None = None, timeout_s: float = 30) -> LoadResult:
    """Requests started at ``rate`` per second whatever the answers (as independent users would),
    on up to ``max_in_flight`` connections; a request that finds them all busy is counted as the
    error "client-saturated" (the client, not the server, was the limit)."""
    result = LoadResult(seconds=duration_s)
    idle: list[Connection] = []
    tasks: set[asyncio.Task[None]] = set()
    busy = 0

    async def send(request: Request) -> None:
        nonlocal busy
        connection = idle.pop() if idle else Connection(port)
        try:
            await _one(connection, request, result, check, timeout_s)
        finally:
            busy -= 1
            idle.append(connection)

    started = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) < started + duration_s:
        for _ in range(int((now - started) * rate) + 1 - n):
            if busy >= max_in_flight:
                result.errors["client-saturated"] += 1
            else:
                busy += 1
                task = asyncio.create_task(send(make(n)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.sleep(min(0.002, 1 / rate))
    if tasks:
        await asyncio.wait(set(tasks), timeout=timeout_s + 5)
    result.seconds = time.perf_counter() - started
    for connection in idle:
        connection.close()
    return result


def pending_images(base_url: str) -> float:
    """Images queued in the server's batchers now (its Prometheus gauge)."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("digits_pending_images{"))


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if predicate():
                return True
        time.sleep(interval_s)
    return False
