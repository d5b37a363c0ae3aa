"""Fixtures shared across the suite: the real MNIST sample, the shipped models, a live app."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from testkit.data import load_sample

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"


@pytest.fixture(autouse=True)
def _private_data_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the download cache at a fresh folder, so no test reads or fills the user's ~/.cache/digits."""
    monkeypatch.setenv("DIGITS_DATA_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("DIGITS_MNIST_MIRRORS", raising=False)


@pytest.fixture(autouse=True)
def _no_preprocessing_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apps built by tests start no preprocessing worker process (each takes a couple of seconds to start,
    and most tests build several apps); tests/test_preprocess_pool.py turns them on where it tests them."""
    monkeypatch.setenv("DIGITS_DECODE_PROCESSES", "0")


@pytest.fixture(scope="session")
def mnist_test_sample() -> tuple[np.ndarray, np.ndarray]:
    """The first 1,000 real MNIST test images (uint8 [N,28,28]) and labels."""
    return load_sample("test")


@pytest.fixture(scope="session")
def full_mnist_dir() -> Path:
    """The full MNIST files, from $DIGITS_MNIST_DIR (CI points it at the real data)."""
    value = os.environ.get("DIGITS_MNIST_DIR")
    if not value:
        pytest.skip("DIGITS_MNIST_DIR is not set: the full MNIST files are needed")
    path = Path(value)
    if not (path / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"DIGITS_MNIST_DIR={value} does not hold the MNIST IDX files")
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The shipped models, as the service loads them by default."""
    assert (MODELS_DIR / "manifest.json").is_file(), "models/manifest.json is missing: the shipped models are gone"
    return MODELS_DIR


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[object]:
    """A TestClient over the real app with the shipped models (lifespan run: models loaded and warmed)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(models_dir=models_dir))
    with TestClient(app) as test_client:
        yield test_client


Score = Callable[..., tuple[int, str, str]]


@pytest.fixture
def score(capsys: pytest.CaptureFixture[str], models_dir: Path) -> Score:
    """Run `digits score ARGV` in this process with the shipped models: (exit status, stdout, stderr)."""
    import cli

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["score", "--quiet", "--models-dir", str(models_dir), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def service(models_dir: Path) -> Iterator[Any]:
    """The service as a real process (tests.web_helpers.ServiceProcess), for the browser tests of a module."""
    from tests.web_helpers import ServiceProcess

    server = ServiceProcess(models_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium through Playwright, for the browser tests of a module."""
    from playwright.sync_api import sync_playwright

    from tests.web_helpers import CHROMIUM

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()
