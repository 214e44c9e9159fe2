"""The web app: a shopper's photo in, a gallery of matching products out (Gradio Blocks).

The page and the named API endpoint ``/search`` share one search function (`run_search`), so a
`gradio_client` caller gets exactly what the gallery shows. The index and its model are loaded
once by `serve` and passed in; every request only calls the cheap `reload_if_changed()` and
`search()`. Only the index's own catalog images (and the example photos) are servable files.
"""

from __future__ import annotations

import html
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .errors import VsearchError
from .images import MAX_BYTES
from .report import ROW_CSS

if TYPE_CHECKING:
    import gradio as gr
    from PIL import Image

    from .search import Hit, ProductIndex

log = logging.getLogger(__name__)

#: "No close match" threshold used when the index carries none (``ProductIndex.score_threshold`` is
#: None), per model. Calibrated on the bundled sample catalog with the offline EfficientNet-Lite0
#: model: 40 generated shopper photos (``write_sample_queries(..., n_queries=40, seed=7)``) scored
#: their true product at min 0.40 / p10 0.50 / median 0.61, while 40 unrelated images (noise,
#: flat colours, abstract shapes, a drawn landscape) had a best score of median 0.31 / p90 0.45 /
#: max 0.50. 0.45 keeps ~95% of true matches confident and flags ~90% of unrelated photos.
#: Scores are model-specific cosines, so models without an entry get no fallback.
FALLBACK_THRESHOLDS: dict[str, float] = {"efficientnet-lite0": 0.45}

DEFAULT_K = 12
MAX_RESULTS = 48
QUEUE_SIZE = 64  # requests waiting beyond this are told the queue is full instead of piling up

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]

CSS = """
.vs-header h1 {margin-bottom: 0 !important; font-size: 1.7rem !important;}
.vs-header p {margin-top: .2rem !important; color: var(--body-text-color-subdued);}
.vs-notice {border-left: 4px solid #d97706; background: #fffbeb; padding: .5rem .9rem !important; border-radius: 6px;}
.vs-notice p {color: #78350f !important;}
.vs-status p {font-size: 1rem;}
.vs-gallery .caption-label {white-space: normal !important; line-height: 1.25; font-size: .82rem;}
#vs-crop .min_value, #vs-crop .max_value {display: none !important;}  /* too narrow; the number box shows the value */
.vs-details {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: .3rem 1rem !important;}
footer {display: none !important;}
"""


# ---------------------------------------------------------------- search shared by page and API


def effective_threshold(index: ProductIndex) -> float | None:
    """The index's own threshold, else the calibrated fallback for its model, else None."""
    threshold = index.score_threshold
    if threshold is None:
        threshold = FALLBACK_THRESHOLDS.get(getattr(index.embedder, "name", ""))
    return threshold


def run_search(index: ProductIndex, image: Any = None, text: str | None = None, k: int = DEFAULT_K,
               category: str | Sequence[str] | None = None, min_price: float | None = None,
               max_price: float | None = None, crop: Sequence[float | None] | None = None) -> list[Hit]:
    """One search as the page and the API run it: hot-reload check, filters, confidence flags.

    crop: margins to cut off the photo first, as `crop_photo` takes them (the page's crop panel).
    """
    index.reload_if_changed()
    text = (text or "").strip() or None
    if text and not index.supports_text:
        raise VsearchError(
            f"this index's model ({index.embedder.name}) is image-only, so text cannot refine the search; "
            "remove the text, or rebuild the index with a CLIP model"
        )
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
    cropping = image is not None and any(crop or ())
    is_path = isinstance(image, (str, os.PathLike))
    if is_path:
        from .images import load_image

        # decode here so an error names the file as the shopper called it, not a server temp path;
        # a crop keeps only part of the photo, so it decodes at full size to keep the detail
        min_side = None if cropping else getattr(index.embedder, "input_size", None)
        image = load_image(image, min_side=min_side, name=Path(image).name)
    if cropping:
        from .images import load_image

        image = crop_photo(image if is_path else load_image(image), crop)  # upright first, as previewed
    hits = index.search(image=image, text=text, k=k, filters=filters or None)
    threshold = effective_threshold(index)
    if threshold is not None:
        hits = [replace(h, confident=h.confident and h.score >= threshold) for h in hits]
    return hits


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
        raise VsearchError(f"crop needs 4 margins (left, top, right, bottom), got {len(values)}: {margins!r}")
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
            raise VsearchError(f"the crop leaves nothing: {what} margins are {a:g}% + {b:g}%; "
                               "keep their sum under 100%")
    if not any(values):
        return image
    w, h = image.size
    x0, y0 = round(w * left / 100), round(h * top / 100)
    x1, y1 = max(x0 + 1, w - round(w * right / 100)), max(y0 + 1, h - round(h * bottom / 100))
    return image.crop((x0, y0, x1, y1))


def hit_to_api(hit: Hit) -> dict[str, Any]:
    """JSON-friendly hit for API clients, with a fetchable URL for local catalog images."""
    d = hit.to_dict()
    d["image_url"] = hit.image if _is_url(hit.image) else f"/gradio_api/file={hit.image}"
    return d


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


# ---------------------------------------------------------------- presentation helpers


def _money(price: float | None) -> str:
    return "price n/a" if price is None else f"{price:,.2f}"


def _md(text: Any) -> str:
    """Escape catalog text for Markdown (titles may contain *, _, [ or HTML)."""
    s = html.escape(str(text), quote=False)
    for ch in "\\`*_[]#|":
        s = s.replace(ch, "\\" + ch)
    return s


def _caption(hit: Hit) -> str:
    return f"{hit.title or hit.product_id}\n{_money(hit.price)} · match {hit.score:.2f}"


def _status(hits: list[Hit], threshold: float | None, seconds: float) -> str:
    if not hits:
        return "### No products found\nNothing in the catalog passes these filters. Widen the category or price range."
    took = f"{len(hits)} product{'s' if len(hits) != 1 else ''} in {seconds * 1000:.0f} ms"
    if not hits[0].confident:
        limit = f" (best score {hits[0].score:.2f}, a close match needs {threshold:.2f})" if threshold is not None else ""
        return (f"### No close match\nNothing in the catalog looks convincingly like your photo{limit}. "
                f"The nearest items are shown below, but they are probably **not** the same product. "
                f"Try cropping to the item, a clearer photo, or other filters. <sub>{took}</sub>")
    n_conf = sum(h.confident for h in hits)
    return f"### {n_conf} close match{'es' if n_conf != 1 else ''}\n<sub>{took}</sub>"


def _details(index: ProductIndex, hit: Hit) -> str:
    try:
        product = index.product(hit.product_id)
    except KeyError:  # removed by a rebuild since the search ran
        product = {"images": list(hit.matched_images)}
    lines = [f"### {_md(hit.title or hit.product_id)}"]
    facts = [f"**{_money(hit.price)}**"]
    if hit.brand:
        facts.append(_md(hit.brand))
    if hit.category:
        facts.append(_md(hit.category))
    lines.append(" · ".join(facts))
    if hit.url:
        url = hit.url.replace(")", "%29").replace(" ", "%20")
        lines.append(f"[View product page ↗]({url})" if _is_url(hit.url) else f"Product page: `{_md(hit.url)}`")
    verdict = "close match" if hit.confident else "not a close match"
    lines.append(f"\n| Detail | Value |\n|---|---|\n| Product ID | `{_md(hit.product_id)}` |\n| Similarity | {hit.score:.3f} ({verdict}) |")
    for key, value in sorted(hit.metadata.items()):
        lines.append(f"| {_md(key)} | {_md(value)} |")
    images = product.get("images", [])
    matched = set(hit.matched_images)
    lines.append(f"\n**Catalog images:** {len(images)}; matched your photo: {len(matched)} "
                 "(best match first in the strip below)")
    return "\n".join(lines)


def _detail_images(index: ProductIndex, hit: Hit) -> list[tuple[str, str]]:
    try:
        all_images = index.product(hit.product_id)["images"]
    except KeyError:
        all_images = []
    out = [(src, f"matched #{i + 1}") for i, src in enumerate(hit.matched_images)]
    out += [(src, "not matched") for src in all_images if src not in hit.matched_images]
    return out


def why_it_matched(photo: Any, margins: Sequence[float | None] | None, hit: Mapping[str, Any]) -> str:
    """One result as a picture row (HTML): the shopper's photo as searched (crop applied) beside the
    product's catalog image that matched it best, with the score. Pictures are inline data: URIs, so
    nothing more has to be served. Used by the details panel; see `vsearch.report.picture_row_html`."""
    from .images import load_image
    from .report import PictureCell, image_data_uri, picture_row_html

    query = ""
    if photo is not None:
        try:
            img = load_image(photo, min_side=400, name=Path(str(photo)).name if isinstance(photo, (str, os.PathLike)) else None)
            query = image_data_uri(crop_photo(img, margins))
        except VsearchError:
            query = ""
    image = str(hit.get("image", ""))
    matched = list(hit.get("matched_images") or [image])
    confident = hit.get("confident")
    verdict = {True: "close match", False: "not a close match"}.get(confident, "no verdict")
    more = f"\n{len(matched) - 1} more of its images also matched" if len(matched) > 1 else ""
    cells = [
        PictureCell(query, "your photo", "as searched", alt="your photo"),
        PictureCell("" if _is_url(image) else image_data_uri(image), f"{hit.get('title') or hit.get('product_id', '')}",
                    f"its best-matching image, similarity {float(hit.get('score', 0.0)):.3f} ({verdict})\n"
                    f"{Path(image).name}{more}", tone="good" if confident else "bad" if confident is False else "",
                    alt="matched catalog image"),
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


def create_app(index: ProductIndex, *, examples: list[str] | None = None, notice: str | None = None) -> gr.Blocks:
    """Build the page for a loaded index (no launching, no printing). Launch with `launch_app`."""
    import gradio as gr

    PhotoInput = _photo_component_class()
    categories = index.categories()
    price_range = index.price_range()
    supports_text = index.supports_text
    model_name = getattr(index.embedder, "name", "?")

    def ui_search(photo, left, top, right, bottom, text, k, category, min_price, max_price):
        started = time.perf_counter()
        empty = ([], [], [], gr.update(visible=False))
        min_price, max_price = min_price or None, max_price or None  # 0 = no limit
        try:
            if photo is None and not (text or "").strip():
                raise VsearchError("add a photo (upload, drag and drop, webcam or paste) to search"
                                   + (", or describe the product" if supports_text else ""))
            hits = run_search(index, photo, text, k, category, min_price, max_price,
                              crop=(left, top, right, bottom))
        except VsearchError as e:
            return (f"### Can't search\n{_md(e)}", *empty)
        except Exception as e:  # noqa: BLE001 - the page shows a message and keeps serving
            log.exception("search failed")
            return (f"### Something went wrong\nThe search failed ({type(e).__name__}). Please try another photo.", *empty)
        gallery = [(h.image, _caption(h)) for h in hits]
        status = _status(hits, effective_threshold(index), time.perf_counter() - started)
        label = "Matching products" if hits and hits[0].confident else "Nearest items (not close matches)"
        return status, gr.update(value=gallery, label=label), [h.to_dict() for h in hits], [], gr.update(visible=False)

    def show_details(hits: list[dict], evt: gr.SelectData):
        if not hits or evt.index is None or evt.index >= len(hits):
            return "", [], gr.update(visible=False)
        from .search import Hit

        d = dict(hits[evt.index])
        d.pop("image_url", None)
        d["matched_images"] = tuple(d.get("matched_images", ()))
        hit = Hit(**d)
        return _details(index, hit), _detail_images(index, hit), gr.update(visible=True)

    show_details.__annotations__["evt"] = gr.SelectData  # gradio injects the selection by this type

    def show_why(photo, left, top, right, bottom, hits: list[dict], evt: gr.SelectData):
        if not hits or evt.index is None or evt.index >= len(hits):
            return ""
        return why_it_matched(photo, (left, top, right, bottom), hits[evt.index])

    show_why.__annotations__["evt"] = gr.SelectData

    def _preview(photo: str, margins) -> tuple[Any, str]:
        from .images import load_image

        try:
            img = load_image(photo, name=Path(photo).name)
            img.thumbnail((640, 640))
            return crop_photo(img, margins), ""
        except VsearchError as e:
            return None, f"⚠️ {_md(e)}"

    def prepare_crop(photo: str | None):
        """A new photo starts uncropped: reset the margins and preview the whole (upright) photo."""
        zeros = [0] * len(CROP_SIDES)
        if not photo:
            return None, "", gr.update(), *zeros
        preview, problem = _preview(photo, zeros)
        if preview is None:
            return None, "", f"### Can't use this photo\n{problem.removeprefix('⚠️ ')}", *zeros
        # status is left alone: a search clicked right after the upload may already be writing it
        return preview, "", gr.update(), *zeros

    def preview_crop(photo: str | None, *margins):
        """Show exactly the area the search will use, or why these margins can't be used."""
        if not photo:
            return None, ""
        preview, problem = _preview(photo, margins)
        return (gr.update() if preview is None else preview), problem

    api_image_doc = "photo to search with (JPEG, PNG, WebP, HEIC...)"
    with gr.Blocks(title="vsearch · visual product search", fill_width=False) as app:
        n = len(index)
        cats = f"{len(categories)} categories" if categories else "no categories"
        with gr.Column(elem_classes="vs-header"):
            gr.Markdown(f"# Find it by photo\nPhotograph a product and find it in the catalog — "
                        f"{n} products, {cats}. Model: `{_md(model_name)}`.")
        if notice:
            gr.Markdown(f"⚠️ {_md(notice)}", elem_classes="vs-notice")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                photo = PhotoInput(label="Your photo", sources=["upload", "webcam", "clipboard"], type="filepath",
                                   height=300, elem_id="vs-photo")
                with gr.Accordion("✂️ Crop to the item (optional)", open=False, elem_id="vs-crop"):
                    # Plain sliders rather than gr.ImageEditor: in Gradio 6 its confirmed crop shows
                    # on screen but the value sent with the search stayed the uncropped photo.
                    gr.Markdown("Trim the edges until only the item is left: the search uses just this area.")
                    with gr.Row():
                        margins = [gr.Slider(0, 95, value=0, step=1, label=f"Cut {side} %", min_width=120,
                                             elem_id=f"vs-crop-{side}") for side in CROP_SIDES]
                    crop_note = gr.Markdown(elem_id="vs-crop-note")
                    crop_preview = gr.Image(label="Area searched", type="pil", interactive=False, height=220,
                                            elem_id="vs-crop-preview")
                text = gr.Textbox(
                    label="Refine with words (optional)" if supports_text else "Refine with words",
                    placeholder='e.g. "in red", "leather"' if supports_text else "",
                    interactive=supports_text, lines=1, max_lines=1,
                    info=None if supports_text else
                    f"Not available: this catalog's model ({model_name}) understands photos only.",
                )
                with gr.Accordion("Filters", open=True):
                    category = gr.Dropdown(choices=categories, value=[], multiselect=True, label="Category",
                                           info=None if categories else "This catalog has no categories.",
                                           interactive=bool(categories))
                    with gr.Row():
                        lo, hi = price_range if price_range else (None, None)
                        span = f"catalog: {lo:g} to {hi:g}" if lo is not None else "no prices in this catalog"
                        min_price = gr.Number(label="Min price", value=0, minimum=0, info="0 = any")
                        max_price = gr.Number(label="Max price", value=0, minimum=0, info=f"0 = any ({span})")
                    k = gr.Slider(1, MAX_RESULTS, value=DEFAULT_K, step=1, label="Results")
                search_btn = gr.Button("Search", variant="primary", size="lg", elem_id="vs-search")
                if examples:
                    gr.Examples(examples=[[str(p)] for p in examples], inputs=[photo], label="No photo? Try one of these",
                                examples_per_page=8)
            with gr.Column(scale=5, min_width=420):
                status = gr.Markdown("### Add a photo to start\nUpload, drag and drop, use your webcam or paste an image, "
                                     "then press **Search**.", elem_classes="vs-status", elem_id="vs-status")
                gallery = gr.Gallery(label="Matching products", columns=4, height="auto", object_fit="contain",
                                     allow_preview=False, show_label=False, elem_classes="vs-gallery", elem_id="vs-results")
                with gr.Group(visible=False) as detail_box:
                    details = gr.Markdown(elem_classes="vs-details")
                    why = gr.HTML(elem_id="vs-why", css_template=ROW_CSS, js_on_load=None)
                    detail_images = gr.Gallery(label="This product's catalog images", columns=6, height=220,
                                               object_fit="contain", allow_preview=False)
        hits_state = gr.State([])

        inputs = [photo, *margins, text, k, category, min_price, max_price]
        outputs = [status, gallery, hits_state, detail_images, detail_box]
        gr.on([search_btn.click, text.submit], ui_search, inputs, outputs, api_visibility="private")
        photo.change(prepare_crop, [photo], [crop_preview, crop_note, status, *margins], api_visibility="private",
                     queue=False)
        gr.on([m.change for m in margins], preview_crop, [photo, *margins], [crop_preview, crop_note],
              api_visibility="private", trigger_mode="always_last")
        gallery.select(show_details, [hits_state], [details, detail_images, detail_box], api_visibility="private",
                       queue=False)
        gallery.select(show_why, [photo, *margins, hits_state], [why], api_visibility="private", queue=False)

        # The named API endpoint: plain file in, list of hit dicts out, same search as the page.
        with gr.Column(visible=False):
            api_image = gr.File(label=api_image_doc, type="filepath", file_count="single")
            api_text = gr.Textbox(label="text", value="")
            api_k = gr.Number(label="k", value=10, precision=0)
            api_category = gr.Dropdown(label="category", choices=categories, value=[], multiselect=True,
                                       allow_custom_value=True)
            api_min = gr.Number(label="min_price (0 = no minimum)", value=0)
            api_max = gr.Number(label="max_price (0 = no maximum)", value=0)
            api_out = gr.JSON(label="hits")

        def api_search(image, text, k, category, min_price, max_price):
            min_price = min_price or None  # 0 = open end, so every argument after the photo is optional
            max_price = max_price or None
            try:
                hits = run_search(index, image, text, k, category, min_price, max_price)
            except VsearchError as e:
                raise gr.Error(str(e), print_exception=False) from None
            except Exception as e:  # noqa: BLE001
                log.exception("API search failed")
                raise gr.Error(f"search failed ({type(e).__name__})", print_exception=False) from None
            return [hit_to_api(h) for h in hits]

        trigger = gr.Button(visible=False)
        trigger.click(api_search, [api_image, api_text, api_k, api_category, api_min, api_max], [api_out],
                      api_name="search", api_description="Ranked products for a photo (and optional text / filters).")
    return app


def launch_settings(index: ProductIndex, examples: Sequence[str | os.PathLike] | None = None) -> dict[str, Any]:
    """launch() keyword arguments: servable files limited to the catalog images, upload cap, offline theme."""
    import gradio as gr

    folders = {str(Path(src).parent) for src in index.image_sources() if not _is_url(src)}
    allowed = sorted(folders | {str(Path(p).resolve().parent) for p in examples or []})
    index_dir = str(Path(index.index_dir).resolve())
    theme = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate", font=SYSTEM_FONTS, font_mono=MONO_FONTS)
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


def launch_app(app: gr.Blocks, index: ProductIndex, *, host: str = "127.0.0.1", port: int = 7860,
               examples: Sequence[str | os.PathLike] | None = None, concurrency: int | None = None,
               prevent_thread_lock: bool = True, quiet: bool = True) -> str:
    """Queue (bounded concurrency) and start the server; returns the local URL."""
    limit = concurrency or max(1, min(4, os.cpu_count() or 1))
    app.queue(default_concurrency_limit=limit, max_size=QUEUE_SIZE)
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock, quiet=quiet,
                           **launch_settings(index, examples))
    return url


def serve(index_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 7860, model: str | None = None,
          pretrained: str | None = None, precision: str = "auto", notice: str | None = None,
          examples: Sequence[str | os.PathLike] | None = None) -> None:
    """Load the index and its model once, print where to open the page, and serve until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .search import ProductIndex

    print(f"vsearch: loading index {index_dir} ...", flush=True)
    index = ProductIndex.load(index_dir, model=model, pretrained=pretrained, precision=precision)
    print(f"vsearch: {len(index)} products, model {index.embedder.name}"
          + ("" if index.supports_text else " (image search only)"), flush=True)
    app = create_app(index, examples=[str(p) for p in examples or []], notice=notice)
    try:
        url = launch_app(app, index, host=host, port=port, examples=examples)
    except OSError as e:
        raise VsearchError(f"cannot listen on {host}:{port} ({e}); choose another --port") from None
    shown = url if host not in ("0.0.0.0", "::") else f"http://127.0.0.1:{port}/ (listening on all interfaces)"
    print(f"vsearch: open {shown} in a browser (Ctrl+C to stop)", flush=True)
    try:
        app.block_thread()
    finally:
        app.close()
