#!/usr/bin/env python3
"""Container health check: exit 0 when the service answers GET /readyz with 200, else 1.

The slim images have no curl, so Docker's HEALTHCHECK runs this with the image's Python. It asks
the readiness endpoint, not liveness: a replica is healthy once its models are loaded, verified
and warmed up, which is what `depends_on: condition: service_healthy` should wait for.

The address comes from the service's own settings (DIGITS_HOST, DIGITS_PORT), so the check
follows the service when they change; an --url overrides them. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

_ANY_INTERFACE = {"", "0.0.0.0", "::", "[::]"}


def readiness_url(environ: Mapping[str, str] = os.environ) -> str:
    """The /readyz URL of the service this container runs, from DIGITS_HOST and DIGITS_PORT."""
    host = environ.get("DIGITS_HOST", "127.0.0.1").strip()
    if host in _ANY_INTERFACE:
        host = "127.0.0.1"  # listening everywhere includes loopback
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address in a URL needs brackets
    port = environ.get("DIGITS_PORT", "8000").strip() or "8000"
    return f"http://{host}:{port}/readyz"


def check(url: str, timeout_s: float) -> tuple[bool, str]:
    """(healthy, one line saying why)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return True, f"ready: {url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        # 503 while the models load or when one failed: its body says which.
        try:
            detail = json.dumps(json.loads(exc.read()).get("models", {}))
        except (ValueError, AttributeError, OSError):
            detail = ""
        return False, f"not ready: {url} answered {exc.code} {detail}".rstrip()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"not ready: cannot reach {url} ({reason}); is the service running?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exit 0 when the digits service is ready, 1 when not.")
    parser.add_argument("--url", default=None,
                        help="readiness URL to ask (default: /readyz on DIGITS_HOST:DIGITS_PORT, "
                             "loopback when the service listens on every interface; now "
                             f"{readiness_url()})")
    parser.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for the answer (default: %(default)s)")
    args = parser.parse_args(argv)
    healthy, message = check(args.url or readiness_url(), args.timeout)
    print(message, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
