"""Calibrating a new generation's "close match" verdict on queries that look like a shopper's.

The queries: simulated phone photos of catalog products (``simulated_queries``: the only images the
build runs the model on that are not in the catalog), scored by a projection fitted without their
products; confirmed shopper photos (``--train-pairs``), scored by one fitted without their photo
session (``session_folds``); and - when neither is available - held-out catalog views, again
scored by a projection fitted without their products. Their scores (``vsearch.learn.query_scores``)
become the threshold in ``vsearch.learn.calibration.calibrate_verdict``. Whether a build
calibrates at all, or reuses the previous verdict, is decided in ``vsearch.learn.fit``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vsearch.learn.adaptation import TooFewPairsError, fit_adaptation, training_pairs
from vsearch.learn.calibration import VerdictCalibration, calibrate_verdict
from vsearch.learn.query_scores import QueryScores, through, verdict_from_queries
from vsearch.learn.transforms import Projection, l2_normalise
from vsearch.query_options import TTA_MODES

if TYPE_CHECKING:
    from vsearch.embedders import Embedder

SIMULATED_QUERIES = 240  # simulated shopper photos per build (about 8 s of EfficientNet on 2 cores)
HELD_OUT_QUERIES = 1000
PAIR_FOLDS = 5  # calibration folds of the confirmed shopper photos (one projection fit each)
# confirmed photos of one product this similar count as one session (RESULTS.md)
SESSION_COSINE = 0.80


# ---------------------------------------------------------------- cross-fitted projections


def cross_fitted_projections(
    vectors: np.ndarray,
    product_ids: Sequence[str],
    *,
    folds: int = 2,
    seed: int = 0,
    shopper_vectors: np.ndarray | None = None,
    shopper_labels: Sequence[str] = (),
) -> list[tuple[np.ndarray, Projection | None]]:
    """[(products held out, projection fitted without them)] for honest calibration scores: a
    query must not be scored by a projection that learned from its own product. (Folding the
    confirmed photos instead of the products was measured too optimistic: grocery val photos of
    one product are near-duplicates, 5-fold R@1 0.91 against 0.45 on the test photos, so it would
    promise precision the index does not have.)"""
    pids = np.asarray(product_ids).astype(str)
    uniq = np.unique(pids)
    fold_of = dict(zip(uniq.tolist(), np.random.default_rng(seed).permutation(len(uniq)) % folds))
    q_labels = np.asarray(shopper_labels).astype(str)
    out = []
    for f in range(folds):
        held = np.asarray([p for p, g in fold_of.items() if g == f])
        # images of held-out products get unique labels, so they add no pairs
        train_labels = np.where(
            np.isin(pids, held), np.char.add("__held__", np.arange(len(pids)).astype(str)), pids
        )
        q_keep = ~np.isin(q_labels, held) if len(q_labels) else np.zeros(0, dtype=bool)
        pairs = training_pairs(
            vectors,
            train_labels,
            shopper_vectors=None if shopper_vectors is None else shopper_vectors[q_keep],
            shopper_labels=q_labels[q_keep] if len(q_labels) else None,
        )
        try:
            out.append((held, fit_adaptation(vectors, pairs, min_products=5)))
        except TooFewPairsError:
            out.append((held, None))
    return out


def session_clusters(
    vectors: np.ndarray, labels: Sequence[str], *, cosine: float = SESSION_COSINE
) -> np.ndarray:
    """Cluster id per confirmed photo: photos of one product joined (connected components) when
    their model-space cosine is >= ``cosine`` - a proxy for "taken in the same session", whose
    photos are near-duplicates that would vouch for each other in a calibration fold."""
    x = np.asarray(vectors, dtype=np.float32)
    labels = np.asarray(labels).astype(str)
    cluster = np.full(len(labels), -1, dtype=np.int64)
    nxt = 0
    for product in np.unique(labels):
        idx = np.flatnonzero(labels == product)
        near = (x[idx] @ x[idx].T) >= cosine
        for start in range(len(idx)):
            if cluster[idx[start]] >= 0:
                continue
            cluster[idx[start]] = nxt
            stack = [start]
            while stack:
                j = stack.pop()
                for m in np.flatnonzero(near[j] & (cluster[idx] < 0)):
                    cluster[idx[m]] = nxt
                    stack.append(int(m))
            nxt += 1
    return cluster


def session_folds(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    folds: int = PAIR_FOLDS,
    cosine: float = SESSION_COSINE,
    seed: int = 0,
) -> np.ndarray:
    """Fold per confirmed photo for calibrating on them: a session cluster (``session_clusters``)
    never straddles folds, and one product's clusters are dealt to different folds, so a photo is
    scored by a projection that learned from its product's *other* sessions but not its own."""
    labels = np.asarray(labels).astype(str)
    cluster = session_clusters(vectors, labels, cosine=cosine)
    rng = np.random.default_rng(seed)
    fold_of_cluster: dict[int, int] = {}
    for product in np.unique(labels):
        ids = np.unique(cluster[labels == product])
        start = int(rng.integers(folds))
        for n, c in enumerate(rng.permutation(ids).tolist()):
            fold_of_cluster[c] = (start + n) % folds
    return np.asarray([fold_of_cluster[c] for c in cluster.tolist()], dtype=np.int64)


def session_fitted_projections(
    vectors: np.ndarray,
    product_ids: Sequence[str],
    shopper_vectors: np.ndarray,
    shopper_labels: Sequence[str],
    *,
    folds: int = PAIR_FOLDS,
    cosine: float = SESSION_COSINE,
    seed: int = 0,
) -> list[tuple[np.ndarray, Projection | None]]:
    """[(confirmed photos held out, projection fitted on the catalog and the other photos)]: the
    calibration of confirmed photos, between folding by product (too pessimistic: a shop's pairs
    cover the products it is asked about) and by photo (too optimistic: near-duplicates vouch for
    each other). See ``session_folds``; measured in RESULTS.md."""
    fold = session_folds(shopper_vectors, shopper_labels, folds=folds, cosine=cosine, seed=seed)
    labels = np.asarray(shopper_labels).astype(str)
    out = []
    for f in range(folds):
        keep = fold != f
        if keep.all():
            continue
        pairs = training_pairs(
            vectors,
            np.asarray(product_ids).astype(str),
            shopper_vectors=shopper_vectors[keep],
            shopper_labels=labels[keep],
        )
        try:
            out.append((np.flatnonzero(~keep), fit_adaptation(vectors, pairs, min_products=5)))
        except TooFewPairsError:
            out.append((np.flatnonzero(~keep), None))
    return out


# ---------------------------------------------------------------- the calibration


def calibrate(
    raw_vectors: np.ndarray,
    product_ids: Sequence[str],
    *,
    adapted: bool,
    index_vectors: np.ndarray,
    post: Any = None,
    simulated: tuple[np.ndarray, Sequence[str], Sequence[int]] | None = None,
    shopper: tuple[np.ndarray, Sequence[str]] | None = None,
    seed: int = 0,
    pair_folds: str = "session",
    session_cosine: float = SESSION_COSINE,
    settings: Mapping[str, Any] | None = None,
) -> VerdictCalibration:
    """The verdict for a new generation (see the module docstring).

    raw_vectors: catalog vectors in model space; index_vectors: as stored (projected, whitened...);
    post: a callable mapping projected vectors to index space (whitening), or None;
    simulated: (model-space vectors, product ids, catalog row each photo was made from);
    shopper: (model-space vectors, product ids) of confirmed shopper photos;
    pair_folds: how confirmed photos are cross-fitted when the index is adapted - "session" (a
    photo's near-duplicate cluster is held out, its product's other sessions stay in:
    ``session_fitted_projections``) or "product" (its whole product is held out, as for the
    simulated photos and held-out views, which come from the catalog itself); session_cosine: the
    near-duplicate cosine of ``session_clusters``; settings: the query-side settings searches
    use (``fit.query_settings``: query expansion and product scoring are applied to every query; the
    photos' vectors must already have the test-time augmentation, see ``simulated_queries``).

    A simulated photo holds the very pixels of its source image, which a real shopper's photo
    never does; so its source image is removed from the candidates, and it must find its product
    through another image. Photos of single-image products therefore only serve as photos of
    unsold products.
    """
    if pair_folds not in ("session", "product"):
        raise ValueError(f"pair_folds must be 'session' or 'product', got {pair_folds!r}")
    pids = np.asarray(product_ids).astype(str)
    finish = post or (lambda v: v)
    scored: list[QueryScores] = []
    sources: dict[str, int] = {}
    _, inverse, counts = np.unique(pids, return_inverse=True, return_counts=True)
    has_other = counts[inverse] >= 2  # per catalog row: its product has another image
    shopper_like = []
    if simulated is not None and len(simulated[0]):
        rows = np.asarray(simulated[2], dtype=np.int64)
        shopper_like.append(("simulated", simulated[0], np.asarray(simulated[1]).astype(str), rows))
    if shopper is not None and len(shopper[0]):
        shopper_like.append(("train_pairs", shopper[0], np.asarray(shopper[1]).astype(str), None))
    if adapted:
        sv, sl = shopper if shopper is not None else (None, ())
        folds = cross_fitted_projections(
            raw_vectors, pids, shopper_vectors=sv, shopper_labels=sl, seed=seed
        )
    for name, qv, ql, rows in shopper_like:
        # (queries, their rows in qv, catalog, map of its rows): the catalog is projected a block at
        # a time inside the search, never copied whole (a big catalog is a memory map)
        if not adapted:
            parts = [(finish(qv), np.arange(len(qv)), index_vectors, None)]
        elif name == "train_pairs" and pair_folds == "session":
            # each confirmed photo is scored by a projection that never saw its session
            parts = []
            for sel, proj in session_fitted_projections(
                raw_vectors, pids, qv, ql, cosine=session_cosine, seed=seed
            ):
                tr = through(proj, finish)
                parts.append((tr(qv[sel]), sel, raw_vectors, tr))
        else:  # each query is scored by the projection that never saw its product
            parts = []
            for held, proj in folds:
                sel = np.flatnonzero(np.isin(ql, held))
                if len(sel):
                    tr = through(proj, finish)
                    parts.append((tr(qv[sel]), sel, raw_vectors, tr))
        for q, sel, cat, tr in parts:
            if rows is None:
                scored.append(
                    verdict_from_queries(cat, pids, q, ql[sel], transform=tr, settings=settings)
                )
            else:
                found = has_other[rows[sel]]
                scored.append(
                    verdict_from_queries(
                        cat,
                        pids,
                        q[found],
                        ql[sel][found],
                        exclude=[[i] for i in rows[sel][found]],
                        transform=tr,
                        settings=settings,
                    )
                )
                alone = verdict_from_queries(
                    cat, pids, q[~found], ql[sel][~found], transform=tr, settings=settings
                )  # only their unsold side counts
                scored.append(
                    QueryScores(*(np.empty(0),) * 3, alone.unsold_top, alone.unsold_margin)
                )
        sources[name] = int(len(qv))
    if not shopper_like:
        held = _held_out_views(
            raw_vectors, pids, index_vectors, finish, folds if adapted else None, seed, settings
        )
        if held is not None:
            scored.append(held)
            sources["held_out_views"] = int(len(held.top))
    got = QueryScores.concat(scored)
    verdict = calibrate_verdict(
        got.top,
        got.right.astype(bool),
        got.unsold_top,
        margins=got.margin,
        unsold_margins=got.unsold_margin,
        sources=sources,
    )
    if adapted and "train_pairs" in sources:
        how = (
            f"near-duplicate sessions (cosine >= {session_cosine:.2f}) held out, {PAIR_FOLDS} folds"
            if pair_folds == "session"
            else "their products held out"
        )
        verdict = replace(
            verdict, reason=f"{verdict.reason}; confirmed photos cross-fitted with {how}"
        )
        confirmed = frozenset(np.asarray(shopper[1]).astype(str).tolist()) & frozenset(
            pids.tolist()
        )
        if (
            pair_folds == "session"
            and verdict.threshold is not None
            and len(confirmed) < len(counts)
        ):
            # session folds let a photo's product be learnt from its other sessions: the threshold
            # holds for products with confirmed photos (on grocery val, products without any were
            # right 19-50 % of the time at the same leads), so the others get no verdict
            verdict = replace(
                verdict,
                covers=confirmed,
                reason=f"{verdict.reason}; applies to the {len(confirmed)} "
                f"products with confirmed photos (of {len(counts)}); the others get no verdict",
            )
    return verdict


def _held_out_views(
    raw: np.ndarray,
    pids: np.ndarray,
    index_vectors: np.ndarray,
    finish,
    folds,
    seed: int,
    settings=None,
):
    """Leave-one-image-out queries of multi-image products (studio views: the fallback when no
    shopper-like photo is available)."""
    _, inverse, counts = np.unique(pids, return_inverse=True, return_counts=True)
    multi = np.flatnonzero(counts[inverse] >= 2)
    if len(multi) == 0:
        return None
    picked = np.random.default_rng(seed).choice(
        multi, size=min(HELD_OUT_QUERIES, len(multi)), replace=False
    )
    out = []
    if folds is None:
        out.append(
            verdict_from_queries(
                index_vectors,
                pids,
                index_vectors[picked],
                pids[picked],
                exclude=[[i] for i in picked],
                settings=settings,
            )
        )
    else:
        for held, proj in folds:
            sel = picked[np.isin(pids[picked], held)]
            if len(sel) == 0:
                continue
            if proj is None:
                out.append(
                    verdict_from_queries(
                        index_vectors,
                        pids,
                        index_vectors[sel],
                        pids[sel],
                        exclude=[[i] for i in sel],
                        settings=settings,
                    )
                )
                continue
            tr = through(proj, finish)
            out.append(
                verdict_from_queries(
                    raw,
                    pids,
                    tr(raw[sel]),
                    pids[sel],
                    exclude=[[i] for i in sel],
                    transform=tr,
                    settings=settings,
                )
            )
    return QueryScores.concat(out)


# ---------------------------------------------------------------- simulated shopper photos


def simulated_queries(
    embedder: Embedder,
    images: Mapping[str, tuple[str, int]],
    *,
    n: int = SIMULATED_QUERIES,
    prefer: set[str] | frozenset[str] = frozenset(),
    seed: int = 0,
    batch_size: int = 32,
    tta: str = "none",
) -> tuple[np.ndarray, list[str], list[int], int]:
    """Phone-like photos of catalog products (cut out of a catalog image, put on a cluttered
    surface, tilted, re-lit, blurred, noised - ``vsearch.learn.shopper_photos``), embedded.

    images: {product_id: (a local image path of it, its catalog row)}; prefer: products sampled
    first (those with another catalog image, whose photos can be answered right while their source
    image is held out), topped up with others (up to a third of the products). Up to ``n`` photos,
    at most two per product (small catalogs get two, so the verdict has queries to judge). Made at
    400 x 300 on a few reused backgrounds (~40 ms each on 2 cores) - the model sees 224 px anyway.
    ``tta``: each photo's vector is the mean of its test-time augmented views, as
    ``search.embed_query`` makes a query's (one more image through the model per view). Returns
    (vectors, product ids, source rows, photos that could not be made). Deterministic for a seed.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta {tta!r} is not one of {', '.join(TTA_MODES)}")
    from vsearch.errors import CatalogError, ImageError
    from vsearch.learn.shopper_photos import cutout, scenes, shopper_photo

    rng = random.Random(f"vsearch-calibration:{seed}")
    # products with another image: in-catalog queries
    first = sorted(p for p in images if p in prefer)
    # the others can only stand for unsold products
    rest = sorted(p for p in images if p not in prefer)
    chosen = rng.sample(first, min(n, len(first)))
    chosen += rng.sample(rest, min(n - len(chosen), len(rest), max(len(chosen) // 2, n // 4)))
    repeats = 2 if 2 * len(chosen) <= n else 1
    backgrounds = scenes(6, rng)
    vectors, labels, rows, failed, batch = [], [], [], 0, []

    def flush() -> None:
        views = [_tta_views(p, tta) for _, p in batch]
        flat = embedder.embed_images([v for group in views for v in group])
        if tta != "none":  # each photo: the normalised mean of its views
            ends = np.cumsum([len(group) for group in views])
            flat = l2_normalise(
                np.stack([flat[e - len(g) : e].mean(axis=0) for e, g in zip(ends, views)])
            )
        vectors.append(flat)
        labels.extend(pid for pid, _ in batch)
        rows.extend(images[pid][1] for pid, _ in batch)
        batch.clear()

    for i, pid in enumerate(chosen):
        try:
            product = cutout(Path(images[pid][0]), max_side=256)
        except (CatalogError, ImageError, OSError, ValueError):
            failed += 1
            continue
        for r in range(repeats):
            photo_rng = random.Random(f"{seed}:{pid}:{r}")
            batch.append(
                (
                    pid,
                    shopper_photo(
                        product,
                        photo_rng,
                        size=(400, 300),
                        scene=backgrounds[(i + r) % len(backgrounds)],
                    ),
                )
            )
            if len(batch) >= batch_size:
                flush()
    if batch:
        flush()
    dim = int(embedder.dim)
    return (
        (np.concatenate(vectors) if vectors else np.empty((0, dim), np.float32)),
        labels,
        rows,
        failed,
    )


def _tta_views(photo, tta: str) -> list:
    """The views ``search.embed_query`` embeds for a query photo under ``tta``."""
    from PIL import ImageOps

    views = [photo]
    if "flip" in tta:
        views.append(ImageOps.mirror(photo))
    if "pad" in tta:
        views.append(ImageOps.pad(photo, (max(photo.size),) * 2, color=(255, 255, 255)))
    return views


def simulated_photos(
    embedder: Any, images: Sequence[Any], manifest: dict[str, Any], *, tta: str = "none"
):
    """Simulated shopper photos of catalog products (``simulated_queries``, with the searches'
    default ``tta``) as (vectors, product ids, source rows), recorded in the manifest; None without
    a loaded model or without a product that has another image (a single-image catalog cannot
    answer them with the source image held out), which costs nothing to find out again.
    images: the build's image records (product_id, source)."""
    import time
    from collections import Counter

    multi = {p for p, c in Counter(im.product_id for im in images).items() if c >= 2}
    if not hasattr(embedder, "embed_images") or not multi:
        return None
    local: dict[str, tuple[str, int]] = {}
    for row, im in enumerate(images):
        if im.product_id not in local and not im.source.startswith(("http://", "https://")):
            local[im.product_id] = (im.source, row)
    started = time.perf_counter()
    vectors, labels, rows, failed = simulated_queries(embedder, local, prefer=multi, tta=tta)
    manifest["verdict_simulation"] = {
        "photos": len(labels),
        "failed": failed,
        "seconds": round(time.perf_counter() - started, 2),
        "tta": tta,
    }
    return vectors, labels, rows
