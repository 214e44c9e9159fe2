"""The build's learning step, between the embedding cache and the store.

1. Catalog adaptation (``vsearch.learn.adaptation``): learned from the catalog's multi-image
  products
   and from confirmed shopper photos (``--train-pairs``), on cached vectors. It is refit only when
   the images it would learn from changed by more than ``REFIT_FRACTION`` since the projection in
   use was fitted (or on request); otherwise the previous generation's projection is reused, so a
   small catalog change keeps the vector space and later index updates can stay incremental.
2. The "close match" verdict (``vsearch.learn.calibration.calibrate_verdict``), calibrated on
  queries
   that look like a shopper's: simulated phone photos of catalog products (the only images the
   build runs the model on that are not in the catalog) scored by a projection fitted without
   their products, confirmed shopper photos scored by one fitted without their photo session
   (``session_folds``), and - when neither is available - held-out catalog views, again scored
   by a projection fitted without their products.

Pure functions of vectors and labels, plus ``simulated_queries`` which needs the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from vsearch.learn.adaptation import TooFewPairsError, fit_adaptation, training_pairs
from vsearch.learn.calibration import VerdictCalibration, calibrate_verdict
from vsearch.learn.transforms import Projection, l2_normalise, nearest, query_expand
from vsearch.query_options import QUERY_DEFAULTS, TTA_MODES, product_score
from vsearch.store.generations import content_key

if TYPE_CHECKING:
    from vsearch.embedders import Embedder

ADAPT_MODES = ("auto", "off", "refit")
REFIT_FRACTION = 0.10  # refit when > 10 % of the images/pairs the projection learned from changed
MEMBERS_FILE = "adaptation_members.json"
SIMULATED_QUERIES = 240  # simulated shopper photos per build (about 8 s of EfficientNet on 2 cores)
HELD_OUT_QUERIES = 1000
PAIR_FOLDS = 5  # calibration folds of the confirmed shopper photos (one projection fit each)
# a catalog-only projection that significantly breaks simulated shopper photos is dropped
SHOPPER_CHECK_ALPHA = 0.05
# confirmed photos of one product this similar count as one session (RESULTS.md)
SESSION_COSINE = 0.80
DEFAULT_QE_ALPHA = 3.0  # the alpha a query expansion without one uses (``search.search_vector``)


# ---------------------------------------------------------------- adaptation: fit or reuse


def member_keys(
    product_ids: Sequence[str], image_keys: Sequence[str], *, multi_only: bool = True
) -> list[str]:
    """Short digests of (product, image) for the images adaptation learns from: images of
    products with >= 2 images (catalog), or every given pair (``multi_only=False``, train pairs)."""
    pids = np.asarray(product_ids).astype(str)
    if multi_only and len(pids):
        _, inverse, counts = np.unique(pids, return_inverse=True, return_counts=True)
        keep = counts[inverse] >= 2
    else:
        keep = np.ones(len(pids), dtype=bool)
    return sorted(
        {
            hashlib.sha1(f"{p}\t{k}".encode()).hexdigest()[:16]
            for p, k, ok in zip(pids.tolist(), image_keys, keep.tolist())
            if ok
        }
    )


def changed_fraction(before: Sequence[str], after: Sequence[str]) -> float:
    """Share of the training members that were added or removed, relative to the earlier set."""
    a, b = set(before), set(after)
    return len(a ^ b) / max(len(a), 1)


@dataclass(frozen=True)
class Adaptation:
    """What the build decided: the projection to apply (None = none) and the manifest record."""

    projection: Projection | None
    record: dict[str, Any]


def adapt(
    tmp: Path,
    vectors: np.ndarray,
    product_ids: Sequence[str],
    image_keys: Sequence[str],
    *,
    mode: str,
    model_fingerprint: str,
    previous: Path | None,
    shopper_vectors: np.ndarray | None = None,
    shopper_labels: Sequence[str] = (),
    shopper_keys: Sequence[str] = (),
) -> Adaptation:
    """Fit, reuse or skip the catalog adaptation; write its files into the new generation ``tmp``.

    previous: the live generation folder (its projection is reused when the training members
    changed by at most REFIT_FRACTION and the model is the same). Raises ValueError for a bad mode.
    """
    if mode not in ADAPT_MODES:
        raise ValueError(f"adapt must be one of {', '.join(ADAPT_MODES)}, got {mode!r}")
    if mode == "off":
        return Adaptation(None, {"state": "off"})
    members = member_keys(product_ids, image_keys) + member_keys(
        shopper_labels, shopper_keys, multi_only=False
    )
    if mode == "auto" and previous is not None:
        reused = _reuse(previous, tmp, members, model_fingerprint)
        if reused is not None:
            return reused
    pairs = training_pairs(
        vectors,
        np.asarray(product_ids),
        shopper_vectors=shopper_vectors,
        shopper_labels=np.asarray(shopper_labels),
    )
    try:
        projection = fit_adaptation(vectors, pairs)
    except TooFewPairsError as e:
        return Adaptation(None, {"state": "skipped", "reason": str(e), "products": pairs.products})
    record = {
        "state": "fitted",
        "model_fingerprint": model_fingerprint,
        **projection.save(tmp),
        "refit_fraction": REFIT_FRACTION,
        "members": len(members),
    }
    (tmp / MEMBERS_FILE).write_text(json.dumps(members), encoding="utf-8")
    return Adaptation(projection, record)


def _reuse(
    previous: Path, tmp: Path, members: list[str], model_fingerprint: str
) -> Adaptation | None:
    """The previous generation's projection, if its training members barely changed."""
    from vsearch.errors import VsearchError
    from vsearch.store.generations import read_manifest

    try:
        entry = read_manifest(previous).get("adaptation") or {}
        rejected = entry.get("state") == "rejected"
        if (
            not (entry.get("files") or rejected)
            or entry.get("model_fingerprint") != model_fingerprint
        ):
            return None
        before = json.loads((previous / MEMBERS_FILE).read_text(encoding="utf-8"))
        projection = None if rejected else Projection.load(previous, entry)
    except (OSError, ValueError, KeyError, TypeError, VsearchError):  # unreadable: refit instead
        return None
    change = changed_fraction(before, members)
    if change > REFIT_FRACTION:
        return None
    for name in [*(entry.get("files") or {}).values(), MEMBERS_FILE]:
        _link_or_copy(previous / name, tmp / name)
    if rejected:  # the same decision, without refitting and re-checking (which runs the model)
        return Adaptation(
            None, {**entry, "reused_from": previous.name, "changed_fraction": round(change, 4)}
        )
    record = {
        **entry,
        "state": "reused",
        "reused_from": previous.name,
        "changed_fraction": round(change, 4),
    }
    return Adaptation(projection, record)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Generations are immutable, so sharing a file by hard link is safe; copy where links fail."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# ---------------------------------------------------------------- the verdict


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


def query_settings(query_defaults: Mapping[str, Any] | None) -> dict[str, Any]:
    """The query-side settings a verdict is calibrated with and applies to, spelt out in full
    (the manifest's ``verdict["query_settings"]``; searches whose settings differ get no
    verdict)."""
    opts = {**QUERY_DEFAULTS, **dict(query_defaults or {})}
    qe = dict(opts.get("query_expansion") or {})
    return {
        "tta": str(opts["tta"]),
        "product_scoring": str(opts["product_scoring"]),
        "query_expansion": {
            "k": int(qe.get("k", 0) or 0),
            "alpha": float(qe.get("alpha", DEFAULT_QE_ALPHA)),
        },
    }


def settings_withheld(settings: Mapping[str, Any], *, simulated: bool, train_pairs: bool) -> str:
    """Why no verdict can be calibrated with these settings ('' when one can): test-time
    augmentation changes the query photo itself, and only simulated shopper photos (made at build)
    can be embedded again with it; confirmed shopper photos and held-out catalog views come from
    the embedding cache."""
    if settings.get("tta", "none") == "none":
        return ""
    if train_pairs:
        queries = (
            "the confirmed shopper photos (--train-pairs), whose vectors come from the "
            "embedding cache"
        )
    elif not simulated:
        queries = (
            "held-out catalog images (no simulated shopper photos: no model loaded, or no "
            "product with two images)"
        )
    else:
        return ""
    return (
        f"no verdict: searches use tta {settings['tta']!r} by default (--default-tta) and the "
        "verdict would be "
        f"calibrated on {queries} without it; build with --default-tta none for a verdict"
    )


def reuse_verdict(
    previous: Path | None,
    manifest: Mapping[str, Any],
    image_keys: Sequence[tuple[str, str]],
    *,
    train_pairs: bool,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The previous generation's verdict, when this build cannot have moved it much: same model,
    the same vector space (its projection reused, or none either way; no whitening/DBA), the same
    query-side ``settings`` (``query_settings``) and at most REFIT_FRACTION of the catalog's images
    (``content_key``s) added, removed or replaced since the build that calibrated it. Calibrating
    costs simulated photos through the model and two projection fits - far more than a small catalog
    change. Builds with train pairs always recalibrate (their photos are not tracked here)."""
    from vsearch.errors import VsearchError
    from vsearch.store.generations import read_image_records, read_manifest

    if previous is None or train_pairs:
        return None
    try:
        old = read_manifest(previous)
        verdict = old.get("verdict") or {}
        # turned off, or learnt from pairs
        if "sources" not in verdict or verdict["sources"].get("train_pairs"):
            return None
        if (verdict.get("query_settings") or query_settings(None)) != (
            settings or query_settings(None)
        ):
            return None  # calibrated for other query-side settings
        if old["model"].get("fingerprint") != manifest["model"]["fingerprint"]:
            return None
        post_old, post_new = old.get("postprocess") or {}, manifest.get("postprocess") or {}
        if any(p.get("whitening") or p.get("dba") for p in (post_old, post_new)):
            return None
        ad_old, ad_new = old.get("adaptation") or {}, manifest.get("adaptation") or {}
        same_space = (
            ad_new.get("state") == "reused" and ad_new.get("reused_from") == previous.name
        ) or (not ad_new.get("files") and not ad_old.get("files"))
        if not same_space:
            return None
        before = read_image_records(previous)
    except (OSError, KeyError, TypeError, ValueError, VsearchError):
        return None
    before_set = {content_key(pid, source, digest) for _, pid, source, _, digest in before}
    after_set = set(map(tuple, image_keys))
    since = float(verdict.get("changed_since_calibration", 0)) + len(before_set ^ after_set) / max(
        len(before_set), 1
    )
    # counted since the build that calibrated it, so small changes cannot add up
    if since > REFIT_FRACTION:
        return None
    return {
        **verdict,
        "calibrated_in": verdict.get("calibrated_in", previous.name),
        "changed_since_calibration": round(since, 4),
    }


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
    does. transform: applied to the catalog rows a block at a time (``transforms.nearest``), so a
    cross-fitted projection of a memory-mapped catalog is never held whole.
    settings: the query-side settings searches will use (``query_settings``): query expansion
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


def shopper_check(
    raw_vectors: np.ndarray,
    product_ids: Sequence[str],
    projection: Projection,
    simulated: tuple[np.ndarray, Sequence[str], Sequence[int]],
    *,
    alpha: float = SHOPPER_CHECK_ALPHA,
) -> dict[str, Any]:
    """Does a projection learned from the catalog's own views make shopper-like photos worse?

    The build's simulated photos of products with another image (source image held out) are
    searched with and without the projection; of the photos it changes, ``fixed`` it turns
    right and ``broken`` it turns wrong. ``rejected`` when it breaks significantly more than it
    fixes (one-sided sign test, p < ``alpha``): studio views of a small catalog can teach a map
    that pulls its products' views together and shopper photos apart. Measured (RESULTS.md):
    jumia 12 broken / 13 fixed of 240 (p 0.66), the sample demo 11 / 4 of 64 (p 0.059): both
    kept."""
    pids = np.asarray(product_ids).astype(str)
    _, inverse, counts = np.unique(pids, return_inverse=True, return_counts=True)
    rows = np.asarray(simulated[2], dtype=np.int64)
    sel = np.flatnonzero(counts[inverse][rows] >= 2)
    queries, labels, exclude = (
        np.asarray(simulated[0])[sel],
        np.asarray(simulated[1]).astype(str)[sel],
        [[r] for r in rows[sel]],
    )
    before, after = (
        verdict_from_queries(raw_vectors, pids, tr(queries), labels, exclude=exclude, transform=tr)
        for tr in (_through(None, _same), _through(projection, _same))
    )
    fixed = int((~before.right & after.right).sum())
    broken = int((before.right & ~after.right).sum())
    n = fixed + broken
    p = sum(math.comb(n, k) for k in range(broken, n + 1)) / 2**n if n else 1.0
    return {
        "photos": int(len(sel)),
        "right_without": int(before.right.sum()),
        "right_with": int(after.right.sum()),
        "fixed": fixed,
        "broken": broken,
        "p_value": round(p, 4),
        "rejected": bool(broken > fixed and p < alpha),
    }


def reject(tmp: Path, adaptation: Adaptation, check: Mapping[str, Any]) -> Adaptation:
    """Drop a fitted projection that ``shopper_check`` rejected: its files leave the new generation
    and the manifest says why (``vsearch info`` shows it). The training members stay, so a rebuild
    whose catalog barely changed reuses the decision (``_reuse``) instead of refitting and making
    simulated photos again, and the vector space - hence incremental updates - stays put."""
    for name in (adaptation.record.get("files") or {}).values():
        (tmp / name).unlink(missing_ok=True)
    record = adaptation.record
    return Adaptation(
        None,
        {
            "state": "rejected",
            "shopper_check": dict(check),
            "model_fingerprint": record.get("model_fingerprint"),
            "refit_fraction": REFIT_FRACTION,
            "members": record.get("members"),
            "reason": f"it made {check['broken']} simulated shopper photos wrong and "
            f"{check['fixed']} "
            f"right (of {check['photos']}; sign test p = {check['p_value']})",
        },
    )


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
    use (``query_settings``: query expansion and product scoring are applied to every query; the
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
                tr = _through(proj, finish)
                parts.append((tr(qv[sel]), sel, raw_vectors, tr))
        else:  # each query is scored by the projection that never saw its product
            parts = []
            for held, proj in folds:
                sel = np.flatnonzero(np.isin(ql, held))
                if len(sel):
                    tr = _through(proj, finish)
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
            tr = _through(proj, finish)
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


def _same(v: np.ndarray) -> np.ndarray:
    return v


def _through(
    proj: Projection | None, finish: Callable[[np.ndarray], np.ndarray]
) -> Callable[[np.ndarray], np.ndarray]:
    """Row-wise map of model-space vectors into a cross-fitted index space: the fold's projection
    (or plain normalisation when it had too few pairs), then the index's post-processing."""
    return lambda v: finish(proj.apply(v) if proj is not None else l2_normalise(v))


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
