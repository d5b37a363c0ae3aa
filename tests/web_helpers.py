"""Helpers for the drawing-page tests: the service as a real process, and a hand that draws.

The hand turns a real MNIST digit into mouse strokes: for each row of the 28x28 image, one
drag along each horizontal run of ink, scaled onto the drawing pad. With a brush a little
wider than one scaled pixel the runs merge into the digit's shape, as a pen would draw it.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from playwright.sync_api import Page

from testkit.live_server import free_port, start_server, stop_server, wait_ready

REPO = Path(__file__).resolve().parents[1]
INK = 128  # a pixel above this (0..255) is ink to trace
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class ServiceProcess:
    """`uvicorn service.app:app_from_env` on 127.0.0.1; stop() and start() again keep the port."""

    models_dir: Path
    port: int = field(default_factory=free_port)
    ready_timeout_s: float = 60.0
    proc: subprocess.Popen | None = None
    _log: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._log is not None:
            self._log.close()
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (outlives this call: read by log(), closed on restart)
        self.proc = start_server(self.port, self.models_dir, output=self._log, DIGITS_INTRA_OP_THREADS="1")
        try:
            wait_ready(self.port, self.proc, self.ready_timeout_s)
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n{self.log()}") from None

    def log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-4000:]

    def stop(self) -> None:
        if self.proc is not None:
            stop_server(self.proc, timeout_s=15)
        self.proc = None


def ink_runs(image: np.ndarray, threshold: int = INK) -> list[tuple[int, int, int]]:
    """(row, first column, last column) of every horizontal run of ink in a [28,28] image."""
    runs = []
    for row in range(image.shape[0]):
        ink = np.concatenate(([False], image[row] > threshold, [False]))
        edges = np.flatnonzero(ink[1:] != ink[:-1])  # starts at even, ends (exclusive) at odd positions
        runs.extend((row, int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True))
    return runs


@dataclass(frozen=True)
class Placement:
    """Where on the pad a 28x28 digit is drawn: its box's left/top corner and side, in CSS px."""

    name: str
    left: float
    top: float
    size: float

    @property
    def scale(self) -> float:
        return self.size / 28

    @property
    def brush(self) -> int:
        # A little wider than one scaled pixel: neighbouring rows merge into one stroke.
        return max(4, round(self.scale * 1.35))


def draw_digit(page: Page, image: np.ndarray, where: Placement, canvas_selector: str) -> int:
    """Trace `image` onto the canvas with mouse drags; returns the number of strokes."""
    box = page.locator(canvas_selector).bounding_box()
    assert box is not None, "the drawing pad is not visible"
    page.get_by_label("Brush size").fill(str(where.brush))
    runs = ink_runs(image)
    for row, c0, c1 in runs:
        y = box["y"] + where.top + (row + 0.5) * where.scale
        x0 = box["x"] + where.left + (c0 + 0.5) * where.scale
        x1 = box["x"] + where.left + (c1 + 0.5) * where.scale
        page.mouse.move(x0, y)
        page.mouse.down()
        if c1 > c0:
            page.mouse.move(x1, y)
        page.mouse.up()
    return len(runs)
