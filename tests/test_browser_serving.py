"""A server that runs for hours, in headless Chromium with nothing reachable but the server:
page images after Gradio's cache sweep, and the REST API's docs page offline."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from test_browser import ARTIFACTS, chromium, need_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GALLERY_IMAGES = (
    "() => [...document.querySelectorAll('#vs-results img')].map(i => [i.src, "
    "i.complete, i.naturalWidth])"
)


def _loopback_only(page, outside: list[str]) -> None:
    """Abort every request that would leave the machine (the network is 'off')."""

    def route(r):
        host = urlparse(r.request.url).hostname
        if host in ("127.0.0.1", "localhost") or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)


def _cached_path(src: str) -> Path | None:
    """The server file behind a gallery image URL (…/gradio_api/file=/tmp/…/x.jpg)."""
    marker = "file="
    return Path(unquote(src.split(marker, 1)[1])) if marker in src else None


def test_page_images_still_load_after_gradios_cache_sweep(tmp_path, monkeypatch):
    need_chromium()
    from test_ui import shopper_photo, start_server

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-cache"))
    # swept every 10 s: anything older than 10 s goes
    server = start_server(tmp_path / "srv", files_max_age=10)
    # (short, but long enough for a loaded 2-core test machine to preview the upload before it goes)
    photo = shopper_photo(tmp_path, 5, name="shopper.jpg")
    outside: list[str] = []

    def search_and_wait(page) -> list:
        page.locator("#vs-photo input[type=file]").set_input_files(photo, timeout=15_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#vs-photo img')].some(i => i.naturalWidth === "
            "400)",
            timeout=15_000,
        )
        page.locator("#vs-search").click()
        page.locator("#vs-results").get_by_text("Product 5", exact=False).first.wait_for(
            timeout=20_000
        )
        page.wait_for_function(
            "() => { const im = [...document.querySelectorAll('#vs-results img')];"
            " return im.length > 0 && im.every(i => i.complete); }",
            timeout=20_000,
        )
        return page.evaluate(GALLERY_IMAGES)

    try:
        with chromium() as browser:

            def visitor():  # a browser context of its own: nothing cached from an earlier visit
                page = browser.new_context(viewport={"width": 1360, "height": 1000}).new_page()
                _loopback_only(page, outside)
                page.goto(server.url, wait_until="domcontentloaded", timeout=30_000)
                return page

            page = visitor()
            try:
                first = search_and_wait(page)
                assert first and all(width > 0 for _, _, width in first), first
                copies = [p for p in (_cached_path(src) for src, _, _ in first) if p is not None]
                assert copies, f"gallery images are not served from Gradio's cache: {first[:2]}"
                deadline = time.monotonic() + 60
                while any(p.exists() for p in copies) and time.monotonic() < deadline:
                    time.sleep(0.5)
                assert not any(p.exists() for p in copies), "the cache sweep did not run"
                page = visitor()  # a later shopper
                again = search_and_wait(page)  # the same products, shown again after the sweep
                broken = [src for src, complete, width in again if not (complete and width > 0)]
                assert not broken, f"page images that did not load after the sweep: {broken[:3]}"
            except Exception:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "browser-sweep-failure.png"), full_page=True)
                raise
    finally:
        server.app.close()
    assert not outside, f"the page asked for something outside the server: {outside[:5]}"


def test_the_api_docs_page_renders_its_operations_with_the_network_off(tmp_path):
    need_chromium()
    from test_ui import start_server

    server = start_server(tmp_path / "srv")
    outside: list[str] = []
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            _loopback_only(page, outside)
            page.goto(server.url.rstrip("/") + "/api/v1/docs", wait_until="load", timeout=30_000)
            try:
                page.wait_for_selector(".opblock", timeout=20_000)
                operations = page.locator(".opblock-summary-path").all_inner_texts()
            except Exception:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "browser-docs-failure.png"), full_page=True)
                raise
    finally:
        server.app.close()
    assert {"/search", "/health", "/products/{product_id}"} <= {
        o.replace("\u200b", "").strip() for o in operations
    }, operations
    assert not outside, f"the docs page asked for something outside the server: {outside[:5]}"
