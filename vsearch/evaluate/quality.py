"""Retrieval quality: metrics, labelled evaluation, catalog self-test and "no close match"
calibration.

Metrics are product-level: a query is answered correctly at rank r when the r-th *product*
returned is one of the acceptable products for the photo. Everything returns frozen
dataclasses; the CLI only prints them.
"""

from __future__ import annotations

import csv
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsearch.errors import CatalogError, ImageError, VsearchError
from vsearch.evaluate.metrics import first_correct_rank, mean_reciprocal_rank, percentile, recall_at  # noqa: F401

if TYPE_CHECKING:
    from vsearch.search import ProductIndex

RECALL_AT = (1, 5, 10)
WORST_SHOWN = 10
SELF_TEST_MAX_QUERIES = 300
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Query:
    """One labelled photo: any of ``expected`` is a correct answer (empty = not in the catalog)."""

    image: str
    expected: tuple[str, ...]
    category: str = ""
    row: int = 0


@dataclass(frozen=True)
class QueryResult:
    """What the index answered for one query."""

    image: str
    expected: tuple[str, ...]
    category: str
    ranked: tuple[str, ...]  # product ids, best first
    scores: tuple[float, ...]
    rank: int | None  # 1-based rank of the first correct product; None = not in the top k
    latency_ms: float
    confident: bool | None = None  # the index's verdict on its first result (None = it gives none)

    @classmethod
    def from_hits(
        cls, image: str, expected: tuple[str, ...], category: str, hits: list, latency_ms: float
    ) -> QueryResult:
        """The record of one answered query, ranked by product."""
        ranked = tuple(h.product_id for h in hits)
        return cls(
            image=image,
            expected=expected,
            category=category,
            ranked=ranked,
            scores=tuple(h.score for h in hits),
            rank=first_correct_rank(ranked, expected),
            latency_ms=latency_ms,
            confident=hits[0].confident if hits else None,
        )

    @property
    def top(self) -> str:
        return self.ranked[0] if self.ranked else ""


@dataclass(frozen=True)
class CloseMatchReport:
    """How far to trust "close match": on these queries, and on photos of unsold products."""

    verdicts: bool  # False: the index gives no verdict (every result is a best guess)
    said: int  # queries whose first result was called a close match
    precision: float | None  # of those, share whose first result is right (None when never said)
    recall: float  # of the queries answered right at rank 1, share called a close match
    unsold: int = 0  # photos of products not in the catalog that were searched
    # their share called a close match (None: no such photos)
    unsold_called_close: float | None = None


def close_match_report(
    results: Sequence[QueryResult], unsold: Sequence[QueryResult] = ()
) -> CloseMatchReport:
    """Close-match precision / recall on labelled results, and the rate on unsold photos."""
    said = [r for r in results if r.confident]
    right = [r for r in results if r.rank == 1]
    return CloseMatchReport(
        verdicts=any(r.confident is not None for r in [*results, *unsold]),
        said=len(said),
        precision=sum(r.rank == 1 for r in said) / len(said) if said else None,
        recall=sum(bool(r.confident) for r in right) / len(right) if right else 0.0,
        unsold=len(unsold),
        unsold_called_close=sum(bool(r.confident) for r in unsold) / len(unsold)
        if unsold
        else None,
    )


@dataclass(frozen=True)
class EvalReport:
    """Product-level retrieval quality of one index on one query set."""

    n_queries: int
    k: int
    recall: Mapping[int, float]  # {1: R@1, 5: R@5, 10: R@10} (only k' <= k)
    mrr: float  # mean reciprocal rank, 0 for queries not found in the top k
    per_category_r1: Mapping[str, float]
    per_category_n: Mapping[str, int]
    latency_p50_ms: float
    latency_p95_ms: float
    worst: tuple[QueryResult, ...]
    results: tuple[QueryResult, ...] = field(repr=False, default=())
    skipped: tuple[str, ...] = ()  # queries that could not be run, with the reason
    options: Mapping[str, Any] = field(default_factory=dict)
    close_match: CloseMatchReport | None = None
    # queries counted right: the first result lists a near-identical photo of them
    credited_duplicates: int = 0

    def to_dict(self, *, with_results: bool = False) -> dict[str, Any]:
        d = {
            "close_match": asdict(self.close_match) if self.close_match else None,
            "n_queries": self.n_queries,
            "k": self.k,
            "recall": {str(k): v for k, v in self.recall.items()},
            "mrr": self.mrr,
            "per_category_r1": dict(self.per_category_r1),
            "per_category_n": dict(self.per_category_n),
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "worst": [_result_dict(r) for r in self.worst],
            "skipped": list(self.skipped),
            "options": dict(self.options),
            "credited_duplicates": self.credited_duplicates,
        }
        if with_results:
            d["results"] = [_result_dict(r) for r in self.results]
        return d


def _result_dict(r: QueryResult) -> dict[str, Any]:
    d = asdict(r)
    d["expected"] = list(r.expected)
    d["ranked"] = list(r.ranked)
    d["scores"] = [round(s, 6) for s in r.scores]
    return d


def summarize(
    results: Sequence[QueryResult],
    k: int,
    *,
    skipped: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    unsold: Sequence[QueryResult] = (),
    credited_duplicates: int = 0,
) -> EvalReport:
    """Metrics over per-query results (the pure part of evaluation, tested on known rankings)."""
    ranks = [r.rank for r in results]
    by_cat: dict[str, list[int | None]] = {}
    for r in results:
        by_cat.setdefault(r.category or "-", []).append(r.rank)
    worst = sorted(
        results,
        key=lambda r: (r.rank is not None, -(r.rank or 0), -(r.scores[0] if r.scores else 0.0)),
    )[:WORST_SHOWN]
    worst = tuple(w for w in worst if w.rank != 1)
    lat = [r.latency_ms for r in results]
    return EvalReport(
        n_queries=len(results),
        k=k,
        recall={c: recall_at(ranks, c) for c in RECALL_AT if c <= k},
        mrr=mean_reciprocal_rank(ranks),
        per_category_r1={c: recall_at(v, 1) for c, v in sorted(by_cat.items())},
        per_category_n={c: len(v) for c, v in sorted(by_cat.items())},
        latency_p50_ms=percentile(lat, 50),
        latency_p95_ms=percentile(lat, 95),
        worst=worst,
        results=tuple(results),
        skipped=tuple(skipped),
        options=dict(options or {}),
        close_match=close_match_report(results, unsold),
        credited_duplicates=credited_duplicates,
    )


# ---------------------------------------------------------------- labelled queries


def read_queries(path: str | Path, *, require_product_id: bool = True) -> list[Query]:
    """Read QUERIES.csv: columns ``image`` and ``product_id`` (several ids separated by '|'),
    optional ``category``. Relative image paths are relative to the CSV's folder. An empty
    product_id marks a photo of something the shop does not sell (for the threshold check).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            missing = [
                c
                for c in (("image", "product_id") if require_product_id else ("image",))
                if c not in fields
            ]
            if missing:
                raise CatalogError(
                    f"{path}: missing column(s) {', '.join(missing)}; a queries CSV needs "
                    "image,product_id "
                    f"(found: {', '.join(fields) or 'no header'})"
                )
            queries = []
            for row_no, raw in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
                if not row.get("image"):
                    raise CatalogError(
                        f"{path}: row {row_no} has an empty image; every query needs a photo"
                    )
                image = row["image"]
                if not image.startswith(("http://", "https://")) and not Path(image).is_absolute():
                    image = str(path.parent / image)
                expected = tuple(
                    p.strip() for p in row.get("product_id", "").split("|") if p.strip()
                )
                queries.append(
                    Query(
                        image=image, expected=expected, category=row.get("category", ""), row=row_no
                    )
                )
    except FileNotFoundError:
        raise CatalogError(f"queries file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise CatalogError(
            f"{path} is not UTF-8 text ({e}); save the queries CSV as UTF-8"
        ) from None
    if not queries:
        raise CatalogError(f"{path}: no query rows; add rows of image,product_id")
    return queries


def evaluate(
    index: ProductIndex,
    queries: Sequence[Query] | str | Path,
    *,
    k: int = 10,
    progress: ProgressCallback | None = None,
    unsold: Sequence[Query] | str | Path | None = None,
    credit_duplicates: bool = True,
    **search_options: Any,
) -> EvalReport:
    """Run every labelled query through ``index.search`` and report product-level quality.

    search_options are passed to search() (e.g. tta="flip", product_scoring="mean"), so each
    technique's effect can be measured from the same command. unsold: photos of products the
    shop does not sell (a folder of images, a CSV with an ``image`` column, or Query objects);
    the report says how many of them were called a close match. credit_duplicates: a query whose
    first result lists a near-identical photo of it counts as right (see `_credit_duplicates`).
    """
    if not isinstance(queries, (list, tuple)):
        queries = read_queries(queries)
    labelled = [q for q in queries if q.expected]
    if not labelled:
        raise VsearchError(
            "no query has a product_id; evaluation needs at least one labelled photo"
        )
    cat_of = _categories(index, labelled)
    results, skipped = [], []
    for done, q in enumerate(labelled, start=1):
        try:
            started = time.perf_counter()
            hits = index.search(image=q.image, k=k, **search_options)
            ms = (time.perf_counter() - started) * 1000
        except ImageError as e:
            skipped.append(f"row {q.row}: {e}")
            continue
        results.append(
            QueryResult.from_hits(
                q.image, q.expected, q.category or cat_of.get(q.expected[0], ""), hits, ms
            )
        )
        if progress is not None:
            progress(done, len(labelled))
    unsold_results = []
    if unsold is not None:
        unsold_queries = read_unsold(unsold) if not isinstance(unsold, (list, tuple)) else unsold
        for q in unsold_queries:
            try:
                unsold_results += run_queries(index, [q], k=k, **search_options)
            except ImageError as e:
                skipped.append(f"unsold {q.image}: {e}")
    results, credited = _credit_duplicates(index, results) if credit_duplicates else (results, 0)
    return summarize(
        results,
        k,
        skipped=skipped,
        options=search_options,
        unsold=unsold_results,
        credited_duplicates=credited,
    )


def _credit_duplicates(
    index: ProductIndex, results: list[QueryResult]
) -> tuple[list[QueryResult], int]:
    """The catalog lists the query's own photo (or a resized / re-encoded copy) under the first
    result's product: that answer is right even if the label names another product."""
    from vsearch.catalog.hygiene import credit_near_duplicates

    return credit_near_duplicates(results, lambda pid: index.product(pid)["images"])


def read_unsold(path: str | Path) -> list[Query]:
    """Photos of products not in the catalog: every image file in a folder, or a CSV's ``image``
    column."""
    path = Path(path)
    if path.is_dir():
        from vsearch.catalog.images import IMAGE_EXTENSIONS

        files = sorted(
            p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise CatalogError(
                f"{path}: no image files; --unsold takes a folder of photos of products you do not "
                "sell"
            )
        return [Query(image=str(p), expected=()) for p in files]
    return [
        Query(image=q.image, expected=(), row=q.row)
        for q in read_queries(path, require_product_id=False)
    ]


def _categories(index: ProductIndex, queries: Sequence[Query]) -> dict[str, str]:
    out = {}
    for q in queries:
        if not q.category and q.expected[0] not in out:
            try:
                out[q.expected[0]] = index.product(q.expected[0])["category"]
            except KeyError:
                out[q.expected[0]] = ""
    return out


# ---------------------------------------------------------------- self-test


def self_test(
    index: ProductIndex,
    *,
    k: int = 10,
    max_queries: int = SELF_TEST_MAX_QUERIES,
    seed: int = 0,
    augment_single: bool = True,
    progress: ProgressCallback | None = None,
    credit_duplicates: bool = True,
    **search_options: Any,
) -> EvalReport:
    """Quality of an index with no labelled data.

    For each sampled product with >= 2 images, its last image is the query and that image is
    removed from the candidates, so it must be found through its *other* images. Products with
    a single image are queried with an augmented copy (crop, flip, colour shift) when
    ``augment_single`` - a robustness check, weaker than a held-out view. Up to ``max_queries``
    products are sampled (fixed seed). Local image files only; URLs are skipped.
    """
    from vsearch.catalog.images import load_image

    groups = index.images_by_product()
    multi = [(pid, vids) for pid, vids in groups.items() if len(vids) >= 2]
    single = (
        [(pid, vids) for pid, vids in groups.items() if len(vids) == 1] if augment_single else []
    )
    rng = random.Random(seed)
    picked = rng.sample(multi, min(len(multi), max_queries))
    if len(picked) < max_queries and single:
        picked += rng.sample(single, min(len(single), max_queries - len(picked)))
    if not picked:
        raise VsearchError("the index has no products to self-test")
    results, skipped = [], []
    for done, (pid, vids) in enumerate(picked, start=1):
        vid, source = vids[-1]
        try:
            img = load_image(source, min_side=index.query_side(bool(search_options.get("locate"))))
            held_out = len(vids) >= 2
            if not held_out:
                img = augment(img, seed=rng.randrange(1 << 30))
            started = time.perf_counter()
            hits = index.search(
                image=img, k=k, exclude_images=(vid,) if held_out else (), **search_options
            )
            ms = (time.perf_counter() - started) * 1000
        except ImageError as e:
            skipped.append(f"{source}: {e}")
            continue
        results.append(
            QueryResult.from_hits(
                source, (pid,), "held-out view" if held_out else "augmented copy", hits, ms
            )
        )
        if progress is not None:
            progress(done, len(picked))
    results, credited = _credit_duplicates(index, results) if credit_duplicates else (results, 0)
    return summarize(
        results,
        k,
        skipped=skipped,
        options={"self_test": True, **search_options},
        credited_duplicates=credited,
    )


def augment(image, *, seed: int = 0):
    """A plausible re-shoot of a catalog photo: random 75-90 % crop, mirror, brightness/colour
    shift."""
    from PIL import ImageEnhance, ImageOps

    rng = random.Random(seed)
    w, h = image.size
    f = rng.uniform(0.75, 0.9)
    cw, ch = max(1, int(w * f)), max(1, int(h * f))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = image.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.8, 1.2))
    return ImageEnhance.Color(out).enhance(rng.uniform(0.8, 1.2))


@dataclass(frozen=True)
class ConfidenceReport:
    """How well hit.confident separates sold products from unsold ones."""

    threshold: float | None
    in_catalog: int
    out_of_catalog: int
    precision: float  # of queries called confident, share that are in the catalog
    recall: float  # of in-catalog queries, share called confident
    ooc_rejected: float  # of out-of-catalog queries, share called not confident
    confident_correct: float  # of in-catalog queries, share called confident AND right at rank 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confidence_report(
    in_catalog: Sequence[QueryResult],
    out_of_catalog: Sequence[QueryResult],
    threshold: float | None,
) -> ConfidenceReport:
    """Precision/recall of the "confident" decision: in-catalog photos are positives, unsold ones
    negatives."""
    tp = sum(r.confident for r in in_catalog)
    fp = sum(r.confident for r in out_of_catalog)
    n_in, n_out = len(in_catalog), len(out_of_catalog)
    return ConfidenceReport(
        threshold=threshold,
        in_catalog=n_in,
        out_of_catalog=n_out,
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / n_in if n_in else 0.0,
        ooc_rejected=1 - fp / n_out if n_out else 0.0,
        confident_correct=sum(r.confident and r.rank == 1 for r in in_catalog) / n_in
        if n_in
        else 0.0,
    )


def run_queries(
    index: ProductIndex, queries: Sequence[Query], *, k: int = 10, **search_options: Any
) -> list[QueryResult]:
    """Per-query results for labelled and unlabelled queries alike (unlabelled ones never have a
    rank)."""
    out = []
    for q in queries:
        started = time.perf_counter()
        hits = index.search(image=q.image, k=k, **search_options)
        ms = (time.perf_counter() - started) * 1000
        ranked = tuple(h.product_id for h in hits)
        out.append(
            QueryResult(
                image=q.image,
                expected=q.expected,
                category=q.category,
                ranked=ranked,
                scores=tuple(h.score for h in hits),
                rank=first_correct_rank(ranked, q.expected),
                latency_ms=ms,
                confident=hits[0].confident if hits else None,
            )
        )
    return out
