"""Scaling: build time, index size on disk, RAM and query time from 10k to 1M products.

    python benchmarks/bench_scaling.py                      # 10k, 100k, 1M (~10-15 min on 2 cores)
    python benchmarks/bench_scaling.py --sizes 10000,100000

Each size is built with ``vsearch build --embeddings`` semantics (random unit 512-d vectors,
one image per product, index type auto) in its own subprocess, so RSS numbers do not mix:

* build s: ``build_index`` wall time, from reading the catalog and the .npy to a published index;
* peak build RSS: the build process's maximum resident memory;
* disk: the generation folder (FAISS file + products.sqlite + manifest);
* index RSS: resident memory added by ``ProductIndex`` loading the index (no model);
* search_vector: one pre-embedded query (FAISS + product aggregation + metadata), p50 of 200;
* full search: ``ProductIndex.search(image=...)`` with the index's model (random-weight
  ViT-B-32, precision auto) on a 1200x1600 photo, p50 of 30.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import jumia_images, load_average, random_clip_checkpoint, write_synthetic_catalog  # noqa: E402

WORK = Path(os.environ.get("VSEARCH_BENCH_SCALING", "/tmp/vsearch-bench-scaling"))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child_build(n: int) -> dict:
    from vsearch.build import build_index

    catalog = write_synthetic_catalog(n, WORK / f"catalog-{n}.csv")
    rng = np.random.default_rng(n)
    vectors = np.lib.format.open_memmap(
        WORK / f"vectors-{n}.npy", mode="w+", dtype=np.float32, shape=(n, 512)
    )
    for start in range(0, n, 100_000):
        x = rng.standard_normal((min(100_000, n - start), 512), dtype=np.float32)
        vectors[start : start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    vectors.flush()
    del vectors
    index_dir = WORK / f"index-{n}"
    t = time.perf_counter()
    report = build_index(
        catalog,
        index_dir,
        model="ViT-B-32",
        pretrained=str(random_clip_checkpoint()),
        embeddings=WORK / f"vectors-{n}.npy",
    )
    seconds = time.perf_counter() - t
    gen = index_dir / report.generation
    disk = sum(p.stat().st_size for p in gen.iterdir())
    return {
        "n": n,
        "build_s": seconds,
        "index_type": report.index_type,
        "disk_mib": disk / 2**20,
        "peak_build_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child_query(n: int) -> dict:
    from vsearch.embeddings.imported import model_identity
    from vsearch.search import ProductIndex

    index_dir = WORK / f"index-{n}"
    identity = model_identity("ViT-B-32", str(random_clip_checkpoint()))
    import faiss  # noqa: F401  (baseline RSS includes the libraries)

    before = rss_mib()
    index = ProductIndex(index_dir, identity)
    index_rss = rss_mib() - before
    rng = np.random.default_rng(1)
    times = []
    for _ in range(200):
        q = rng.standard_normal(512).astype(np.float32)
        t = time.perf_counter()
        index.search_vector(q / np.linalg.norm(q), k=10)
        times.append(time.perf_counter() - t)
    del index
    index = ProductIndex.load(index_dir)  # with the model
    photo = WORK / "photo.jpg"
    if not photo.is_file():
        from PIL import Image

        with Image.open(jumia_images(1)[0]) as im:
            im.convert("RGB").resize((1200, 1600), Image.Resampling.BICUBIC).save(photo, quality=90)
    full = []
    for i in range(35):
        t = time.perf_counter()
        index.search(image=photo, k=10)
        if i >= 5:
            full.append(time.perf_counter() - t)
    return {
        "index_rss_mib": index_rss,
        "search_vector_ms": float(np.median(times) * 1000),
        "full_search_ms": float(np.median(full) * 1000),
        "precision": index.embedder.precision,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--child", choices=["build", "query"], help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.child:
        out = child_build(args.size) if args.child == "build" else child_query(args.size)
        print("RESULT " + json.dumps(out))
        return 0

    random_clip_checkpoint()
    print(f"# bench_scaling: sizes {args.sizes}, load average {load_average()}", flush=True)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        result = {}
        for child in ("build", "query"):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", child, "--size", str(n)],
                capture_output=True,
                text=True,
                check=False,
            )
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            result.update(json.loads(line[-1][len("RESULT ") :]))
        rows.append(result)
        print(f"done {n:,}: {result}", flush=True)
    print()
    print(
        "| products | index | build s | peak build RSS MiB | disk MiB | index RSS MiB | "
        "search_vector p50 ms | full search p50 ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['index_type']} | {r['build_s']:.1f} | "
            f"{r['peak_build_rss_mib']:.0f} | {r['disk_mib']:.0f} | "
            f"{r['index_rss_mib']:.0f} | {r['search_vector_ms']:.2f} | {r['full_search_ms']:.1f} "
            f"({r['precision']}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
