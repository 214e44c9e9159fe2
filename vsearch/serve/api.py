"""The REST API for integrators, beside the page: /api/v1/search, /products/{id}, /health, /images.

Handlers only decode the request, call the library and encode the answer (typed response models,
so /api/v1/docs documents itself). The page and this API share one `Service`: one search gate
(the same concurrency limit as the page's queue), one per-client rate limit, the optional API key
and the feedback folder. Catalog images are served only by generation + image id, looked up in
that generation's own database; no answer ever carries a server path.

FastAPI reads the handlers' annotations at run time, so this module does not use
``from __future__ import annotations``; names only imported for type checking are quoted.
"""

import hmac
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vsearch.catalog.images import MAX_BYTES
from vsearch.errors import (
    FeedbackError,
    ImageError,
    NoWordMatchError,
    ServerBusyError,
    VsearchError,
)
from vsearch.serve.guard import (
    BODY_TIMEOUT,
    MAX_WAITING,
    QUERY_FETCHES,
    BodyLimits,
    Gate,
    RateLimiter,
    TrustedProxies,
    client_address,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from vsearch.search import Hit, ProductIndex
    from vsearch.serve.feedback import FeedbackStore
    from vsearch.serve.guard import QueryDownloads
    from vsearch.serve.watcher import IndexWatcher

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
DEFAULT_K = 10
MAX_API_K = 100
DEFAULT_RATE = 120.0  # requests per minute per client
DEFAULT_BURST = 30
FEEDBACK_RATE = 6.0  # confirmations per minute per client
FEEDBACK_BURST = 3

VERDICTS = {True: "close_match", False: "no_close_match", None: "no_verdict"}


def default_concurrency() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServeSettings:
    """How the server protects itself. rate_limit: requests per minute per client (0 = off)."""

    api_key: str | None = None
    rate_limit: float = DEFAULT_RATE
    rate_burst: int = DEFAULT_BURST
    concurrency: int = 0  # 0 = min(4, CPUs)
    max_waiting: int = MAX_WAITING
    feedback: bool = False
    # peers whose X-Forwarded-For names the client (rate limit key)
    trusted_proxies: tuple[str, ...] = ()
    body_timeout: float = BODY_TIMEOUT  # seconds for a whole request body to arrive (0 = no limit)


class Service:
    """What the page and the REST API share for one loaded index."""

    def __init__(self, index: "ProductIndex", settings: ServeSettings | None = None):
        self.index = index
        self.settings = settings or ServeSettings()
        self.gate = Gate(
            self.settings.concurrency or default_concurrency(), self.settings.max_waiting
        )
        # image_url downloads (network, not CPU)
        self.fetch_gate = Gate(QUERY_FETCHES, self.settings.max_waiting)
        self.limiter = RateLimiter(self.settings.rate_limit, self.settings.rate_burst)
        self.feedback_limiter = RateLimiter(FEEDBACK_RATE, FEEDBACK_BURST)
        self.feedback: FeedbackStore | None = None
        if self.settings.feedback:
            from vsearch.serve import feedback

            self.feedback = feedback.FeedbackStore(index.index_dir)
        self.watcher: IndexWatcher | None = None
        self.proxies = TrustedProxies(self.settings.trusted_proxies)
        self.body_limits = BodyLimits(timeout=self.settings.body_timeout)
        self._downloads: QueryDownloads | None = None
        self._downloads_lock = threading.Lock()

    def start_watcher(self, interval: float | None = None) -> "IndexWatcher":
        from vsearch.serve.watcher import DEFAULT_INTERVAL, IndexWatcher

        if self.watcher is None:
            self.watcher = IndexWatcher(self.index, interval=interval or DEFAULT_INTERVAL).start()
        return self.watcher

    def downloads(self) -> "QueryDownloads":
        """The bounded cache of query photos fetched by image_url (removed when the server
        stops)."""
        with self._downloads_lock:
            if self._downloads is None:
                from vsearch.serve.guard import QueryDownloads

                self._downloads = QueryDownloads()
            return self._downloads

    def client_key(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """Who a request counts as for the rate limit (X-Forwarded-For only from trusted
        proxies)."""
        return client_address(peer, headers, self.proxies)

    def admit(self, peer: str | None, headers: Mapping[str, str]) -> None:
        """Take one request from this client's rate limit; ServerBusyError saying when to retry."""
        wait = self.limiter.check(self.client_key(peer, headers))
        if wait is not None:
            raise ServerBusyError(
                f"too many requests from you; try again in {max(1, round(wait))} s"
            )

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        with self._downloads_lock:
            if self._downloads is not None:
                self._downloads.close()
                self._downloads = None

    def record_feedback(
        self, photo: Any, product_id: str, client: str, generation: str = ""
    ) -> bool:
        """Record a confirmed match for ``client``; True when new. FeedbackError when off, unknown
        product, too many from this client, or the folder is full."""
        if self.feedback is None:
            raise FeedbackError(
                "feedback is off on this server (start it with vsearch serve --feedback)"
            )
        if self.feedback_limiter.check(client) is not None:
            raise FeedbackError(
                "too many confirmations from you in a short time; try again in a minute"
            )
        try:
            self.index.product(product_id)
        except KeyError:
            raise FeedbackError(f"product {product_id!r} is not in this catalog") from None
        _, new = self.feedback.record(
            photo, product_id, generation=generation or self.index.generation
        )
        return new


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
        text_search: bool
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


_SEARCH_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "the photo (JPEG, PNG, WebP, HEIC, ...)",
                        },
                        "text": {
                            "type": "string",
                            "description": "words: alone, the products whose text holds them "
                            "(every "
                            "index); with a photo, they re-rank the photo's matches (README "
                            "'Words')",
                        },
                        "k": {
                            "type": "integer",
                            "default": DEFAULT_K,
                            "minimum": 1,
                            "maximum": MAX_API_K,
                        },
                        "category": {"type": "array", "items": {"type": "string"}},
                        "min_price": {"type": "number"},
                        "max_price": {"type": "number"},
                        "filter": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "COLUMN=VALUE",
                        },
                        "locate": {
                            "type": "boolean",
                            "default": False,
                            "description": "find the item in the photo and look "
                            "again closer: more often right on busy photos, about twice the time "
                            "(photo-only, "
                            "EfficientNet indexes)",
                        },
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string"},
                        "image_url": {
                            "type": "string",
                            "description": "http(s) URL of the photo; fetched under the catalog "
                            "rules "
                            "(public addresses only, size and time limits)",
                        },
                        "k": {
                            "type": "integer",
                            "default": DEFAULT_K,
                            "minimum": 1,
                            "maximum": MAX_API_K,
                        },
                        "category": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "string"}},
                            ]
                        },
                        "min_price": {"type": "number"},
                        "max_price": {"type": "number"},
                        "filter": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "description": "{column: value}",
                        },
                        "locate": {
                            "type": "boolean",
                            "default": False,
                            "description": "find the item and look again closer",
                        },
                    },
                }
            },
        },
        "description": "A photo (multipart `image`) or JSON with `text` and/or `image_url`. `k` "
        "and the filters "
        "may also be given as query parameters.",
    },
}

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
        openapi_extra=_SEARCH_BODY,
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
            url = _one(params, "image_url")
            # (a photo and a URL together: _run says which to send)
            if url is not None and data is None:
                # bounded in number, each within its deadline
                async with service.fetch_gate.async_slot():
                    data = await run_in_threadpool(service.downloads().fetch, str(url))
                name = str(url)
                params = {key: value for key, value in params.items() if key != "image_url"}
            async with service.gate.async_slot():  # decoding is search work too
                hits = await run_in_threadpool(_run, index, service, params, data, name)
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


def _one(params: Mapping[str, Any], key: str) -> Any:
    value = params.get(key)
    if isinstance(value, list):
        value = next((v for v in value if v not in (None, "")), None)
    return None if value == "" else value


def _run(
    index: "ProductIndex",
    service: "Service",
    params: Mapping[str, Any],
    data: bytes | None,
    name: str,
) -> "list[Hit]":
    """Validate the parameters, decode the photo, search inside the shared gate."""
    from vsearch.catalog.images import load_image

    known = {
        "image",
        "image_url",
        "text",
        "k",
        "category",
        "min_price",
        "max_price",
        "filter",
        "locate",
    }
    unknown = sorted(set(params) - known)
    if unknown:
        raise VsearchError(
            f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}"
        )
    raw_k = _one(params, "k")
    try:
        k = DEFAULT_K if raw_k is None else int(str(raw_k))
    except ValueError:
        raise VsearchError(
            f"k must be a whole number from 1 to {MAX_API_K}, got {raw_k!r}"
        ) from None
    if not 1 <= k <= MAX_API_K:
        raise VsearchError(f"k must be from 1 to {MAX_API_K}, got {k}")
    filters: dict[str, Any] = {}
    cats = params.get("category") or []
    cats = [cats] if isinstance(cats, str) else [str(c) for c in cats if c not in (None, "")]
    if cats:
        valid = set(index.categories())
        bad = [c for c in cats if c not in valid]
        if bad:
            listed = ", ".join(sorted(valid)[:20]) or "none (this catalog has no categories)"
            raise VsearchError(f"unknown category {bad[0]!r}; categories: {listed}")
        filters["category"] = cats
    prices = []
    for key in ("min_price", "max_price"):
        value = _one(params, key)
        try:
            prices.append(None if value is None else float(value))
        except (TypeError, ValueError):
            raise VsearchError(f"{key} must be a number, got {value!r}") from None
    if prices[0] is not None and prices[1] is not None and prices[0] > prices[1]:
        raise VsearchError(f"min_price {prices[0]:g} is above max_price {prices[1]:g}")
    if prices != [None, None]:
        filters["price"] = tuple(prices)
    raw_filter = params.get("filter") or []
    items = list(raw_filter.items()) if isinstance(raw_filter, dict) else []
    for item in [] if isinstance(raw_filter, dict) else raw_filter:
        if not isinstance(item, str) or "=" not in item:
            raise VsearchError(f"filter takes COLUMN=VALUE, got {item!r}")
        items.append(tuple(s.strip() for s in item.split("=", 1)))
    if items:
        columns = set(index.metadata_columns())
        exact_prices: list[str] = []
        for column, value in items:
            if column not in columns:
                raise VsearchError(
                    f"cannot filter on {column!r}; columns: {', '.join(sorted(columns))}"
                )
            values = [str(v) for v in (value if isinstance(value, list) else [value])]
            # an exact price: the range [p, p], within min_price/max_price if given
            if column == "price":
                exact_prices += values
                continue
            filters.setdefault(column, []).extend(values)
        if exact_prices:
            filters["price"] = _exact_price(exact_prices, filters.get("price", (None, None)))
    raw_locate = _one(params, "locate")
    if raw_locate is None or isinstance(raw_locate, bool):
        locate = bool(raw_locate)
    else:
        locate = {"true": True, "1": True, "false": False, "0": False}.get(
            str(raw_locate).strip().lower()
        )
        if locate is None:
            raise VsearchError(f"locate must be true or false, got {raw_locate!r}")
    text = _one(params, "text")
    text = str(text).strip() if text is not None else None
    url = _one(params, "image_url")
    if data is not None and url is not None:
        raise VsearchError("send either an image file or an image_url, not both")
    if url is not None:  # (the REST handler fetches it beforehand, under the fetch gate)
        with service.fetch_gate.slot():
            data = service.downloads().fetch(str(url))
        name = str(url)
    if data is None and not text:
        raise VsearchError(
            "send a photo (multipart field 'image', or JSON 'image_url') or a 'text'"
        )
    if data is not None and not data:
        raise ImageError(f"{name}: empty upload (0 bytes)")
    image = None if data is None else load_image(data, min_side=index.query_side(locate), name=name)
    return index.search(image=image, text=text or None, k=k, filters=filters or None, locate=locate)


def _exact_price(values: list[str], within: tuple[Any, Any]) -> tuple[float, float]:
    """filter=price=P as the price range [P, P], narrowed by min_price / max_price."""
    if len(set(values)) != 1:
        raise VsearchError(
            f"filter on price takes one price, got {', '.join(values)}; "
            "for a range use min_price and max_price"
        )
    try:
        price = float(values[0])
    except ValueError:
        raise VsearchError(
            f"filter price={values[0]!r} is not a number; e.g. filter=price=19.99, "
            "or min_price and max_price for a range"
        ) from None
    lo, hi = within
    return (
        price if lo is None else max(price, float(lo)),
        price if hi is None else min(price, float(hi)),
    )


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
