"""Access control and browser security headers, as one pure ASGI middleware.

* With ``DIGITS_API_KEY`` set, prediction and model management need the key, as
  ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (compared in constant time).
  Health, readiness, metadata and the page stay open so probes and the UI work.
* Every answer carries ``X-Content-Type-Options: nosniff``; the drawing page and its files
  also a strict Content-Security-Policy (same-origin only: no inline code, no outside
  resource) and the usual anti-framing and referrer headers.
"""

from __future__ import annotations

import hmac
import re

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROTECTED = re.compile(r"^/(predict|v2/models/[^/]+(/versions/[^/]+)?/infer|v2/repository/.*)$")
PAGE = re.compile(r"^/($|web/)")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
NOSNIFF = (b"x-content-type-options", b"nosniff")


def _presented_keys(scope: Scope) -> list[bytes]:
    """Every key the request presents: X-API-Key headers and Authorization headers, whose value must be
    ``Bearer <key>`` (any other scheme, or a bearer without a token, presents a key that never matches)."""
    keys = []
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            keys.append(value)
        elif name == b"authorization":
            keys.append(value[7:].strip() if value[:7].lower() == b"bearer " else b"")
    return keys


def _route_path(scope: Scope) -> str:
    """The path the router matches. ``scope["path"]`` includes the root path the app is mounted under
    (``uvicorn --root-path /api``, a proxy prefix); matching it would let ``/api/predict`` skip the key."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):] or "/"
    return path


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, *, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        if self.api_key is not None and PROTECTED.match(path):
            presented = _presented_keys(scope)
            # Every key presented must be right, so the answer cannot depend on which header comes first.
            if not presented or not all([hmac.compare_digest(k, self.api_key) for k in presented]):
                message = ("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                           if not presented else "invalid API key")
                body = orjson.dumps({"detail": message, "error": message})
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="digits"'), NOSNIFF]})
                await send({"type": "http.response.body", "body": body})
                return
        extra = [NOSNIFF, *PAGE_HEADERS] if PAGE.match(path) else [NOSNIFF]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
