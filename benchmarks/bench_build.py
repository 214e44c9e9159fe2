"""Catalog build throughput: a plain per-image fp32 open_clip loop vs `vsearch build`, side by side.

    python benchmarks/bench_build.py                 # 256 jumia images, ViT-B-32 (random weights)
    python benchmarks/bench_build.py --n 512 --model efficientnet-lite0

All runs embed the same images in the same process, one after another, so machine load hits
them alike; ratios are the result, absolute images/s depend on the machine and its load.

* plain loop: what a first open_clip script does - for each image: open, convert to RGB,
  open_clip preprocess, ``encode_image`` on a batch of one, fp32, eager.
* vsearch build: ``build_index`` with default settings (precision auto, batching, decode
  workers, JPEG draft decoding, embedding cache) into an empty index folder, timed from the
  call to the published index; the model is loaded before the clock starts, as in the loop.
* vsearch build --precision fp32: the same pipeline in fp32.

Agreement: per-image cosine between the default build's vectors and the fp32 build's, and
whether both give the same top-1 product for held-out photos of the same catalog (jumia
products have several photos; the photos after the first N are the queries).
Random CLIP weights cost the same as trained ones; a checkpoint is saved once under
~/.cache/vsearch-bench. Expected runtime: ~1-2 minutes on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import JUMIA, load_average, random_clip_checkpoint  # noqa: E402


def jumia_rows(n: int, n_queries: int) -> tuple[list[dict], list[dict]]:
    """First n manifest rows as the catalog; photos of those products beyond them as queries."""
    with open(JUMIA / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    catalog, rest = rows[:n], rows[n:]
    products = {r["product_id"] for r in catalog}
    queries = [r for r in rest if r["product_id"] in products][:n_queries]
    if len(queries) < n_queries:  # fall back to catalog photos themselves
        queries += catalog[: n_queries - len(queries)]
    return catalog, queries


def write_catalog(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title", "category"])
        for r in rows:
            w.writerow([r["product_id"], str(JUMIA / r["image"]), r["title"], r["category"]])
    return path


def plain_loop(model_name: str, checkpoint: str | None, paths: list[Path]) -> float:
    """images/s of the naive per-image fp32 loop."""
    import torch
    from PIL import Image

    if model_name.startswith("efficientnet"):
        from vsearch.embedders.efficientnet import EfficientNetEmbedder

        emb = EfficientNetEmbedder(precision="fp32")
        model, preprocess = emb.model, emb._tf

        def encode(x):
            return model.forward_features(x).mean(dim=(2, 3))
    else:
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=checkpoint
        )
        model.eval()
        encode = model.encode_image
    with torch.no_grad():
        encode(preprocess(Image.open(paths[0]).convert("RGB")).unsqueeze(0))  # warm-up
        start = time.perf_counter()
        for p in paths:
            x = preprocess(Image.open(p).convert("RGB")).unsqueeze(0)
            v = encode(x)
            v = v / v.norm(dim=-1, keepdim=True)
        seconds = time.perf_counter() - start
    return len(paths) / seconds


def vsearch_build(embedder, catalog: Path, index_dir: Path, **kwargs):
    from vsearch.build import build_index

    shutil.rmtree(index_dir, ignore_errors=True)
    start = time.perf_counter()
    report = build_index(catalog, index_dir, embedder=embedder, allow_outside_paths=True, **kwargs)
    seconds = time.perf_counter() - start
    return report, report.images / seconds


def index_vectors(index_dir: Path) -> np.ndarray:
    """The model's raw vectors per catalog image, in catalog order, from the build's embedding
    cache.

    (The FAISS file may hold post-processed vectors, e.g. whitened, so it is not read here.)
    """
    import sqlite3

    from vsearch.store import generations as store

    gen = index_dir / store.read_current(index_dir)
    db = sqlite3.connect(gen / store.PRODUCTS_FILE)
    hashes = [r[0] for r in db.execute("SELECT content_hash FROM images ORDER BY vid")]
    db.close()
    cache = sqlite3.connect(index_dir / store.CACHE_FILE)
    vec = {
        h: np.frombuffer(b, dtype=np.float32)
        for h, b in cache.execute("SELECT content_hash, vector FROM embeddings")
    }
    cache.close()
    return np.stack([vec[h] for h in hashes])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256, help="catalog images (default 256)")
    ap.add_argument(
        "--queries", type=int, default=100, help="held-out photos for the top-1 check (default 100)"
    )
    ap.add_argument(
        "--model",
        default="ViT-B-32",
        help="open_clip architecture (random weights) or efficientnet-lite0",
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="override build batch size (default: build's default)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="override build decode workers (default: build's default)",
    )
    ap.add_argument(
        "--skip-plain", action="store_true", help="do not run the plain loop (for tuning runs)"
    )
    ap.add_argument(
        "--precisions", default="auto,fp32", help="build precisions to run (default auto,fp32)"
    )
    args = ap.parse_args(argv)

    from vsearch.embedders import load_embedder

    efficientnet = args.model.startswith("efficientnet")
    checkpoint = None if efficientnet else str(random_clip_checkpoint(args.model))
    work = Path(tempfile.mkdtemp(prefix="vsearch-bench-build-"))
    cat_rows, query_rows = jumia_rows(args.n, args.queries)
    catalog = write_catalog(cat_rows, work / "catalog.csv")
    paths = [JUMIA / r["image"] for r in cat_rows]
    print(
        f"# bench_build: {len(paths)} jumia images, model {args.model}, load average "
        f"{load_average()}"
    )

    results: dict[str, float] = {}
    if not args.skip_plain:
        results["plain loop (fp32, batch 1)"] = plain_loop(args.model, checkpoint, paths)
        print(f"plain loop: {results['plain loop (fp32, batch 1)']:.1f} images/s", flush=True)

    kwargs = {}
    if args.batch_size:
        kwargs["batch_size"] = args.batch_size
    if args.workers:
        kwargs["workers"] = args.workers
    vectors, embedders = {}, {}
    for precision in args.precisions.split(","):
        emb = load_embedder(
            args.model if efficientnet else args.model,
            None if efficientnet else checkpoint,
            precision=precision,
        )
        # warm-up: first-call allocations, page cache
        vsearch_build(emb, catalog, work / "warm", **kwargs)
        report, ips = vsearch_build(emb, catalog, work / f"idx-{precision}", **kwargs)
        label = f"vsearch build --precision {precision} (runs {emb.precision})"
        results[label] = ips
        vectors[precision] = index_vectors(work / f"idx-{precision}")
        embedders[precision] = emb
        print(
            f"{label}: {ips:.1f} images/s (embed {report.embed_seconds:.2f} s of "
            f"{report.seconds:.2f} s)",
            flush=True,
        )

    print()
    print("| way of running | images/s | x plain loop |")
    print("|---|---|---|")
    base = results.get("plain loop (fp32, batch 1)")
    for label, ips in results.items():
        ratio = f"{ips / base:.2f}x" if base else "-"
        print(f"| {label} | {ips:.1f} | {ratio} |")

    if len(vectors) >= 2:
        first, last = list(vectors)[0], list(vectors)[-1]
        a, b = vectors[first], vectors[last]
        cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        from vsearch.search import ProductIndex

        same = 0
        ia = ProductIndex(work / f"idx-{first}", embedders[first])
        ib = ProductIndex(work / f"idx-{last}", embedders[last])
        for r in query_rows:
            qa = ia.search(image=JUMIA / r["image"], k=1)
            qb = ib.search(image=JUMIA / r["image"], k=1)
            same += qa[0].product_id == qb[0].product_id
        print()
        print(
            f"--precision {first} ({embedders[first].precision}) vs {last} "
            f"({embedders[last].precision}) vectors: "
            f"cosine min {cos.min():.5f}, mean {cos.mean():.5f} over {len(cos)} images; "
            f"same top-1 product for {same}/{len(query_rows)} held-out photos"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
