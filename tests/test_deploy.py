"""Deployment: the nginx configuration in front of real replicas, docker-compose.yml, the
Dockerfile, the Kubernetes manifests and the scripts the images run.

There is no Docker engine here, so the compose topology is rebuilt from processes: three
`digits serve` replicas on loopback ports serving the shipped models, behind Debian's nginx
running the repo's configuration template. Compose and Kubernetes files are checked with the
real validators (`docker-compose config`, the Kubernetes JSON schemas), offline.
"""

from __future__ import annotations

import http.server
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from service.settings import Settings
from testkit.live_server import free_port
from tests.deploy_helpers import (
    DEPLOY,
    REPO,
    Balancer,
    Replica,
    last_upstream,
    load_script,
    nginx_binary,
    run_load,
)

render = load_script(DEPLOY / "nginx" / "render.py")
healthcheck = load_script(DEPLOY / "healthcheck.py")
podman_compose = load_script(DEPLOY / "podman" / "compose.py")

TEMPLATE = DEPLOY / "nginx" / "digits.conf.template"
K8S_DIR = DEPLOY / "k8s"
REPLICAS = 3
STARTUP_S = 90.0  # three replicas load and warm two models each on two shared cores
SERVICE_DEFAULTS = {name: f.default for name, f in Settings.model_fields.items()}


def _seconds(value: str) -> float:
    """An nginx time ("15s", "500ms", "1m") in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value.strip())
    assert match, f"unexpected nginx time {value!r}"
    return int(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]


def _directive(conf: str, name: str) -> list[str]:
    """Values of every `name ...;` directive outside comments."""
    code = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    return [m.group(1).strip() for m in re.finditer(rf"(?m)^\s*{name}\s+([^;{{}}]*);", code)]


# --------------------------------------------------------------------------- the nginx template


def test_render_repeats_the_server_line_per_replica_and_fills_every_placeholder() -> None:
    upstreams = ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]
    conf = render.render_file(upstreams, "127.0.0.1:8080")

    servers = _directive(conf, "server")
    assert [s.split()[0] for s in servers] == upstreams
    assert all("max_fails=" in s and "fail_timeout=" in s for s in servers), servers
    assert _directive(conf, "listen") == ["127.0.0.1:8080"]
    code = [line for line in conf.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "${" in line], "a placeholder was left in the rendered configuration"
    # The nginx image's envsubst would also replace $DIGITS_X / $NGINX_X: nginx variables must not look so.
    template_code = [line for line in TEMPLATE.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in template_code if re.search(r"\$(DIGITS|NGINX)_", line)]


def test_render_names_a_missing_value() -> None:
    with pytest.raises(render.TemplateError, match="NGINX_LISTEN"):
        render.render(TEMPLATE.read_text(), {"DIGITS_MAX_BODY_BYTES": "1", "NGINX_PROXY_TIMEOUT": "1s"},
                      ["127.0.0.1:1"])
    with pytest.raises(render.TemplateError, match="at least one"):
        render.render_file([], "8080")


def test_render_command_line_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "digits.conf"
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "nginx" / "render.py"), "--upstream", "10.0.0.1:8000",
         "--upstream", "10.0.0.2:8000", "--listen", "9000", "--out", str(out)],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert [s.split()[0] for s in _directive(out.read_text(), "server")] == ["10.0.0.1:8000", "10.0.0.2:8000"]


def test_balancer_limits_match_the_service_defaults() -> None:
    """The defaults the template is rendered with agree with service/settings.py."""
    conf = render.render_file(["127.0.0.1:1"], "8080")
    assert _directive(conf, "client_max_body_size") == [str(SERVICE_DEFAULTS["max_body_bytes"])]
    read_timeout = _seconds(_directive(conf, "proxy_read_timeout")[0])
    assert read_timeout > SERVICE_DEFAULTS["request_timeout_s"], (
        "nginx must wait longer than the service's request timeout, or clients get nginx's 504 "
        "instead of the service's"
    )
    # Retries: idempotent requests everywhere, POST only where prediction is served.
    assert _directive(conf, "proxy_next_upstream")[0] == "error timeout http_502 http_503 http_504"
    retried_posts = [v for v in _directive(conf, "proxy_next_upstream") if "non_idempotent" in v]
    assert len(retried_posts) == 2  # /predict and the v2 infer route
    prediction_locations = re.findall(r"location ([^{]+)\{[^}]*non_idempotent", conf)
    assert [loc.strip() for loc in prediction_locations] == [
        "= /predict", "~ ^/v2/models/[^/]+(/versions/[^/]+)?/infer$"
    ]
    assert _directive(conf, "keepalive"), "upstream connections should be kept alive"


@pytest.fixture(scope="module")
def nginx() -> str:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light; .ci/run installs it)")
    return binary


def test_nginx_accepts_the_rendered_configuration(nginx: str, tmp_path: Path) -> None:
    site = render.render_file(["127.0.0.1:8001", "127.0.0.1:8002"], f"127.0.0.1:{free_port()}")
    done = Balancer(tmp_path, 0, site, nginx).test_config()
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- the topology, as processes


class Topology:
    """REPLICAS replicas behind nginx; ``ensure_all_up`` restarts any replica a test stopped."""

    def __init__(self, root: Path, models_dir: Path, nginx: str) -> None:
        self.replicas = [Replica(free_port(), models_dir, root / f"replica-{i}.log") for i in range(REPLICAS)]
        site = render.render_file([r.address for r in self.replicas], f"127.0.0.1:{free_port()}")
        prefix = root / "nginx"
        prefix.mkdir()
        self.balancer = Balancer(prefix, int(_directive(site, "listen")[0].rsplit(":", 1)[1]), site, nginx)

    def start(self) -> None:
        for replica in self.replicas:
            replica.start()
        deadline = time.monotonic() + STARTUP_S
        for replica in self.replicas:
            replica.wait_ready(deadline)
        self.balancer.start(time.monotonic() + 30)

    def ensure_all_up(self) -> None:
        stopped = [r for r in self.replicas if not r.alive]
        for replica in stopped:
            replica.start()
        deadline = time.monotonic() + STARTUP_S
        for replica in stopped:
            replica.wait_ready(deadline)

    def stop(self) -> None:
        self.balancer.stop()
        for replica in self.replicas:
            replica.stop()

    @property
    def url(self) -> str:
        return self.balancer.url


@pytest.fixture(scope="module")
def topology(models_dir: Path, nginx: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    topo = Topology(tmp_path_factory.mktemp("topology"), models_dir, nginx)
    try:
        topo.start()
        yield topo
    finally:
        topo.stop()


@pytest.fixture()
def cluster(topology: Topology) -> Topology:
    topology.ensure_all_up()
    return topology


@pytest.fixture(scope="module")
def digit(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, Any], int]:
    """A real MNIST test image as a /predict body, and its label."""
    images, labels = mnist_test_sample
    return {"pixels": images[0].tolist()}, int(labels[0])


def test_requests_are_spread_over_every_replica(cluster: Topology, digit: tuple[dict[str, Any], int]) -> None:
    body, label = digit
    counts_before = [r.predict_count() for r in cluster.replicas]
    answered_by: list[str] = []
    with httpx.Client(base_url=cluster.url, timeout=30) as http:
        for _ in range(30):
            response = http.post("/predict", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["predictions"][0]["digit"] == label
            answered_by.append(last_upstream(response.headers["x-upstream"]))

    assert set(answered_by) == {r.address for r in cluster.replicas}
    # Each replica's own counter agrees: every request was counted once, by the replica that answered.
    counted = [r.predict_count() - before for r, before in zip(cluster.replicas, counts_before, strict=True)]
    assert counted == [answered_by.count(r.address) for r in cluster.replicas]
    assert sum(counted) == 30


def test_balancer_serves_health_and_web_page_but_not_metrics(cluster: Topology) -> None:
    with httpx.Client(base_url=cluster.url, timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json()["ready"] is True
        assert http.get("/").status_code == 200
        # A client's request id is kept; nginx makes one up for a request without.
        assert http.get("/healthz", headers={"x-request-id": "trace-42"}).headers["x-request-id"] == "trace-42"
        assert re.fullmatch(r"[0-9a-f]{32}", http.get("/healthz").headers["x-request-id"])
        metrics = http.get("/metrics")
    assert metrics.status_code == 404
    assert "scrape each replica" in metrics.json()["detail"]


def test_balancer_refuses_an_oversized_body_before_any_replica(cluster: Topology) -> None:
    limit = SERVICE_DEFAULTS["max_body_bytes"]
    counts_before = [r.predict_count() for r in cluster.replicas]
    with httpx.Client(base_url=cluster.url, timeout=30) as http:
        response = http.post("/predict", content=b"\0" * (limit + 1), headers={"content-type": "image/png"})
    assert response.status_code == 413
    assert f"{limit}-byte limit" in response.json()["detail"]
    assert response.headers.get("x-upstream", "") == ""  # no replica saw it
    assert [r.predict_count() for r in cluster.replicas] == counts_before


@pytest.mark.parametrize(("sig", "victim"), [(signal.SIGTERM, 1), (signal.SIGKILL, 2)], ids=["SIGTERM", "SIGKILL"])
def test_stopping_a_replica_under_load_loses_no_request(
    cluster: Topology, digit: tuple[dict[str, Any], int], sig: signal.Signals, victim: int
) -> None:
    """8 clients send predictions back to back for 3 s; one replica is stopped 1 s in.

    nginx sends the requests that the replica was holding, and those it finds its connections
    closed for, to another replica (`non_idempotent` on /predict; without it some get 502).
    SIGKILL can also cut a response the replica was writing at that instant: nginx has then passed
    its header on and cannot start over, so the client sees a broken connection, never an error
    status, and sends the request again, as clients do with an idempotent request. That is allowed
    once per client; SIGTERM allows nothing of the kind."""
    body, label = digit
    replica = cluster.replicas[victim]
    clients = 8
    result = run_load(f"{cluster.url}/predict", body, clients=clients, duration_s=3.0, event_at_s=1.0,
                      event=lambda: replica.send(sig), retry_transport_errors=1 if sig == signal.SIGKILL else 0)

    assert result.failures == [], f"{result.statuses}; nginx: {cluster.balancer.error_log()}"
    assert set(result.statuses) == {200}
    assert set(result.digits) == {label}
    if sig == signal.SIGTERM:
        assert result.client_retries == 0
    else:
        assert result.client_retries <= clients
    # The stopped replica was in the rotation before the signal, and requests went on after it.
    assert result.before[replica.address] > 0, result.before
    assert sum(result.after.values()) > 0
    if sig == signal.SIGTERM:
        # uvicorn finishes the requests in flight, then re-raises the signal: "killed by SIGTERM", not 0.
        assert replica.wait_exit(30) in (0, -signal.SIGTERM), "a replica should exit soon after SIGTERM"
    else:
        assert replica.wait_exit(10) == -signal.SIGKILL
    # Once it is down nothing more reaches it.
    late = run_load(f"{cluster.url}/predict", body, clients=2, duration_s=0.5, event_at_s=0.0, event=lambda: None)
    assert set(late.statuses) == {200}
    assert late.before[replica.address] == 0 and late.after[replica.address] == 0


def test_balancer_answers_503_with_retry_after_when_no_replica_is_up(nginx: str, tmp_path: Path) -> None:
    closed = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]  # nothing listens there
    site = render.render_file(closed, f"127.0.0.1:{free_port()}")
    balancer = Balancer(tmp_path, int(_directive(site, "listen")[0].rsplit(":", 1)[1]), site, nginx)
    try:
        balancer.start(time.monotonic() + 30)
        response = httpx.post(f"{balancer.url}/predict", json={"pixels": [[0] * 28] * 28}, timeout=30)
    finally:
        balancer.stop()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["detail"] == "no replica of the service could answer; retry in a moment"
    # Both replicas were tried before giving up.
    assert {a.strip() for a in response.headers["x-upstream"].split(",")} == set(closed)


# --------------------------------------------------------------------------- deploy/healthcheck.py


class _Answer503(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"ready": false, "models": {"lenet5": "loading"}}'
        self.send_response(503)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "DIGITS_HOST": "0.0.0.0", "DIGITS_PORT": str(port)}
    return subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py"), "--timeout", "5"],
                          env=env, capture_output=True, text=True, timeout=30)


def test_healthcheck_passes_on_a_ready_replica(cluster: Topology) -> None:
    done = _run_healthcheck(cluster.replicas[0].port)
    assert done.returncode == 0, done.stderr
    assert "ready" in done.stdout


def test_healthcheck_fails_while_not_ready_or_unreachable() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer503)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = _run_healthcheck(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert done.returncode == 1
    assert "503" in done.stderr and "loading" in done.stderr

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    done = _run_healthcheck(closed_port)
    assert done.returncode == 1
    assert "cannot reach" in done.stderr


def test_healthcheck_address_follows_the_service_settings() -> None:
    assert healthcheck.readiness_url({}) == "http://127.0.0.1:8000/readyz"
    assert healthcheck.readiness_url({"DIGITS_HOST": "0.0.0.0", "DIGITS_PORT": "9000"}) == \
        "http://127.0.0.1:9000/readyz"
    assert healthcheck.readiness_url({"DIGITS_HOST": "::1"}) == "http://[::1]:8000/readyz"


# --------------------------------------------------------------------------- docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose; .ci/run installs it)")
    return binary


def _compose_config(compose: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    environment = {"PATH": "/usr/bin:/bin:/usr/local/bin", **(env or {})}
    done = subprocess.run([compose, "-f", str(REPO / "docker-compose.yml"), *args, "config"], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_file_is_valid(compose: str) -> None:
    for profile in ([], ["--profile", "gpu"], ["--profile", "monitoring"], ["--profile", "train"]):
        done = subprocess.run([compose, "-f", str(REPO / "docker-compose.yml"), *profile, "config", "-q"],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{profile}: {done.stderr}"


def _duration_s(value: Any) -> float:
    """A compose duration: docker-compose config prints `25s` or a number of seconds."""
    return _seconds(value) if isinstance(value, str) else float(value)


def test_compose_replicas_drain_within_their_grace_period(compose: str) -> None:
    for env in ({}, {"DIGITS_SHUTDOWN_DRAIN_S": "5"}):
        services = _compose_config(compose, "--profile", "gpu", env=env)["services"]
        for name in ("api", "api-gpu"):
            drain = float(services[name]["environment"]["DIGITS_SHUTDOWN_DRAIN_S"])
            assert drain == float(env.get("DIGITS_SHUTDOWN_DRAIN_S", 3))
            assert _duration_s(services[name]["stop_grace_period"]) > \
                drain + SERVICE_DEFAULTS["request_timeout_s"] + 5


def test_compose_replicas_and_limits_come_from_the_environment(compose: str) -> None:
    default = _compose_config(compose)["services"]
    assert default["api"]["deploy"]["replicas"] == 3
    scaled = _compose_config(compose, env={"DIGITS_REPLICAS": "5", "DIGITS_MAX_BODY_BYTES": "1048576"})["services"]
    assert scaled["api"]["deploy"]["replicas"] == 5
    # The body limit reaches the replicas and nginx alike.
    assert scaled["api"]["environment"]["DIGITS_MAX_BODY_BYTES"] == "1048576"
    assert scaled["nginx"]["environment"]["DIGITS_MAX_BODY_BYTES"] == "1048576"
    assert default["nginx"]["environment"]["DIGITS_MAX_BODY_BYTES"] == str(SERVICE_DEFAULTS["max_body_bytes"])
    assert _seconds(default["nginx"]["environment"]["NGINX_PROXY_TIMEOUT"]) > SERVICE_DEFAULTS["request_timeout_s"]


def test_compose_wiring(compose: str) -> None:
    services = _compose_config(compose)["services"]
    fields = {f"DIGITS_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "api-gpu"):
        unknown = set(services[name]["environment"]) - fields
        assert not unknown, f"{name} sets variables the service does not read: {unknown}"
    # nginx starts once every replica is ready, and renders the repo's template with every placeholder.
    for lb, api in (("nginx", "api"), ("nginx-gpu", "api-gpu")):
        assert services[lb]["depends_on"] == {api: {"condition": "service_healthy"}}
        assert services[lb]["environment"]["DIGITS_UPSTREAM"] == f"{api}:8000"
        placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", "\n".join(
            line for line in TEMPLATE.read_text().splitlines() if not line.lstrip().startswith("#"))))
        assert placeholders <= set(services[lb]["environment"]), placeholders - set(services[lb]["environment"])
        assert any(v.endswith(":/etc/nginx/templates/default.conf.template:ro") and str(TEMPLATE) in v
                   for v in services[lb]["volumes"])
    # Profiles. The GPU image is the same `api` stage on NVIDIA's base with onnxruntime-gpu.
    assert services["api-gpu"]["profiles"] == ["gpu"]
    assert services["api-gpu"]["environment"]["DIGITS_DEVICE"] == "cuda"
    gpu_build = _compose_config(compose, "--profile", "gpu")["services"]["api-gpu"]["build"]
    assert gpu_build["target"] == "api"
    assert gpu_build["args"]["ONNXRUNTIME"] == "gpu" and gpu_build["args"]["DEVICE"] == "cuda"
    assert gpu_build["args"]["PYTHON_IMAGE"].startswith("nvidia/cuda:")
    device = services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["train"]["profiles"] == ["train"]
    train_volumes = services["train"]["volumes"]
    assert any(v.startswith(str(REPO / "models")) and v.endswith(":/app/models:rw") for v in train_volumes)
    assert "profiles" not in services["api"] and "profiles" not in services["nginx"]


def test_prometheus_scrapes_every_replica_of_the_compose_services(compose: str) -> None:
    services = _compose_config(compose)["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    discovered = {name: sd["port"] for sd in job["dns_sd_configs"] for name in sd["names"]}
    assert all(sd["type"] == "A" for sd in job["dns_sd_configs"])
    assert discovered == {"api": 8000, "api-gpu": 8000}
    assert set(discovered) <= set(services)


# --------------------------------------------------------------------------- deploy/podman/compose.py


def test_podman_translation_follows_the_compose_file(tmp_path: Path) -> None:
    """The plain podman commands carry what docker-compose.yml says of the replicas and nginx."""
    compose_yml = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    default = podman_compose.read_topology({})
    assert default.replicas == 3
    assert default.models_dir == REPO / "models"
    assert default.stop_timeout_s == _seconds(compose_yml["api"]["stop_grace_period"])
    assert default.api_env["DIGITS_SHUTDOWN_DRAIN_S"] == "3"
    assert default.max_body_bytes == SERVICE_DEFAULTS["max_body_bytes"]

    topology = podman_compose.read_topology({"DIGITS_REPLICAS": "2", "DIGITS_API_KEY": "k", "MODELS_DIR": str(tmp_path),
                                             "DIGITS_SHUTDOWN_DRAIN_S": "7", "NGINX_PROXY_TIMEOUT": "20s"})
    assert topology.replicas == 2 and topology.models_dir == tmp_path
    assert topology.api_env["DIGITS_API_KEY"] == "k" and topology.api_env["DIGITS_SHUTDOWN_DRAIN_S"] == "7"
    assert "DIGITS_WORKERS" not in topology.api_env, "an unset pass-through variable must stay unset"
    commands = podman_compose.api_commands(topology, "digits:test", 9001)
    assert [c[c.index("--name") + 1] for c in commands] == ["digits-api-1", "digits-api-2"]
    for command, port in zip(commands, (9001, 9002), strict=True):
        assert command[-1] == "digits:test"
        assert command[command.index("--network") + 1] == "host"
        assert command[command.index("--stop-timeout") + 1] == str(topology.stop_timeout_s)
        assert f"{tmp_path}:/app/models:ro" in command
        env = {command[i + 1] for i, arg in enumerate(command) if arg == "--env"}
        assert {"DIGITS_HOST=127.0.0.1", f"DIGITS_PORT={port}", "DIGITS_API_KEY=k"} <= env
    conf = podman_compose.render_nginx(topology, 9001, 9100)
    assert [v.split()[0] for v in _directive(conf, "server")] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert _directive(conf, "listen") == ["127.0.0.1:9100"]
    assert _directive(conf, "proxy_read_timeout") == ["20s"]


def test_podman_translation_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    broken = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    broken["x-api"]["volumes"] = []
    broken["services"]["api"]["volumes"] = []
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    with pytest.raises(podman_compose.ComposeError, match="/app/models"):
        podman_compose.read_topology({}, tmp_path / "docker-compose.yml")


# --------------------------------------------------------------------------- Dockerfile and .dockerignore


def _stages(dockerfile: str) -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", dockerfile)
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(1), [])
        current.append(line)
    return stages


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching .dockerignore pattern decides; `!` re-includes."""
    from fnmatch import fnmatch

    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(p, pat) or fnmatch(p, pat.removeprefix("**/")) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_targets_and_serving_images() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = _stages(dockerfile)
    assert list(stages)[-1] == "api", "the default target (last stage) should be the serving image"
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    targets = {s["build"]["target"] for s in services.values() if "build" in s}
    assert targets == {"api", "train"} and targets <= set(stages)
    # One serving stage; CPU or GPU is a matter of build arguments, each declared where it is used.
    assert [name for name in stages if name.startswith("api")] == ["api-build", "api"]
    assert re.search(r"(?m)^FROM \$\{PYTHON_IMAGE\} AS python-base$", dockerfile)
    for stage, args in (("api-build", {"ONNXRUNTIME", "PIP_CERT"}), ("api", {"DEVICE"})):
        declared = {line.split()[1].split("=")[0] for line in stages[stage] if line.startswith("ARG ")}
        assert args <= declared, f"{stage} should declare {args - declared}"
    for gpu_arg in services["api-gpu"]["build"]["args"]:
        assert re.search(rf"(?m)^ARG {gpu_arg}\b", dockerfile), f"compose passes {gpu_arg}, no such ARG"

    lines = stages["api"]
    assert any(re.fullmatch(r"USER 10001:10001", line) for line in lines), "api must run as uid 10001"
    assert any(line.startswith("HEALTHCHECK") and "deploy/healthcheck.py" in line for line in lines)
    assert any(line.startswith("COPY models/ /app/models/") for line in lines)
    assert any("DIGITS_MODELS_DIR=/app/models" in line and "DIGITS_DEVICE=${DEVICE}" in line for line in lines)
    assert lines[-1] == 'CMD ["digits", "serve"]'
    # The serving image is built from the torch-free packages only: no training code, no torch.
    copied = {line.split()[1] for line in stages["api-build"] if line.startswith("COPY ")}
    assert {"core/", "service/", "clients/"} <= copied and "training/" not in copied
    assert any('pip install ".[serve]"' in line and "'torch', 'matplotlib', 'training'" in line
               for line in stages["api-build"])
    # torch only ever enters the training image, and only pinned.
    for name, stage_lines in stages.items():
        mentions = [line for line in stage_lines if re.search(r"pip install[^&]*torch", line)]
        if name != "train-build":
            assert not mentions, f"stage {name} installs torch"
    assert any("--index-url" in line and "torch_pin" in line for line in stages["train-build"])


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_heavy() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    dockerfile = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    sources = [src for line in dockerfile.splitlines() if line.startswith("COPY") and "--from" not in line
               for src in line.split()[1:-1]]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such file in the repository"
        assert not _ignored(src.rstrip("/"), patterns), f"COPY {src} is excluded by .dockerignore"
    for heavy in (".venv", ".git", "runs", "tests/data", "service/__pycache__"):
        assert _ignored(heavy, patterns), f"{heavy} would be sent to the Docker builder"


# --------------------------------------------------------------------------- Kubernetes


def _manifests() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection or resolve a name fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_k8s_manifests_validate_offline_against_the_kubernetes_schemas(no_network: None) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is in the dev extra: pip install -e '.[dev]'"
    )
    from kubernetes_validate.utils import latest_version

    docs = _manifests()
    assert set(docs) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for version in ("1.30.0", latest_version()):
        for doc in docs.values():
            kubernetes_validate.validate(doc, version, strict=True)  # raises naming the offending field

    # The validator is strict: a misspelt field is caught.
    broken = yaml.safe_load((K8S_DIR / "deployment.yaml").read_text())
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


def test_k8s_manifests_fit_together_and_fit_the_service() -> None:
    docs = _manifests()
    deployment, service, hpa, config = (docs[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler",
                                                           "ConfigMap"))
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]

    # Settings: every key is a DIGITS_* variable the service reads, and the service accepts the values.
    fields = {f"DIGITS_{name.upper()}": name for name in Settings.model_fields}
    assert set(config["data"]) <= set(fields), set(config["data"]) - set(fields)
    settings = Settings(**{fields[k]: v for k, v in config["data"].items()})
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    assert container["ports"] == [{"name": "http", "containerPort": settings.port, "protocol": "TCP"}]
    assert settings.host == "0.0.0.0"

    # Probes on the service's endpoints.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert set(container["resources"]) == {"requests", "limits"}

    # Non-root, as the image's USER.
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # Shutdown: the drain, then uvicorn finishes the longest request (its graceful timeout is the
    # request timeout plus 5 s), all within the grace period; no preStop pause delays the drain.
    assert settings.shutdown_drain_s > 0
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.shutdown_drain_s + settings.request_timeout_s + 5
    assert "preStop" not in container.get("lifecycle", {})

    # Service and autoscaler point at these pods.
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"


# --------------------------------------------------------------------------- deploy/train.sh


@pytest.mark.slow
def test_training_entrypoint_writes_a_model_the_service_loads(tmp_path: Path) -> None:
    """The training image's entry point, on the real MNIST sample (a dry run): it writes the ONNX
    file and manifest into the models folder, and the service's loader accepts them."""
    from service.runtime import load_manifest_models

    models, runs = tmp_path / "models", tmp_path / "runs"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "DIGITS_MODELS_DIR": str(models), "DIGITS_RUNS_DIR": str(runs), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        ["sh", str(DEPLOY / "train.sh"), "lenet5", "--dry-run", "--data-dir", str(REPO / "tests/data/mnist-sample"),
         "--no-verify", "--quiet", "--threads", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (models / "lenet5.onnx").is_file() and (models / "manifest.json").is_file()
    assert "restart the API replicas" in done.stdout
    manifest, loaded, failed = load_manifest_models(models, providers=["CPUExecutionProvider"])
    assert failed == {} and set(loaded) == {"lenet5"} and manifest.default_model == "lenet5"


def test_training_entrypoint_explains_its_usage(tmp_path: Path) -> None:
    done = subprocess.run(["sh", str(DEPLOY / "train.sh")], capture_output=True, text=True, timeout=30,
                          cwd=tmp_path)
    assert done.returncode == 2
    assert "usage: train.sh MODEL" in done.stderr

