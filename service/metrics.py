"""Prometheus metrics of one service process, in its own registry (no module-level globals)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("digits_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("digits_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("digits_queue_seconds", "time a request waited in the batch queue",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("digits_batch_size", "images per inference call", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference_time = Histogram("digits_inference_seconds", "time of one inference call", ["model"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("digits_images", "images predicted", ["model"], registry=r)
        self.pending = Gauge("digits_pending_images", "images waiting in the batch queue", ["model"], registry=r)
        self.rejected = Counter("digits_rejected", "requests refused before inference, by reason",
                                ["reason"], registry=r)
        self.in_flight = 0  # HTTP requests between their headers and their answer (the middleware counts)
        Gauge("digits_requests_in_flight", "HTTP requests being served", registry=r).set_function(
            lambda: self.in_flight)
        uploads = Counter("digits_preprocessed_uploads", "uploaded images preprocessed, by where: the event "
                          "loop, a worker process, a decoding thread", ["where"], registry=r)
        self.preprocessed = {where: uploads.labels(where) for where in ("loop", "worker", "thread")}
        # Labelled children by (route, method, status): .labels() costs more than the increment itself.
        # Bounded: routes are templates, methods the few HTTP's parser accepts, statuses a handful.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request and record its latency."""
        children = self._request_children.get((route, method, status))
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
            self._request_children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def batch_observer(self, model: str) -> Callable[[int, Sequence[float], float], None]:
        """A callback for the model's batcher: batch size, queue waits, inference time."""
        batch, queue, infer, images = (
            self.batch_size.labels(model), self.queue_time.labels(model),
            self.inference_time.labels(model), self.images.labels(model),
        )

        def observe(size: int, waits: Sequence[float], seconds: float) -> None:
            batch.observe(size)
            infer.observe(seconds)
            images.inc(size)
            for w in waits:
                queue.observe(w)

        return observe

    def track_pending(self, model: str, read: Callable[[], float]) -> None:
        self.pending.labels(model).set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
