"""Scoring calibration queries against a catalog the way a search would score them.

A verdict is only as true as the scores it was calibrated on, so each query is ranked product-level
with the searches' own query expansion and product scoring (``vsearch.search``), both as a photo
of a product the shop sells and as one of a product it does not (its own product removed). Used by
the verdict's calibration (``vsearch.learn.verdict``) and the adaptation's shopper check
(``vsearch.learn.fit``); pure functions of vectors and labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from vsearch.learn.transforms import Projection, l2_normalise, nearest, query_expand
from vsearch.query_options import product_score

DEFAULT_QE_ALPHA = 3.0  # the alpha a query expansion without one uses (``search.search_vector``)


class QueryScores(NamedTuple):
    """Calibration queries scored against a catalog, product-level (see
    ``verdict_from_queries``)."""

    top: np.ndarray  # top-1 score
    right: np.ndarray  # the top-1 product is the query's own
    margin: np.ndarray  # top-1 score minus the runner-up product's
    # top-1 score with the query's own product removed (a photo of an unsold product)
    unsold_top: np.ndarray
    unsold_margin: np.ndarray  # and its lead over the next product

    @classmethod
    def concat(cls, parts: Sequence[QueryScores]) -> QueryScores:
        return cls(
            *(np.concatenate([p[j] for p in parts]) if parts else np.empty(0) for j in range(5))
        )


def verdict_from_queries(
    index_vectors: np.ndarray,
    product_ids: Sequence[str],
    queries: np.ndarray,
    labels: Sequence[str],
    *,
    exclude: Sequence[Sequence[int]] | None = None,
    k: int = 64,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> QueryScores:
    """Score calibration queries against the catalog, product-level, both ways: as they are, and
    as photos of unsold products (their own product removed).

    exclude: per query, catalog rows it must not see (a held-out view's own image). A query whose
    k nearest images hold no second product gets the margin of a runner-up scoring 0, as search
    does.
    transform: applied to the catalog rows a block at a time (``transforms.nearest``), so a
    cross-fitted projection of a memory-mapped catalog is never held whole.
    settings: the query-side settings searches will use (``fit.query_settings``): query expansion
    (from the query's own best images: for the unsold side from a catalog without its product)
    and product scoring are applied as ``search`` applies them, so the scores are the ones the
    verdict will judge. None = plain queries, best image per product.
    """
    pids = np.asarray(product_ids).astype(str)
    labels = np.asarray(labels).astype(str)
    qe = dict((settings or {}).get("query_expansion") or {})
    qe_k, alpha = int(qe.get("k", 0) or 0), float(qe.get("alpha", DEFAULT_QE_ALPHA))
    mode = str((settings or {}).get("product_scoring") or "max")
    depth = min(k, len(index_vectors))
    scores, ids = nearest(queries, index_vectors, depth, transform=transform)
    sold_q = unsold_q = queries
    if qe_k > 0 and len(queries):  # alpha-QE: each side expanded from the best images it may see
        sold_q, unsold_q = _expanded(
            index_vectors, pids, queries, labels, scores, ids, qe_k, alpha, exclude, transform
        )
        scores, ids = nearest(sold_q, index_vectors, depth, transform=transform)
        u_scores, u_ids = nearest(unsold_q, index_vectors, depth, transform=transform)
    else:
        u_scores, u_ids = scores, ids
    rows_of = _rows_by_product(pids) if mode != "max" else None
    nan = np.full(len(queries), np.nan)
    top, margin, unsold, unsold_margin = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    right = np.zeros(len(queries), dtype=bool)
    for q in range(len(queries)):
        skip = exclude[q] if exclude is not None and len(exclude[q]) else ()
        ranked = _rank_products(
            scores[q], ids[q], pids, skip, mode, rows_of, index_vectors, sold_q[q], transform
        )
        if ranked:
            top[q], right[q] = ranked[0][1], ranked[0][0] == labels[q]
            margin[q] = ranked[0][1] - (ranked[1][1] if len(ranked) > 1 else 0.0)
        ranked = _rank_products(
            u_scores[q],
            u_ids[q],
            pids,
            skip,
            mode,
            rows_of,
            index_vectors,
            unsold_q[q],
            transform,
            drop=labels[q],
        )
        if ranked:
            unsold[q] = ranked[0][1]
            unsold_margin[q] = ranked[0][1] - (ranked[1][1] if len(ranked) > 1 else 0.0)
    keep, sold_out = ~np.isnan(top), ~np.isnan(unsold)
    return QueryScores(
        top[keep], right[keep], margin[keep], unsold[sold_out], unsold_margin[sold_out]
    )


def _catalog_rows(index_vectors: np.ndarray, rows: np.ndarray, transform) -> np.ndarray:
    block = np.asarray(index_vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
    return np.asarray(transform(block) if transform is not None else block, dtype=np.float32)


def _expanded(index_vectors, pids, queries, labels, scores, ids, qe_k, alpha, exclude, transform):
    """alpha-QE of every query twice (``search.search_vector``'s first pass): from its best
    ``qe_k`` catalog images it may see, and from its best images of *other* products (the unsold
    side: a photo of a product the shop does not sell expands from what the shop has)."""
    if ids.shape[1] < qe_k + 8:  # too few candidates to leave the query's own product out of
        scores, ids = nearest(
            queries, index_vectors, min(len(index_vectors), 4 * qe_k + 64), transform=transform
        )
    sold, unsold = (
        np.array(queries, dtype=np.float32, copy=True),
        np.array(queries, dtype=np.float32, copy=True),
    )
    for q in range(len(queries)):
        ok = ids[q] >= 0
        if exclude is not None and len(exclude[q]):
            ok &= ~np.isin(ids[q], exclude[q])
        for out, keep in ((sold, ok), (unsold, ok & (pids[np.maximum(ids[q], 0)] != labels[q]))):
            near = np.flatnonzero(keep)[:qe_k]
            if len(near):
                out[q] = query_expand(
                    queries[q],
                    _catalog_rows(index_vectors, ids[q][near], transform),
                    scores[q][near],
                    alpha=alpha,
                )
    return sold, unsold


def _rows_by_product(pids: np.ndarray) -> dict[str, np.ndarray]:
    order = np.argsort(pids, kind="stable")
    uniq, starts = np.unique(pids[order], return_index=True)
    return dict(zip(uniq.tolist(), np.split(order, starts[1:])))


def _rank_products(
    scores, ids, pids, skip, mode, rows_of, index_vectors, query, transform, drop=None
):
    """[(product, score)] best first, from one query's nearest images (ids -1 and ``skip`` rows left
    out, and product ``drop``): a product's best image ("max"), or with ``mode`` "mean"/"top2" its
    candidates rescored from all their images, as ``search`` rescores them."""
    ok = ids >= 0
    if len(skip):
        ok &= ~np.isin(ids, skip)
    first: dict[str, float] = {}
    for score, product in zip(scores[ok].tolist(), pids[ids[ok]].tolist()):
        if product != drop and product not in first:
            first[product] = score
    ranked = list(first.items())
    if mode == "max" or not ranked:
        return ranked
    rescored = []
    for product, best in ranked:
        rows = rows_of[product]
        rows = rows[~np.isin(rows, skip)] if len(skip) else rows
        sims = (
            _catalog_rows(index_vectors, rows, transform) @ np.asarray(query, dtype=np.float32)
            if len(rows)
            else [best]
        )
        rescored.append((product, product_score(sims, mode)))
    rescored.sort(key=lambda b: -b[1])
    return rescored


def _same(v: np.ndarray) -> np.ndarray:
    return v


def through(
    proj: Projection | None, finish: Callable[[np.ndarray], np.ndarray] = _same
) -> Callable[[np.ndarray], np.ndarray]:
    """Row-wise map of model-space vectors into a cross-fitted index space: the fold's projection
    (or plain normalisation when it had too few pairs), then the index's post-processing
    (``finish``; none by default)."""
    return lambda v: finish(proj.apply(v) if proj is not None else l2_normalise(v))
