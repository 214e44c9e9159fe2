"""Sharded, memory-mapped IVF: bytes per vector, recall@10, query time, build time, serving memory.

    python benchmarks/bench_sharded.py --n 200000    # real EfficientNet-Lite0 set of bench_ann
    python benchmarks/bench_sharded.py --n 1000000 --types ivfpq

For each IVF type vsearch builds in shards (ivf = IVF,SQfp16; ivfpq = IVF,PQ64x8 re-ranked from
float16 vectors; ivfpq-fs = IVF,PQ64x4 fast-scan, re-ranked the same way) this writes a real
generation with ``store.write_generation`` (train on a sample, shards added by a local pool,
lists merged on disk), then measures:

- bytes per vector of the generation's files (index + .ivfdata + float16 vectors);
- recall@10 against exact search and p50/p95 query time, one query at a time on one thread,
  the way ProductIndex searches (PQ types: the ``RERANK_FACTOR * 10`` candidates rescored exactly);
- build time sharded vs a single in-memory build (``store.make_faiss_index``) of the same type;
- serving memory: a fresh process loads the generation the way ``vsearch serve`` does
  (``ProductIndex`` + the EfficientNet-Lite0 model), embeds a real photo, runs every query, and
  reads /proc/self/smaps_rollup: Anonymous (private memory nothing on disk backs), Private_Clean +
  Private_Dirty, and RSS, against the size of the index files. A process that loads only the model
  is the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, load_average  # noqa: E402

K = 10
MODEL = "efficientnet-lite0"


def smaps() -> dict[str, int]:
    """Memory of this process in kB (Rss, Pss, Anonymous, Private_Clean, Private_Dirty)."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key.strip()] = int(value.split()[0])
    return {k: out.get(k, 0) for k in ("Rss", "Pss", "Anonymous", "Private_Clean", "Private_Dirty")}


def serve_child(index_dir: str, queries_path: str, model_only: bool) -> None:
    """Load like ``vsearch serve`` (model, then ProductIndex), query, report memory as JSON."""
    from vsearch.embedders import load_embedder
    from vsearch.search import ProductIndex

    report = {"start": smaps()}
    embedder = load_embedder(MODEL)
    photos = sorted((SHARED_DATA / "jumia" / "images").glob("*.jpg"))
    if photos:
        photo = __import__("vsearch.catalog.images", fromlist=["load_image"]).load_image(
            photos[0], min_side=embedder.input_size
        )
    # a machine without ../shared (vectors from $VSEARCH_BENCH_REAL_PHOTOS): any photo warms the
    # model
    else:
        from PIL import Image

        photo = Image.effect_noise((320, 320), 64).convert("RGB")
    embedder.embed_images([photo])
    report["model"] = smaps()
    if not model_only:
        t = time.perf_counter()
        index = ProductIndex.load(index_dir, embedder)
        report["load_s"] = time.perf_counter() - t
        report["loaded"] = smaps()
        index.search(image=photo, k=K)
        queries = np.load(queries_path)
        times = []
        for q in queries:
            t = time.perf_counter()
            index.search_vector(q, k=K)
            times.append(time.perf_counter() - t)
        report["search_vector_p50_ms"] = float(np.median(times) * 1000)
        report["after_queries"] = smaps()
        index.search_vector(
            queries[0], k=K, query_expansion={"k": 3, "alpha": 3.0}, product_scoring="mean"
        )
        report["after_qe_mean"] = smaps()
    print(json.dumps(report))


def measure(index, stored, queries, gt, nprobe=None, factor=None):
    """(recall@10, p50 ms, p95 ms), one query at a time on one FAISS thread, re-ranked when
    stored."""
    import faiss

    from vsearch.store import generations as store
    from vsearch.store import sharded as sharded_index

    faiss.omp_set_num_threads(1)
    params = None if nprobe is None else faiss.SearchParametersIVF(nprobe=nprobe)
    times, found = [], []
    for q in queries:
        q = np.ascontiguousarray(q[None], dtype=np.float32)
        t = time.perf_counter()
        if stored is not None:
            _, ids = sharded_index.rerank(
                lambda m: tuple(x[0] for x in store.search_single_threaded(index, q, m, params)),
                stored,
                q[0],
                K,
                index.ntotal,
                factor,
            )
        else:
            ids = index.search(q, K, params=params)[1][0]
        times.append(time.perf_counter() - t)
        found.append(ids)
    recall = float(np.mean([len(set(f.tolist()) & set(g.tolist())) / K for f, g in zip(found, gt)]))
    ms = np.sort(np.array(times) * 1000)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return recall, float(np.median(ms)), float(ms[int(round(0.95 * (len(ms) - 1)))])


def write_generation(index_dir: Path, base, index_type: str) -> tuple[Path, dict]:
    from vsearch.embeddings.imported import model_identity
    from vsearch.product import Product
    from vsearch.store import generations as store

    n, dim = base.shape
    ident = model_identity(MODEL)
    manifest = {
        "model": {
            "name": ident.name,
            "spec": ident.spec,
            "pretrained": ident.pretrained,
            "fingerprint": ident.fingerprint,
            "supports_text": False,
        },
        "dim": dim,
        "catalog": "bench",
    }
    images = [store.ImageRecord(f"P{i:07d}", f"img/{i:07d}.jpg", i, f"h{i}") for i in range(n)]
    products = [
        Product(f"P{i:07d}", f"Product {i}", f"c{i % 50}", float(i % 100)) for i in range(n)
    ]
    tmp = store.new_generation_dir(index_dir)
    manifest = store.write_generation(
        tmp,
        vectors=base,
        images=images,
        products=products,
        manifest=manifest,
        index_type=index_type,
    )
    return store.publish_generation(index_dir, tmp), manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--types", default="ivf,ivfpq,ivfpq-fs")
    ap.add_argument("--shard", type=int, default=50_000, help="vectors per shard (default: 50,000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--no-single",
        action="store_true",
        help="skip the single in-memory build used for comparison",
    )
    ap.add_argument("--no-serve", action="store_true", help="skip the serving-memory processes")
    ap.add_argument(
        "--rerank",
        default="",
        metavar="F1,F2",
        help="also measure these re-rank depths (candidates per result) for PQ types",
    )
    ap.add_argument(
        "--synthetic",
        action="store_true",
        help="bench_ann's synthetic set (1280-d) instead: a quick check of the script",
    )
    ap.add_argument(
        "--out", default=None, help="folder for the generations (default: a temporary folder)"
    )
    ap.add_argument(
        "--serve-child", nargs=3, metavar=("INDEX", "QUERIES", "MODEL_ONLY"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.serve_child:
        serve_child(args.serve_child[0], args.serve_child[1], args.serve_child[2] == "1")
        return 0

    import bench_ann
    import faiss

    from vsearch.store import generations as store
    from vsearch.store import sharded as sharded_index

    t = time.perf_counter()
    if args.synthetic:  # a quick check of this script: no model run, nothing real measured
        base, queries, gt = bench_ann.hard_synthetic(args.n, 1280, 100, 1.5, args.queries)
    else:
        base, queries, gt = bench_ann.real_vectors(args.n, args.queries)
    n, dim = base.shape
    print(
        "# bench_sharded: "
        f"{'SYNTHETIC' if args.synthetic else 'real EfficientNet-Lite0 vectors + mixture fill'}, "
        f"n={n:,}, dim={dim}, {len(queries)} queries; "
        f"shards of {args.shard:,}, {args.workers} workers; data {time.perf_counter() - t:.0f} s; "
        f"load {load_average()}",
        flush=True,
    )
    sharded_index.SHARD_VECTORS = args.shard
    root = Path(args.out or tempfile.mkdtemp(prefix="vsearch-bench-sharded-"))
    qpath = root / "queries.npy"
    root.mkdir(parents=True, exist_ok=True)
    np.save(qpath, queries)
    rows, serving = [], []
    if not args.no_serve:
        out = subprocess.run(
            [sys.executable, __file__, "--serve-child", "-", str(qpath), "1"],
            capture_output=True,
            text=True,
            check=True,
        )
        baseline = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"# model only: {baseline['model']}", flush=True)
    for index_type in [t.strip() for t in args.types.split(",") if t.strip()]:
        index_dir = root / index_type
        t = time.perf_counter()
        gen, manifest = write_generation(index_dir, base, index_type)
        total_s = time.perf_counter() - t
        files = {p.name: p.stat().st_size for p in gen.iterdir() if p.name.startswith("vectors")}
        index_bytes = sum(files.values())
        index = store.read_faiss(gen)
        stored = store.read_stored_vectors(gen)
        nprobe = faiss.extract_index_ivf(index).nprobe
        single_s = None
        if not args.no_single:
            t = time.perf_counter()
            single, _ = store.make_faiss_index(base, index_type)
            single_s = time.perf_counter() - t
            del single
        line = f"| {index_type}: {manifest['faiss_factory']} | {index_bytes / n:.0f} | "
        line += f"{(index_bytes - files.get(store.STORED_VECTORS_FILE, 0)) / n:.0f} | "
        line += (
            f"{manifest['faiss_build_seconds']:.0f} | "
            f"{'-' if single_s is None else f'{single_s:.0f}'} |"
        )
        for probe in sorted({nprobe, 2 * nprobe}):
            recall, p50, p95 = measure(
                index, stored, queries, gt, probe, manifest.get("rerank_factor")
            )
            extra = ""
            if stored is not None:
                raw, raw50, _ = measure(index, None, queries, gt, probe)
                extra = f" (no re-rank: {raw:.3f}, {raw50:.2f} ms)"
            rows.append(
                f"{line} nprobe {probe}{' (default)' if probe == nprobe else ''} | "
                f"{recall:.3f}{extra} | {p50:.2f} | {p95:.2f} |"
            )
            print(rows[-1], flush=True)
        for factor in (
            [int(f) for f in args.rerank.split(",") if f.strip()] if stored is not None else []
        ):
            recall, p50, p95 = measure(index, stored, queries, gt, nprobe, factor)
            rows.append(
                f"{line} nprobe {nprobe}, {factor} re-ranked a result | {recall:.3f} | {p50:.2f} | "
                f"{p95:.2f} |"
            )
            print(rows[-1], flush=True)
        del index, stored
        if not args.no_serve:
            out = subprocess.run(
                [sys.executable, __file__, "--serve-child", str(index_dir), str(qpath), "0"],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            model_anon = r["model"]["Anonymous"]
            after = r["after_qe_mean"]
            serving.append(
                f"| {index_type} | {index_bytes / 2**20:.0f} | {r['load_s']:.2f} | "
                f"{(r['loaded']['Anonymous'] - model_anon) / 1024:.0f} | "
                f"{(after['Anonymous'] - model_anon) / 1024:.0f} | "
                f"{(after['Private_Clean'] + after['Private_Dirty']) / 1024:.0f} | "
                f"{after['Rss'] / 1024:.0f} | {model_anon / 1024:.0f} | "
                f"{100 * (after['Anonymous'] - model_anon) * 1024 / index_bytes:.1f} % | "
                f"{r['search_vector_p50_ms']:.2f} |"
            )
            print(serving[-1], flush=True)
            print(f"#   {json.dumps(r)}", flush=True)
        print(
            f"# {index_type}: generation written in {total_s:.0f} s, FAISS steps "
            f"{manifest.get('sharded_build')} "
            f"(files {files}); load {load_average()}",
            flush=True,
        )
    print(
        "\n| index | bytes/vector (files) | of which index (no float16 vectors) | build s sharded "
        "| build s single | nprobe | recall@10 | p50 ms | p95 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if serving:
        print(
            "\n| type | index files MiB | load s | anon MiB after load (minus model) | anon MiB "
            "after queries (minus model) | "
            "private MiB (clean+dirty, all) | RSS MiB | model-only anon MiB | anon over model / "
            "files | search_vector p50 ms |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(serving))
    print(f"# done; load {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
