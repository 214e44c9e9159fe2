"""Candidate bookkeeping shared by the search paths: image hits collapsed into products, and
filters as SQL over the products table (FAISS id selectors and the words index both use it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vsearch.errors import VsearchError


def _best_image_per_product(
    scores: np.ndarray, vids: np.ndarray, vid_to_pid: np.ndarray
) -> list[tuple[int, float, list[int]]]:
    """Collapse image hits (sorted best first) into products scored by their best image."""
    order: list[int] = []
    found: dict[int, tuple[float, list[int]]] = {}
    for score, vid in zip(scores.tolist(), vids.tolist()):
        if vid < 0:
            continue
        pid = int(vid_to_pid[vid])
        if pid in found:
            found[pid][1].append(vid)
        else:
            found[pid] = (score, [vid])
            order.append(pid)
    return [(pid, found[pid][0], found[pid][1]) for pid in order]


_TEXT_COLUMNS = {"category", "brand", "title", "url", "product_id"}


def _filter_sql(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """SQL WHERE clause for filters: {"category": "mug" | [..], "price": (lo, hi), "<column>":
    value}."""
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in filters.items():
        if value is None or value == "" or value == [] or value == ():
            continue
        if key == "price":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise VsearchError(
                    f"price filter must be (min, max) with None for an open end, got {value!r}"
                )
            lo, hi = value
            if lo is not None:
                clauses.append("price >= ?")
                params.append(float(lo))
            if hi is not None:
                clauses.append("price <= ?")
                params.append(float(hi))
            continue
        values = (
            [str(v) for v in value]
            if isinstance(value, (list, tuple, set, frozenset))
            else [str(value)]
        )
        marks = ",".join("?" * len(values))
        if key in _TEXT_COLUMNS:
            clauses.append(f"{key} IN ({marks})")
        else:
            if not key.replace("_", "").replace("-", "").replace(" ", "").isalnum():
                raise VsearchError(
                    f"cannot filter on column {key!r}: use letters, digits, '_', '-' or spaces"
                )
            clauses.append(f"json_extract(extra, ?) IN ({marks})")
            params.append(f'$."{key}"')
        params.extend(values)
    return " AND ".join(clauses), params
