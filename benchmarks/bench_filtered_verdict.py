"""What judging a filtered search against the whole catalog costs: a filtered query of an index with
a verdict runs a second, unfiltered pass for the runner-up (search.ProductIndex._search_vector).

The 200,000-vector HNSW index of bench_reload_memory (synthetic 128-d vectors, 2 images a product,
20 categories, 90 prices), searched with k=10 by 300 queries (catalog vectors plus noise) with a
category filter (5 % of the images), a price range (3 %) and no filter; each query is timed with a
margin verdict (the second pass for filtered queries) and without one (threshold None: one pass),
the two interleaved query by query so both see the same load.

    python benchmarks/bench_filtered_verdict.py [--queries 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_reload_memory import build  # noqa: E402
from benchmarks.common import CACHE  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--work", type=Path, default=CACHE / "reload-memory")
    args = ap.parse_args()

    from vsearch.learn.calibration import VerdictCalibration
    from vsearch.search import ProductIndex

    index_dir, model = build(args.work / f"{args.vectors}x{args.dim}", args.vectors, args.dim)
    index = ProductIndex.load(index_dir, model)
    gen = index._gen
    judged = VerdictCalibration(
        threshold=0.05,
        precision=0.95,
        recall=0.3,
        unsold_rate=0.05,
        queries=100,
        unsold=100,
        target_precision=0.9,
        sources={"bench": 100},
        reason="bench",
        signal="margin",
    )
    unjudged = VerdictCalibration.from_dict({"threshold": None})
    rng = np.random.default_rng(2)
    picks = rng.choice(gen.faiss.ntotal, args.queries, replace=False)
    queries = (
        gen.vectors_of(picks).astype(np.float32)
        + rng.standard_normal((args.queries, args.dim)).astype(np.float32) * 0.05
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    cases = {
        "no filter": None,
        "category (10 %)": {"category": "c4"},
        "price 10-12 (2 %)": {"price": (10, 12)},
    }
    print(f"{args.queries} queries, k=10, HNSW {gen.faiss.ntotal} x {args.dim}")
    print(
        "| filter | with verdict p50 ms | p95 ms | without p50 ms | p95 ms | ratio p50 | close "
        "matches |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, filters in cases.items():
        times = {"with": [], "without": []}
        close = 0
        for q in queries:
            for mode, verdict in (("with", judged), ("without", unjudged)):
                gen.verdict = verdict
                started = time.perf_counter()
                hits = index.search_vector(q, k=10, filters=filters)
                times[mode].append((time.perf_counter() - started) * 1000)
                close += mode == "with" and bool(hits) and hits[0].confident is True
        p = {m: (statistics.median(t), float(np.percentile(t, 95))) for m, t in times.items()}
        print(
            f"| {name} | {p['with'][0]:.2f} | {p['with'][1]:.2f} | {p['without'][0]:.2f} | "
            f"{p['without'][1]:.2f} "
            f"| {p['with'][0] / p['without'][0]:.2f}x | {close}/{args.queries} |"
        )


if __name__ == "__main__":
    main()
