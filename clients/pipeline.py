"""Streaming stages for `digits score`: run a producer ahead in a thread, map work with a bounded window,
and time what each stage is busy with.

Both keep memory bounded whatever the input size: at most ``depth`` (or ``window``) items
exist between the stage that makes them and the stage that uses them.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone


class _End:
    """Marks the end of the producer's items."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher(Generic[T]):
    """Iterate ``source`` in a background thread, keeping up to ``depth`` items ready.

    Reading files and decoding batches then overlaps with the consumer's work (ONNX Runtime
    releases the GIL while it runs). An exception in the producer is re-raised in the
    consumer. ``close()`` (or leaving the ``with`` block) stops the producer and runs the
    source's own cleanup (``generator.close()``) in the producer thread, where it was created.
    """

    def __init__(self, source: Iterable[T], depth: int = 4, name: str = "digits-reader") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._source = source
        self._queue: queue.Queue[T | _End | _Failed] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: T | _End | _Failed) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        iterator = iter(self._source)
        try:
            for item in iterator:
                if not self._put(item):
                    return
            self._put(_End())
        except BaseException as exc:
            self._put(_Failed(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, _End):
            self._done = True
            raise StopIteration
        if isinstance(item, _Failed):
            self._done = True
            raise item.error
        return item

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the producer and wait (bounded) for its thread to finish its cleanup."""
        self._done = True
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with contextlib.suppress(queue.Full):  # and a consumer waiting on an empty one
            self._queue.put_nowait(_End())
        self._thread.join(timeout_s)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def ordered_map(submit: Callable[[T], Future[R]], items: Iterable[T], window: int) -> Iterator[R]:
    """Results of ``submit(item)`` in input order, with at most ``window`` submitted and not yet taken.

    ``submit`` hands the item to an executor (worker processes for decoding, threads for HTTP
    requests); the window bounds both the memory held in flight and the load on the workers.
    Leaving the loop early cancels what has not started yet.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(submit(item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


class StageClock:
    """Busy time of each pipeline stage: the seconds a stage spent on its own work, waits excluded.

    Stages run in different threads; each adds to its own total (a float add under the GIL), so
    the clock costs two ``perf_counter`` calls per batch and stage. ``shares(wall)`` says which
    stage bounds the run: the one busy for (nearly) the whole wall time.
    """

    def __init__(self) -> None:
        self.busy: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.busy[stage] = self.busy.get(stage, 0.0) + seconds

    def timed(self, items: Iterable[T], stage: str) -> Iterator[T]:
        """``items``, adding the time spent producing each one to ``stage``."""
        iterator = iter(items)
        try:
            while True:
                start = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    self.add(stage, time.perf_counter() - start)
                    return
                self.add(stage, time.perf_counter() - start)
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def shares(self, wall_s: float) -> dict[str, float]:
        """Each stage's busy time as a fraction of ``wall_s``, in the order the stages were first timed."""
        return {stage: seconds / wall_s if wall_s > 0 else 0.0 for stage, seconds in self.busy.items()}

    def summary(self, wall_s: float) -> str:
        """One line: each stage's share of the wall time, and the stage that bounds the run."""
        shares = self.shares(wall_s)
        if not shares:
            return "stages: nothing was timed"
        parts = ", ".join(f"{stage} {share:.0%}" for stage, share in shares.items())
        busiest = max(shares, key=shares.__getitem__)
        return f"stages, busy share of the {wall_s:.2f} s: {parts} (busiest: {busiest})"
