"""/docs (Swagger UI) and /redoc (ReDoc) in Debian's Chromium with every off-host request blocked:
their scripts and styles come from a Python package, not a CDN, so they render in an air-gapped
deployment."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")

from playwright.sync_api import Browser, Route, expect

from tests.web_helpers import CHROMIUM, ServiceProcess

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)"),
]


def open_offline(browser: Browser, service: ServiceProcess, path: str) -> tuple[object, list[str], list[str]]:
    """The page at ``path`` with every request to another host aborted; (page, blocked URLs, page errors)."""
    context = browser.new_context()
    page = context.new_page()
    blocked: list[str] = []
    errors: list[str] = []
    own = urlsplit(service.url).netloc

    def offline(route: Route) -> None:
        if urlsplit(route.request.url).netloc == own:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", offline)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{service.url}{path}")
    return page, blocked, errors


def test_swagger_ui_renders_every_operation_offline(browser: Browser, service: ServiceProcess) -> None:
    page, blocked, errors = open_offline(browser, service, "/docs")
    try:
        operations = page.locator(".opblock")
        expect(operations.first).to_be_visible(timeout=15_000)
        expect(page.locator(".opblock-summary-path[data-path='/predict']")).to_be_visible()
        expect(page.locator(".opblock-summary-path[data-path='/v2/models/{model_name}/infer']")).to_be_visible()
        assert operations.count() >= 14
        assert blocked == [] and errors == [], (blocked, errors)
    finally:
        page.context.close()  # type: ignore[attr-defined]


def test_redoc_renders_the_operations_offline(browser: Browser, service: ServiceProcess) -> None:
    page, blocked, errors = open_offline(browser, service, "/redoc")
    try:
        expect(page.locator("h2", has_text="Predict the digit in one or more images")).to_be_visible(timeout=15_000)
        expect(page.locator("h2", has_text="Inference on one model version")).to_be_attached()
        # ReDoc's footer links its maker's logo from their CDN; blocked, it is a missing image, nothing more.
        assert [u for u in blocked if not u.startswith("https://cdn.redoc.ly/redoc/logo")] == [], blocked
        assert errors == [], errors
    finally:
        page.context.close()  # type: ignore[attr-defined]
