"""A REST search request: what it may hold (`SEARCH_BODY`, the request body as /api/v1/docs shows
it), how its parameters are checked (`parse_search`: before any photo is fetched by URL, so a bad
parameter costs no download) and turned into one `ProductIndex.search` call (`run_search_request`).
The route in `vsearch.serve.api` decodes the HTTP body into these parameters, fetches an
``image_url`` photo, and encodes the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vsearch.errors import ImageError, VsearchError

if TYPE_CHECKING:
    from vsearch.hits import Hit
    from vsearch.search import ProductIndex

DEFAULT_K = 10
MAX_API_K = 100

SEARCH_BODY = {
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
                            "(every index); with a photo, they re-rank the photo's matches "
                            "(docs/words.md)",
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


def first_value(params: Mapping[str, Any], key: str) -> Any:
    """A parameter's first non-empty value (query, form and JSON values all arrive as lists)."""
    value = params.get(key)
    if isinstance(value, list):
        value = next((v for v in value if v not in (None, "")), None)
    return None if value == "" else value


@dataclass(frozen=True)
class SearchRequest:
    """A REST search's parameters, checked."""

    k: int
    filters: dict[str, Any]
    locate: bool
    text: str | None
    image_url: str | None


def parse_search(
    index: ProductIndex, params: Mapping[str, Any], *, has_file: bool
) -> SearchRequest:
    """Check every parameter (VsearchError names the first bad one). has_file: the request holds
    an uploaded photo (then ``image_url`` may not be given too)."""
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
    raw_k = first_value(params, "k")
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
        value = first_value(params, key)
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
            filters["price"] = exact_price(exact_prices, filters.get("price", (None, None)))
    raw_locate = first_value(params, "locate")
    if raw_locate is None or isinstance(raw_locate, bool):
        locate = bool(raw_locate)
    else:
        locate = {"true": True, "1": True, "false": False, "0": False}.get(
            str(raw_locate).strip().lower()
        )
        if locate is None:
            raise VsearchError(f"locate must be true or false, got {raw_locate!r}")
    text = first_value(params, "text")
    text = str(text).strip() or None if text is not None else None
    url = first_value(params, "image_url")
    if has_file and url is not None:
        raise VsearchError("send either an image file or an image_url, not both")
    if not has_file and url is None and not text:
        raise VsearchError(
            "send a photo (multipart field 'image', or JSON 'image_url') or a 'text'"
        )
    return SearchRequest(k, filters, locate, text, None if url is None else str(url))


def run_search_request(
    index: ProductIndex, request: SearchRequest, data: bytes | None, name: str
) -> list[Hit]:
    """Decode the photo (uploaded, or fetched from ``request.image_url``) and search."""
    from vsearch.catalog.images import load_image

    if data is not None and not data:
        raise ImageError(f"{name}: empty upload (0 bytes)")
    side = index.query_side(request.locate)
    image = None if data is None else load_image(data, min_side=side, name=name)
    return index.search(
        image=image,
        text=request.text,
        k=request.k,
        filters=request.filters or None,
        locate=request.locate,
    )


def exact_price(values: list[str], within: tuple[Any, Any]) -> tuple[float, float]:
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
