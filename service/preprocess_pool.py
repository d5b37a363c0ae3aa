"""Small uploads preprocessed in worker processes beside the event loop, when the loop is busy.

A drawing pad's PNG is preprocessed on the event loop (see ``api.decode_blobs``): in a thread, each of
the imaging package's many short library calls would have to win the interpreter back from the busy
loop. But a busy loop then spends all of one core on uploads while the others idle. A worker process
has an interpreter of its own: the loop writes it the file (a few KB) and reads back the 28x28 digit
(3 KB), which costs the loop a small part of preprocessing the upload itself.

The split, when more than one request is in flight: an upload goes to the least busy worker while
that worker holds fewer than its share of the requests in flight (an equal share for the loop and
each worker) and fewer than ``BACKLOG``; otherwise the loop preprocesses it. The shares follow the
speeds: a worker that falls behind fills its share and the loop takes the rest, one that keeps up is
handed every upload it can take. (The loop reads the workers' answers only between rounds of its
own work, so "whenever a worker is idle" left the worker waiting, at under a tenth of a core; a
fixed two-of-three split starved the loop or the worker depending on which was faster that minute.)
A lone request stays on the loop, which answers it sooner than a round trip to a process. Measured
on 2 cores in bench/RESULTS.md.

The loop side is an asyncio protocol on one end of a socket pair: writes are buffered by the
transport and never block the loop. A worker that dies fails its jobs with ``WorkerLost`` (the
caller preprocesses them itself) and is started again, unless it died within ``CRASH_WINDOW_S`` of
starting, twice in a row: then the pool stops using processes and says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import signal
import socket
import struct
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

from service import imaging

log = logging.getLogger("service")

__all__ = ["BACKLOG", "CRASH_WINDOW_S", "PreprocessPool", "WorkerLost", "default_processes"]

BACKLOG = 64  # the most jobs a worker holds (about 100 ms of canvases on 2 cores), however many are in flight
CRASH_WINDOW_S = 10.0
START_TIMEOUT_S = 60.0
# What a worker runs, by name: the imaging package's two entry points (the name travels, not the function).
_FUNCTIONS: dict[str, Callable[..., Any]] = {"digit": imaging.preprocess_image_bytes,
                                             "number": imaging.read_number_bytes}
_NAMES = {function: name for name, function in _FUNCTIONS.items()}
_LENGTH = struct.Struct("!i")  # multiprocessing.Connection's frame header: a signed 32-bit length


class WorkerLost(RuntimeError):
    """A worker process exited before it answered: the caller preprocesses the upload itself."""


def default_processes(cores: int, uvicorn_workers: int) -> int:
    """Preprocessing processes per server process by default: the cores each server process has beyond
    its own, at most 2 (one event loop keeps about two busy with canvases)."""
    return max(0, min(2, cores // uvicorn_workers - 1))


def _serve(connection: Connection) -> None:  # pragma: no cover - runs in the worker process
    """The worker: import the imaging package, say it is ready, then answer jobs until the loop hangs up."""
    # Ctrl+C or a SIGTERM sent to the whole process group is the server's to handle: this process ends
    # when the server closes its socket (or kills it), never before the requests it holds are answered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        connection.send_bytes(b"ready")
    except OSError:
        return
    while True:
        try:
            job, kind, data, max_pixels = pickle.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            reply = (job, True, _FUNCTIONS[kind](data, max_pixels=max_pixels))
        except Exception as exc:  # every error goes back to the request that sent the job
            reply = (job, False, exc)
        try:
            payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an unpicklable error
            payload = pickle.dumps((job, False, RuntimeError(f"{type(exc).__name__}: {exc}")))
        try:
            connection.send_bytes(payload)
        except OSError:
            return


class _Worker(asyncio.Protocol):
    """One worker process and the loop's end of its socket: frames in, futures resolved."""

    def __init__(self, on_lost: Callable[[_Worker], None]) -> None:
        self.on_lost = on_lost
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.process: multiprocessing.process.BaseProcess | None = None
        self.started = 0.0
        self.ready: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # a stream transport (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer)
            if len(self._buffer) < _LENGTH.size + size:
                return
            frame = bytes(self._buffer[_LENGTH.size : _LENGTH.size + size])
            del self._buffer[: _LENGTH.size + size]
            self._frame(frame)

    def _frame(self, frame: bytes) -> None:
        if frame == b"ready":
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(None)
            return
        job, ok, value = pickle.loads(frame)
        future = self.pending.pop(job, None)
        if future is None or future.done():  # its request gave up waiting (deadline)
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        lost = WorkerLost("the preprocessing worker process exited before it answered")
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(lost)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(lost)
        self.pending.clear()
        self.on_lost(self)

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(_LENGTH.pack(len(frame)) + frame)


class PreprocessPool:
    """``processes`` worker processes; ``take`` says whether an upload goes to one, ``run`` sends it."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.workers: list[_Worker] = []
        self.stopped = False
        self._job = 0
        self._quick_deaths = 0
        self._restarts: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return bool(self.workers) and not self.stopped

    async def start(self) -> None:
        """Start the worker processes and wait until each has imported the imaging package. A worker that
        cannot start is logged; the service then preprocesses everything on the loop and in threads."""
        if self.processes <= 0:
            return
        results = await asyncio.gather(*(self._start_one() for _ in range(self.processes)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("a preprocessing worker process did not start (%s: %s); uploads are preprocessed in "
                          "this process", type(result).__name__, result)
        if self.workers:
            log.info("%d preprocessing worker process%s: pids %s", len(self.workers),
                     "" if len(self.workers) == 1 else "es", ", ".join(str(w.process.pid) for w in self.workers
                                                                       if w.process is not None))

    async def _start_one(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        worker = _Worker(self._lost)
        worker.ready = loop.create_future()
        child = Connection(theirs.detach())
        process = context.Process(target=_serve, args=(child,), name="digits-preprocess", daemon=True)
        try:
            await loop.run_in_executor(None, process.start)  # spawning takes a while: not on the loop
        finally:
            child.close()
        worker.process, worker.started = process, time.monotonic()
        try:
            await loop.create_unix_connection(lambda: worker, sock=ours)
            while not worker.ready.done():  # until it says it is ready, or exits, or takes too long
                await asyncio.wait([worker.ready], timeout=0.05)
                if not process.is_alive():
                    raise WorkerLost(f"it exited with code {process.exitcode} while starting")
                if time.monotonic() - worker.started > START_TIMEOUT_S:
                    raise TimeoutError(f"it was not ready after {START_TIMEOUT_S:g} s")
            worker.ready.result()
        except (OSError, TimeoutError, WorkerLost):
            if worker.ready.done() and not worker.ready.cancelled():
                worker.ready.exception()  # seen: raised below in its own words
            if worker.transport is not None:
                worker.transport.close()
            await loop.run_in_executor(None, _reap, process, 0.0)
            raise
        self.workers.append(worker)

    def take(self, requests_in_flight: int) -> bool:
        """Whether the next upload goes to a worker: only while the loop has other requests to serve, and
        while the least busy worker holds fewer than its share of the requests in flight (an equal share
        for the loop and each worker) and fewer than BACKLOG."""
        if requests_in_flight <= 1 or not self.running:
            return False
        share = max(1, requests_in_flight // (len(self.workers) + 1))
        return min(len(w.pending) for w in self.workers) < min(share, BACKLOG)

    async def run(self, function: Callable[..., Any], data: bytes, max_pixels: int) -> Any:
        """``function(data, max_pixels=max_pixels)`` (``imaging.preprocess_image_bytes`` or
        ``imaging.read_number_bytes``), computed by the least busy worker. Raises what the
        worker raised (an ``ImagingError`` for a bad image), or WorkerLost."""
        worker = min(self.workers, key=lambda w: len(w.pending)) if self.running else None
        if worker is None or worker.transport is None:
            raise WorkerLost("no preprocessing worker process is running")
        self._job += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.pending[self._job] = future
        worker.send(pickle.dumps((self._job, _NAMES[function], data, max_pixels),
                                 protocol=pickle.HIGHEST_PROTOCOL))
        return await future

    def _lost(self, worker: _Worker) -> None:
        if worker not in self.workers or self.stopped:
            return
        self.workers.remove(worker)  # no new jobs; its own were failed with WorkerLost
        task = asyncio.get_running_loop().create_task(self._replace(worker))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _replace(self, worker: _Worker) -> None:
        """Reap a worker that is gone (off the loop: it may take a moment), say why, start another."""
        await asyncio.get_running_loop().run_in_executor(None, _reap, worker.process, 1.0)
        code = worker.process.exitcode if worker.process is not None else None
        quick = time.monotonic() - worker.started < CRASH_WINDOW_S
        self._quick_deaths = self._quick_deaths + 1 if quick else 0
        if self.stopped:
            return
        if self._quick_deaths >= 2:
            log.error("preprocessing worker process exited (code %s) twice within %g s of starting; uploads "
                      "are preprocessed in this process from now on", code, CRASH_WINDOW_S)
            return
        log.warning("preprocessing worker process exited (code %s); starting another", code)
        try:
            await self._start_one()
        except (OSError, TimeoutError, WorkerLost) as exc:
            log.error("could not start another preprocessing worker process (%s); uploads are preprocessed in "
                      "this process", exc)

    async def close(self) -> None:
        """Stop the workers: they see the socket close and exit; one that does not within 2 s is killed."""
        self.stopped = True
        for task in list(self._restarts):
            task.cancel()
        workers, self.workers = self.workers, []
        for worker in workers:
            if worker.transport is not None:
                worker.transport.close()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, _reap, w.process, 2.0) for w in workers))


def _reap(process: multiprocessing.process.BaseProcess | None, grace_s: float) -> None:
    """Wait up to ``grace_s`` for a worker process to exit, then kill it (blocking: run off the loop)."""
    if process is None or process.pid is None:  # never started
        return
    process.join(grace_s)
    if process.is_alive():
        process.kill()
        process.join(2.0)
