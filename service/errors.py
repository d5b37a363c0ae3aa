"""The one place where errors become HTTP answers: a table from error class to status code and
machine-readable code, and the Starlette exception handlers that render it.

The domain (registry, batcher, runtime, preprocessing) raises its own errors and names no HTTP
status; this module decides what a client sees. Every error answer carries one message:

* the service's routes answer FastAPI's way, ``{"detail": "<message>", "error": "<code>"}``;
* the KServe v2 inference routes (``/v2``, ``/v2/health/...``, ``/v2/models/...``) answer the
  protocol's way, ``{"error": "<message>", "code": "<code>"}`` (tritonclient shows ``error``).

The codes are listed in the README's error table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from core.v2codec import CodecError
from service import imaging
from service.batcher import BatcherClosedError, InferenceError, QueueFullError
from service.registry import ModelLoadError, ModelUnavailableError, RequestTimeoutError, UnknownModelError


class RequestError(Exception):
    """A request the HTTP layer refuses for its shape (content type, size, count, syntax): it carries its
    status and code itself, as only the HTTP layer raises it."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = dict(headers or {})


class ImageError(Exception):
    """One image of a request could not be used: ``cause`` (a preprocessing error) decides the answer,
    the message says which image (counted from 1) when the request carries several."""

    def __init__(self, position: int, count: int, cause: imaging.ImagingError) -> None:
        super().__init__(f"image {position + 1} of {count}: {cause}" if count > 1 else str(cause))
        self.cause = cause


class UnauthorizedError(Exception):
    """The request lacks the API key its route is declared with, or presents a wrong one."""


@dataclass(frozen=True)
class Rule:
    status: int
    code: str
    headers: Callable[[Any], dict[str, str]] = field(default=lambda _: {})


# The table: error class -> answer. A subclass not listed takes its nearest listed base class's answer.
ERRORS: dict[type[Exception], Rule] = {
    UnknownModelError: Rule(404, "unknown_model"),
    ModelUnavailableError: Rule(503, "model_unavailable"),
    ModelLoadError: Rule(400, "model_not_loaded"),
    QueueFullError: Rule(503, "queue_full", lambda e: {"Retry-After": str(e.retry_after_s)}),
    BatcherClosedError: Rule(503, "shutting_down", lambda _: {"Retry-After": "1"}),
    RequestTimeoutError: Rule(504, "timeout"),
    InferenceError: Rule(500, "inference_failed"),
    imaging.ImageTooLargeError: Rule(413, "image_too_large"),
    imaging.NoInkError: Rule(422, "no_ink"),
    imaging.ImageDecodeError: Rule(422, "bad_image"),
    imaging.PixelArrayError: Rule(422, "bad_pixels"),
    imaging.ImagingError: Rule(422, "bad_image"),
    CodecError: Rule(422, "invalid_tensor"),
    UnauthorizedError: Rule(401, "unauthorized", lambda _: {"WWW-Authenticate": 'Bearer realm="digits"'}),
    RequestValidationError: Rule(422, "invalid_request"),
}


def rule_for(exc: BaseException) -> Rule:
    for cls in type(exc).__mro__:
        rule = ERRORS.get(cls)
        if rule is not None:
            return rule
    raise LookupError(f"no HTTP answer for {type(exc).__name__}; add it to service.errors.ERRORS")


def error_body(message: str, code: str, *, kserve: bool = False) -> bytes:
    """An error answer's body, FastAPI's way or (``kserve``) the v2 protocol's."""
    return orjson.dumps({"error": message, "code": code} if kserve else {"detail": message, "error": code})


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None, *,
                   kserve: bool = False) -> Response:
    return Response(error_body(message, code, kserve=kserve), status_code=status, headers=dict(headers or {}),
                    media_type="application/json")


def _speaks_kserve(request: Request) -> bool:
    """Whether the route that raised is one of the v2 inference protocol's (see service.v2.routes)."""
    return getattr(request.scope.get("route"), "kserve_errors", False)


def describe_validation(errors: Any) -> str:
    """pydantic/FastAPI validation errors -> one message. A validator's own message (a ValueError it
    raised) is a whole sentence and is shown as it is; pydantic's are prefixed with where they apply."""
    parts, ours = [], True
    for err in errors:
        cause = (err.get("ctx") or {}).get("error")
        if err.get("type") == "value_error" and cause is not None:
            parts.append(str(cause))
            continue
        ours = False
        where = _location(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) if parts and ours else "invalid request: " + "; ".join(parts)


def _location(loc: Any) -> str:
    """("query", "return_input") -> "query parameter return_input"; ("body", "images", 0) -> "images[0]"."""
    parts = [p for p in loc if p != "body"]
    if parts[:1] == ["query"] and len(parts) > 1:
        return "query parameter " + ".".join(map(str, parts[1:]))
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text


def error_answer(exc: Exception, request: Request) -> Response | None:
    """The answer to an error a route raised, or None when no rule covers it (a server error). The app's
    exception handlers and :class:`service.routing.DirectRoutes` both answer through this."""
    kserve = _speaks_kserve(request)
    if isinstance(exc, RequestError):
        return error_response(exc.status, exc.code, str(exc), exc.headers, kserve=kserve)
    if isinstance(exc, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}), kserve=kserve)
    try:
        rule = rule_for(exc.cause if isinstance(exc, ImageError) else exc)
    except LookupError:
        return None
    message = describe_validation(exc.errors()) if isinstance(exc, RequestValidationError) else str(exc)
    return error_response(rule.status, rule.code, message, rule.headers(exc), kserve=kserve)


def install_error_handlers(app: FastAPI) -> None:
    """One handler per table entry, plus the HTTP layer's own errors and Starlette's (404 path, 405 method)."""

    async def handler(request: Request, exc: Exception) -> Response:
        answer = error_answer(exc, request)
        if answer is None:  # registered only for the classes error_answer covers
            raise exc
        return answer

    for cls in (*ERRORS, ImageError, RequestError, StarletteHTTPException):
        app.add_exception_handler(cls, handler)
