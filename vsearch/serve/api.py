"""The REST API for integrators, beside the page: /api/v1/search, /products/{id}, /health, /images.

Handlers only decode the request, call the library and encode the answer (typed response models,
so /api/v1/docs documents itself). The page and this API share one `Service`: one search gate
(the same concurrency limit as the page's queue), one per-client rate limit, the optional API key
and the feedback folder (`vsearch.serve.service`). Catalog images are served only by generation +
image id, looked up in that generation's own database; no answer ever carries a server path. What
a search request may hold, and how it is checked, is `vsearch.serve.search_request`.

FastAPI reads the handlers' annotations at run time, so this module does not use
``from __future__ import annotations``; names only imported for type checking are quoted.
"""

import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

from vsearch.catalog.images import MAX_BYTES
from vsearch.errors import FeedbackError, NoWordMatchError, ServerBusyError, VsearchError
from vsearch.serve.search_request import SEARCH_BODY, parse_search, run_search_request

if TYPE_CHECKING:
    from fastapi import FastAPI

    from vsearch.hits import Hit
    from vsearch.serve.service import Service

log = logging.getLogger(__name__)

PREFIX = "/api/v1"

VERDICTS = {True: "close_match", False: "no_close_match", None: "no_verdict"}


# ---------------------------------------------------------------- answers without server paths


def image_url(generation: str, image_id: int, source: str) -> str:
    """Where a client fetches a catalog image: the image's own URL for remote catalogs, else the
    by-id route of this server (never a file path)."""
    if source.startswith(("http://", "https://")):
        return source
    return f"{PREFIX}/images/{generation}/{int(image_id)}"


def hit_to_api(hit: "Hit") -> dict[str, Any]:
    """A hit as API clients get it: the catalog image as a URL, no server paths."""
    d = hit.to_dict()
    image, matched = d.pop("image"), d.pop("matched_images")
    ids = list(hit.matched_image_ids) or [hit.image_id] * len(matched)
    d["image_url"] = image_url(hit.generation, hit.image_id, image)
    d["matched_image_urls"] = [image_url(hit.generation, i, s) for i, s in zip(ids, matched)]
    d["verdict"] = VERDICTS.get(hit.confident, "no_verdict")
    return d


def verdict(hits: "list[Hit]") -> str:
    """The answer's verdict, from its top hit: close_match / no_close_match / no_verdict /
    no_results."""
    return VERDICTS.get(hits[0].confident, "no_verdict") if hits else "no_results"


# ---------------------------------------------------------------- the REST app


def _models():
    from pydantic import BaseModel, Field

    class ApiHit(BaseModel):
        rank: int
        product_id: str
        score: float = Field(description="cosine similarity of the best-matching catalog image")
        confident: bool | None = Field(
            description="true: close match; false: not sure (below the close-match bar); "
            "null: this index gives no verdict"
        )
        verdict: str = Field(description="close_match, no_close_match or no_verdict")
        title: str
        category: str
        price: float | None
        url: str
        brand: str
        metadata: dict[str, Any]
        image_url: str = Field(
            description="the best-matching catalog image (this server's /api/v1/images/... or the "
            "catalog's URL)"
        )
        matched_image_urls: list[str]
        image_id: int
        matched_image_ids: list[int]
        generation: str

    class SearchResponse(BaseModel):
        generation: str = Field(
            description="the index generation that answered (every hit comes from it)"
        )
        model: str
        verdict: str = Field(description="close_match, no_close_match, no_verdict or no_results")
        took_ms: float
        results: list[ApiHit]

    class ProductResponse(BaseModel):
        product_id: str
        title: str
        category: str
        price: float | None
        url: str
        brand: str
        metadata: dict[str, Any]
        image_urls: list[str]
        generation: str

    class HealthResponse(BaseModel):
        status: str
        generation: str
        model: str
        products: int
        images: int
        index_type: str
        text_search: bool = Field(
            description="the model embeds text (CLIP): text is matched to photos by meaning"
        )
        words_search: bool = Field(
            description="the index has a words index of titles and descriptions: text is matched "
            "by its words, with any model"
        )
        skipped_generations: list[str] = Field(
            description="published generations that could not be served"
        )
        feedback: bool

    class FeedbackResponse(BaseModel):
        recorded: bool = Field(
            description="false when this photo and product were already recorded"
        )
        product_id: str

    class ErrorResponse(BaseModel):
        detail: str

    return ApiHit, SearchResponse, ProductResponse, HealthResponse, FeedbackResponse, ErrorResponse


_ERRORS = {
    400: "bad input (not an image, unknown category, bad k, ...)",
    401: "missing or wrong API key",
    404: "words alone: no product's text holds any of the words",
    413: "photo too large",
    429: "too many requests from this client",
    503: "server busy",
}


def create_rest_app(service: "Service") -> "FastAPI":
    """The /api/v1 application (mount it at PREFIX): search, products, health, images, feedback,
    docs."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse

    ApiHit, SearchResponse, ProductResponse, HealthResponse, FeedbackResponse, ErrorResponse = (
        _models()
    )
    index = service.index
    settings = service.settings
    responses = {
        code: {"model": ErrorResponse, "description": text} for code, text in _ERRORS.items()
    }

    rest = FastAPI(
        title="vsearch REST API",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        description='Visual product search over HTTP/JSON. Errors are `{"detail": message}` with a '
        "status code. With an API key set, send it as `X-API-Key: KEY` or "
        "`Authorization: Bearer KEY`.",
    )

    @rest.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("path", "query", "body"))
        return JSONResponse(
            {"detail": f"{where}: {first.get('msg', 'invalid value')}"}, status_code=400
        )

    def client_of(request: Request) -> str:
        return service.client_key(request.client.host if request.client else None, request.headers)

    _docs_page(rest)

    def rate_limited(request: Request) -> None:
        wait = service.limiter.check(client_of(request))
        if wait is not None:
            raise HTTPException(
                429,
                f"too many requests; try again in {wait:.1f} s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )

    def authorised(request: Request) -> None:
        if not settings.api_key:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise HTTPException(
                401,
                "missing or wrong API key (send X-API-Key: KEY or Authorization: Bearer KEY)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(rate_limited), Depends(authorised)]

    @rest.post(
        "/search",
        response_model=SearchResponse,
        dependencies=guarded,
        openapi_extra=SEARCH_BODY,
        responses=responses,
        summary="Ranked products for a photo, a text, or both",
    )
    async def search(request: Request):
        started = time.perf_counter()
        params: dict[str, Any] = {
            key: request.query_params.getlist(key) for key in request.query_params.keys()
        }
        data: bytes | None = None
        name = "image"
        ctype = request.headers.get("content-type", "")
        # the body's size and arrival time are bounded while it streams in (guard.BodyGuard, in
        # front of the app)
        if ctype.startswith("multipart/form-data") or ctype.startswith(
            "application/x-www-form-urlencoded"
        ):
            form = await request.form(max_files=1, max_fields=50)
            for key in set(form.keys()):
                values = form.getlist(key)
                if key == "image":
                    upload = values[0]
                    if isinstance(upload, str):
                        raise HTTPException(
                            400,
                            "image must be a file upload (multipart/form-data), not a text field",
                        )
                    name = upload.filename or "image"
                    data = await upload.read()
                else:
                    params[key] = [v for v in values if isinstance(v, str)]
        elif ctype.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                raise HTTPException(400, "body is not valid JSON") from None
            if not isinstance(body, dict):
                raise HTTPException(
                    400, 'JSON body must be an object, e.g. {"text": "red mug", "k": 5}'
                )
            for key, value in body.items():
                params[key] = value if isinstance(value, (list, dict)) else [value]
        elif ctype:
            raise HTTPException(
                415,
                f"content type {ctype.split(';')[0]!r} is not accepted; send multipart/form-data "
                "with an image file, or application/json",
            )
        if data is not None and len(data) > MAX_BYTES:
            raise HTTPException(
                413,
                f"{name}: {len(data) / 2**20:.1f} MiB; a photo may be at most {MAX_BYTES // 2**20} "
                "MiB",
            )
        try:
            # every parameter checked before a photo is fetched by URL
            request = await run_in_threadpool(
                parse_search, index, params, has_file=data is not None
            )
            if request.image_url is not None:
                # bounded in number, each within its deadline
                async with service.fetch_gate.async_slot():
                    data = await run_in_threadpool(service.downloads().fetch, request.image_url)
                name = request.image_url
            async with service.gate.async_slot():  # decoding is search work too
                hits = await run_in_threadpool(run_search_request, index, request, data, name)
        except ServerBusyError as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        except NoWordMatchError as e:
            raise HTTPException(404, str(e)) from None
        except VsearchError as e:
            raise HTTPException(400, str(e)) from None
        except HTTPException:
            raise
        except Exception as e:  # noqa: BLE001 - one bad request never takes the server down
            log.exception("REST search failed")
            raise HTTPException(500, f"search failed ({type(e).__name__})") from None
        return {
            "generation": hits[0].generation if hits else index.generation,
            "model": getattr(index.embedder, "name", "?"),
            "verdict": verdict(hits),
            "took_ms": round((time.perf_counter() - started) * 1000, 2),
            "results": [hit_to_api(h) for h in hits],
        }

    @rest.get(
        "/products/{product_id:path}",
        response_model=ProductResponse,
        dependencies=guarded,
        responses=responses,
        summary="Everything known about one product",
    )
    def product(product_id: str):
        try:
            p = index.product(product_id)
        except KeyError:
            raise HTTPException(404, f"product {product_id!r} is not in this catalog") from None
        urls = [image_url(p["generation"], i, s) for i, s in zip(p["image_ids"], p["images"])]
        return {
            **{
                k: p[k]
                for k in (
                    "product_id",
                    "title",
                    "category",
                    "price",
                    "url",
                    "brand",
                    "metadata",
                    "generation",
                )
            },
            "image_urls": urls,
        }

    @rest.get(
        "/health",
        response_model=HealthResponse,
        dependencies=guarded,
        responses=responses,
        summary="Which generation and model are serving, and how big the catalog is",
    )
    def health():
        manifest = index.manifest
        counts = manifest.get("counts", {})
        return {
            "status": "ok",
            "generation": index.generation,
            "model": getattr(index.embedder, "name", "?"),
            "products": len(index),
            "images": int(counts.get("images", 0)),
            "index_type": str(manifest.get("index_type", "?")),
            "text_search": index.supports_text,
            "words_search": index.supports_words,
            "skipped_generations": sorted(index.skipped_generations),
            "feedback": service.feedback is not None,
        }

    @rest.get(
        "/images/{generation}/{image_id}",
        dependencies=[Depends(rate_limited)],
        responses={404: {"model": ErrorResponse, "description": "no such image"}},
        summary="A catalog image by generation and image id (as given in search results)",
    )
    def image(generation: str, image_id: int):
        source = index.image_source(generation, image_id)
        if source is None or source.startswith(("http://", "https://")):
            raise HTTPException(
                404,
                f"no image {image_id} in generation {generation!r} on this server "
                "(results older than the last two generations expire)",
            )
        import mimetypes
        from pathlib import Path

        path = Path(source)
        if not path.is_file():
            raise HTTPException(
                404, f"image {image_id} of generation {generation!r} is no longer on disk"
            )
        return FileResponse(
            path,
            media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    @rest.post(
        "/feedback",
        response_model=FeedbackResponse,
        dependencies=guarded,
        responses=responses,
        summary="Record a shopper's confirmed match (only with vsearch serve --feedback)",
        openapi_extra={
            "requestBody": {
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["image", "product_id"],
                            "properties": {
                                "image": {"type": "string", "format": "binary"},
                                "product_id": {"type": "string"},
                            },
                        }
                    }
                }
            }
        },
    )
    async def feedback(request: Request):
        if service.feedback is None:
            raise HTTPException(
                404, "feedback is off on this server (start it with vsearch serve --feedback)"
            )
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(
                415, "send multipart/form-data with an image file and a product_id field"
            )
        form = await request.form(max_files=1, max_fields=10)
        upload, product_id = form.get("image"), form.get("product_id")
        if upload is None or isinstance(upload, str) or not isinstance(product_id, str):
            raise HTTPException(400, "send an image file and a product_id field")
        data = await upload.read()
        if len(data) > MAX_BYTES:
            raise HTTPException(413, f"photo is over {MAX_BYTES // 2**20} MiB")
        try:
            async with service.gate.async_slot():  # recording decodes the photo
                new = await run_in_threadpool(
                    service.record_feedback, data, product_id, client_of(request)
                )
        except ServerBusyError as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        except FeedbackError as e:
            status = 429 if "too many" in str(e) else 400
            raise HTTPException(status, str(e)) from None
        return {"recorded": new, "product_id": product_id}

    return rest


def _docs_page(rest: "FastAPI") -> None:
    """/docs: Swagger UI from the files the fastapi-offline package ships, served by this app, so
    the page works on a machine without internet (FastAPI's default loads them from a CDN)."""
    from pathlib import Path

    from fastapi import Request
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    try:
        import fastapi_offline

        files_dir = Path(fastapi_offline.__file__).parent / "static"
    except ImportError:  # not installed: FastAPI's page with the CDN's files
        files_dir = None
    if files_dir is not None:
        rest.mount("/docs-files", StaticFiles(directory=files_dir), name="docs-files")

    @rest.get("/docs", include_in_schema=False)
    def docs(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")
        files = (
            {}
            if files_dir is None
            else {
                "swagger_js_url": f"{root}/docs-files/swagger-ui-bundle.js",
                "swagger_css_url": f"{root}/docs-files/swagger-ui.css",
                "swagger_favicon_url": f"{root}/docs-files/favicon.png",
            }
        )
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title=f"{rest.title} - docs", **files
        )
