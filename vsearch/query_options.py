"""Query-side options and their defaults: the one place that says what a search does unless told
otherwise.

A build can store its own defaults in the manifest ("query_defaults"); a search call can override
them. Both are checked here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

PRODUCT_SCORING = ("max", "mean", "top2")
TTA_MODES = ("none", "flip", "pad", "flip+pad")
# Measured in benchmarks/RESULTS.md: the plain pipeline was best overall for the offline model.
QUERY_DEFAULTS: dict[str, Any] = {
    "tta": "none",
    "query_expansion": {"k": 0},
    "product_scoring": "max",
}


def product_score(image_scores: np.ndarray, mode: str = "max") -> float:
    """One score from a product's image scores: best image, mean of all, or mean of the best two."""
    s = np.sort(np.asarray(image_scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        raise ValueError("a product needs at least one image score")
    if mode == "max":
        return float(s[0])
    if mode == "mean":
        return float(s.mean())
    if mode == "top2":
        return float(s[:2].mean())
    raise ValueError(f"product scoring {mode!r} is not one of {', '.join(PRODUCT_SCORING)}")


def resolve_query_defaults(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """Query-side defaults stored in the manifest; unknown keys are refused."""
    opts = json.loads(json.dumps(QUERY_DEFAULTS))
    for key, v in dict(value or {}).items():
        if key not in opts:
            raise ValueError(f"unknown query option {key!r}; accepted: {sorted(opts)}")
        opts[key] = dict(v) if isinstance(v, Mapping) else v
    if opts["product_scoring"] not in PRODUCT_SCORING:
        raise ValueError(
            f"product_scoring {opts['product_scoring']!r} is not one of "
            f"{', '.join(PRODUCT_SCORING)}"
        )
    return opts
