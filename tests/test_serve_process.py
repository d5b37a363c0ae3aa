"""`digits serve` as a real process on 127.0.0.1: start-up, device choice, and graceful SIGTERM."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, models_dir: Path, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "DIGITS_MODELS_DIR": str(models_dir), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server not ready in time")


def test_sigterm_finishes_queued_requests_then_exits(models_dir: Path, mnist_test_sample) -> None:
    images, labels = mnist_test_sample
    port = free_port()
    # A long batching delay keeps requests queued when the signal arrives.
    proc = start_server(port, models_dir, DIGITS_MAX_DELAY_MS="400", DIGITS_MAX_BATCH_SIZE="256")
    try:
        wait_ready(port, proc)
        url = f"http://127.0.0.1:{port}/predict"

        def one(i: int) -> tuple[int, int]:
            with httpx.Client(timeout=20) as c:
                r = c.post(url, json={"pixels": images[i].tolist()})
                return r.status_code, r.json()["predictions"][0]["digit"] if r.status_code == 200 else -1

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(one, i) for i in range(24)]
            time.sleep(0.25)  # all sent, all waiting in the batch queue
            proc.send_signal(signal.SIGTERM)
            results = [f.result(timeout=30) for f in futures]
        assert [status for status, _ in results] == [200] * 24
        assert [digit for _, digit in results] == labels[:24].tolist()
        assert proc.wait(timeout=20) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_device_cuda_without_a_gpu_build_fails_fast_with_advice(models_dir: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--device", "cuda", "--port", str(free_port())],
        cwd=REPO, env={**os.environ, "DIGITS_MODELS_DIR": str(models_dir)}, capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "CUDA" in proc.stderr and "--device cpu" in proc.stderr


def test_device_auto_falls_back_to_cpu_and_serves(models_dir: Path) -> None:
    port = free_port()
    proc = start_server(port, models_dir, DIGITS_DEVICE="auto", DIGITS_WORKERS="2")
    try:
        wait_ready(port, proc)
        models = httpx.get(f"http://127.0.0.1:{port}/models", timeout=5).json()["models"]
        assert {m["device"] for m in models} <= {"CPUExecutionProvider", "CUDAExecutionProvider"}
        x = np.zeros((28, 28), int).tolist()
        assert httpx.post(f"http://127.0.0.1:{port}/predict", json={"pixels": x}, timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_missing_models_dir_is_a_clear_start_up_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--models-dir", str(tmp_path), "--port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "manifest.json" in proc.stderr
