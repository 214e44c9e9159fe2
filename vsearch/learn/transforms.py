"""Vector post-processing for instance retrieval, independent of the embedding model.

Established techniques, each a plain function on float32 arrays so the build, the search
and the evaluation all run the same code:

- PCA-whitening fitted on the catalog's own vectors (unsupervised): removes the directions
  every product shares (background, lighting, "this is a photo") that dominate raw cosine
  similarity. Stored in the index generation as .npy files, never pickled.
- Database-side augmentation (DBA): each catalog vector is replaced by a weighted mean of
  itself and its nearest catalog neighbours, which pulls a product's views together.
- alpha-query expansion (alpha-QE): the query is re-issued as a weighted mean of itself and
  its top catalog matches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WHITENING_MEAN_FILE = "whitening_mean.npy"
WHITENING_PROJECTION_FILE = "whitening_projection.npy"
MIN_WHITENING_VECTORS = 32  # below this a covariance says nothing; whitening is skipped


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 and C-contiguous (what FAISS inner product wants)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


# ---------------------------------------------------------------- learned projection

SMALL_BATCH = 8  # rows up to which a projection is applied without BLAS threads (queries)
_BLAS_LOCK = threading.Lock()
_blas = {"controller": None, "limit": None, "users": 0}  # one limit shared by concurrent queries


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS on one thread while a query does a few larger products.

    OpenBLAS's worker threads keep spinning after a multi-threaded call and take the cores from
    the model's next forward pass: a locate query measured 3.6x a plain search with them, 2.3x
    without (benchmarks/RESULTS.md, "Zooming in"). The setting is process-wide, so concurrent
    queries share one limit: the first in sets it, the last out restores it."""
    from threadpoolctl import ThreadpoolController

    with _BLAS_LOCK:
        # finding the loaded BLAS libraries costs milliseconds: once
        if _blas["controller"] is None:
            _blas["controller"] = ThreadpoolController()
        if _blas["users"] == 0:
            _blas["limit"] = _blas["controller"].limit(limits=1, user_api="blas")
        _blas["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas["users"] -= 1
            if _blas["users"] == 0:
                _blas["limit"].restore_original_limits()
                _blas["limit"] = None


def project(x: np.ndarray, mean: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """normalise((x - mean) @ matrix): every learned linear map here (adaptation, whitening).

    A query (a few rows) goes through a plain loop (~0.6 ms for 1280 x 1280): numpy's
    multi-threaded BLAS measured 4.6 ms on 2 busy cores and would take the cores from the model.
    """
    x = np.asarray(x, dtype=np.float32) - mean
    if x.ndim == 2 and len(x) <= SMALL_BATCH:
        return l2_normalise(np.einsum("nj,jk->nk", x, matrix))
    return l2_normalise(x @ matrix)


@dataclass(frozen=True)
class Projection:
    """x -> normalise((x - mean) @ matrix): a learned linear map of model vectors (catalog
    adaptation, see ``vsearch.learn.adaptation``). ``matrix`` is [d, d] (learned directions first,
    the rest zero), so an index keeps the model's dim. ``info`` says what it was learned from."""

    mean: np.ndarray  # [d]
    matrix: np.ndarray  # [d, d]
    info: Mapping[str, Any]

    def apply(self, x: np.ndarray) -> np.ndarray:
        return project(x, self.mean, self.matrix)

    def save(self, folder: str | Path, name: str = "adaptation") -> dict[str, Any]:
        """Write ``<name>_mean.npy`` / ``<name>_matrix.npy`` into the generation; returns the
        manifest entry."""
        folder = Path(folder)
        files = {"mean": f"{name}_mean.npy", "matrix": f"{name}_matrix.npy"}
        np.save(folder / files["mean"], self.mean.astype(np.float32), allow_pickle=False)
        np.save(folder / files["matrix"], self.matrix.astype(np.float32), allow_pickle=False)
        return {**dict(self.info), "files": files}

    @classmethod
    def load(cls, folder: str | Path, entry: Mapping[str, Any]) -> Projection:
        from vsearch.errors import IndexFormatError

        folder = Path(folder)
        try:
            mean = np.load(folder / entry["files"]["mean"], allow_pickle=False)
            matrix = np.load(folder / entry["files"]["matrix"], allow_pickle=False)
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise IndexFormatError(
                f"{folder}: learned projection files unreadable ({e}); rebuild the index"
            ) from None
        if (
            mean.ndim != 1
            or matrix.shape != (mean.shape[0], mean.shape[0])
            or not np.isfinite(matrix).all()
        ):
            raise IndexFormatError(
                f"{folder}: learned projection has shapes {mean.shape} and {matrix.shape}; "
                "expected [d] and [d, d]"
            )
        info = {k: v for k, v in entry.items() if k != "files"}
        return cls(
            mean=mean.astype(np.float32),
            matrix=np.ascontiguousarray(matrix, dtype=np.float32),
            info=info,
        )


# ---------------------------------------------------------------- whitening


@dataclass(frozen=True)
class Whitening:
    """x -> normalise((x - mean) @ projection); dimension-preserving, so indexes keep the model's
    dim."""

    mean: np.ndarray  # [d]
    projection: np.ndarray  # [d, d]
    power: float
    shrinkage: float
    components: int
    fitted_on: int

    def apply(self, x: np.ndarray) -> np.ndarray:
        return project(x, self.mean, self.projection)

    def save(self, folder: str | Path) -> dict[str, Any]:
        """Write the arrays beside the index; returns the manifest entry that describes them."""
        folder = Path(folder)
        np.save(folder / WHITENING_MEAN_FILE, self.mean.astype(np.float32), allow_pickle=False)
        np.save(
            folder / WHITENING_PROJECTION_FILE,
            self.projection.astype(np.float32),
            allow_pickle=False,
        )
        return {
            "mean": WHITENING_MEAN_FILE,
            "projection": WHITENING_PROJECTION_FILE,
            "power": self.power,
            "shrinkage": self.shrinkage,
            "components": self.components,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def load(cls, folder: str | Path, entry: Mapping[str, Any]) -> Whitening:
        from vsearch.errors import IndexFormatError

        folder = Path(folder)
        try:
            mean = np.load(folder / entry["mean"], allow_pickle=False)
            proj = np.load(folder / entry["projection"], allow_pickle=False)
        except (OSError, KeyError, ValueError) as e:
            raise IndexFormatError(
                f"{folder}: whitening files unreadable ({e}); rebuild the index"
            ) from None
        if mean.ndim != 1 or proj.shape != (mean.shape[0], mean.shape[0]):
            raise IndexFormatError(
                f"{folder}: whitening arrays have shapes {mean.shape} and {proj.shape}; expected "
                "[d] and [d, d]"
            )
        return cls(
            mean=mean.astype(np.float32),
            projection=np.ascontiguousarray(proj, dtype=np.float32),
            power=float(entry.get("power", 0.5)),
            shrinkage=float(entry.get("shrinkage", 0.0)),
            components=int(entry.get("components", mean.shape[0])),
            fitted_on=int(entry.get("fitted_on", 0)),
        )


def fit_whitening(
    vectors: np.ndarray,
    *,
    power: float = 0.5,
    shrinkage: float = 0.1,
    components: int | None = None,
) -> Whitening:
    """PCA-whitening learned from (catalog) vectors.

    power: eigenvalue exponent; 0.5 is full whitening, 0 only centres and rotates, values in
    between flatten the spectrum partially (robust when the catalog is small).
    shrinkage: added to every eigenvalue as a fraction of the mean eigenvalue, so directions
    the catalog barely spans are not blown up into noise.
    components: keep only the top principal directions (the rest map to zero).
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"whitening needs a [n >= 2, d] array of vectors, got shape {x.shape}")
    if power < 0 or shrinkage < 0:
        raise ValueError(f"whitening power and shrinkage must be >= 0, got {power} and {shrinkage}")
    n, d = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / max(n - 1, 1)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.clip(eigval[order], 0.0, None), eigvec[:, order]
    keep = d if components is None else max(1, min(int(components), d))
    eps = shrinkage * float(eigval.mean()) + 1e-12
    scale = (eigval + eps) ** (-power)
    scale[keep:] = 0.0
    proj = (eigvec * scale[None, :]).astype(np.float32)
    return Whitening(
        mean=mean.astype(np.float32),
        projection=np.ascontiguousarray(proj),
        power=float(power),
        shrinkage=float(shrinkage),
        components=keep,
        fitted_on=n,
    )


# ---------------------------------------------------------------- neighbours, DBA, QE


# rows of a (possibly memory-mapped) catalog read at a time: one copy of it is never made
BLOCK_ROWS = 65_536


def row_blocks(n: int) -> Iterator[slice]:
    """Slices of BLOCK_ROWS rows covering range(n): how steps that see every catalog vector read
    it."""
    return (slice(start, min(n, start + BLOCK_ROWS)) for start in range(0, n, BLOCK_ROWS))


def nearest(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    *,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products (scores, ids), best first.

    The database is read BLOCK_ROWS rows at a time (``row_blocks``), each passed through
    ``transform`` (a row-wise map such as a projection) when given, so neither a memory-mapped
    catalog nor its transformed copy is ever held whole; the blocks' top-k are merged.
    """
    import faiss

    n = database.shape[0]
    k = min(int(k), n)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    ids = np.zeros((len(queries), 0), dtype=np.int64)
    for rows in row_blocks(n):
        block = np.asarray(database[rows], dtype=np.float32)
        block = np.ascontiguousarray(
            transform(block) if transform is not None else block, dtype=np.float32
        )
        index = faiss.IndexFlatIP(block.shape[1])
        index.add(block)
        s, i = index.search(queries, min(k, len(block)))
        scores, ids = (
            np.concatenate([scores, s], axis=1),
            np.concatenate([ids, i + rows.start], axis=1),
        )
        if scores.shape[1] > k:  # stable: on equal scores the earlier (lower) id stays first
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            scores, ids = (
                np.take_along_axis(scores, order, axis=1),
                np.take_along_axis(ids, order, axis=1),
            )
    return scores, ids


def weighted_expansion(
    base: np.ndarray, neighbours: np.ndarray, scores: np.ndarray, alpha: float
) -> np.ndarray:
    """normalise(base + sum_j max(s_j, 0)^alpha * neighbour_j): the shared core of DBA and alpha-QE.

    base [n, d]; neighbours [n, m, d]; scores [n, m].
    """
    w = np.clip(scores, 0.0, None) ** float(alpha)
    return l2_normalise(
        base + np.einsum("nm,nmd->nd", w.astype(np.float32), neighbours.astype(np.float32))
    )


def database_augment(vectors: np.ndarray, *, k: int = 2, alpha: float = 3.0) -> np.ndarray:
    """DBA: each vector expanded with its k nearest *other* catalog vectors (alpha-weighted)."""
    vectors = l2_normalise(vectors)
    if k <= 0 or len(vectors) < 2:
        return vectors
    scores, ids = nearest(vectors, vectors, k + 1)
    scores, ids = _drop_self(scores, ids)
    scores, ids = scores[:, :k], ids[:, :k]
    return weighted_expansion(vectors, vectors[ids], scores, alpha)


def _drop_self(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id from its neighbour list (keeping the order of the others)."""
    n, m = ids.shape
    own = ids == np.arange(n)[:, None]
    # rows where self was not returned (exact duplicates outranking it): drop the last column
    missing = ~own.any(axis=1)
    own[missing, m - 1] = True
    keep = ~own
    return scores[keep].reshape(n, m - 1), ids[keep].reshape(n, m - 1)


def query_expand(
    query: np.ndarray, neighbours: np.ndarray, scores: np.ndarray, *, alpha: float = 3.0
) -> np.ndarray:
    """alpha-QE for one query [d] given its top catalog vectors [m, d] and their scores [m]."""
    return weighted_expansion(
        np.asarray(query, dtype=np.float32)[None, :], neighbours[None], scores[None], alpha
    )[0]


# ---------------------------------------------------------------- defaults (decided by
# benchmarks/RESULTS.md)

# Off by default (benchmarks/RESULTS.md): +0.02 R@1 on jumia (about one standard error),
# -0.09 on grocery phone photos, and it blurs the "no close match" decision (jumia-d0 AUC of
# in-catalog vs. unsold photos 0.98 -> 0.84). "auto" fits it and keeps it only when the
# catalog's own held-out views (one image left out of each multi-image product) improve by
# AUTO_MIN_GAIN R@1; a catalog of single-image products cannot tell, so it stays off there.
DEFAULT_WHITENING: dict[str, Any] | None = None
AUTO_MIN_HELD_OUT = 50
AUTO_MIN_GAIN = 0.01
DEFAULT_DBA: dict[str, Any] = {"k": 0}


def resolve_whitening(value: bool | str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Build option -> fit_whitening keywords (+ "auto"), or None for no whitening.

    None = the default (DEFAULT_WHITENING: off); True = always; False = never; "auto" or a dict with
    "auto": True = keep it only if the catalog's held-out views say it helps."""
    if value is None:
        value = DEFAULT_WHITENING if DEFAULT_WHITENING is not None else False
    if value is False:
        return None
    if value == "auto":
        value = {"auto": True}
    opts = {"power": 0.5, "shrinkage": 0.1, "components": None, "auto": False}
    if isinstance(value, Mapping):
        unknown = set(value) - set(opts)
        if unknown:
            raise ValueError(
                f"unknown whitening option(s) {sorted(unknown)}; accepted: {sorted(opts)}"
            )
        opts.update(value)
    elif DEFAULT_WHITENING:  # True: the default parameters, always applied
        opts.update({k: v for k, v in DEFAULT_WHITENING.items() if k != "auto"})
    return opts


def resolve_dba(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """Build option -> database_augment keywords ({"k": 0} = off)."""
    opts = (
        {"k": 0, "alpha": 3.0, **DEFAULT_DBA}
        if value is None
        else {"k": 0, "alpha": 3.0, **dict(value)}
    )
    if set(opts) - {"k", "alpha"} or int(opts["k"]) < 0:
        raise ValueError(f"dba takes {{'k': >= 0, 'alpha': float}}, got {dict(value or {})}")
    return {"k": int(opts["k"]), "alpha": float(opts["alpha"])}
