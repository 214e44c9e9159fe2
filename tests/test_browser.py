"""One real-browser run of the page: upload a photo, search, see the product and the index's exact
verdict, an unrelated photo says "not sure", an index without verdicts says "best guesses",
crop to one item and search again (headless Debian Chromium); no request leaves the machine."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_report import shop_with_queries  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # CI installs Debian's chromium there
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
HEADING = "() => (document.querySelector('#vs-status h3')?.innerText || '').trim()"


def need_chromium() -> None:
    """Skip (before any server starts) where Chromium or playwright is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@contextlib.contextmanager
def chromium():
    """Headless Chromium (Debian's: CHROMIUM) with ARGS, closed afterwards."""
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_upload_search_see_the_product_and_verdict_then_crop(tmp_path):
    need_chromium()
    from test_ui import (
        give_verdicts,
        shopper_photo,
        start_server,
        two_product_photo,
        unrelated_photo,
    )

    from vsearch.serve import page_text

    # an index that gives verdicts: the shopper photo of product 5 scores ~0.99, the flat grey photo
    # < 0.9
    server = start_server(tmp_path / "srv", notice="Demo catalog with a test model.", close_at=0.95)
    photo = shopper_photo(tmp_path, 5, name="shopper.jpg")
    grey = unrelated_photo(tmp_path)
    shelf = two_product_photo(tmp_path)  # product 3 on the left, product 8 on the right
    outside = []
    captions = "#vs-results .caption-label"

    def heading_is(page, text: str) -> None:
        page.wait_for_function(f"() => ({HEADING})() === {text!r}", timeout=20_000)
        assert page.evaluate(HEADING) == text

    def upload(page, path: str, width: int) -> None:
        page.locator("#vs-photo input[type=file]").set_input_files(path, timeout=15_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#vs-photo img')].some(i => i.naturalWidth === "
            f"{width})",
            timeout=15_000,
        )  # this photo finished uploading

    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1360, "height": 1000})
            page.on(
                "request",
                lambda r: (
                    urlparse(r.url).hostname not in ("127.0.0.1", "localhost", None)
                    and not r.url.startswith(("data:", "blob:"))
                    and outside.append(r.url)
                ),
            )
            page.goto(server.url, wait_until="domcontentloaded", timeout=30_000)
            try:
                # the page searches by itself; no click (a second search could answer late)
                upload(page, photo, 400)
                page.locator("#vs-results").get_by_text("Product 5", exact=False).first.wait_for(
                    timeout=20_000
                )
                # exactly "Close match", not a title that merely contains it
                heading_is(page, page_text.VERDICT_TITLES[True])
                assert page.locator(captions).first.inner_text().startswith("Product 5")
                # details of the top result
                page.locator("#vs-results .thumbnail-item").first.click()
                page.get_by_text("View product page").first.wait_for(timeout=10_000)
                # "why it matched": the photo as searched beside the product's matched image
                page.wait_for_function(
                    "() => { const im = [...document.querySelectorAll('#vs-why img')];"
                    " return im.length === 2 && im.every(i => i.complete && i.naturalWidth > 0); }",
                    timeout=10_000,
                )
                # feedback is off unless --feedback
                assert page.locator("#vs-this-is-it").count() == 0
                # "Look closer" is there, but this model cannot locate: greyed out, and the page
                # says why
                assert page.locator("#vs-closer input[type=checkbox]").is_disabled()
                assert "cannot locate" in page.locator("#vs-closer").inner_text()

                # an unrelated photo: the nearest products, "not sure"
                upload(page, grey, 64)
                heading_is(page, page_text.VERDICT_TITLES[False])

                # an index that gives no verdict: best guesses, neither close nor not close
                give_verdicts(server.index, None)
                page.locator("#vs-search").click()
                heading_is(page, page_text.VERDICT_TITLES[None])
                give_verdicts(server.index, 0.95)

                # a shelf photo with two products: the right-hand one wins until the shopper crops
                upload(page, shelf, 384)
                page.wait_for_function(
                    f"() => document.querySelector({captions!r})"
                    "?.innerText.startsWith('Product 8')",
                    timeout=20_000,
                )
                page.get_by_text("Crop to the item").click()
                preview = page.locator("#vs-crop-preview img")
                preview.wait_for(timeout=10_000)
                assert preview.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [384, 192]
                # cut the right half away
                page.locator("#vs-crop-right input[type=range]").fill("50")
                page.wait_for_function(
                    "() => document.querySelector('#vs-crop-preview img')?.naturalWidth === 192",
                    timeout=10_000,
                )  # the preview shows just the left product
                page.locator("#vs-search").click()
                page.wait_for_function(
                    f"() => document.querySelector({captions!r})"
                    "?.innerText.startsWith('Product 3')",
                    timeout=20_000,
                )
                assert page.evaluate(HEADING) in (
                    page_text.VERDICT_TITLES[True],
                    page_text.VERDICT_TITLES[False],
                )
            except Exception:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True)
                raise
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser-search.png"), full_page=True)
    finally:
        server.app.close()
    assert not outside, f"the page fetched assets from outside the server: {outside[:5]}"


def test_eval_report_opens_offline_and_every_picture_loads(shop_with_queries):  # noqa: F811
    """The --report page from disk with the network off: no request leaves file://, every <img>
    decodes."""
    need_chromium()
    from conftest import FakeEmbedder

    from vsearch.evaluate.quality import evaluate
    from vsearch.evaluate.report import write_eval_report
    from vsearch.search import ProductIndex

    tmp = shop_with_queries
    index = ProductIndex.load(tmp / "idx", FakeEmbedder())
    path = write_eval_report(
        tmp / "report", evaluate(index, tmp / "q.csv", k=5), index, title="browser check"
    )
    outside = []
    with chromium() as browser:
        context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.on(
            "request", lambda r: not r.url.startswith(("file:", "data:")) and outside.append(r.url)
        )
        page.goto(path.as_uri(), wait_until="load", timeout=30_000)
        images = page.evaluate(
            "() => [...document.images].map(i => [i.getAttribute('src'), i.complete, "
            "i.naturalWidth])"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "eval-report.png"), full_page=True)
        assert page.locator("h2", has_text="Worst queries").count() == 1
    assert len(images) >= 2 + 3  # two charts and one worst-query row at least
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert not broken, f"pictures that did not load: {broken[:5]}"
    assert not outside, f"the report fetched something from outside its folder: {outside[:5]}"


def test_a_photo_in_answers_at_once_with_captions_below_the_pictures(tmp_path):
    """No click: the upload alone shows the results. Each caption's box lies below its product
    picture's box (never over the product), and says how similar in words, not as a raw number;
    words alone (Enter) list the products whose text holds them."""
    need_chromium()
    from test_ui import shopper_photo, start_server

    from vsearch.serve import page_text

    server = start_server(tmp_path / "srv")
    photo = shopper_photo(tmp_path, 5, name="shopper.jpg")
    boxes = """() => [...document.querySelectorAll('#vs-results .thumbnail-item')].map(t => {
        const i = t.querySelector('img').getBoundingClientRect();
        const c = t.querySelector('.caption-label').getBoundingClientRect();
        return {img_bottom: i.bottom, img_height: i.height,
                cap_top: c.top, cap_height: c.height}; })"""
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1360, "height": 1000})
            page.goto(server.url, wait_until="domcontentloaded", timeout=30_000)
            try:
                page.locator("#vs-photo input[type=file]").set_input_files(
                    str(photo), timeout=15_000
                )
                page.locator("#vs-results").get_by_text("Product 5", exact=False).first.wait_for(
                    timeout=30_000
                )
                page.wait_for_function(
                    "() => [...document.querySelectorAll('#vs-results img')].every(i => i.complete "
                    "&& i.naturalWidth > 0)",
                    timeout=10_000,
                )
                found = page.evaluate(boxes)
                assert len(found) >= 4
                for b in found:
                    assert b["img_height"] > 20 and b["cap_height"] > 5, b
                    assert b["cap_top"] >= b["img_bottom"] - 1, f"caption over the picture: {b}"
                first = page.locator("#vs-results .caption-label").first.inner_text()
                assert first.startswith("Product 5") and any(
                    w in first for w in page_text.SIMILARITY_WORDS[:3]
                ), first
                assert "match 0." not in first
                # words alone, then Enter
                # a fresh page: no photo
                page.goto(server.url, wait_until="domcontentloaded", timeout=30_000)
                page.locator("#vs-words :is(input, textarea)").fill("Product 7")
                page.locator("#vs-words :is(input, textarea)").press("Enter")
                page.wait_for_function(
                    f"() => (({HEADING})()) === {page_text.WORDS_TITLE!r}", timeout=20_000
                )
                assert (
                    page.locator("#vs-results .caption-label")
                    .first.inner_text()
                    .startswith("Product 7")
                )
            except Exception:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "browser-words-failure.png"), full_page=True)
                raise
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser-words.png"), full_page=True)
    finally:
        server.app.close()
