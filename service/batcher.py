"""Dynamic batching: many concurrent requests, one inference call.

Policy (``max_delay_ms = 0``, the default): when the model is idle a request is
dispatched at once; while an inference runs, new requests queue, and the next
call takes everything that queued (up to ``max_batch_size`` images). Batching
therefore only happens under load, costs a lone client nothing, and never puts
clients in lockstep with a timer. A positive ``max_delay_ms`` instead waits up
to that long after the oldest request for a batch to fill.

A request carrying k images counts k against both the batch size and the
bounded queue (``max_queue`` images); a full queue is refused at once with
:class:`QueueFullError` rather than letting latency grow without bound.

Inference runs in a worker thread, except where the model costs less than the
trip to that thread and back. :meth:`calibrate` measures both at start-up; with
``inline="auto"`` a batch small enough to cost less than one hand-off (for the
shipped LeNet-5 on a CPU: a lone request or two) is run by the batcher's task on
the event loop itself. The batcher's task runs after every request that was ready
in the same turn of the loop has queued, so under load batches grow past that
size and go to the thread, which lets the loop parse the next requests while the
model runs. A model slower than :data:`INLINE_MAX_S` per call is never run
inline, so a slow model cannot block the loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from statistics import median
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray], Sequence[np.ndarray]]
InlinePolicy = Literal["auto", "on", "off"]
INLINE_MAX_S = 0.001  # never run longer than this on the event loop, whatever the policy
BatchObserver = Callable[[int, Sequence[float], float], None]  # (images, queue waits in s, inference s)


class QueueFullError(Exception):
    """The batcher's queue holds ``max_queue`` images already."""

    def __init__(self, pending: int, max_queue: int, retry_after_s: float) -> None:
        self.retry_after_s = math.ceil(retry_after_s)  # whole seconds, as Retry-After carries them
        super().__init__(
            f"server busy: {pending} images already queued (limit {max_queue}); retry after {self.retry_after_s} s"
        )


class BatcherClosedError(Exception):
    """The batcher is shutting down and takes no new work."""


class InferenceError(RuntimeError):
    """The model failed on a batch; every request of that batch gets this error."""


@dataclass(slots=True)
class _Item:
    x: np.ndarray  # (k, 1, 28, 28) float32
    future: asyncio.Future[tuple[np.ndarray, ...]]
    enqueued: float


class DynamicBatcher:
    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int = 64,
        max_delay_ms: float = 0.0,
        max_queue: int = 512,
        name: str = "model",
        executor: Executor | None = None,
        observer: BatchObserver | None = None,
        inline: InlinePolicy = "off",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be 0 or more, got {max_delay_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if inline not in ("auto", "on", "off"):
            raise ValueError(f"inline must be auto, on or off, got {inline!r}")
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.name = name
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._observer = observer
        self._queue: collections.deque[_Item] = collections.deque()
        self._pending = 0  # images queued, not yet dispatched
        self._wakeup = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._image_seconds = 1e-4  # running estimate of inference time per image, for Retry-After
        self.inline_policy: InlinePolicy = inline
        self.inline_max_images = 0  # set by calibrate(); 0: never inline
        self.model_seconds = 0.0  # measured by calibrate(): one call on one image
        self.handoff_seconds = 0.0  # measured by calibrate(): a round trip to the inference thread

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    def admit(self, images: int = 1) -> None:
        """Raise :class:`QueueFullError` unless ``images`` more fit in the queue now.

        ``submit`` applies it; callers also apply it before they read and parse a request body: under
        overload most requests are refused, and reading and parsing each of them first takes the event
        loop from the requests being served (and from this batcher), so throughput collapses."""
        if self._pending + images > self.max_queue:
            retry = max(1.0, self._pending * self._image_seconds)
            raise QueueFullError(self._pending, self.max_queue, retry)

    async def calibrate(self, sample: np.ndarray, rounds: int = 25) -> None:
        """Measure one call of the model on ``sample`` (one image) on this thread and a round trip to the
        inference thread, medians of ``rounds``; then decide how many images may run inline (see the module)."""
        loop = asyncio.get_running_loop()
        model, hop = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            self.infer(sample)
            model.append(time.perf_counter() - started)
            started = time.perf_counter()
            await loop.run_in_executor(self._executor, _nothing)
            hop.append(time.perf_counter() - started)
        self.model_seconds, self.handoff_seconds = median(model), median(hop)
        self.inline_max_images = inline_capacity(self.inline_policy, self.model_seconds, self.handoff_seconds,
                                                 self.max_batch_size)
        log.info("model %s: %.0f us a call on one image, %.0f us a hand-off to the inference thread; inline=%s: "
                 "%s", self.name, self.model_seconds * 1e6, self.handoff_seconds * 1e6, self.inline_policy,
                 f"batches of up to {self.inline_max_images} images run on the event loop"
                 if self.inline_max_images else "every request goes through the inference thread")

    def _checked(self, outputs: Sequence[np.ndarray], k: int) -> Sequence[np.ndarray]:
        for out in outputs:
            if len(out) != k:
                raise InferenceError(f"model {self.name} returned {len(out)} rows for a batch of {k}")
        return outputs

    def _failure(self, exc: Exception, k: int) -> InferenceError:
        log.error("inference failed on a batch of %d images (model %s)", k, self.name, exc_info=exc)
        if isinstance(exc, InferenceError):
            return exc
        return InferenceError(f"inference failed in model {self.name}: {type(exc).__name__}: {exc}")

    def _observed(self, k: int, waits: Sequence[float], started: float) -> float:
        elapsed = time.perf_counter() - started
        self._image_seconds = 0.9 * self._image_seconds + 0.1 * elapsed / k
        if self._observer is not None:
            self._observer(k, waits, elapsed)
        return elapsed

    async def submit(self, x: np.ndarray, deadline: float | None = None) -> tuple[np.ndarray, ...]:
        """Queue ``x`` (k images) and wait for its outputs, each sliced to k rows. Past ``deadline`` (the
        event loop's clock) it raises TimeoutError, and a request still queued then never runs."""
        if self._closed:
            raise BatcherClosedError(f"model {self.name} is shutting down; retry on another replica")
        k = len(x)
        if k == 0:
            raise ValueError("no images to run")
        self.admit(k)
        if self._task is None:
            self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[np.ndarray, ...]] = loop.create_future()
        self._queue.append(_Item(x, future, time.perf_counter()))
        self._pending += k
        self._wakeup.set()
        if deadline is None:
            return await future
        # One timer on the future itself: a third of what asyncio.timeout costs a request (its own object,
        # the task's cancellation and uncancellation), which was a tenth of a batched prediction's CPU.
        timer = loop.call_at(deadline, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _take_batch(self) -> list[_Item]:
        """Pop queued items up to max_batch_size images; a lone oversized request forms its own batch."""
        batch: list[_Item] = []
        images = 0
        while self._queue:
            item = self._queue[0]
            k = len(item.x)
            if item.future.done():  # cancelled (timed out or client gone): skip it
                self._queue.popleft()
                self._pending -= k
                continue
            if batch and images + k > self.max_batch_size:
                break
            self._queue.popleft()
            self._pending -= k
            batch.append(item)
            images += k
            if images >= self.max_batch_size:
                break
        return batch

    async def _wait_to_fill(self) -> None:
        """With a positive max_delay, wait until the batch is full or the oldest request is due."""
        deadline = self._queue[0].enqueued + self.max_delay_s
        while self._pending < self.max_batch_size and not self._closed:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.max_delay_s > 0:
                await self._wait_to_fill()
            batch = self._take_batch()
            if not batch:
                continue
            started = time.perf_counter()
            x = batch[0].x if len(batch) == 1 else np.concatenate([item.x for item in batch])
            try:
                if len(x) <= self.inline_max_images:  # cheaper than the hand-off: run it here, on the loop
                    outputs = self._checked(self.infer(x), len(x))
                else:
                    outputs = self._checked(await loop.run_in_executor(self._executor, self.infer, x), len(x))
            except Exception as exc:  # the model failed: fail the whole batch at once, never hang it
                error = self._failure(exc, len(x))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            self._observed(len(x), [started - item.enqueued for item in batch], started)
            start = 0
            for item in batch:
                k = len(item.x)
                if not item.future.done():
                    item.future.set_result(tuple(out[start : start + k] for out in outputs))
                start += k

    async def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, finish everything queued, then stop the worker thread."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                log.warning("batcher %s: queued work not finished after %.0f s; cancelling", self.name, timeout_s)
                self._task.cancel()
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(BatcherClosedError(f"model {self.name} shut down before running this"))
        self._queue.clear()
        self._pending = 0
        if self._own_executor:
            self._executor.shutdown(wait=False)


def inline_capacity(policy: InlinePolicy, model_s: float, handoff_s: float, max_batch_size: int) -> int:
    """How many images a batch may hold to run on the event loop: none with ``off``; with ``auto`` as many
    as cost (at ``model_s`` each, an over-estimate for batches) no more than one hand-off of ``handoff_s``;
    with ``on`` as many as fit in :data:`INLINE_MAX_S`. Never more than ``max_batch_size``."""
    budget = {"off": 0.0, "auto": min(handoff_s, INLINE_MAX_S), "on": INLINE_MAX_S}[policy]
    fits = int(budget / model_s) if model_s > 0 else 0
    return min(fits, max_batch_size)


def _expire(future: asyncio.Future[tuple[np.ndarray, ...]]) -> None:
    if not future.done():  # a queued request is then skipped by _take_batch; a running one's result dropped
        future.set_exception(TimeoutError("past the request's deadline"))


def _nothing() -> None:
    """The work of a thread hand-off with no work in it, for :meth:`DynamicBatcher.calibrate`."""
