"""The nearest products to a query in one loaded generation: FAISS (with filters as id selectors
and hidden or excluded images left out), an exact pass when an approximate one comes back short,
and products re-scored from all their images. `ProductIndex` turns what this finds into hits.

Every function takes the generation it searches, so one query never mixes two generations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from vsearch.query_options import product_score
from vsearch.store import generations as store
from vsearch.store.candidates import _best_image_per_product, _filter_sql

if TYPE_CHECKING:
    from vsearch.store.loaded import Generation

EXACT_FALLBACK_CHUNK = 65_536  # vectors scored per step when an ANN pass comes back short
# PQ types re-rank exactly enough candidates for the first 2 (k + 1) fetched images, not for all
# ~4k: at 200k real vectors ivfpq-fs answers the same 10 products for 300/300 queries in 0.59x
# the time, ivfpq 97 % the same (recall@10 -0.002) in 0.67x (benchmarks/bench_product_rerank.py)
RERANK_DEPTH_PER_RESULT = 2


def ranked(
    gen: Generation,
    query: np.ndarray,
    k: int,
    selector,
    allowed_vids: np.ndarray | None,
    excluded: np.ndarray,
    qe: Mapping[str, Any],
    scoring: str,
):
    """(the best k + 1 products as (pid, score, image ids), the query after expansion) for an
    index-space query [1, d] among the allowed images (None: all) minus the excluded ones."""
    from vsearch.learn.transforms import query_expand

    allowed = None if allowed_vids is None else len(allowed_vids)
    keep_alive = [selector]
    if len(excluded):
        import faiss

        not_sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(excluded))
        keep_alive.append(not_sel)
        selector = not_sel if selector is None else faiss.IDSelectorAnd(selector, not_sel)
        keep_alive.append(selector)
    n_candidates = (gen.faiss.ntotal if allowed is None else allowed) - (
        len(excluded) if allowed is None else 0
    )
    if n_candidates <= 0:
        return [], query
    qe_k = int(qe.get("k", 0) or 0)
    if qe_k > 0:
        scores, vids = faiss_search(gen, query, min(n_candidates, qe_k), selector)
        ok = vids >= 0
        if ok.any():
            query = query_expand(
                query[0],
                gen.vectors_of(vids[ok]),
                scores[ok],
                alpha=float(qe.get("alpha", 3.0)),
            )[None, :]
    fetch = min(n_candidates, max(4 * k, k + 16))
    while True:
        scores, vids = faiss_search(
            gen, query, fetch, selector, depth=RERANK_DEPTH_PER_RESULT * (k + 1)
        )
        best = _best_image_per_product(scores, vids, gen.vid_to_pid)
        # one more than asked: the verdict compares with the runner-up
        if len(best) > k or fetch >= n_candidates:
            break
        fetch = min(n_candidates, fetch * 4)
    if len(best) <= k:
        # An ANN pass with a selective filter (IVF probes few lists, HNSW's graph walk stops
        # early)
        # can come back short although enough products match: score the allowed vectors exactly.
        candidates = (
            np.arange(gen.faiss.ntotal, dtype=np.int64) if allowed_vids is None else allowed_vids
        )
        if len(excluded):
            candidates = candidates[~np.isin(candidates, excluded)]
        if len(np.unique(gen.vid_to_pid[candidates])) > len(best):
            best = exact_search(gen, query[0], candidates, max(fetch, 4 * k), k + 1)
    if scoring != "max":
        best = rescore(gen, query[0], best, scoring, excluded)
    return best, query


def exact_search(
    gen: Generation, query: np.ndarray, candidates: np.ndarray, n: int, want: int
) -> list[tuple[int, float, list[int]]]:
    """Best products by exact inner product over the candidate vectors (a chunk at a time, so a
    large unfiltered fallback never holds every vector)."""
    scores = np.empty(len(candidates), dtype=np.float32)
    for start in range(0, len(candidates), EXACT_FALLBACK_CHUNK):
        chunk = candidates[start : start + EXACT_FALLBACK_CHUNK]
        scores[start : start + len(chunk)] = gen.vectors_of(chunk) @ query
    order = np.argsort(-scores, kind="stable")
    # enough images to cover n products (a product may own several of the best images)
    while True:
        top = order[:n]
        best = _best_image_per_product(scores[top], candidates[top], gen.vid_to_pid)
        if len(best) >= want or n >= len(order):
            return best
        n *= 4


def rescore(
    gen: Generation,
    query: np.ndarray,
    best: list[tuple[int, float, list[int]]],
    mode: str,
    excluded: np.ndarray,
) -> list[tuple[int, float, list[int]]]:
    """Score each candidate product from *all* its images (mean / top-2), not only its best
    one."""
    out = []
    for pid, score, vids in best:
        all_vids = gen.vids_of(pid)
        if len(excluded):
            all_vids = all_vids[~np.isin(all_vids, excluded)]
        sims = gen.vectors_of(all_vids) @ query if len(all_vids) else np.asarray([score])
        out.append((pid, product_score(sims, mode), vids))
    out.sort(key=lambda b: -b[1])
    return out


def faiss_search(gen: Generation, query: np.ndarray, n: int, selector, depth: int | None = None):
    import faiss

    params = None
    if selector is not None:
        if isinstance(gen.faiss, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(store.HNSW_EF_SEARCH, n))
        elif faiss.try_extract_index_ivf(gen.faiss) is not None:
            ivf = faiss.extract_index_ivf(gen.faiss)
            params = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
        else:
            params = faiss.SearchParameters(sel=selector)
    elif isinstance(gen.faiss, faiss.IndexHNSW) and n > gen.faiss.hnsw.efSearch:
        params = faiss.SearchParametersHNSW(efSearch=n)
    if gen.stored is not None:  # PQ: exact scores of the best approximate candidates
        from vsearch.store.sharded import rerank

        def approximate(m: int):
            scores, vids = store.search_single_threaded(gen.faiss, query, m, params)
            return scores[0], vids[0]

        return rerank(
            approximate,
            gen.stored,
            query[0],
            n,
            gen.faiss.ntotal,
            gen.manifest.get("rerank_factor"),
            depth,
        )
    scores, vids = store.search_single_threaded(gen.faiss, query, n, params)
    return scores[0], vids[0]


def filter_selector(gen: Generation, filters: Mapping[str, Any] | None):
    """Turn filters into a FAISS id selector over the allowed images (None = no filter)."""
    if not filters:
        return None, None
    import faiss

    where, params = _filter_sql(filters)
    if not where:
        return None, None
    pids = np.array(
        [r[0] for r in gen.query(f"SELECT pid FROM products WHERE {where}", tuple(params))],
        dtype=np.int64,
    )
    vids = np.flatnonzero(np.isin(gen.vid_to_pid, pids)).astype(np.int64)
    if len(vids) == 0:
        return None, vids
    return faiss.IDSelectorBatch(vids), vids
