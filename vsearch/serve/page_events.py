"""What the page does when a shopper acts: search, crop, open a result, confirm it.

`ui` lays the page out and wires each component's events to the functions here; they are plain
Python over one loaded index and the `Service` the page shares with the REST API (concurrency
gate, per-client rate limit, feedback), so the page's behaviour can be read, and tested, apart
from its layout. The page and the named gradio API endpoint ``/search`` share one search function
(`run_search`), so a `gradio_client` caller gets exactly what the gallery shows.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsearch.errors import VsearchError
from vsearch.serve.api import hit_to_api
from vsearch.serve.guard import request_headers as _request_headers
from vsearch.serve.guard import request_peer as _request_peer
from vsearch.serve.page_text import (
    GALLERY_LABELS,
    HIT_VERDICTS,
    _caption,
    _details,
    _is_url,
    _md,
    _status,
)

if TYPE_CHECKING:
    import gradio as gr
    from PIL import Image

    from vsearch.search import Hit, ProductIndex
    from vsearch.serve.guard import Gate
    from vsearch.serve.page_files import PageFiles
    from vsearch.serve.service import Service

log = logging.getLogger(__name__)

DEFAULT_K = 12
MAX_RESULTS = 48
PREVIEW_SIDE = 640  # the crop preview is decoded (JPEG draft) and shown at about this size


# ---------------------------------------------------------------- search shared by page and API


def run_search(
    index: ProductIndex,
    image: Any = None,
    text: str | None = None,
    k: int = DEFAULT_K,
    category: str | Sequence[str] | None = None,
    min_price: float | None = None,
    max_price: float | None = None,
    crop: Sequence[float | None] | None = None,
    gate: Gate | None = None,
    locate: bool = False,
) -> list[Hit]:
    """One search as the page and the gradio_client API run it: checks, filters, crop, search.

    crop: margins to cut off the photo first, as `crop_photo` takes them (the page's crop panel).
    locate: find the item in the photo and look again closer (``ProductIndex.search(locate=True)``).
    gate: the server's shared concurrency limit (decoding and search run inside it).
    Each hit's ``confident`` is the index's own verdict (True / False / None), unchanged.
    """
    text = (text or "").strip() or None
    try:
        k = int(k if k is not None else DEFAULT_K)
    except (TypeError, ValueError):
        raise VsearchError(f"number of results must be a whole number, got {k!r}") from None
    if not 1 <= k <= MAX_RESULTS:
        raise VsearchError(f"number of results must be between 1 and {MAX_RESULTS}, got {k}")
    categories = [category] if isinstance(category, str) else list(category or [])
    categories = [c for c in categories if c]
    lo = None if min_price in (None, "") else float(min_price)
    hi = None if max_price in (None, "") else float(max_price)
    if lo is not None and hi is not None and lo > hi:
        raise VsearchError(f"minimum price {lo:g} is above maximum price {hi:g}")
    filters: dict[str, Any] = {}
    if categories:
        filters["category"] = categories
    if lo is not None or hi is not None:
        filters["price"] = (lo, hi)
    with gate.slot() if gate is not None else nullcontext():
        image = _query_photo(index, image, crop, locate=bool(locate))
        return index.search(
            image=image, text=text, k=k, filters=filters or None, locate=bool(locate)
        )


def _query_photo(
    index: ProductIndex, image: Any, crop: Sequence[float | None] | None, *, locate: bool = False
) -> Any:
    """The photo as searched: decoded (errors name the file as the shopper called it, not a server
    temp path) and cropped. A crop keeps only part of the photo, so it decodes at full size; so
    does a locate search a little (its close-up needs the pixels)."""
    if image is None:
        return None
    cropping = any(crop or ())
    is_path = isinstance(image, (str, os.PathLike))
    if is_path:
        from vsearch.catalog.images import load_image

        min_side = None if cropping else index.query_side(locate)
        image = load_image(image, min_side=min_side, name=Path(image).name)
    if cropping:
        from vsearch.catalog.images import load_image

        # upright first, as previewed
        image = crop_photo(image if is_path else load_image(image), crop)
    return image


#: The crop panel's sliders, in the order `crop_photo` takes their values.
CROP_SIDES = ("left", "top", "right", "bottom")


def crop_photo(image: Image.Image, margins: Sequence[float | None] | None) -> Image.Image:
    """Cut margins off an upright photo so the search sees only the item the shopper framed.

    margins: (left, top, right, bottom), each a percentage of the photo's width or height to
    remove; None or all zeros returns the photo unchanged. Percentages rather than pixels, so the
    same values fit the small preview and the full-size photo alike.
    """
    values = [0.0] * 4 if margins is None else list(margins)
    if len(values) != 4:
        raise VsearchError(
            f"crop needs 4 margins (left, top, right, bottom), got {len(values)}: {margins!r}"
        )
    try:
        values = [float(v or 0) for v in values]
    except (TypeError, ValueError):
        raise VsearchError(f"crop margins must be numbers (percent), got {margins!r}") from None
    for side, v in zip(CROP_SIDES, values):
        if not 0 <= v < 100:
            raise VsearchError(f"{side} crop margin must be from 0 to under 100 percent, got {v:g}")
    left, top, right, bottom = values
    for a, b, what in ((left, right, "left + right"), (top, bottom, "top + bottom")):
        if a + b >= 100:
            raise VsearchError(
                f"the crop leaves nothing: {what} margins are {a:g}% + {b:g}%; "
                "keep their sum under 100%"
            )
    if not any(values):
        return image
    w, h = image.size
    x0, y0 = round(w * left / 100), round(h * top / 100)
    x1, y1 = max(x0 + 1, w - round(w * right / 100)), max(y0 + 1, h - round(h * bottom / 100))
    return image.crop((x0, y0, x1, y1))


def _detail_images(index: ProductIndex, hit: Hit, files: PageFiles) -> list[tuple[str, str]]:
    try:
        product = index.product(hit.product_id)
    except KeyError:
        product = {"image_ids": [], "generation": hit.generation}
    matched = list(hit.matched_image_ids)
    out = [(files.path(hit.generation, i), f"matched #{n + 1}") for n, i in enumerate(matched)]
    if product["generation"] == hit.generation:
        out += [
            (files.path(hit.generation, i), "not matched")
            for i in product["image_ids"]
            if i not in matched
        ]
    return [(path, caption) for path, caption in out if path is not None]


def why_it_matched(
    photo: Any,
    margins: Sequence[float | None] | None,
    hit: Mapping[str, Any],
    source: str | None = None,
) -> str:
    """One result as a picture row (HTML): the shopper's photo as searched (crop applied) beside the
    product's catalog image that matched it best, with the score. Pictures are inline data: URIs, so
    nothing more has to be served. hit: a `Hit.to_dict()`; source: its matched image's file as the
    index knows it (default: ``hit["image"]``). Used by the details panel; see
    `vsearch.evaluate.report.picture_row_html`."""
    from vsearch.catalog.images import load_image
    from vsearch.evaluate.report import PictureCell, image_data_uri, picture_row_html

    query = ""
    if photo is not None:
        try:
            img = load_image(
                photo,
                min_side=400,
                name=Path(str(photo)).name if isinstance(photo, (str, os.PathLike)) else None,
            )
            query = image_data_uri(crop_photo(img, margins))
        except VsearchError:
            query = ""
    image = str(source or hit.get("image", ""))
    matched = list(hit.get("matched_images") or [image])
    confident = hit.get("confident")
    verdict = HIT_VERDICTS.get(confident, "no verdict")
    more = f"\n{len(matched) - 1} more of its images also matched" if len(matched) > 1 else ""
    cells = [
        PictureCell(query, "your photo", "as searched", alt="your photo"),
        PictureCell(
            image if _is_url(image) else image_data_uri(image),
            f"{hit.get('title') or hit.get('product_id', '')}",
            f"its best-matching image, similarity {float(hit.get('score', 0.0)):.3f} ({verdict})\n"
            f"{Path(image).name}{more}",
            tone="good" if confident else "bad" if confident is False else "",
            alt="matched catalog image",
        ),
    ]
    return picture_row_html(cells, title="Why it matched")


# ---------------------------------------------------------------- the page's events


def header_markdown(index: ProductIndex, categories: list[str]) -> str:
    """The page's heading, with the counts of the generation serving now."""
    cats = f"{len(categories)} categories" if categories else "no categories"
    return (
        f"# Find it by photo\nPhotograph a product and find it in the catalog — "
        f"{len(index)} products, {cats}. Model: `{_md(getattr(index.embedder, 'name', '?'))}`."
    )


def price_info(index: ProductIndex) -> str:
    """The price filter's hint: the catalog's price range."""
    span = index.price_range()
    return (
        f"0 = any (catalog: {span[0]:g} to {span[1]:g})"
        if span
        else "0 = any (no prices in this catalog)"
    )


@dataclass(frozen=True)
class PageEvents:
    """The page's event handlers for one index and service, built by `page_events`; `ui.create_app`
    wires them to components (``api_search`` is the named ``/search`` API endpoint)."""

    ui_search: Callable[..., Any]
    auto_search: Callable[..., Any]
    show_details: Callable[..., Any]
    show_why: Callable[..., Any]
    confirm: Callable[..., Any]
    prepare_crop: Callable[..., Any]
    preview_crop: Callable[..., Any]
    refresh_catalog: Callable[..., Any]
    api_search: Callable[..., Any]


def page_events(index: ProductIndex, service: Service, files: PageFiles) -> PageEvents:
    """The handlers of one page. files: the page's copies of catalog images (the gallery shows
    them); service: what the page shares with the REST API."""
    import gradio as gr

    gate = service.gate

    def admit(request: gr.Request | None) -> None:
        """The shared per-client rate limit (the REST API's), for a page event or a gradio API call.
        Python callers (no request) are not limited."""
        if request is not None:
            service.admit(_request_peer(request), _request_headers(request))

    def ui_search(
        photo,
        left,
        top,
        right,
        bottom,
        text,
        k,
        category,
        min_price,
        max_price,
        closer=False,
        request: gr.Request = None,
    ):
        started = time.perf_counter()
        empty = ([], [], [], gr.update(visible=False))
        min_price, max_price = min_price or None, max_price or None  # 0 = no limit
        try:
            admit(request)
            if photo is None and not (text or "").strip():
                raise VsearchError(
                    "add a photo (upload, drag and drop, webcam or paste) or type words to search"
                )
            hits = run_search(
                index,
                photo,
                text,
                k,
                category,
                min_price,
                max_price,
                crop=(left, top, right, bottom),
                gate=gate,
                locate=bool(closer) and photo is not None,
            )
        except VsearchError as e:
            return (f"### Can't search\n{_md(e)}", *empty)
        except Exception as e:  # noqa: BLE001 - the page shows a message and keeps serving
            log.exception("search failed")
            return (
                f"### Something went wrong\nThe search failed ({type(e).__name__}). Please try "
                "another photo.",
                *empty,
            )
        words_only = photo is None
        top = hits[0].score if hits else 0.0
        gallery = [
            (path, _caption(h, top, words_only=words_only))
            for h in hits
            if (path := files.path(h.generation, h.image_id)) is not None
        ]
        status = _status(hits, time.perf_counter() - started, words_only=words_only)
        label = (
            GALLERY_LABELS.get(hits[0].confident, GALLERY_LABELS[None])
            if hits
            else GALLERY_LABELS[True]
        )
        return (
            status,
            gr.update(value=gallery, label=label),
            [h.to_dict() for h in hits],
            [],
            gr.update(visible=False),
        )

    # gradio injects the request (client address) by this type
    ui_search.__annotations__["request"] = gr.Request

    def auto_search(
        photo,
        left,
        top,
        right,
        bottom,
        text,
        k,
        category,
        min_price,
        max_price,
        closer=False,
        request: gr.Request = None,
    ):
        """The page answers by itself once there is a photo or words (a new photo, a filter or
        the words changed); with neither it leaves the page as it is."""
        if photo is None and not (text or "").strip():
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
        return ui_search(
            photo,
            left,
            top,
            right,
            bottom,
            text,
            k,
            category,
            min_price,
            max_price,
            closer,
            request=request,
        )

    auto_search.__annotations__["request"] = gr.Request

    def show_details(hits: list[dict], evt: gr.SelectData):
        if not hits or evt.index is None or evt.index >= len(hits):
            return "", [], gr.update(visible=False), "", ""
        from vsearch.search import Hit

        d = dict(hits[evt.index])
        d["matched_images"] = tuple(d.get("matched_images", ()))
        d["matched_image_ids"] = tuple(d.get("matched_image_ids", ()))
        hit = Hit.from_dict(d)
        return (
            _details(index, hit),
            _detail_images(index, hit, files),
            gr.update(visible=True),
            hit.product_id,
            "",
        )

    show_details.__annotations__["evt"] = gr.SelectData  # gradio injects the selection by this type

    def show_why(
        photo,
        left,
        top,
        right,
        bottom,
        hits: list[dict],
        evt: gr.SelectData,
        request: gr.Request = None,
    ):
        if not hits or evt.index is None or evt.index >= len(hits):
            return ""
        d = hits[evt.index]
        try:
            admit(request)
            with gate.slot():  # it decodes the shopper's photo: search work
                return why_it_matched(
                    photo,
                    (left, top, right, bottom),
                    d,
                    source=index.image_source(d.get("generation", ""), d.get("image_id", -1)),
                )
        except VsearchError:
            return ""

    show_why.__annotations__["evt"] = gr.SelectData
    show_why.__annotations__["request"] = gr.Request

    def confirm(photo, left, top, right, bottom, product_id, request: gr.Request):
        """ "This is it": the product whose details are open is the one in the photo (as
        cropped)."""
        if not photo or not (product_id or "").strip():
            return "Search with a photo and open a result first."
        client = (
            service.client_key(_request_peer(request), _request_headers(request))
            if request is not None
            else "?"
        )
        try:
            admit(request)
            with gate.slot():
                image = _query_photo(index, photo, (left, top, right, bottom))
                new = service.record_feedback(image, product_id.strip(), client)
        except VsearchError as e:
            return f"⚠️ Not recorded: {_md(e)}"
        if not new:
            return "✅ Already recorded - thank you."
        return "✅ Thank you - recorded for the shop to review."

    # gradio injects the request (client address) by this type
    confirm.__annotations__["request"] = gr.Request

    def _preview(photo: str, margins, request: gr.Request | None = None) -> tuple[Any, str]:
        from vsearch.catalog.images import load_image

        try:
            admit(request)
            with gate.slot():  # decoding is search work: the same limit as searches
                # draft decoding: a 12 MP JPEG decodes at 1/4 scale, not at full size, for a 640 px
                # preview
                img = load_image(photo, min_side=PREVIEW_SIDE, name=Path(photo).name)
                img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
            return crop_photo(img, margins), ""
        except VsearchError as e:
            return None, f"⚠️ {_md(e)}"

    def prepare_crop(photo: str | None, request: gr.Request = None):
        """A new photo starts uncropped: reset the margins and preview the whole (upright) photo.
        The open details belonged to the previous photo: close them, so "This is it" can't pair
        them with the new one."""
        zeros = [0] * len(CROP_SIDES)
        closed = (gr.update(visible=False), "")
        if not photo:
            return None, "", gr.update(), *closed, *zeros
        preview, problem = _preview(photo, zeros, request)
        if preview is None:
            return (
                None,
                "",
                f"### Can't use this photo\n{problem.removeprefix('⚠️ ')}",
                *closed,
                *zeros,
            )
        # status is left alone: a search clicked right after the upload may already be writing it
        return preview, "", gr.update(), *closed, *zeros

    def preview_crop(photo: str | None, left, top, right, bottom, request: gr.Request = None):
        """Show exactly the area the search will use, or why these margins can't be used."""
        if not photo:
            return None, ""
        preview, problem = _preview(photo, (left, top, right, bottom), request)
        return (gr.update() if preview is None else preview), problem

    prepare_crop.__annotations__["request"] = gr.Request
    preview_crop.__annotations__["request"] = gr.Request

    def refresh_catalog():
        """On page load: categories, price range and counts of the generation serving now."""
        cats = index.categories()
        return (
            header_markdown(index, cats),
            gr.update(
                choices=cats,
                interactive=bool(cats),
                info=None if cats else "This catalog has no categories.",
            ),
            gr.update(info=price_info(index)),
        )

    def api_search(
        image, text, k, category, min_price, max_price, locate=False, request: gr.Request = None
    ):
        # 0 = open end, so every argument after the photo is optional
        min_price = min_price or None
        max_price = max_price or None
        try:
            admit(request)
            hits = run_search(
                index,
                image,
                text,
                k,
                category,
                min_price,
                max_price,
                gate=gate,
                locate=bool(locate),
            )
        except VsearchError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # noqa: BLE001
            log.exception("API search failed")
            raise gr.Error(f"search failed ({type(e).__name__})", print_exception=False) from None
        return [hit_to_api(h) for h in hits]

    api_search.__annotations__["request"] = gr.Request

    return PageEvents(
        ui_search=ui_search,
        auto_search=auto_search,
        show_details=show_details,
        show_why=show_why,
        confirm=confirm,
        prepare_crop=prepare_crop,
        preview_crop=preview_crop,
        refresh_catalog=refresh_catalog,
        api_search=api_search,
    )
