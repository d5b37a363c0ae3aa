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


def _presented_key(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            return value
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
    return None


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, *, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.api_key is not None and PROTECTED.match(path):
            presented = _presented_key(scope)
            if presented is None or not hmac.compare_digest(presented, self.api_key):
                message = ("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                           if presented is None else "invalid API key")
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
