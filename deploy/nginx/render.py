#!/usr/bin/env python3
"""Render digits.conf.template for replicas that run as plain processes (no Docker).

The official nginx image renders the same template with envsubst; this script does the same
substitution and, because the upstream then needs one `server` line per replica instead of one
Docker service name, repeats the line holding ${DIGITS_UPSTREAM} once per --upstream address.

    python deploy/nginx/render.py --upstream 127.0.0.1:8001 --upstream 127.0.0.1:8002 \\
        --listen 8080 > /etc/nginx/conf.d/digits.conf

Standard library only, so it runs with any Python 3.11+.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TEMPLATE = Path(__file__).resolve().with_name("digits.conf.template")
UPSTREAM_VARIABLE = "DIGITS_UPSTREAM"

# The service's defaults (service/settings.py): its 5 MiB body limit, and a proxy timeout above
# its 10 s request timeout. The tests check that these still agree with the service.
DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
DEFAULT_PROXY_TIMEOUT = "15s"

_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


class TemplateError(ValueError):
    """The template and the values given for it do not fit together."""


def render(template: str, values: Mapping[str, str], upstreams: Sequence[str]) -> str:
    """Fill every ${NAME} of ``template`` from ``values``; the lines holding ${DIGITS_UPSTREAM}
    come out once per address of ``upstreams``. Every placeholder must get a value."""
    if not upstreams:
        raise TemplateError("no upstream address: give at least one host:port of a replica")
    lines = template.splitlines(keepends=True)
    code = [line for line in lines if not line.lstrip().startswith("#")]  # comments stay as written
    wanted = {name for line in code for name in _PLACEHOLDER.findall(line)}
    missing = sorted(wanted - set(values) - {UPSTREAM_VARIABLE})
    if missing:
        raise TemplateError(f"no value for {', '.join(missing)}; pass them to render()")
    if UPSTREAM_VARIABLE not in wanted:
        raise TemplateError(f"the template has no ${{{UPSTREAM_VARIABLE}}} line to repeat per replica")

    def fill(line: str) -> str:
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], line)

    out: list[str] = []
    for line in lines:
        if line.lstrip().startswith("#"):
            out.append(line)
        elif f"${{{UPSTREAM_VARIABLE}}}" in line:
            out.extend(fill(line.replace(f"${{{UPSTREAM_VARIABLE}}}", address)) for address in upstreams)
        else:
            out.append(fill(line))
    return "".join(out)


def render_file(
    upstreams: Sequence[str],
    listen: str,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    proxy_timeout: str = DEFAULT_PROXY_TIMEOUT,
    template: Path = TEMPLATE,
) -> str:
    """The rendered configuration for these replica addresses and this listen address."""
    values = {
        "NGINX_LISTEN": listen,
        "DIGITS_MAX_BODY_BYTES": str(max_body_bytes),
        "NGINX_PROXY_TIMEOUT": proxy_timeout,
    }
    return render(template.read_text(encoding="utf-8"), values, upstreams)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render the digits nginx configuration for replicas running as plain processes.",
        epilog="Include the output in nginx's http block, e.g. as /etc/nginx/conf.d/digits.conf.",
    )
    parser.add_argument("--upstream", action="append", required=True, metavar="HOST:PORT",
                        help="address of one replica; repeat the option for each replica (required)")
    parser.add_argument("--listen", default="8080",
                        help="port, or address:port, nginx listens on (default: %(default)s)")
    parser.add_argument("--max-body-bytes", type=int,
                        default=int(os.environ.get("DIGITS_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
                        help="largest request body, the service's DIGITS_MAX_BODY_BYTES (default: "
                             f"$DIGITS_MAX_BODY_BYTES, else {DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--proxy-timeout", default=os.environ.get("NGINX_PROXY_TIMEOUT", DEFAULT_PROXY_TIMEOUT),
                        help="how long one replica may take to answer; keep it above DIGITS_REQUEST_TIMEOUT_S "
                             f"(default: $NGINX_PROXY_TIMEOUT, else {DEFAULT_PROXY_TIMEOUT})")
    parser.add_argument("--template", type=Path, default=TEMPLATE,
                        help="the template to render (default: digits.conf.template beside this script)")
    parser.add_argument("--out", type=Path, default=None, help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    try:
        text = render_file(args.upstream, args.listen, max_body_bytes=args.max_body_bytes,
                           proxy_timeout=args.proxy_timeout, template=args.template)
    except (OSError, TemplateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
