#!/usr/bin/env python3
"""docker-compose.yml's default topology (the `api` replicas behind `nginx`) as plain podman commands.

For a host with podman but neither a Docker engine nor a container network (a CI machine, a VM
without iptables): every container shares the host's network, each replica listens on its own
loopback port, and nginx (the image built from nginx.Containerfile) balances over those ports
with the repository's template rendered by deploy/nginx/render.py. What compose says of the
services is kept: the number of replicas (DIGITS_REPLICAS), their DIGITS_* settings (the same
`${VAR:-default}` rules: unset pass-through variables stay unset), the models mount, the stop
grace period and the body limit and proxy timeout nginx gets. Not kept: the resource limits and
restart policy (they need cgroup and systemd set-ups such hosts lack) and the `gpu`, `monitoring`
and `train` profiles.

    python3 deploy/podman/compose.py up [--image digits:latest] [--nginx-image IMAGE] [--port 8080]
    python3 deploy/podman/compose.py down
    python3 deploy/podman/compose.py up --dry-run      # print the podman commands only

`up` starts the replicas, waits until every one is healthy (the image's HEALTHCHECK), then starts
nginx: what `depends_on: condition: service_healthy` does. Replica i (from 1) listens on
127.0.0.1:(first-port + i - 1) and is named digits-api-i; nginx is digits-nginx. Needs PyYAML.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
NGINX_CONF_IN_CONTAINER = "/etc/nginx/conf.d/digits.conf"
API_NAME = "digits-api"
NGINX_NAME = "digits-nginx"

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


class ComposeError(ValueError):
    """docker-compose.yml says something this translation does not know how to run."""


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's `${VAR}` and `${VAR:-default}` (an empty VAR takes the default too)."""
    return _VARIABLE.sub(lambda m: environ.get(m.group(1)) or (m.group(2) or ""), value)


def _seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m)?", value.strip())
    if not match:
        raise ComposeError(f"cannot read the duration {value!r}; write it as 20s or 1m")
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


@dataclass(frozen=True)
class Topology:
    replicas: int
    api_env: dict[str, str]
    models_dir: Path
    stop_timeout_s: int
    max_body_bytes: int
    proxy_timeout: str


def read_topology(environ: Mapping[str, str], compose_file: Path = COMPOSE_FILE) -> Topology:
    """The facts of the `api` and `nginx` services, with the variables of ``environ`` filled in."""
    services = yaml.safe_load(compose_file.read_text(encoding="utf-8"))["services"]
    api, nginx = services["api"], services["nginx"]
    env: dict[str, str] = {}
    for name, value in (api.get("environment") or {}).items():
        if value is None:  # `NAME:` passes the caller's variable through, only when it is set
            if name in environ:
                env[name] = environ[name]
        else:
            env[name] = interpolate(str(value), environ)
    models = [v for v in (interpolate(v, environ) for v in api.get("volumes", [])) if ":/app/models" in v]
    if len(models) != 1:
        raise ComposeError(f"expected one volume mounted at /app/models in the api service, found {models}")
    models_dir = (compose_file.parent / models[0].split(":", 1)[0]).resolve()
    nginx_env = {k: interpolate(str(v), environ) for k, v in nginx["environment"].items()}
    return Topology(
        replicas=int(interpolate(str(api["deploy"]["replicas"]), environ)),
        api_env=env,
        models_dir=models_dir,
        stop_timeout_s=_seconds(api.get("stop_grace_period", "10s")),
        max_body_bytes=int(nginx_env["DIGITS_MAX_BODY_BYTES"]),
        proxy_timeout=nginx_env["NGINX_PROXY_TIMEOUT"],
    )


def replica_ports(topology: Topology, first_port: int) -> list[int]:
    return [first_port + i for i in range(topology.replicas)]


def api_commands(topology: Topology, image: str, first_port: int) -> list[list[str]]:
    """One `podman run` per replica, on the host network at 127.0.0.1:port."""
    commands = []
    for i, port in enumerate(replica_ports(topology, first_port), start=1):
        env = {**topology.api_env, "DIGITS_HOST": "127.0.0.1", "DIGITS_PORT": str(port)}
        command = ["podman", "run", "--detach", "--name", f"{API_NAME}-{i}", "--network", "host",
                   "--stop-timeout", str(topology.stop_timeout_s),
                   "--volume", f"{topology.models_dir}:/app/models:ro"]
        for name, value in sorted(env.items()):
            command += ["--env", f"{name}={value}"]
        commands.append([*command, image])
    return commands


def nginx_command(image: str, conf: Path) -> list[str]:
    return ["podman", "run", "--detach", "--name", NGINX_NAME, "--network", "host",
            "--volume", f"{conf}:{NGINX_CONF_IN_CONTAINER}:ro", image]


def render_nginx(topology: Topology, first_port: int, port: int) -> str:
    sys.path.insert(0, str(REPO / "deploy" / "nginx"))
    try:
        import render  # deploy/nginx/render.py: the same template compose's nginx renders
    finally:
        sys.path.pop(0)
    upstreams = [f"127.0.0.1:{p}" for p in replica_ports(topology, first_port)]
    return render.render_file(upstreams, f"127.0.0.1:{port}", max_body_bytes=topology.max_body_bytes,
                              proxy_timeout=topology.proxy_timeout)


def _run(command: Sequence[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def wait_healthy(names: Sequence[str], timeout_s: float) -> None:
    """Until every container's health check passes (podman runs the image's HEALTHCHECK on demand)."""
    pending = list(names)
    deadline = time.monotonic() + timeout_s
    while pending:
        pending = [n for n in pending if subprocess.run(["podman", "healthcheck", "run", n],
                                                        capture_output=True).returncode != 0]
        if not pending:
            return
        if time.monotonic() > deadline:
            logs = subprocess.run(["podman", "logs", "--tail", "20", pending[0]], capture_output=True, text=True)
            raise TimeoutError(f"not healthy after {timeout_s:.0f} s: {', '.join(pending)}; "
                               f"last log lines of {pending[0]}:\n{logs.stdout}{logs.stderr}")
        time.sleep(1)


def up(topology: Topology, *, image: str, nginx_image: str, port: int, first_port: int, conf_dir: Path,
       timeout_s: float, dry_run: bool) -> list[str]:
    """Start the replicas, wait until they are healthy, start nginx. Returns the container names."""
    conf = conf_dir / "digits.conf"
    commands = api_commands(topology, image, first_port)
    if dry_run:
        for command in [*commands, nginx_command(nginx_image, conf)]:
            print(shlex.join(command))
        return []
    conf.write_text(render_nginx(topology, first_port, port), encoding="utf-8")
    names = [f"{API_NAME}-{i}" for i in range(1, topology.replicas + 1)]
    for command in commands:
        _run(command)
    wait_healthy(names, timeout_s)
    _run(nginx_command(nginx_image, conf))
    return [*names, NGINX_NAME]


def down(timeout_s: int = 30) -> None:
    """Stop and remove every container `up` may have started (SIGTERM, then SIGKILL after timeout_s)."""
    listed = subprocess.run(["podman", "ps", "--all", "--format", "{{.Names}}"], check=True,
                            capture_output=True, text=True).stdout.split()
    names = [n for n in listed if n == NGINX_NAME or re.fullmatch(rf"{API_NAME}-\d+", n)]
    if names:
        _run(["podman", "rm", "--force", "--time", str(timeout_s), *names])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start the replicas, then nginx once they are healthy")
    start.add_argument("--image", default=f"digits:{os.environ.get('DIGITS_TAG', 'latest')}",
                       help="the API image (default: digits:$DIGITS_TAG, as compose names it)")
    start.add_argument("--nginx-image", default="localhost/digits-nginx:latest",
                       help="the nginx image built from deploy/podman/nginx.Containerfile")
    start.add_argument("--port", type=int, default=int(os.environ.get("DIGITS_HTTP_PORT", "8080")),
                       help="nginx's port on 127.0.0.1 (default: $DIGITS_HTTP_PORT, else 8080)")
    start.add_argument("--first-port", type=int, default=8001, help="replica 1's port; the others follow")
    start.add_argument("--conf-dir", type=Path, default=None,
                       help="where the rendered nginx configuration is written (default: a new temporary folder)")
    start.add_argument("--timeout", type=float, default=180, help="seconds to wait for the replicas to be healthy")
    start.add_argument("--dry-run", action="store_true", help="print the podman commands, run nothing")
    sub.add_parser("down", help="stop and remove the containers `up` started")
    args = parser.parse_args(argv)
    try:
        if args.command == "down":
            down()
            return 0
        topology = read_topology(os.environ)
        conf_dir = args.conf_dir or Path(tempfile.mkdtemp(prefix="digits-nginx-"))
        names = up(topology, image=args.image, nginx_image=args.nginx_image, port=args.port,
                   first_port=args.first_port, conf_dir=conf_dir, timeout_s=args.timeout, dry_run=args.dry_run)
    except (ComposeError, OSError, TimeoutError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if names:
        print(f"up: {', '.join(names)}; http://127.0.0.1:{args.port}/ (stop with: {sys.argv[0]} down)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
