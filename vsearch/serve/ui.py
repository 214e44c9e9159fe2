"""The web app: a shopper's photo in, a gallery of matching products out (Gradio Blocks).

This module lays the page out, wires its events and launches the server; what each event does
(the search, the crop preview, the details, "This is it") is `page_events`. The page and the
named API endpoint ``/search`` share one search function (`page_events.run_search`), so a
`gradio_client` caller gets exactly what the gallery shows; the REST API (`api.py`) is mounted
beside them at /api/v1 and shares their concurrency limit. The index and its model are loaded
once by `serve`; a background watcher swaps in newly built generations, so a request only
searches. No folder is servable: the gallery hands Gradio copies of exact catalog image files,
and API answers carry image URLs by generation + id, never server paths.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsearch.catalog.images import MAX_BYTES
from vsearch.errors import VsearchError
from vsearch.evaluate.report import ROW_CSS
from vsearch.serve.api import PREFIX, create_rest_app
from vsearch.serve.page_events import (
    CROP_SIDES,
    DEFAULT_K,
    MAX_RESULTS,
    header_markdown,
    page_events,
    price_info,
)
from vsearch.serve.page_files import PageFiles as _PageFiles
from vsearch.serve.page_text import _md
from vsearch.serve.service import ServeSettings, Service

if TYPE_CHECKING:
    import gradio as gr

    from vsearch.search import ProductIndex

log = logging.getLogger(__name__)

QUEUE_SIZE = 64  # requests waiting beyond this are told the queue is full instead of piling up
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
    feedback_on = service.feedback is not None
    files = _PageFiles(index)
    events = page_events(index, service, files)
    PhotoInput = _photo_component_class()
    categories = index.categories()
    model_name = getattr(index.embedder, "name", "?")
    can_locate = bool(getattr(index.embedder, "can_locate", False))

    api_image_doc = "photo to search with (JPEG, PNG, WebP, HEIC...)"
    with gr.Blocks(
        title="vsearch · visual product search",
        fill_width=False,
        delete_cache=(files_max_age, files_max_age),
    ) as app:
        with gr.Column(elem_classes="vs-header"):
            header = gr.Markdown(header_markdown(index, categories))
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
                            label="Max price", value=0, minimum=0, info=price_info(index)
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
        gr.on(
            [search_btn.click, text.submit],
            events.ui_search,
            inputs,
            outputs,
            api_visibility="private",
        )
        # a photo in (upload, paste, webcam, example) searches at once, after its crop is reset;
        # so does a changed filter or changed words (the Search button stays, for typing)
        photo.change(
            events.prepare_crop,
            [photo],
            [crop_preview, crop_note, status, detail_box, chosen, *margins],
            api_visibility="private",
        ).then(events.auto_search, inputs, outputs, api_visibility="private")
        gr.on(
            [
                category.change,
                min_price.submit,
                max_price.submit,
                k.release,
                closer.change,
                text.blur,
            ],
            events.auto_search,
            inputs,
            outputs,
            api_visibility="private",
            trigger_mode="always_last",
        )
        gr.on(
            [m.change for m in margins],
            events.preview_crop,
            [photo, *margins],
            [crop_preview, crop_note],
            api_visibility="private",
            trigger_mode="always_last",
        )
        gallery.select(
            events.show_details,
            [hits_state],
            [details, detail_images, detail_box, chosen, confirm_note],
            api_visibility="private",
        )
        gallery.select(
            events.show_why, [photo, *margins, hits_state], [why], api_visibility="private"
        )
        if feedback_on:
            # public, so gradio_client can press it too: (photo, 4 crop margins, product_id) ->
            # message
            confirm_btn.click(
                events.confirm,
                [photo, *margins, chosen],
                [confirm_note],
                api_name="this_is_it",
                api_description="Record that this product is the one in this photo (feedback for "
                "review)",
            )
        app.load(
            events.refresh_catalog, None, [header, category, max_price], api_visibility="private"
        )

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

        trigger = gr.Button(visible=False)
        trigger.click(
            events.api_search,
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
