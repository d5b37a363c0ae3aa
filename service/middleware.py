"""The one ASGI middleware every request passes (pure ASGI: far cheaper per request than
``BaseHTTPMiddleware``, and one layer instead of one per concern):

* refuses bodies over ``max_body_bytes`` with 413, by Content-Length before reading, or while a
  chunked body streams in;
* adds the security headers to every answer;
* while the process drains before stopping (:mod:`service.drain`), answers ``/readyz`` with 503
  and closes every connection after its response;
* records every request's route, status and latency in the Prometheus metrics;
* hands the requests for the fixed-path LeanRoutes (``/predict``, ``/read``, ``/healthz``) straight
  to their handlers (:class:`service.routing.DirectRoutes`), past FastAPI's routing machinery.
"""

from __future__ import annotations

import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import security
from service.drain import Drain
from service.errors import error_body
from service.metrics import Metrics
from service.routing import DirectRoutes

CLOSE = (b"connection", b"close")


class BodyTooLargeError(Exception):
    pass


async def _send_json(send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    *headers],
    })
    await send({"type": "http.response.body", "body": payload})


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics, drain: Drain | None = None,
                 direct: DirectRoutes | None = None) -> None:
        self.app = app
        self.direct = direct
        self.drain = drain
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = security.route_path(scope)
        extra = security.response_headers(path)
        limit = self.max_body_bytes
        if self.drain is not None and self.drain.draining:
            extra = [*extra, CLOSE]
            if path == "/readyz":
                await _send_json(send, 503, orjson.dumps(self.drain.readiness()), extra)
                self._record(scope, 503, started)
                return

        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._too_large(send, extra)
                    self._record(scope, 413, started)
                    return
                break

        status = 500
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), *extra]
                if self.drain is not None and self.drain.draining and CLOSE not in extra:  # began draining since
                    message["headers"].append(CLOSE)
            await send(message)

        direct = self.direct.match(scope["method"], path) if self.direct is not None else None
        self.metrics.in_flight += 1
        try:
            if direct is not None:
                await DirectRoutes.serve(direct, scope, limited_receive, send_with_headers)
            else:
                await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLargeError:
            if response_started:
                raise
            status = 413
            await self._too_large(send, extra)
        finally:
            self.metrics.in_flight -= 1
            self._record(scope, status, started)

    async def _too_large(self, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        message = f"request body exceeds the {self.max_body_bytes:,}-byte limit; send fewer or smaller images"
        await _send_json(send, 413, error_body(message, "body_too_large"), extra if CLOSE in extra else [CLOSE, *extra])

    def _record(self, scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        self.metrics.observe_request(getattr(route, "path", None) or "unmatched", scope["method"], status,
                                     time.perf_counter() - started)
