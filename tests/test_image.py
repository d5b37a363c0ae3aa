"""The serving image, run for real with podman: built by deploy/podman/smoke.sh, which names it in
IMAGE_UNDER_TEST (and the nginx image in NGINX_IMAGE_UNDER_TEST); skipped without them.

Every container shares the host's network and listens on its own 127.0.0.1 port
(deploy/podman/containers.conf says why), and is removed at the end of its test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.deploy_helpers import DEPLOY, REPO, load_script, run_load

IMAGE = os.environ.get("IMAGE_UNDER_TEST", "")
NGINX_IMAGE = os.environ.get("NGINX_IMAGE_UNDER_TEST", "")
STARTUP_S = 180.0
# The serving image is Python, ONNX Runtime (about 80 MB), OpenCV for the imaging package (about
# 150 MB with its bundled libraries), numpy, Pillow and the web stack: under this. torch alone would
# add about 700 MB.
MAX_IMAGE_MB = 600

pytestmark = pytest.mark.skipif(
    not IMAGE or shutil.which("podman") is None,
    reason="no image to test: deploy/podman/smoke.sh builds one with podman and runs these tests",
)
compose = load_script(DEPLOY / "podman" / "compose.py")


def podman(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited with {done.returncode}: {done.stderr[-2000:]}")
    return done


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (replicas take consecutive ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = int(s.getsockname()[1])
        if first + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(first, first + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError(f"no {count} consecutive free ports found")


def wait_ready(url: str, name: str, timeout_s: float = STARTUP_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
        if state not in ("running", "created", ""):
            raise AssertionError(f"{name} is {state}: {podman('logs', name, check=False).stderr[-3000:]}")
        time.sleep(0.5)
    logs = podman("logs", name, check=False).stderr[-3000:]
    raise AssertionError(f"{name} not ready after {timeout_s:.0f} s: {logs}")


@pytest.fixture(scope="module")
def digit(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, Any], int]:
    """A real MNIST test image as a /predict body, and its label."""
    images, labels = mnist_test_sample
    return {"pixels": images[0].tolist()}, int(labels[0])


# --------------------------------------------------------------------------- the image itself


def test_image_runs_as_uid_10001_with_its_health_check_and_reports_its_size() -> None:
    (config,) = json.loads(podman("image", "inspect", IMAGE).stdout)
    assert config["Config"]["User"] == "10001:10001"
    # Kept because the image is built in Docker's format (OCI images have no health check).
    health = config.get("Healthcheck") or config["Config"].get("Healthcheck") or {}
    assert health.get("Test") == ["CMD", "python", "/app/deploy/healthcheck.py"], health
    size_mb = config["Size"] / 1e6
    print(f"\n{IMAGE}: {size_mb:.0f} MB")
    assert size_mb < MAX_IMAGE_MB, f"the serving image is {size_mb:.0f} MB"


def test_image_holds_neither_torch_nor_matplotlib_nor_the_training_code() -> None:
    script = ("import importlib.util as u, json, os; "
              "print(json.dumps({'found': [m for m in ('torch', 'matplotlib', 'training') if u.find_spec(m)], "
              "'uid': os.getuid(), 'files': [p for p in ('/src', '/app/training') if os.path.exists(p)]}))")
    facts = json.loads(podman("run", "--rm", IMAGE, "python", "-c", script).stdout)
    assert facts == {"found": [], "uid": 10001, "files": []}


# --------------------------------------------------------------------------- one container


@pytest.fixture()
def container() -> Iterator[tuple[str, str]]:
    name, port = "digits-smoke-api", free_ports(1)
    podman("rm", "--force", "--ignore", name)
    podman("run", "--detach", "--name", name, "--env", "DIGITS_HOST=127.0.0.1", "--env", f"DIGITS_PORT={port}",
           "--env", "DIGITS_SHUTDOWN_DRAIN_S=1", "--stop-timeout", "30", IMAGE)
    try:
        yield name, f"http://127.0.0.1:{port}"
    finally:
        podman("rm", "--force", "--time", "5", name, check=False)


def test_container_serves_predictions_and_passes_its_health_check(
    container: tuple[str, str], digit: tuple[dict[str, Any], int]
) -> None:
    name, url = container
    wait_ready(url, name)
    body, label = digit
    response = httpx.post(f"{url}/predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["digit"] == label
    assert podman("healthcheck", "run", name, check=False).returncode == 0
    assert podman("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip() == "healthy"
    # The server process (PID 1) is the unprivileged user, not only the image's default.
    assert podman("exec", name, "cat", "/proc/1/status").stdout.count("\t10001\t") >= 2  # Uid:, Gid: lines

    # `podman stop` (SIGTERM): the drain, then a clean exit, within the stop timeout.
    stopped = podman("stop", "--time", "30", name, timeout_s=60)
    assert stopped.returncode == 0
    logs = podman("logs", name).stderr
    assert "draining for 1 s" in logs and "drain over" in logs, logs[-2000:]
    exit_code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout)
    assert exit_code in (0, 128 + signal.SIGTERM), logs[-2000:]


# --------------------------------------------------------------------------- the compose topology


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """docker-compose.yml's three replicas behind nginx, through deploy/podman/compose.py."""
    if not NGINX_IMAGE:
        pytest.skip("NGINX_IMAGE_UNDER_TEST is not set")
    topology = compose.read_topology({"MODELS_DIR": str(REPO / "models")})
    assert topology.replicas == 3
    first = free_ports(topology.replicas + 1)
    port = first + topology.replicas
    compose.down()
    try:
        names = compose.up(topology, image=IMAGE, nginx_image=NGINX_IMAGE, port=port, first_port=first,
                           conf_dir=tmp_path_factory.mktemp("nginx"), timeout_s=STARTUP_S, dry_run=False)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # nginx starts after the replicas are healthy
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield {"url": url, "names": names, "ports": compose.replica_ports(topology, first),
               "topology": topology}
    finally:
        compose.down(timeout_s=5)


def test_compose_replicas_get_the_compose_settings(stack: dict[str, Any]) -> None:
    (config,) = json.loads(podman("container", "inspect", "digits-api-1").stdout)
    env = dict(item.split("=", 1) for item in config["Config"]["Env"])
    assert env["DIGITS_SHUTDOWN_DRAIN_S"] == stack["topology"].api_env["DIGITS_SHUTDOWN_DRAIN_S"]
    assert float(env["DIGITS_SHUTDOWN_DRAIN_S"]) > 0
    assert config["Config"]["StopTimeout"] == stack["topology"].stop_timeout_s


@pytest.mark.parametrize(("how", "replica"), [("stop", 2), ("kill", 3)], ids=["podman-stop", "podman-kill"])
def test_stopping_a_replica_under_load_loses_no_request(
    stack: dict[str, Any], digit: tuple[dict[str, Any], int], how: str, replica: int
) -> None:
    """8 clients through nginx for 4 s; one replica is stopped (SIGTERM: it drains) or killed
    (SIGKILL) 1 s in. As in tests/test_deploy.py, a client may resend a request whose connection
    broke mid-answer after SIGKILL (nginx cannot start such an answer over), never after SIGTERM."""
    body, label = digit
    name = f"digits-api-{replica}"
    address = f"127.0.0.1:{stack['ports'][replica - 1]}"
    stopping: list[subprocess.Popen[bytes]] = []

    def event() -> None:  # `podman stop` waits for the drain: let it run beside the load
        command = ["podman", "stop", "--time", "30", name] if how == "stop" else ["podman", "kill", name]
        stopping.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    clients = 8
    result = run_load(f"{stack['url']}/predict", body, clients=clients, duration_s=4.0, event_at_s=1.0,
                      event=event, retry_transport_errors=1 if how == "kill" else 0)
    assert stopping[0].wait(60) == 0
    assert result.failures == [], result.statuses
    assert set(result.statuses) == {200} and set(result.digits) == {label}
    assert result.client_retries <= (clients if how == "kill" else 0)
    assert result.before[address] > 0, result.before  # it was in the rotation before
    assert podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip() == "exited"
    late = run_load(f"{stack['url']}/predict", body, clients=2, duration_s=0.5, event_at_s=0.0, event=lambda: None)
    assert set(late.statuses) == {200} and late.after[address] == 0
