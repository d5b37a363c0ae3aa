"""`digits serve` as a real process on 127.0.0.1: start-up, device choice, and graceful SIGTERM."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from testkit.live_server import REPO, free_port, pending_images, start_server, stop_server, wait_ready, wait_until


def test_sigterm_finishes_queued_requests_then_exits(models_dir: Path, mnist_test_sample) -> None:
    images, labels = mnist_test_sample
    port = free_port()
    # A long batching delay keeps requests queued when the signal arrives.
    proc = start_server(port, models_dir, DIGITS_MAX_DELAY_MS="1000", DIGITS_MAX_BATCH_SIZE="256")
    try:
        wait_ready(port, proc)
        url = f"http://127.0.0.1:{port}/predict"

        def one(i: int) -> tuple[int, int]:
            r = clients[i].post(url, json={"pixels": images[i].tolist()})
            return r.status_code, r.json()["predictions"][0]["digit"] if r.status_code == 200 else -1

        # Clients made beforehand (each takes tens of ms), so all 24 requests go out at once.
        clients = [httpx.Client(timeout=20) for _ in range(24)]
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(one, i) for i in range(24)]
            # All sent, all waiting in the batch queue (bounded wait: the batch leaves after 1 s anyway).
            wait_until(lambda: pending_images(f"http://127.0.0.1:{port}") >= 24, timeout_s=0.9)
            proc.send_signal(signal.SIGTERM)
            results = [f.result(timeout=30) for f in futures]
        for c in clients:
            c.close()
        assert [status for status, _ in results] == [200] * 24
        assert [digit for _, digit in results] == labels[:24].tolist()
        # uvicorn re-raises the signal once it has shut down gracefully: killed by SIGTERM, not an error.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
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
        x = np.full((28, 28), 255, int).tolist()
        assert httpx.post(f"http://127.0.0.1:{port}/predict", json={"pixels": x}, timeout=5).status_code == 200
    finally:
        stop_server(proc)


def test_missing_models_dir_is_a_clear_start_up_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--models-dir", str(tmp_path), "--port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "manifest.json" in proc.stderr


def test_a_busy_port_is_a_clear_start_up_error_before_ready(models_dir: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "cli", "serve", "--port", str(port), "--log-level", "info"],
            cwd=REPO, env={**os.environ, "DIGITS_MODELS_DIR": str(models_dir)}, capture_output=True, text=True,
            timeout=60,
        )
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "PORT=" in proc.stderr
    assert "ready" not in proc.stdout + proc.stderr.replace("already", "")


def test_the_device_notice_is_logged_once(models_dir: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: no notice")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port), "--device", "auto", "--log-level", "info"],
        cwd=REPO, env={**os.environ, "DIGITS_MODELS_DIR": str(models_dir)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_ready(port, proc)
    finally:
        stop_server(proc)
    output = proc.stdout.read() if proc.stdout else ""
    assert output.count("no CUDA execution provider") == 1, output
