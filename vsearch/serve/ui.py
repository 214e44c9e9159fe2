"""The web app: a shopper's photo in, a gallery of matching products out (Gradio Blocks).

The page and the named API endpoint ``/search`` share one search function (`run_search`), so a
`gradio_client` caller gets exactly what the gallery shows; the REST API (`api.py`) is mounted
beside them at /api/v1 and shares their concurrency limit. The index and its model are loaded
once by `serve`; a background watcher swaps in newly built generations, so a request only
searches. No folder is servable: the gallery hands Gradio copies of exact catalog image files,
and API answers carry image URLs by generation + id, never server paths.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsearch.catalog.images import MAX_BYTES
from vsearch.errors import VsearchError
from vsearch.evaluate.report import ROW_CSS
from vsearch.serve.api import PREFIX, create_rest_app, hit_to_api
from vsearch.serve.guard import request_headers as _request_headers
from vsearch.serve.guard import request_peer as _request_peer
from vsearch.serve.page_files import PageFiles as _PageFiles
from vsearch.serve.page_text import (
    GALLERY_LABELS,
    HIT_VERDICTS,
    _caption,
    _details,
    _is_url,
    _md,
    _status,
)
from vsearch.serve.service import ServeSettings, Service

if TYPE_CHECKING:
    import gradio as gr
    from PIL import Image

    from vsearch.search import Hit, ProductIndex
    from vsearch.serve.guard import Gate

log = logging.getLogger(__name__)

DEFAULT_K = 12
MAX_RESULTS = 48
QUEUE_SIZE = 64  # requests waiting beyond this are told the queue is full instead of piling up
PREVIEW_SIDE = 640  # the crop preview is decoded (JPEG draft) and shown at about this size
# Shoppers' uploaded photos (and the page's copies of catalog images) stay in Gradio's cache
# (GRADIO_TEMP_DIR) for about this long after their last use - 1-2 h - instead of forever: a server
# that runs for months must not keep every shopper's photo, nor fill its disk.
PAGE_FILES_MAX_AGE_S = 3600

SYSTEM_FONTS = [
    "ui-sans-serif",
    "system-ui",
    "-apple-system",
    "Segoe UI",
    "Roboto",
    "Helvetica Neue",
    "Arial",
    "sans-serif",
]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]

CSS = """
.vs-header h1 {margin-bottom: 0 !important; font-size: 1.7rem !important;}
.vs-header p {margin-top: .2rem !important; color: var(--body-text-color-subdued);}
.vs-notice {border-left: 4px solid #d97706; background: #fffbeb; padding: .5rem .9rem !important;
  border-radius: 6px;}
.vs-notice p {color: #78350f !important;}
.vs-status p {font-size: 1rem;}
.vs-gallery .caption-label {white-space: normal !important; line-height: 1.25; font-size: .82rem;}
/* captions below the product photo, never over it: the shopper compares the product with
   their photo */
.vs-gallery .thumbnail-item {display: flex !important; flex-direction: column !important;
  height: auto !important;
  aspect-ratio: auto !important; overflow: visible !important;}
.vs-gallery .thumbnail-item img {aspect-ratio: 1 / 1; flex: none; height: auto !important;
  width: 100% !important;}
.vs-gallery .caption-label {position: static !important; transform: none !important;
  max-width: 100% !important;
  margin: .25rem 0 0 !important; background: none !important;
  color: var(--body-text-color) !important;
  text-align: left; padding: 0 .2rem .2rem !important;}
#vs-crop .min_value, #vs-crop .max_value {display: none !important;}  /* too narrow;
  the number box shows the value */
.vs-details {border: 1px solid var(--border-color-primary); border-radius: 8px;
  padding: .3rem 1rem !important;}
footer {display: none !important;}
"""


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


def _detail_images(index: ProductIndex, hit: Hit, files: _PageFiles) -> list[tuple[str, str]]:
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


# ---------------------------------------------------------------- the page


def _photo_component_class():
    """gr.Image that hands the handler the raw uploaded file, so vsearch's own decoder (HEIC,
    EXIF, size limits, clear error messages) sees exactly what the shopper sent."""
    import gradio as gr

    class PhotoInput(gr.Image):
        def get_block_name(self) -> str:
            return "image"

        def preprocess(self, payload):
            if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
                return str(payload.path)
            return super().preprocess(payload)

    return PhotoInput


def _header(index: ProductIndex, categories: list[str]) -> str:
    cats = f"{len(categories)} categories" if categories else "no categories"
    return (
        f"# Find it by photo\nPhotograph a product and find it in the catalog — "
        f"{len(index)} products, {cats}. Model: `{_md(getattr(index.embedder, 'name', '?'))}`."
    )


def _price_info(index: ProductIndex) -> str:
    span = index.price_range()
    return (
        f"0 = any (catalog: {span[0]:g} to {span[1]:g})"
        if span
        else "0 = any (no prices in this catalog)"
    )


def create_app(
    index: ProductIndex,
    *,
    examples: list[str] | None = None,
    notice: str | None = None,
    service: Service | None = None,
    files_max_age: int = PAGE_FILES_MAX_AGE_S,
) -> gr.Blocks:
    """Build the page for a loaded index (no launching, no printing). Launch with `launch_app`.

    service: what the page shares with the REST API (concurrency gate, rate limit, feedback);
    default: a Service with default settings (no API key, feedback off). files_max_age: seconds
    an uploaded photo or a page copy of a catalog image stays in Gradio's cache after its last
    use (swept as often; all of it goes when the server stops).
    """
    import gradio as gr

    service = service or Service(index)
    gate = service.gate
    feedback_on = service.feedback is not None
    files = _PageFiles(index)
    PhotoInput = _photo_component_class()
    categories = index.categories()
    model_name = getattr(index.embedder, "name", "?")
    can_locate = bool(getattr(index.embedder, "can_locate", False))

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
            _header(index, cats),
            gr.update(
                choices=cats,
                interactive=bool(cats),
                info=None if cats else "This catalog has no categories.",
            ),
            gr.update(info=_price_info(index)),
        )

    api_image_doc = "photo to search with (JPEG, PNG, WebP, HEIC...)"
    with gr.Blocks(
        title="vsearch · visual product search",
        fill_width=False,
        delete_cache=(files_max_age, files_max_age),
    ) as app:
        with gr.Column(elem_classes="vs-header"):
            header = gr.Markdown(_header(index, categories))
        if notice:
            gr.Markdown(f"⚠️ {_md(notice)}", elem_classes="vs-notice")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                photo = PhotoInput(
                    label="Your photo",
                    sources=["upload", "webcam", "clipboard"],
                    type="filepath",
                    height=300,
                    elem_id="vs-photo",
                )
                with gr.Accordion("✂️ Crop to the item (optional)", open=False, elem_id="vs-crop"):
                    # Plain sliders rather than gr.ImageEditor: in Gradio 6 its confirmed crop shows
                    # on screen but the value sent with the search stayed the uncropped photo.
                    gr.Markdown(
                        "Trim the edges until only the item is left: the search uses just this "
                        "area."
                    )
                    with gr.Row():
                        margins = [
                            gr.Slider(
                                0,
                                95,
                                value=0,
                                step=1,
                                label=f"Cut {side} %",
                                min_width=120,
                                elem_id=f"vs-crop-{side}",
                            )
                            for side in CROP_SIDES
                        ]
                    crop_note = gr.Markdown(elem_id="vs-crop-note")
                    crop_preview = gr.Image(
                        label="Area searched",
                        type="pil",
                        interactive=False,
                        height=220,
                        elem_id="vs-crop-preview",
                    )
                text = gr.Textbox(
                    label="Words (optional)",
                    placeholder='e.g. "charcoal", "leather", a brand',
                    lines=1,
                    max_lines=1,
                    interactive=True,
                    elem_id="vs-words",
                    info="Alone: products whose text holds them. With a photo: a colour or brand "
                    "you can see "
                    "puts the right one of similar-looking products first.",
                )
                with gr.Accordion("Filters", open=True):
                    category = gr.Dropdown(
                        choices=categories,
                        value=[],
                        multiselect=True,
                        label="Category",
                        info=None if categories else "This catalog has no categories.",
                        interactive=bool(categories),
                    )
                    with gr.Row():
                        min_price = gr.Number(label="Min price", value=0, minimum=0, info="0 = any")
                        max_price = gr.Number(
                            label="Max price", value=0, minimum=0, info=_price_info(index)
                        )
                    k = gr.Slider(1, MAX_RESULTS, value=DEFAULT_K, step=1, label="Results")
                closer = gr.Checkbox(
                    value=False,
                    label="Look closer",
                    elem_id="vs-closer",
                    interactive=can_locate,
                    info="Finds the item in a busy photo and looks again: more often right, about "
                    "twice as slow."
                    if can_locate
                    else f"Not available: this catalog's model ({model_name}) cannot locate an "
                    "item.",
                )
                search_btn = gr.Button("Search", variant="primary", size="lg", elem_id="vs-search")
                if examples:
                    gr.Examples(
                        examples=[[str(p)] for p in examples],
                        inputs=[photo],
                        label="No photo? Try one of these",
                        examples_per_page=8,
                    )
            with gr.Column(scale=5, min_width=420):
                status = gr.Markdown(
                    "### Add a photo to start\nUpload, drag and drop, use your webcam or paste an "
                    "image: "
                    "the results appear at once. Or type words and press **Search**.",
                    elem_classes="vs-status",
                    elem_id="vs-status",
                )
                gallery = gr.Gallery(
                    label="Matching products",
                    columns=4,
                    height="auto",
                    object_fit="contain",
                    allow_preview=False,
                    show_label=False,
                    elem_classes="vs-gallery",
                    elem_id="vs-results",
                )
                with gr.Group(visible=False) as detail_box:
                    details = gr.Markdown(elem_classes="vs-details")
                    why = gr.HTML(elem_id="vs-why", css_template=ROW_CSS, js_on_load=None)
                    detail_images = gr.Gallery(
                        label="This product's catalog images",
                        columns=6,
                        height=220,
                        object_fit="contain",
                        allow_preview=False,
                    )
                    with gr.Row():
                        # opt-in: without --feedback the page has no such button at all
                        if feedback_on:
                            confirm_btn = gr.Button(
                                "This is it",
                                variant="secondary",
                                size="sm",
                                elem_id="vs-this-is-it",
                            )
                        confirm_note = gr.Markdown(elem_id="vs-feedback-note")
        files.cache_dir = gallery.GRADIO_CACHE
        hits_state = gr.State([])
        chosen = gr.Textbox(visible=False, label="product_id")  # the result whose details are open

        inputs = [photo, *margins, text, k, category, min_price, max_price, closer]
        outputs = [status, gallery, hits_state, detail_images, detail_box]
        gr.on([search_btn.click, text.submit], ui_search, inputs, outputs, api_visibility="private")
        # a photo in (upload, paste, webcam, example) searches at once, after its crop is reset;
        # so does a changed filter or changed words (the Search button stays, for typing)
        photo.change(
            prepare_crop,
            [photo],
            [crop_preview, crop_note, status, detail_box, chosen, *margins],
            api_visibility="private",
        ).then(auto_search, inputs, outputs, api_visibility="private")
        gr.on(
            [
                category.change,
                min_price.submit,
                max_price.submit,
                k.release,
                closer.change,
                text.blur,
            ],
            auto_search,
            inputs,
            outputs,
            api_visibility="private",
            trigger_mode="always_last",
        )
        gr.on(
            [m.change for m in margins],
            preview_crop,
            [photo, *margins],
            [crop_preview, crop_note],
            api_visibility="private",
            trigger_mode="always_last",
        )
        gallery.select(
            show_details,
            [hits_state],
            [details, detail_images, detail_box, chosen, confirm_note],
            api_visibility="private",
        )
        gallery.select(show_why, [photo, *margins, hits_state], [why], api_visibility="private")
        if feedback_on:
            # public, so gradio_client can press it too: (photo, 4 crop margins, product_id) ->
            # message
            confirm_btn.click(
                confirm,
                [photo, *margins, chosen],
                [confirm_note],
                api_name="this_is_it",
                api_description="Record that this product is the one in this photo (feedback for "
                "review)",
            )
        app.load(refresh_catalog, None, [header, category, max_price], api_visibility="private")

        # The named API endpoint: plain file in, list of hit dicts out, same search as the page.
        with gr.Column(visible=False):
            api_image = gr.File(label=api_image_doc, type="filepath", file_count="single")
            api_text = gr.Textbox(label="text", value="")
            api_k = gr.Number(label="k", value=10, precision=0)
            api_category = gr.Dropdown(
                label="category",
                choices=categories,
                value=[],
                multiselect=True,
                allow_custom_value=True,
            )
            api_min = gr.Number(label="min_price (0 = no minimum)", value=0)
            api_max = gr.Number(label="max_price (0 = no maximum)", value=0)
            api_locate = gr.Checkbox(
                label="locate (look closer at the item; about twice as slow)", value=False
            )
            api_out = gr.JSON(label="hits")

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
                raise gr.Error(
                    f"search failed ({type(e).__name__})", print_exception=False
                ) from None
            return [hit_to_api(h) for h in hits]

        api_search.__annotations__["request"] = gr.Request

        trigger = gr.Button(visible=False)
        trigger.click(
            api_search,
            [api_image, api_text, api_k, api_category, api_min, api_max, api_locate],
            [api_out],
            api_name="search",
            api_description="Ranked products for a photo (and optional text / filters); "
            "image_url fetches the catalog image from this server.",
        )
    app._vsearch_service = service  # launch_app mounts the REST API and starts the watcher from it
    return app


def launch_settings(
    index: ProductIndex, examples: Sequence[str | os.PathLike] | None = None
) -> dict[str, Any]:
    """launch() keyword arguments: only the exact example photos are servable paths (catalog images
    reach the page as cached copies of exact files), upload cap, offline theme."""
    import gradio as gr

    allowed = sorted({str(Path(p).resolve()) for p in examples or []})
    index_dir = str(Path(index.index_dir).resolve())
    theme = gr.themes.Soft(
        primary_hue="indigo", neutral_hue="slate", font=SYSTEM_FONTS, font_mono=MONO_FONTS
    )
    return {
        "allowed_paths": allowed,
        "blocked_paths": [index_dir],
        "max_file_size": MAX_BYTES,
        "show_error": True,
        "theme": theme,
        "css": CSS,
        "footer_links": ["api"],
        "ssr_mode": False,
    }


def launch_app(
    app: gr.Blocks,
    index: ProductIndex,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    examples: Sequence[str | os.PathLike] | None = None,
    concurrency: int | None = None,
    prevent_thread_lock: bool = True,
    quiet: bool = True,
    watch_interval: float | None = None,
) -> str:
    """Queue (the shared concurrency limit), start the server, mount the REST API at /api/v1 and
    start the background reload watcher; returns the local URL. ``app.close()`` stops it all."""
    from starlette.middleware import Middleware

    from vsearch.serve.guard import BodyGuard

    service: Service = getattr(app, "_vsearch_service", None) or Service(index)
    limit = concurrency or service.gate.limit
    app.queue(default_concurrency_limit=limit, max_size=QUEUE_SIZE)
    key = service.settings.api_key
    # BodyGuard sits in front of every route (Gradio's upload and queue, and the REST API mounted
    # below): FastAPI's user middleware wraps the router, so it sees each body before any handler.
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        app_kwargs={"middleware": [Middleware(BodyGuard, limits=service.body_limits)]},
        auth=_key_login(key) if key else None,
        **launch_settings(index, examples),
    )
    _trust_forwarded_only_from(app, service.settings.trusted_proxies)
    app.app.mount(PREFIX, create_rest_app(service))
    service.start_watcher(watch_interval)
    close = app.close

    def close_all(*args, **kwargs):
        service.close()
        return close(*args, **kwargs)

    app.close = close_all
    return url


def _trust_forwarded_only_from(app: gr.Blocks, proxies: Sequence[str]) -> None:
    """uvicorn (under Gradio) believes X-Forwarded-For from 127.0.0.1 and ::1 by default, which
    would let any local process choose its rate-limit bucket. Make it believe exactly the
    configured trusted proxies (none by default), the same ones `guard.client_address` uses."""
    try:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware, _TrustedHosts
    except ImportError:  # another uvicorn: leave it as it is
        log.warning(
            "cannot set uvicorn's trusted proxies; X-Forwarded-For from loopback is believed"
        )
        return
    layer = getattr(getattr(getattr(app, "server", None), "config", None), "loaded_app", None)
    while layer is not None and not isinstance(layer, ProxyHeadersMiddleware):
        layer = getattr(layer, "app", None)
    if layer is not None:
        layer.trusted_hosts = _TrustedHosts(list(proxies))


def _key_login(key: str):
    """With an API key, the page and its gradio API ask for a login: any user name, the key as
    password (gradio_client: ``Client(url, auth=("shop", KEY))``)."""
    import hmac

    def check(username: str, password: str) -> bool:
        return hmac.compare_digest(str(password).encode(), key.encode())

    return check


def serve(
    index_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 7860,
    model: str | None = None,
    pretrained: str | None = None,
    precision: str = "auto",
    notice: str | None = None,
    examples: Sequence[str | os.PathLike] | None = None,
    api_key: str | None = None,
    feedback: bool = False,
    rate_limit: float | None = None,
    trusted_proxies: Sequence[str] = (),
    body_timeout: float | None = None,
) -> None:
    """Load the index and its model once, print where to open the page, and serve until
    interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from vsearch.search import ProductIndex
    from vsearch.serve.guard import BODY_TIMEOUT
    from vsearch.serve.service import DEFAULT_RATE

    print(f"vsearch: loading index {index_dir} ...", flush=True)
    index = ProductIndex.load(index_dir, model=model, pretrained=pretrained, precision=precision)
    print(
        f"vsearch: {len(index)} products, model {index.embedder.name}"
        + ("" if index.supports_text else " (photos; words search the products' text)"),
        flush=True,
    )
    settings = ServeSettings(
        api_key=api_key or None,
        feedback=feedback,
        rate_limit=DEFAULT_RATE if rate_limit is None else rate_limit,
        trusted_proxies=tuple(trusted_proxies),
        body_timeout=BODY_TIMEOUT if body_timeout is None else body_timeout,
    )
    service = Service(index, settings)
    app = create_app(
        index, examples=[str(p) for p in examples or []], notice=notice, service=service
    )
    try:
        url = launch_app(app, index, host=host, port=port, examples=examples)
    except OSError as e:
        raise VsearchError(f"cannot listen on {host}:{port} ({e}); choose another --port") from None
    everywhere = host in ("0.0.0.0", "::")
    shown = url if not everywhere else f"http://127.0.0.1:{port}/ (listening on all interfaces)"
    print(
        f"vsearch: open {shown} in a browser (Ctrl+C to stop); REST API "
        f"{url.rstrip('/')}{PREFIX}/docs",
        flush=True,
    )
    if everywhere and not api_key:
        print(
            "vsearch: warning: anyone who can reach this machine can search (and, with --feedback, "
            "send "
            "confirmations); set --api-key or VSEARCH_API_KEY to protect the page and both APIs",
            flush=True,
        )
    if feedback and service.feedback is not None:
        print(
            f"vsearch: feedback on: confirmations go to {service.feedback.root} "
            "(review with: vsearch feedback export)",
            flush=True,
        )
    try:
        app.block_thread()
    finally:
        app.close()
