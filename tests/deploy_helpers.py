"""The docker-compose topology without Docker: `digits serve` replicas on loopback ports behind
Debian's nginx running the repo's configuration, and a bounded load generator.

Every process is started as the leader of a new process group and stopped by that group, so nothing
outlives a test; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from testkit import live_server

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def load_script(path: Path) -> ModuleType:
    """Import one of deploy/'s stand-alone scripts as a module."""
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    assert spec is not None and spec.loader is not None, f"cannot import {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and typing look the module up by name
    spec.loader.exec_module(module)
    return module


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    """Signal the process group this module started, wait, then SIGKILL whatever is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout_s)
    # The leader may be gone while children (nginx workers) linger: the group id is still ours.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


@dataclass
class Replica:
    """One `digits serve` process on 127.0.0.1:port."""

    port: int
    models_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    settings: dict[str, str] = field(default_factory=dict)  # more DIGITS_* variables for this replica

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        # The service's settings come from DIGITS_* only: drop the caller's, pin a quiet, 1-thread replica.
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
        env.update(DIGITS_INTRA_OP_THREADS="1", DIGITS_LOG_LEVEL="warning", **self.settings)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--models-dir", str(self.models_dir), "--device", "cpu"],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        try:
            live_server.wait_ready(self.port, self.process, timeout_s=max(0.0, deadline - time.monotonic()))
        except AssertionError as exc:
            raise AssertionError(f"replica {self.address}: {exc}\n{_tail(self.log_path)}") from None

    def send(self, sig: int) -> None:
        assert self.process is not None and self.process.poll() is None, f"replica {self.address} is not running"
        os.kill(self.process.pid, sig)

    def wait_exit(self, timeout_s: float) -> int | None:
        """Exit status, or None if still running after ``timeout_s``."""
        assert self.process is not None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process)

    def predict_count(self) -> float:
        """Successful POST /predict answers this replica has counted (its Prometheus counter)."""
        text = httpx.get(f"http://{self.address}/metrics", timeout=5.0).text
        total = 0.0
        for line in text.splitlines():
            if (line.startswith("digits_requests_total{") and 'route="/predict"' in line
                    and 'method="POST"' in line and 'status="200"' in line):
                total += float(line.rsplit(" ", 1)[1])
        return total


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _main_conf(prefix: Path, site: Path, nginx: str) -> str:
    """nginx.conf around the repo's site configuration, with every writable path inside ``prefix``."""
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
    temp_paths = [f"client_body_temp_path {prefix / 'tmp' / 'body'};", f"proxy_temp_path {prefix / 'tmp' / 'proxy'};"]
    temp_paths += [f"{m}_temp_path {prefix / 'tmp' / m};" for m in ("fastcgi", "uwsgi", "scgi")
                   if f"--without-http_{m}_module" not in built]
    # As root, nginx would switch its workers to `nobody`, who cannot use the temp folders here.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    lines = "\n    ".join(temp_paths)
    return (f"{user}worker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} warn;\n"
            f"events {{ worker_connections 512; }}\n"
            f"http {{\n    access_log off;\n    {lines}\n    include {site};\n}}\n")


@dataclass
class Balancer:
    """nginx in the foreground (daemon off) with its prefix, config, pid and logs in ``prefix``."""

    prefix: Path
    port: int
    site_conf: str
    nginx: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        site = self.prefix / "digits.conf"
        site.write_text(self.site_conf)
        conf = self.prefix / "nginx.conf"
        conf.write_text(_main_conf(self.prefix, site, self.nginx))
        return conf

    def test_config(self) -> subprocess.CompletedProcess[str]:
        conf = self.write_config()
        return subprocess.run([self.nginx, "-t", "-p", f"{self.prefix}/", "-c", str(conf), "-e", "stderr"],
                              capture_output=True, text=True, timeout=30)

    def start(self, deadline: float) -> None:
        conf = self.write_config()
        log = self.prefix / "nginx.out"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [self.nginx, "-p", f"{self.prefix}/", "-c", str(conf), "-e", str(self.prefix / "error.log"),
                 "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"nginx exited with {self.process.returncode}:\n{_tail(log)}\n"
                                     f"{_tail(self.prefix / 'error.log')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise AssertionError(f"nginx did not listen on {self.port} in time:\n{_tail(self.prefix / 'error.log')}")

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process)

    def error_log(self) -> str:
        return _tail(self.prefix / "error.log", 40)


def last_upstream(header: str) -> str:
    """The replica that answered: X-Upstream lists every one tried, comma-separated, last one last."""
    return header.replace(" : ", ", ").split(", ")[-1].strip()


@dataclass
class LoadResult:
    statuses: Counter[int | str] = field(default_factory=Counter)
    digits: Counter[int] = field(default_factory=Counter)
    # Which replica answered, for answers sent before and after the event.
    before: Counter[str] = field(default_factory=Counter)
    after: Counter[str] = field(default_factory=Counter)
    retried: int = 0  # answers for which nginx tried more than one replica
    client_retries: int = 0  # requests the client itself sent again after a transport error
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


def run_load(
    url: str,
    body: dict[str, Any],
    *,
    clients: int,
    duration_s: float,
    event_at_s: float,
    event: Callable[[], None],
    retry_transport_errors: int = 0,
) -> LoadResult:
    """``clients`` threads POST ``body`` to ``url`` back to back for ``duration_s``; ``event`` runs
    once, ``event_at_s`` into the load. Every request's final outcome is recorded. A request whose
    connection broke (no HTTP answer at all) is sent again at most ``retry_transport_errors`` times,
    as an HTTP client does with an idempotent request; an HTTP error status is never retried."""
    result = LoadResult()
    lock = threading.Lock()
    event_done = threading.Event()
    deadline = time.monotonic() + duration_s

    def client() -> None:
        with httpx.Client(timeout=30.0) as http:
            while time.monotonic() < deadline:
                after_event = event_done.is_set()
                response = None
                for attempt in range(retry_transport_errors + 1):
                    try:
                        response = http.post(url, json=body)
                        break
                    except httpx.TransportError as exc:
                        with lock:
                            if attempt < retry_transport_errors:
                                result.client_retries += 1
                                continue
                            result.statuses[type(exc).__name__] += 1
                            if len(result.failures) < 5:
                                result.failures.append(f"{type(exc).__name__}: {exc}")
                if response is None:
                    continue
                upstream = response.headers.get("x-upstream", "")
                with lock:
                    result.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        result.digits[response.json()["predictions"][0]["digit"]] += 1
                    elif len(result.failures) < 5:
                        result.failures.append(f"{response.status_code} from {upstream}: {response.text[:200]}")
                    (result.after if after_event else result.before)[last_upstream(upstream)] += 1
                    result.retried += "," in upstream

    threads = [threading.Thread(target=client, name=f"load-{i}", daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(event_at_s)
        event()
        event_done.set()
    finally:
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()) + 35.0)
    assert not any(t.is_alive() for t in threads), "a load client did not finish in time"
    return result
