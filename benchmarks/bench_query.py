"""Query latency: a full single-photo search vs the model's own batch-1 forward, side by side.

    python benchmarks/bench_query.py              # 100k products, 100 phone-size photos (~3-5 min)
    python benchmarks/bench_query.py --n 20000 --index-type flat

The index holds random unit vectors imported with ``--embeddings`` (no images needed) and
names a random-weight ViT-B-32 checkpoint as its model, so ``ProductIndex.load`` loads that
model (precision auto) for queries. Query photos are 1200x1600 JPEGs (1.9 MP, phone size)
upscaled from jumia photos. For each photo, in turn:

* forward: ``embedder.embed_batch`` on the photo's already preprocessed tensor (batch 1);
* full search: ``ProductIndex.search(image=path, k=10)`` - read + decode (JPEG draft) +
  preprocess + embed + FAISS + product aggregation + SQLite metadata.

Interleaving the two puts machine load on both alike. Target: full p50 <= 1.25x forward p50.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    jumia_images,
    load_average,
    percentiles,
    random_clip_checkpoint,
    write_synthetic_catalog,
)  # noqa: E402

WORK = Path(os.environ.get("VSEARCH_BENCH_QUERY", "/tmp/vsearch-bench-query"))


def phone_photos(n: int) -> list[Path]:
    from PIL import Image

    out = WORK / "photos"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, src in enumerate(jumia_images(3 * n)[::3][:n]):
        path = out / f"photo-{i:03d}.jpg"
        if not path.is_file():
            with Image.open(src) as im:
                im.convert("RGB").resize((1200, 1600), Image.Resampling.BICUBIC).save(
                    path, quality=90
                )
        paths.append(path)
    return paths


def build(n: int, index_type: str, checkpoint: Path) -> Path:
    from vsearch.build import build_index
    from vsearch.store import generations as store

    # cached per resolved type
    index_dir = WORK / f"index-{n}-{store.choose_index_type(n, index_type)}"
    if (index_dir / "CURRENT").is_file():
        return index_dir
    catalog = write_synthetic_catalog(n, WORK / f"catalog-{n}.csv")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 512), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(WORK / f"vectors-{n}.npy", vectors)
    shutil.rmtree(index_dir, ignore_errors=True)
    t = time.perf_counter()
    report = build_index(
        catalog,
        index_dir,
        model="ViT-B-32",
        pretrained=str(checkpoint),
        embeddings=WORK / f"vectors-{n}.npy",
        index_type=index_type,
    )
    print(
        f"built {report.products:,} products ({report.index_type}) from --embeddings in "
        f"{time.perf_counter() - t:.1f} s"
    )
    return index_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--n", type=int, default=100_000, help="products in the index (default 100,000)"
    )
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--index-type", default="auto")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args(argv)

    from vsearch.catalog.images import load_image
    from vsearch.search import ProductIndex

    WORK.mkdir(parents=True, exist_ok=True)
    checkpoint = random_clip_checkpoint()
    index_dir = build(args.n, args.index_type, checkpoint)
    photos = phone_photos(args.queries)
    index = ProductIndex.load(index_dir, precision=args.precision)
    emb = index.embedder
    print(
        f"# bench_query: {args.n:,} products, index {index.manifest['faiss_factory']}, model "
        f"{emb.name.split('/')[0]} "
        f"({emb.precision}), {len(photos)} photos 1200x1600, load average {load_average()}"
    )

    tensors = [emb.preprocess(load_image(p, min_side=emb.input_size)).unsqueeze(0) for p in photos]
    for p, x in list(zip(photos, tensors))[:5]:  # warm-up
        emb.embed_batch(x)
        index.search(image=p, k=10)

    forward, full, decode, search = [], [], [], []
    for p, x in zip(photos, tensors):
        t = time.perf_counter()
        emb.embed_batch(x)
        forward.append(time.perf_counter() - t)

        t = time.perf_counter()
        hits = index.search(image=p, k=10)
        full.append(time.perf_counter() - t)
        assert len(hits) == 10

        t = time.perf_counter()
        emb.preprocess(load_image(p, min_side=emb.input_size))
        decode.append(time.perf_counter() - t)
        q = np.random.default_rng(len(search)).standard_normal(512).astype(np.float32)
        t = time.perf_counter()
        index.search_vector(q / np.linalg.norm(q), k=10)
        search.append(time.perf_counter() - t)

    f50, f95 = percentiles(forward)
    s50, s95 = percentiles(full)
    d50, d95 = percentiles(decode)
    v50, v95 = percentiles(search)
    print()
    print("| step (batch 1) | p50 ms | p95 ms |")
    print("|---|---|---|")
    print(f"| model forward alone ({emb.precision}) | {f50:.1f} | {f95:.1f} |")
    print(f"| full ProductIndex.search(image=...) | {s50:.1f} | {s95:.1f} |")
    print(f"| of which: read + decode + preprocess | {d50:.1f} | {d95:.1f} |")
    print(f"| of which: search_vector (FAISS + products + metadata) | {v50:.2f} | {v95:.2f} |")
    print(f"\nfull search / forward: p50 {s50 / f50:.2f}x, p95 {s95 / f95:.2f}x (target <= 1.25x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
