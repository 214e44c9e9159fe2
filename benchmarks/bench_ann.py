"""ANN at scale: recall@10 against exact search, single-query latency, memory and build time.

    # 1M x 512 hard synthetic set (~15-25 min on 2 idle cores)
    python benchmarks/bench_ann.py
    python benchmarks/bench_ann.py --n 200000       # quicker
    python benchmarks/bench_ann.py --hnsw           # also HNSW (slow to build at 1M on 2 cores)
    # real EfficientNet-Lite0 vectors of ../shared/data photos + fill
    python benchmarks/bench_ann.py --real

The hard set: 10,000 Gaussian clusters around random unit centres, each point = centre + noise
of norm ``--noise`` (1.5) times the centre's, L2-normalised. Same-cluster cosine is then ~0.3
while the best of a million unrelated points reaches ~0.2, so neighbour lists mix clusters:
well-separated clusters would make every ANN look perfect. Queries are fresh points from the
same clusters. Data and exact ground truth are cached under /tmp/vsearch-bench-ann (reused).

Each configuration is built the way vsearch builds it
(``vsearch.store.generations.make_faiss_index`` for the types vsearch offers) and timed with one
FAISS thread per query, as ProductIndex searches. Memory per vector = the index file size / n.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average  # noqa: E402

CACHE = Path(os.environ.get("VSEARCH_BENCH_ANN", "/tmp/vsearch-bench-ann"))
K = 10


def hard_synthetic(n: int, dim: int, clusters: int, noise: float, n_queries: int, seed: int = 0):
    path = CACHE / f"hard-n{n}-d{dim}-c{clusters}-s{noise}-q{n_queries}-seed{seed}"
    if (path / "gt.npy").is_file():
        return (
            np.load(path / "base.npy", mmap_mode="r"),
            np.load(path / "queries.npy"),
            np.load(path / "gt.npy"),
        )
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def points(m: int) -> np.ndarray:
        x = centres[rng.integers(0, clusters, m)]
        x = x + rng.standard_normal((m, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    base = np.lib.format.open_memmap(
        path / "base.tmp.npy", mode="w+", dtype=np.float32, shape=(n, dim)
    )
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        base[start:stop] = points(stop - start)
    base.flush()
    del base
    os.replace(path / "base.tmp.npy", path / "base.npy")
    queries = points(n_queries)
    np.save(path / "queries.npy", queries)
    base = np.load(path / "base.npy", mmap_mode="r")
    gt = exact_neighbours(base, queries)
    np.save(path / "gt.npy", gt)
    return base, queries, gt


def exact_neighbours(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index = faiss.IndexFlatIP(base.shape[1])
    for start in range(0, len(base), 200_000):
        index.add(np.ascontiguousarray(base[start : start + 200_000]))
    _, gt = index.search(np.ascontiguousarray(queries), K)
    return gt


def real_vectors(n: int, n_queries: int, seed: int = 0, photos: Path | None = None):
    """EfficientNet-Lite0 vectors of real photos; the rest of n is filled with perturbed mixtures of
    them.

    Queries are real photos of jumia products whose other photos are in the base. ``photos`` (or
    $VSEARCH_BENCH_REAL_PHOTOS) is a file from ``export_real_photos``: the same photo vectors on a
    machine that has no ``../shared/data`` and so cannot embed them (the set is then identical).
    """
    path = CACHE / f"real-n{n}-q{n_queries}-seed{seed}"
    if (path / "gt.npy").is_file():
        return (
            np.load(path / "base.npy", mmap_mode="r"),
            np.load(path / "queries.npy"),
            np.load(path / "gt.npy"),
        )
    photos = photos or (
        Path(os.environ["VSEARCH_BENCH_REAL_PHOTOS"])
        if os.environ.get("VSEARCH_BENCH_REAL_PHOTOS")
        else None
    )
    rng = np.random.default_rng(seed)
    if photos is not None:
        saved = np.load(photos)
        # the draw of photos, so the fill below draws the same numbers
        rng.permutation(int(saved["n_files"]))
        queries, real = saved["queries"][:n_queries], saved["real"]
        if len(saved["queries"]) != n_queries:
            raise SystemExit(f"{photos} holds {len(saved['queries'])} queries, not {n_queries}")
    else:
        queries, real = _embed_real_photos(rng, n_queries)
    fill = n - len(real)
    path.mkdir(parents=True, exist_ok=True)
    base = np.lib.format.open_memmap(
        path / "base.tmp.npy", mode="w+", dtype=np.float32, shape=(n, real.shape[1])
    )
    base[: len(real)] = real
    for start in range(0, fill, 50_000):
        m = min(50_000, fill - start)
        a, b = real[rng.integers(0, len(real), m)], real[rng.integers(0, len(real), m)]
        w = rng.uniform(0.2, 0.8, (m, 1)).astype(np.float32)
        x = (
            w * a
            + (1 - w) * b
            + rng.standard_normal(a.shape, dtype=np.float32)
            * np.float32(0.3 / np.sqrt(real.shape[1]))
        )
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        base[len(real) + start : len(real) + start + m] = x
    base.flush()
    del base
    os.replace(path / "base.tmp.npy", path / "base.npy")
    np.save(path / "queries.npy", queries)
    base = np.load(path / "base.npy", mmap_mode="r")
    gt = exact_neighbours(base, queries)
    np.save(path / "gt.npy", gt)
    return base, queries, gt


def _real_photo_files() -> list[Path]:
    from common import SHARED_DATA

    return sorted((SHARED_DATA / "jumia" / "images").glob("*.jpg")) + sorted(
        (SHARED_DATA / "abo" / "images").rglob("*.jpg")
    )


def _embed_real_photos(rng: np.random.Generator, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(queries, real): EfficientNet-Lite0 vectors of a seeded draw of ../shared/data photos."""
    from vsearch.catalog.images import load_image
    from vsearch.embedders import load_embedder

    files = _real_photo_files()
    files = [
        files[i]
        for i in rng.permutation(len(files))[
            : int(os.environ.get("VSEARCH_BENCH_REAL_IMAGES", 3000))
        ]
    ]
    emb = load_embedder("efficientnet-lite0")
    vecs = []
    for start in range(0, len(files), 64):
        vecs.append(
            emb.embed_images(
                [load_image(f, min_side=emb.input_size) for f in files[start : start + 64]]
            )
        )
    real = np.concatenate(vecs)
    return real[:n_queries], real[n_queries:]


def export_real_photos(out: Path, n_queries: int, seed: int = 0) -> None:
    """Save the photo vectors ``real_vectors`` starts from (any cached size has them first)."""
    cached = sorted(CACHE.glob(f"real-n*-q{n_queries}-seed{seed}/gt.npy"))
    rng = np.random.default_rng(seed)
    n_files = len(_real_photo_files())
    if cached:
        folder = cached[0].parent
        n_real = int(os.environ.get("VSEARCH_BENCH_REAL_IMAGES", 3000)) - n_queries
        queries, real = (
            np.load(folder / "queries.npy"),
            np.array(np.load(folder / "base.npy", mmap_mode="r")[:n_real]),
        )
    else:
        queries, real = _embed_real_photos(rng, n_queries)
    np.savez(out, queries=queries, real=real, n_files=n_files)


def measure(index, queries: np.ndarray, gt: np.ndarray, params=None) -> tuple[float, float, float]:
    """(recall@10, p50 ms, p95 ms) with one FAISS thread, one query at a time."""
    import faiss

    faiss.omp_set_num_threads(1)
    times, found = [], []
    for q in queries:
        q = np.ascontiguousarray(q[None])
        t = time.perf_counter()
        _, ids = index.search(q, K, params=params)
        times.append(time.perf_counter() - t)
        found.append(ids[0])
    recall = float(np.mean([len(set(f.tolist()) & set(g.tolist())) / K for f, g in zip(found, gt)]))
    ms = np.sort(np.array(times) * 1000)
    return recall, float(np.median(ms)), float(ms[int(round(0.95 * (len(ms) - 1)))])


def file_bytes(index) -> int:
    import faiss

    with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name)


def main(argv: list[str] | None = None) -> int:
    import faiss

    from vsearch.store import generations as store

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=10_000)
    ap.add_argument("--noise", type=float, default=1.5)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument(
        "--real",
        action="store_true",
        help="real EfficientNet-Lite0 vectors (+ mixtures as fill) instead",
    )
    ap.add_argument(
        "--export-real",
        type=Path,
        metavar="FILE.npz",
        help="save the real photo vectors (for $VSEARCH_BENCH_REAL_PHOTOS on a machine without "
        "../shared) and stop",
    )
    ap.add_argument(
        "--hnsw", action="store_true", help="also build HNSW32 (about 10x longer to build than IVF)"
    )
    ap.add_argument(
        "--flat", action="store_true", help="also time exact search (about 70-100 ms a query at 1M)"
    )
    ap.add_argument("--nprobes", default="16,32,64,128,256")
    ap.add_argument(
        "--types",
        default="ivf,ivfpq",
        help="IVF-family indexes to build (default: ivf,ivfpq; '' for none)",
    )
    args = ap.parse_args(argv)
    types = {t.strip() for t in args.types.split(",") if t.strip()}
    if args.export_real:
        export_real_photos(args.export_real, args.queries)
        return 0

    t = time.perf_counter()
    if args.real:
        base, queries, gt = real_vectors(args.n, args.queries)
        what = f"real EfficientNet-Lite0 vectors + mixture fill, n={args.n:,}, dim={base.shape[1]}"
    else:
        base, queries, gt = hard_synthetic(
            args.n, args.dim, args.clusters, args.noise, args.queries
        )
        what = (
            f"hard synthetic n={args.n:,}, dim={args.dim}, {args.clusters:,} clusters, noise "
            f"{args.noise}"
        )
    print(
        f"# bench_ann: {what}; {len(queries)} queries; data+ground truth "
        f"{time.perf_counter() - t:.0f} s; load {load_average()}",
        flush=True,
    )
    vectors = np.ascontiguousarray(base)
    n, dim = vectors.shape
    faiss.omp_set_num_threads(os.cpu_count() or 1)

    rows = []

    def report(name, index, build_s, params_list):
        size = file_bytes(index)
        for label, params in params_list:
            recall, p50, p95 = measure(index, queries, gt, params)
            rows.append((name, label, recall, p50, p95, size / n, build_s))
            print(
                f"| {name} | {label} | {recall:.3f} | {p50:.2f} | {p95:.2f} | {size / n:.0f} | "
                f"{build_s:.0f} |",
                flush=True,
            )
        faiss.omp_set_num_threads(os.cpu_count() or 1)

    print(
        "\n| index | search setting | recall@10 | p50 ms | p95 ms | bytes/vector | build s "
        "|\n|---|---|---|---|---|---|---|",
        flush=True,
    )
    if args.flat:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        report("Flat (exact)", index, 0.0, [("-", None)])
        del index

    if "ivf" in types:
        t = time.perf_counter()
        index, factory = store.make_faiss_index(vectors, "ivf")
        build_s = time.perf_counter() - t
        ivf = faiss.extract_index_ivf(index)
        default = ivf.nprobe
        probes = sorted({int(p) for p in args.nprobes.split(",")} | {default})
        report(
            f"ivf: {factory}",
            index,
            build_s,
            [
                (
                    f"nprobe {p}{' (default)' if p == default else ''}",
                    faiss.SearchParametersIVF(nprobe=p),
                )
                for p in probes
            ],
        )
        del index

    if "ivfpq" in types:
        t = time.perf_counter()
        index, factory = store.make_faiss_index(vectors, "ivfpq")
        build_s = time.perf_counter() - t
        report(
            f"ivfpq: {factory}",
            index,
            build_s,
            [(f"nprobe {p}", faiss.SearchParametersIVF(nprobe=p)) for p in (32, 128)],
        )
        del index

    if args.hnsw:
        t = time.perf_counter()
        index, factory = store.make_faiss_index(vectors, "hnsw")
        build_s = time.perf_counter() - t
        report(
            f"hnsw: {factory}",
            index,
            build_s,
            [
                (f"efSearch {ef}", faiss.SearchParametersHNSW(efSearch=ef))
                for ef in (64, 128, 256, 512)
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
