"""Access control and browser security headers: the policy (applied by :mod:`service.middleware`).

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

from starlette.types import Scope

PROTECTED = re.compile(r"^/(predict|read|v2/models/[^/]+(/versions/[^/]+)?/infer|v2/repository/.*)$")
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
API_RESPONSE_HEADERS = [NOSNIFF]
PAGE_RESPONSE_HEADERS = [NOSNIFF, *PAGE_HEADERS]


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


def route_path(scope: Scope) -> str:
    """The path the router matches. ``scope["path"]`` includes the root path the app is mounted under
    (``uvicorn --root-path /api``, a proxy prefix); matching it would let ``/api/predict`` skip the key."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):] or "/"
    return path


def key_error(scope: Scope, api_key: bytes | None, path: str) -> str | None:
    """Why this request may not proceed (a 401 message), or None when it may: no key configured, a path
    that needs none, or every key the request presents is right (so the answer cannot depend on which
    header comes first)."""
    if api_key is None or not PROTECTED.match(path):
        return None
    presented = _presented_keys(scope)
    if not presented:
        return "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
    if not all([hmac.compare_digest(k, api_key) for k in presented]):
        return "invalid API key"
    return None


def response_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The security headers every answer to ``path`` carries."""
    return PAGE_RESPONSE_HEADERS if PAGE.match(path) else API_RESPONSE_HEADERS
