"""Catalog adaptation: a linear projection of the model's vectors learned from the shop's own data.

A general image model places two photos of one product about as close as two different products
of the same kind (measured: jumia held-out views R@1 0.30 with EfficientNet). The shop already
has supervision for free: several photos of one product are positives for each other, and a
shopper photo confirmed to show a product (``--train-pairs``) is a positive for that product's
packshots. From those matching pairs we learn *supervised whitening* (Radenovic et al., "Fine-tuning
CNN image retrieval with no human annotation", TPAMI 2018, the "Lw" projection):

1. the scatter of matching-pair differences is whitened away (the directions in which photos of
   one product vary - viewpoint, background, lighting, the shopper-photo -> packshot gap - are
   shrunk), with shrinkage towards the identity so a small catalog cannot blow up noise;
2. the whitened vectors are rotated onto the principal directions of the whole catalog and the
   weakest ones are dropped (they carry little that tells products apart).

It is closed-form (two eigendecompositions of d x d matrices: ~1 s for d = 1280), deterministic,
and trains on cached vectors only - the model never runs. The result is a ``Projection``
(``vsearch.learn.transforms``), stored in the index generation and applied to catalog and query
vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vsearch.learn.transforms import Projection, row_blocks

MIN_PRODUCTS = 20  # products with >= 2 images (or with a confirmed photo) needed to learn anything
# fraction of the mean eigenvalue added to the pair scatter (measured, RESULTS.md)
DEFAULT_SHRINKAGE = 0.3
DEFAULT_KEEP = 0.5  # share of dimensions kept after the rotation (measured, RESULTS.md)
PAIR_WEIGHT = 2.0  # weight of one confirmed shopper photo against one catalog image's deviation


class TooFewPairsError(ValueError):
    """The catalog (plus train pairs) has too few matching pairs to learn a projection."""


@dataclass(frozen=True)
class TrainingPairs:
    """The scatter of matching-pair differences, accumulated without listing the pairs.

    Over all pairs (a, b) of images of one product, sum (x_a - x_b)(x_a - x_b)^T weighted by
    1 / n_product equals the within-product scatter sum_i (x_i - m_p)(x_i - m_p)^T, so it costs one
    pass over the vectors (seconds at 50,000 images) instead of a pair list that grows
    quadratically with a product's photo count. A confirmed shopper photo q of product p adds
    (q - m_p)(q - m_p)^T with weight ``PAIR_WEIGHT``.
    """

    scatter: np.ndarray  # [d, d] float64, weighted sum of pair-difference outer products
    weight: float  # total weight in ``scatter``
    catalog_products: int  # products with >= 2 catalog images
    catalog_images: int  # images of those products
    shopper_pairs: int  # confirmed shopper photos of a catalog product
    products: int  # distinct products with at least one pair


def training_pairs(
    vectors: np.ndarray,
    labels: np.ndarray,
    *,
    shopper_vectors: np.ndarray | None = None,
    shopper_labels: np.ndarray | None = None,
    pair_weight: float = PAIR_WEIGHT,
) -> TrainingPairs:
    """Matching pairs from catalog images of one product, plus (shopper photo, its product) for
    confirmed photos. Shopper photos of products that are not in ``labels`` are ignored.

    ``vectors`` is read a block of rows at a time (``transforms.row_blocks``, two passes), so a
    memory-mapped catalog is never copied whole; what is held is one mean per product that has a
    pair."""
    vectors = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors, dtype=np.float32)
    labels = np.asarray(labels).astype(str)
    n, d = vectors.shape
    uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    multi = counts[inverse] >= 2
    has_shopper = shopper_vectors is not None and len(shopper_vectors) > 0
    rows = np.zeros(0, dtype=np.int64)
    if has_shopper:
        col = {p: i for i, p in enumerate(uniq.tolist())}
        rows = np.asarray(
            [col.get(str(lab), -1) for lab in np.asarray(shopper_labels).astype(str)],
            dtype=np.int64,
        )
    need = counts >= 2
    need[rows[rows >= 0]] = True
    slot = np.full(len(uniq), -1, dtype=np.int64)
    slot[need] = np.arange(int(need.sum()))
    sums = np.zeros((int(need.sum()), d), dtype=np.float64)
    for c in row_blocks(n):
        s = slot[inverse[c]]
        if (s >= 0).any():
            _add_rows(sums, s[s >= 0], np.asarray(vectors[c], dtype=np.float32)[s >= 0])
    means = (sums / np.maximum(counts[need], 1)[:, None]).astype(np.float32)
    scatter = np.zeros((d, d), dtype=np.float64)
    for c in row_blocks(n):
        m = multi[c]
        if m.any():
            dev = np.asarray(vectors[c], dtype=np.float32)[m] - means[slot[inverse[c][m]]]
            # float32 products: N x d^2 is the build's main cost
            scatter += (dev.T @ dev).astype(np.float64)
    weight = float(multi.sum())
    products = set(uniq[counts >= 2].tolist())
    n_shopper = 0
    if has_shopper:
        q = np.asarray(shopper_vectors, dtype=np.float32)
        ok = rows >= 0
        if ok.any():
            qd = q[ok] - means[slot[rows[ok]]]
            scatter = scatter + pair_weight * (qd.T @ qd).astype(np.float64)
            weight += pair_weight * int(ok.sum())
            products.update(uniq[rows[ok]].tolist())
            n_shopper = int(ok.sum())
    return TrainingPairs(
        scatter=scatter,
        weight=weight,
        catalog_products=int((counts >= 2).sum()),
        catalog_images=int(multi.sum()),
        shopper_pairs=n_shopper,
        products=len(products),
    )


def fit_adaptation(
    vectors: np.ndarray,
    pairs: TrainingPairs,
    *,
    shrinkage: float = DEFAULT_SHRINKAGE,
    keep: float = DEFAULT_KEEP,
    min_products: int = MIN_PRODUCTS,
) -> Projection:
    """Supervised whitening from matching pairs (see the module docstring).

    vectors: the catalog's vectors [n, d] (the rotation is fitted on them); pairs: from
    ``training_pairs``; shrinkage: added to the pair scatter's eigenvalues as a fraction of their
    mean; keep: share of output dimensions kept (the rest are the catalog's weakest directions).
    Raises TooFewPairsError when fewer than ``min_products`` products have a matching pair.
    """
    if pairs.products < min_products:
        raise TooFewPairsError(
            f"catalog adaptation needs at least {min_products} products with two or more images "
            "(or a "
            f"confirmed shopper photo); this catalog has {pairs.products}. Add photos, pass "
            "--train-pairs, "
            "or build with --adapt off"
        )
    if shrinkage < 0 or not 0 < keep <= 1:
        raise ValueError(f"shrinkage must be >= 0 and keep in (0, 1], got {shrinkage} and {keep}")
    vectors = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    mean = sum(
        np.asarray(vectors[c], dtype=np.float32).sum(axis=0, dtype=np.float64)
        for c in row_blocks(n)
    ) / max(n, 1)
    total = np.zeros((d, d), dtype=np.float64)  # catalog covariance, a chunk of rows at a time
    for c in row_blocks(n):
        xc = np.asarray(vectors[c], dtype=np.float32) - mean.astype(np.float32)
        total += (xc.T @ xc).astype(np.float64)
    total /= max(n - 1, 1)
    scatter = pairs.scatter / max(pairs.weight, 1e-12)
    ev, evec = np.linalg.eigh((scatter + scatter.T) / 2)
    ev = np.clip(ev, 0.0, None)
    ev = ev + shrinkage * float(ev.mean()) + 1e-12
    whiten = (evec * ev**-0.5) @ evec.T  # symmetric inverse square root of the pair scatter
    cov = whiten.T @ total @ whiten  # covariance of the whitened catalog
    ev2, evec2 = np.linalg.eigh((cov + cov.T) / 2)
    order = np.argsort(ev2)[::-1]
    out_dim = max(1, int(round(keep * d)))
    matrix = whiten @ evec2[:, order[:out_dim]]
    # unit-ish scale, for readability
    matrix /= np.sqrt(max(float(ev2[order[:out_dim]].sum()), 1e-12))
    # Zero-pad to the model's dimension so an index keeps one dim whatever was learned.
    full = np.zeros((d, d), dtype=np.float64)
    full[:, :out_dim] = matrix
    return Projection(
        mean=mean.astype(np.float32),
        matrix=np.ascontiguousarray(full, dtype=np.float32),
        info={
            "method": "supervised-whitening",
            "shrinkage": float(shrinkage),
            "dims_kept": out_dim,
            "catalog_products": pairs.catalog_products,
            "catalog_images": pairs.catalog_images,
            "shopper_pairs": pairs.shopper_pairs,
            "products": pairs.products,
            "fitted_on": n,
        },
    )


def _add_rows(sums: np.ndarray, slots: np.ndarray, rows: np.ndarray) -> None:
    """sums[slots[i]] += rows[i] for every i, repeated slots included (a sort and one reduceat)."""
    order = np.argsort(slots, kind="stable")
    s = slots[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    sums[s[starts]] += np.add.reduceat(rows[order], starts, axis=0)
