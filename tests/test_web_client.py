"""The drawing page in a real browser: Debian's Chromium, driven by Playwright, against the real
service (a uvicorn process on 127.0.0.1) with the shipped models.

Digits are drawn with the mouse, traced from real MNIST test digits, at several places and
sizes on the pad; what is checked is what a user sees: the digit shown, the probabilities,
the model named, the error banner, and a console free of errors.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")

from playwright.sync_api import Browser, Page, Route, expect
from playwright.sync_api import Error as PlaywrightError

from tests.web_helpers import CHROMIUM, Placement, ServiceProcess, draw_digit

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)"),
]

# The page runs under this policy here, so inline code, inline styles or outside resources
# would show up as console errors.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

CANVAS = "[data-testid=canvas]"
SETTLED = '[data-testid=result][aria-busy="false"]'
PLACEMENTS = (
    Placement("centred, large", left=10, top=10, size=260),
    Placement("small, top-left corner", left=6, top=6, size=110),
    Placement("offset to the bottom right", left=105, top=95, size=170),
)


# --- fixtures ------------------------------------------------------------------------------


@dataclass
class Tab:
    """A fresh browser context on the page, with every console error and page error collected."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def assert_no_console_errors(self) -> None:
        assert self.errors == [], f"errors in the browser console: {self.errors}"


def open_page(browser: Browser, service: ServiceProcess, **context_options: object) -> Tab:
    context = browser.new_context(**context_options)  # type: ignore[arg-type]
    page = context.new_page()
    tab = Tab(page)
    page.on("console", lambda msg: tab.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: tab.errors.append(f"uncaught: {exc}"))

    def with_csp(route: Route) -> None:
        response = route.fetch()
        route.fulfill(response=response, headers={**response.headers, "content-security-policy": CSP})

    page.route(f"{service.url}/", with_csp)
    page.goto(f"{service.url}/")
    # Ready once the picker is filled from /models.
    expect(page.get_by_test_id("model-picker")).not_to_have_value("", timeout=10_000)
    return tab


@pytest.fixture
def tab(browser: Browser, service: ServiceProcess) -> Iterator[Tab]:
    opened = open_page(browser, service, viewport={"width": 1100, "height": 760})
    try:
        yield opened
    finally:
        opened.page.context.close()


@pytest.fixture(scope="module")
def chosen_digits(service: ServiceProcess, mnist_test_sample: tuple[np.ndarray, np.ndarray]
                  ) -> list[tuple[np.ndarray, int]]:
    """Seven real test digits (different labels) the default model reads right from the raw
    28x28 image and from its ink mask (what the hand traces), so the browser tests check the
    page and the service, not the model's own mistakes."""
    images, labels = mnist_test_sample
    images, labels = images[:200], labels[:200]

    def predicted(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = httpx.post(f"{service.url}/predict", json={"pixels": batch.tolist()}, timeout=30)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        return np.array([p["digit"] for p in preds]), np.array([p["confidence"] for p in preds])

    raw_digit, raw_conf = predicted(images)
    mask_digit, mask_conf = predicted(np.where(images > 128, 255, 0).astype(np.uint8))
    good = (raw_digit == labels) & (mask_digit == labels) & (raw_conf > 0.9) & (mask_conf > 0.9)
    chosen: list[tuple[np.ndarray, int]] = []
    for label in (2, 7, 0, 4, 3, 9, 5):
        hits = np.flatnonzero(good & (labels == label))
        if hits.size:
            chosen.append((images[hits[0]], label))
    assert len(chosen) >= 6, f"the model reads too few sample digits right: {sorted(set(labels[good]))}"
    return chosen


# --- helpers -------------------------------------------------------------------------------


def settled_prediction(page: Page) -> str:
    """The digit shown once the latest request has been answered ('' when nothing is drawn)."""
    page.locator(SETTLED).wait_for(timeout=15_000)
    return page.get_by_test_id("prediction").text_content() or ""


def stroke(page: Page, points: list[tuple[float, float]]) -> None:
    """One mouse stroke through `points` (CSS px relative to the pad's top-left corner)."""
    box = page.locator(CANVAS).bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
    page.mouse.up()


def draw_a_one(page: Page) -> None:
    page.get_by_label("Brush size").fill("22")
    stroke(page, [(140, 50), (140, 230)])


def probabilities(page: Page) -> list[float]:
    meters = page.get_by_test_id("probabilities").get_by_role("meter")
    return [float(meters.nth(d).get_attribute("aria-valuenow") or "nan") for d in range(meters.count())]


def pad_ink(page: Page) -> int:
    """How many pixels of the pad's backing store are not black."""
    return int(page.evaluate(
        """sel => { const c = document.querySelector(sel);
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""",
        CANVAS,
    ))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "the body is not a PNG"
    return struct.unpack(">II", data[16:24])


# --- tests ---------------------------------------------------------------------------------


def test_traced_mnist_digits_are_read_right_anywhere_on_the_pad(
    tab: Tab, chosen_digits: list[tuple[np.ndarray, int]]
) -> None:
    page = tab.page
    canvas = page.locator(CANVAS)
    assert canvas.evaluate("c => [c.width, c.height, c.clientWidth, c.clientHeight]") == [280, 280, 280, 280]
    expect(page.get_by_test_id("prediction")).to_have_text("")

    wrong = []
    for i, (image, label) in enumerate(chosen_digits):
        where = PLACEMENTS[i % len(PLACEMENTS)]
        if i:
            page.get_by_test_id("clear").click()
        draw_digit(page, image, where, CANVAS)
        shown = settled_prediction(page)
        if shown != str(label):
            wrong.append(f"drew a {label} ({where.name}), the page shows {shown!r}")
            continue
        # The chart agrees with the big digit, and the screen-reader values add up.
        values = probabilities(page)
        assert len(values) == 10 and int(np.argmax(values)) == label
        assert sum(values) == pytest.approx(100, abs=1.0)
        top_bar = page.get_by_test_id("probabilities").get_by_role("meter", name=f"digit {label}")
        expect(top_bar).to_have_class(re.compile(r"\bbest\b"))
        if i == 0:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web-client.png"), full_page=True)
    assert wrong == []

    # What the model saw is drawn: a 28x28 image with ink in it.
    seen_ink = page.locator("#seen").evaluate(
        "c => Array.from(c.getContext('2d').getImageData(0, 0, 28, 28).data)"
        ".filter((v, i) => i % 4 == 0 && v > 0).length")
    assert seen_ink > 20
    expect(page.get_by_test_id("result-model")).to_contain_text(re.compile(r"\S"))
    expect(page.get_by_test_id("latency")).to_have_text(re.compile(r"^\d+ ms$"))
    tab.assert_no_console_errors()


def test_clear_empties_the_pad_and_the_prediction(tab: Tab) -> None:
    page = tab.page
    draw_a_one(page)
    assert settled_prediction(page) == "1"
    assert pad_ink(page) > 0

    page.get_by_test_id("clear").click()
    assert settled_prediction(page) == ""
    assert pad_ink(page) == 0
    assert max(probabilities(page)) == 0
    expect(page.locator("#hint")).to_be_visible()
    expect(page.get_by_test_id("error")).to_be_hidden()

    draw_a_one(page)
    assert settled_prediction(page) == "1"
    page.keyboard.press("Escape")  # the keyboard shortcut does the same
    assert settled_prediction(page) == ""
    assert pad_ink(page) == 0
    tab.assert_no_console_errors()


def test_the_prediction_is_live_while_the_stroke_goes_on(tab: Tab) -> None:
    page = tab.page
    box = page.locator(CANVAS).bounding_box()
    assert box is not None
    page.get_by_label("Brush size").fill("22")
    page.mouse.move(box["x"] + 140, box["y"] + 50)
    page.mouse.down()
    page.mouse.move(box["x"] + 140, box["y"] + 230, steps=8)
    # The button is still down: the answer comes from the live (throttled) prediction.
    expect(page.get_by_test_id("prediction")).to_have_text("1", timeout=10_000)
    page.mouse.up()
    assert settled_prediction(page) == "1"
    tab.assert_no_console_errors()


def test_undo_removes_the_last_stroke(tab: Tab) -> None:
    page = tab.page
    draw_a_one(page)
    assert settled_prediction(page) == "1"
    one = probabilities(page)

    stroke(page, [(70, 50), (150, 50)])  # a bar across the top: no longer a plain 1
    settled_prediction(page)
    assert probabilities(page) != one

    page.get_by_test_id("undo").click()
    assert settled_prediction(page) == "1"
    assert probabilities(page) == one  # the same drawing again, so the very same answer

    page.keyboard.press("Control+z")
    assert settled_prediction(page) == ""
    assert pad_ink(page) == 0
    expect(page.get_by_test_id("undo")).to_be_disabled()
    tab.assert_no_console_errors()


def test_switching_models_changes_the_model_that_answers(tab: Tab, service: ServiceProcess) -> None:
    page = tab.page
    listing = httpx.get(f"{service.url}/models", timeout=10).json()
    names = [m["name"] for m in listing["models"]]
    if len(names) < 2:
        pytest.skip(f"the service serves one model only ({names})")
    picker = page.get_by_test_id("model-picker")
    expect(picker).to_have_value(listing["default_model"])
    # Each option names a model with its test accuracy.
    options = picker.locator("option")
    expect(options).to_have_count(len(names))
    for i, model in enumerate(listing["models"]):
        expect(options.nth(i)).to_contain_text(f"{model['metrics']['test_accuracy'] * 100:.2f}%")

    draw_a_one(page)
    assert settled_prediction(page) == "1"
    expect(page.get_by_test_id("result-model")).to_have_text(re.compile(rf"^{re.escape(listing['default_model'])}\b"))

    other = next(n for n in names if n != listing["default_model"])
    picker.select_option(other)
    assert settled_prediction(page) == "1"
    expect(page.get_by_test_id("result-model")).to_have_text(re.compile(rf"^{re.escape(other)}\b"))

    # The choice is remembered on reload.
    page.reload()
    expect(picker).to_have_value(other)
    tab.assert_no_console_errors()


def test_the_latest_request_wins_and_the_pad_is_sent_as_drawn(tab: Tab) -> None:
    page = tab.page
    held: list[Route] = []
    sent: list[bytes] = []

    def hold_the_first(route: Route) -> None:
        sent.append(route.request.post_data_buffer or b"")
        if not held:
            held.append(route)  # answered later, after a newer request
        else:
            route.continue_()

    page.route("**/predict?*", hold_the_first)
    draw_a_one(page)
    page.wait_for_function("() => document.querySelector('[data-testid=result]').ariaBusy === 'true'")
    stroke(page, [(70, 50), (150, 50)])
    newest = settled_prediction(page)
    model = page.get_by_test_id("result-model").text_content()
    assert held and len(sent) >= 2

    # The old request now answers, with a digit nobody drew; the page must not show it.
    stale = {"model": "stale", "version": "0", "predictions": [{
        "digit": 8, "label": "8", "confidence": 1.0, "probabilities": [0.0] * 8 + [1.0, 0.0],
        "input": [[0.0] * 28] * 28}]}
    with contextlib.suppress(PlaywrightError):  # the page may have aborted it already
        held[0].fulfill(status=200, content_type="application/json", body=json.dumps(stale))
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)))")
    assert page.get_by_test_id("prediction").text_content() == newest != "8"
    assert page.get_by_test_id("result-model").text_content() == model

    # The whole pad goes to the server as a PNG, unscaled: all preprocessing is the server's.
    size = page.locator(CANVAS).evaluate("c => [c.width, c.height]")
    assert [list(png_size(body)) for body in sent] == [size] * len(sent)
    tab.assert_no_console_errors()


def test_a_drawing_without_readable_ink_gets_a_hint_not_an_error(tab: Tab) -> None:
    """The service answers 422 when it finds no ink; the page shows no digit and a gentle hint."""
    page = tab.page
    message = "the image contains no ink: draw a digit"
    page.route("**/predict?*", lambda route: route.fulfill(
        status=422, content_type="application/json", body=json.dumps({"detail": message, "error": message})))
    draw_a_one(page)
    assert settled_prediction(page) == ""
    expect(page.locator("#hint")).to_contain_text("keep drawing")
    expect(page.get_by_test_id("error")).to_be_hidden()


def test_phone_upright_fits_the_screen_and_draws_with_a_finger(
    browser: Browser, service: ServiceProcess
) -> None:
    tab = open_page(browser, service, viewport={"width": 360, "height": 740}, device_scale_factor=3,
                    is_mobile=True, has_touch=True)
    page = tab.page
    try:
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        box = page.locator(CANVAS).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360
        assert box["width"] == pytest.approx(box["height"], abs=1) and box["width"] >= 240
        for selector in ("clear", "undo", "prediction", "probabilities", "model-picker"):
            expect(page.get_by_test_id(selector)).to_be_visible()
        # A tap is a touch pointer: it leaves a dot, and the page reads something from it.
        page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert settled_prediction(page) != ""
        # Sharp on a high-DPI screen: one backing-store pixel per device pixel.
        assert page.locator(CANVAS).evaluate("c => [c.width, c.height]") == [round(box["width"] * 3)] * 2
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-client-phone.png"), full_page=True)
        tab.assert_no_console_errors()
    finally:
        page.context.close()


def test_a_stopped_service_shows_the_error_and_recovery_clears_it(tab: Tab, service: ServiceProcess) -> None:
    """Last in the module: it stops the shared service and starts it again on the same port."""
    page = tab.page
    error = page.get_by_test_id("error")
    draw_a_one(page)
    assert settled_prediction(page) == "1"
    expect(error).to_be_hidden()

    service.stop()
    try:
        stroke(page, [(70, 50), (150, 50)])
        expect(error).to_be_visible(timeout=10_000)
        expect(error).to_have_attribute("role", "alert")
        expect(error).to_contain_text("Cannot reach the digits service")
    finally:
        service.start()
    # The page notices by itself (periodic health check), then reads the drawing again.
    expect(error).to_be_hidden(timeout=20_000)
    assert settled_prediction(page) != ""
    expect(page.get_by_test_id("latency")).to_have_text(re.compile(r"^\d+ ms$"))



def test_number_mode_reads_three_digits_with_their_boxes(
    tab: Tab, chosen_digits: list[tuple[np.ndarray, int]]
) -> None:
    """Whole-number mode: a wider pad, three traced digits side by side, read as one number with
    a box per digit; switching back gives the single-digit pad as before."""
    page = tab.page
    page.get_by_test_id("number-mode").check()
    canvas = page.locator(CANVAS)
    width, height = canvas.evaluate("c => [c.clientWidth, c.clientHeight]")
    assert width > 2 * height  # the pad got wider

    three = chosen_digits[:3]
    size = height * 0.6
    for k, (image, _) in enumerate(three):
        where = Placement(f"digit {k}", left=width * (0.08 + 0.3 * k), top=height * 0.2, size=size)
        draw_digit(page, image, where, CANVAS)
    expected = "".join(str(label) for _, label in three)
    settled_prediction(page)
    expect(page.get_by_test_id("reading")).to_have_text(expected)
    expect(page.get_by_test_id("reading")).to_be_visible()
    expect(page.get_by_test_id("prediction")).to_have_text(expected)
    boxes = page.get_by_test_id("boxes").locator(".digit-box")
    expect(boxes).to_have_count(3)
    lefts = [boxes.nth(k).bounding_box()["x"] for k in range(3)]  # type: ignore[index]
    assert lefts == sorted(lefts)
    assert [boxes.nth(k).text_content() for k in range(3)] == list(expected)

    page.get_by_test_id("number-mode").uncheck()  # back to one digit: the square pad, empty
    assert canvas.evaluate("c => [c.clientWidth, c.clientHeight]") == [280, 280]
    expect(page.get_by_test_id("prediction")).to_have_text("")
    expect(boxes).to_have_count(0)
    tab.assert_no_console_errors()
