"""Label-free signals the build learns from the catalog's own vectors: the "close match"
threshold and leave-one-image-out recall. Pure numpy + FAISS on stored vectors, so both the
build (below the search stage) and the evaluation (above it) can use them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from .transforms import nearest, query_expand



@dataclass(frozen=True)
class ThresholdCalibration:
    """A close-match threshold learned from the catalog's own score distribution."""

    threshold: float | None  # None: the catalog cannot tell (no multi-image products); every hit stays confident
    method: str
    positives: int
    negatives: int
    positive_median: float
    negative_median: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) and not math.isnan(v) else v) for k, v in asdict(self).items()}


MIN_POSITIVES = 20
POSITIVE_QUANTILE = 0.10
DUPLICATE_SCORE = 0.999  # byte-identical or re-encoded copies say nothing about "the same product"


def calibrate_threshold(vectors: np.ndarray, product_of_image: np.ndarray, *, sample: int = 1000, seed: int = 0,
                        query_expansion: Mapping[str, Any] | None = None) -> ThresholdCalibration | None:
    """A "close match" threshold from the index's own vectors (as stored: after whitening/DBA).

    For sampled images of multi-image products, with the image itself removed, the best score of
    another image of the same product is how well a *new photo of a sold product* scores; the
    threshold is its 10th percentile, so ~90 % of such photos are called confident. (Measured on
    jumia: "nearest other product" scores are no lower than same-product scores - neighbours are
    similar products of the same kind - so a threshold between the two, e.g. Youden's J, is
    degenerate; photos of things the shop does not sell score far lower than either.)
    Catalogs without >= 20 multi-image products get threshold None: nothing to learn from.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    product_of_image = np.asarray(product_of_image)
    n = len(vectors)
    if n < 3 or len(np.unique(product_of_image)) < 2:
        return None
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(product_of_image, return_inverse=True)
    multi = np.flatnonzero(np.bincount(inverse)[inverse] >= 2)
    pool = multi if len(multi) else np.arange(n)
    picked = rng.choice(pool, size=min(sample, len(pool)), replace=False)
    scores, ids = nearest(vectors[picked], vectors, min(n, 64))
    qe = dict(query_expansion or {})
    positives, negatives = [], []
    for row, vid in enumerate(picked):
        keep = (ids[row] != vid) & (ids[row] >= 0)
        s, i = scores[row][keep], ids[row][keep]
        if qe.get("k", 0) > 0 and len(i):
            m = int(qe["k"])
            q = query_expand(vectors[vid], vectors[i[:m]], s[:m], alpha=float(qe.get("alpha", 3.0)))
            s = vectors[i] @ q
            order = np.argsort(-s)
            s, i = s[order], i[order]
        useful = s < DUPLICATE_SCORE
        s, i = s[useful], i[useful]
        same = inverse[i] == inverse[vid]
        if same.any():
            positives.append(float(s[same][0]))
        if (~same).any():
            negatives.append(float(s[~same][0]))
    neg_median = float(np.median(negatives)) if negatives else math.nan
    if len(positives) < MIN_POSITIVES:
        return ThresholdCalibration(None, "none: fewer than 20 multi-image products", len(positives), len(negatives),
                                    float(np.median(positives)) if positives else math.nan, neg_median)
    pos = np.asarray(positives)
    return ThresholdCalibration(float(np.quantile(pos, POSITIVE_QUANTILE)), "held-out-view-quantile", len(pos),
                                len(negatives), float(np.median(pos)), neg_median)


def held_out_recall(vectors: np.ndarray, product_of_image: np.ndarray, *, sample: int = 1000, seed: int = 0) -> tuple[float, int]:
    """(R@1, n) of leave-one-image-out retrieval on stored vectors: each sampled image of a
    multi-image product, with itself removed, must rank its own product first (max over images).
    The cheap, label-free signal build uses to decide per catalog whether whitening helps."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    _, inverse = np.unique(np.asarray(product_of_image), return_inverse=True)
    multi = np.flatnonzero(np.bincount(inverse)[inverse] >= 2)
    if len(multi) == 0:
        return 0.0, 0
    picked = np.random.default_rng(seed).choice(multi, size=min(sample, len(multi)), replace=False)
    _, ids = nearest(vectors[picked], vectors, 2)
    top = np.where(ids[:, 0] == picked, ids[:, 1], ids[:, 0])
    return float(np.mean(inverse[top] == inverse[picked])), len(picked)
