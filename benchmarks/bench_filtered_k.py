"""k means k at scale: a 0.1 % category over 100,000 vectors with IVF and HNSW.

    python benchmarks/bench_filtered_k.py [--n 100000] [--dim 64] [--queries 50]

Clustered random unit vectors (200 clusters); the rare category's products sit in clusters the
queries are not near, so the ANN pass alone comes back short. For each index type it reports how
many products a filtered k=10 search returns without the exact fallback (the ANN pass alone) and
with it (what `ProductIndex.search_vector` does), and the filtered query latency.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api_latency import load_average, pct  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--types", default="ivf,hnsw")
    args = ap.parse_args()

    from vsearch.build import build_index
    from vsearch.embeddings.imported import ModelIdentity
    from vsearch.search import ProductIndex
    from vsearch.store import nearest

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, 200, args.n)
    vectors = centres[labels] + 0.3 * rng.standard_normal((args.n, args.dim)).astype(
        np.float32
    ) / np.sqrt(args.dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    n_rare = max(1, args.n // 1000)  # 0.1 %
    # 10 of 200 clusters
    rare = set(rng.choice(np.flatnonzero(labels >= 190), n_rare, replace=False).tolist())
    q_idx = rng.choice(np.flatnonzero(labels < 100), args.queries, replace=False)
    queries = vectors[q_idx] + 0.01 * rng.standard_normal((args.queries, args.dim)).astype(
        np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    model = ModelIdentity(
        name="vectors",
        spec="vectors",
        pretrained=None,
        fingerprint=f"vectors-{args.dim}",
        dim=args.dim,
        supports_text=False,
    )
    print(
        f"{args.n:,} vectors (dim {args.dim}), category 'rare' = {n_rare} products "
        f"({n_rare / args.n:.1%}), "
        f"{args.queries} queries, k=10; load average {load_average()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "catalog.csv"
        with open(catalog, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["product_id", "image", "category"])
            for i in range(args.n):
                w.writerow([f"p{i:07d}", f"img/{i:07d}.jpg", "rare" if i in rare else "common"])
        for index_type in args.types.split(","):
            t = time.perf_counter()
            build_index(
                catalog,
                Path(tmp) / index_type,
                embedder=model,
                embeddings=vectors,
                index_type=index_type,
            )
            built = time.perf_counter() - t
            index = ProductIndex.load(Path(tmp) / index_type, model)
            results = {}
            for fallback in (False, True):
                original = nearest.exact_search
                if not fallback:  # the ANN pass alone: what a search returned before the fallback
                    nearest.exact_search = lambda gen, q, c, n, want: []
                try:
                    counts, times = [], []
                    for q in queries:
                        t = time.perf_counter()
                        hits = index.search_vector(q, k=10, filters={"category": "rare"})
                        times.append(time.perf_counter() - t)
                        counts.append(len(hits))
                        assert all(h.category == "rare" for h in hits)
                finally:
                    nearest.exact_search = original
                results[fallback] = (counts, times)
            (c0, _), (c1, t1) = results[False], results[True]
            print(
                f"  {index_type:5s} ({index.manifest['faiss_factory']}, built in {built:.0f} s): "
                "ANN pass alone returned "
                f"min {min(c0)} / mean {np.mean(c0):.1f} of 10; with the exact fallback min "
                f"{min(c1)} / mean "
                f"{np.mean(c1):.1f} of 10; filtered query p50 {pct(t1, 50) * 1e3:.1f} ms, p95 "
                f"{pct(t1, 95) * 1e3:.1f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
