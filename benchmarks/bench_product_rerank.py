"""How deep a PQ index re-ranks for a product search: every fetched image (``factor x fetch``,
fetch = 4k images to fold into k products, as before) or only the first few (``factor x depth``).

Real EfficientNet-Lite0 vectors of bench_ann (``--n`` of them, 4 images a product), an ivfpq-fs
(and ivfpq) generation written by ``store.write_generation``; for each query, ProductIndex's
``search_vector(k=10)`` one query at a time on one FAISS thread, at each depth. Prints product-level
recall@10 against exact search (max over a product's images), how often the two depths give the
same 10 products in the same order as before, and p50 / p95 ms.

    python benchmarks/bench_product_rerank.py [--n 200000] [--queries 300] [--types ivfpq-fs,ivfpq]
    [--depths 11,22,all] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average  # noqa: E402

K = 10
VIEWS = 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--types", default="ivfpq-fs,ivfpq")
    ap.add_argument(
        "--depths",
        default="11,22,all",
        help="re-rank depths (images whose recall counts); all = every fetched image",
    )
    ap.add_argument("--out", type=Path, default=Path("/tmp/vsearch-bench-product-rerank"))
    args = ap.parse_args()
    import bench_ann
    import faiss

    from vsearch.embeddings.imported import model_identity
    from vsearch.product import Product
    from vsearch.search import ProductIndex
    from vsearch.store import generations as store
    from vsearch.store import nearest

    base, queries, _ = bench_ann.real_vectors(args.n, args.queries)
    n = len(base)
    pid_of = np.arange(n) // VIEWS
    exact = np.full((len(queries), n // VIEWS + 1), -np.inf, dtype=np.float32)
    for start in range(0, n, 50_000):
        s = queries @ base[start : start + 50_000].T
        np.maximum.at(exact.T, pid_of[start : start + 50_000], s.T)
    truth = np.argsort(-exact, axis=1)[:, :K]
    print(
        f"# {n:,} real vectors, {n // VIEWS:,} products of {VIEWS} images, {len(queries)} queries; "
        f"load {load_average()}",
        flush=True,
    )
    ident = model_identity("efficientnet-lite0")
    faiss.omp_set_num_threads(1)
    print(
        "| type | re-rank depth | rows re-scored a query | product recall@10 | same 10 products as "
        "before | p50 ms | p95 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for index_type in args.types.split(","):
        index_dir = args.out / index_type
        if store.read_current(index_dir, missing_ok=True) is None:
            images = [
                store.ImageRecord(f"P{i // VIEWS:07d}", f"img/{i:07d}.jpg", i, f"h{i}")
                for i in range(n)
            ]
            products = [
                Product(f"P{p:07d}", f"Product {p}", f"c{p % 50}", float(p % 100))
                for p in range(n // VIEWS)
            ]
            manifest = {
                "model": {
                    "name": ident.name,
                    "spec": ident.spec,
                    "pretrained": ident.pretrained,
                    "fingerprint": ident.fingerprint,
                    "supports_text": False,
                },
                "dim": base.shape[1],
                "catalog": "bench",
            }
            t = time.perf_counter()
            tmp = store.new_generation_dir(index_dir)
            store.write_generation(
                tmp,
                vectors=base,
                images=images,
                products=products,
                manifest=manifest,
                index_type=index_type,
            )
            store.publish_generation(index_dir, tmp)
            print(f"# built {index_type} in {time.perf_counter() - t:.0f} s", flush=True)
        index = ProductIndex.load(index_dir, ident)
        factor = index.manifest.get("rerank_factor")
        real = nearest.faiss_search
        answers, stats = {}, {}
        for depth in [int(d) if d != "all" else None for d in args.depths.split(",")]:
            nearest.faiss_search = lambda gen, q, m, sel, depth=None, d=depth: real(
                gen, q, m, sel, d
            )
            times, got = [], []
            for q in queries:
                t = time.perf_counter()
                hits = index.search_vector(q, k=K)
                times.append(time.perf_counter() - t)
                got.append([int(h.product_id[1:]) for h in hits])
            nearest.faiss_search = real
            answers[depth] = got
            recall = np.mean([len(set(g) & set(t.tolist())) / K for g, t in zip(got, truth)])
            ms = np.sort(np.asarray(times) * 1000)
            rows = factor * (min(depth, max(4 * K, K + 16)) if depth else max(4 * K, K + 16))
            stats[depth] = (
                rows,
                recall,
                float(np.median(ms)),
                float(ms[int(0.95 * (len(ms) - 1))]),
            )
        for depth, (rows, recall, p50, p95) in stats.items():
            same = (
                np.mean([x == y for x, y in zip(answers[depth], answers[None])])
                if None in answers
                else float("nan")
            )
            label = "every fetched image (before)" if depth is None else f"first {depth}"
            print(
                f"| {index_type} | {label} | {rows:,} | {recall:.4f} | {same:.3f} | {p50:.2f} | "
                f"{p95:.2f} |",
                flush=True,
            )
    print(f"# load after: {load_average()}")


if __name__ == "__main__":
    main()
