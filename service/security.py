"""Access control and browser security headers.

* With ``DIGITS_API_KEY`` set, the routes declared with ``dependencies=[API_KEY]`` (prediction and
  model management) need the key, as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``
  (compared in constant time). The OpenAPI document's security requirements come from the same
  declaration. Health, readiness, metadata and the page stay open so probes and the UI work.
* Every answer carries ``X-Content-Type-Options: nosniff``; the drawing page and its files
  also a strict Content-Security-Policy (same-origin only: no inline code, no outside
  resource) and the usual anti-framing and referrer headers (applied by :mod:`service.middleware`).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Scope

from service.errors import UnauthorizedError

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

# The two ways of presenting the key, as OpenAPI security schemes. auto_error=False: the check below
# decides, and it looks at every header the request carries, not just the first.
_BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description="Authorization: Bearer <DIGITS_API_KEY>")
_X_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey", description="the DIGITS_API_KEY")


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


def check_api_key(request: Request) -> None:
    """Raise UnauthorizedError unless no key is configured or every key the request presents is right
    (so the answer cannot depend on which header comes first)."""
    secret = request.app.state.settings.api_key
    if secret is None:
        return
    presented = _presented_keys(request.scope)
    if not presented:
        raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    expected = secret.get_secret_value().encode()
    if not all([hmac.compare_digest(k, expected) for k in presented]):
        raise UnauthorizedError("invalid API key")


async def require_api_key(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
    _key: Annotated[str | None, Security(_X_API_KEY)],
) -> None:
    """The dependency a protected route declares; its two sub-dependencies document the schemes."""
    check_api_key(request)


API_KEY = Security(require_api_key)  # dependencies=[API_KEY] on every route that needs the key


def is_page(path: str) -> bool:
    """The drawing page and its files (they get the page's security headers)."""
    return path == "/" or path.startswith("/web/")


def route_path(scope: Scope) -> str:
    """The path the router matches: ``scope["path"]`` without the root path the app is mounted under
    (``uvicorn --root-path /api``, a proxy prefix)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):] or "/"
    return path


def response_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The security headers every answer to ``path`` carries."""
    return PAGE_RESPONSE_HEADERS if is_page(path) else API_RESPONSE_HEADERS
