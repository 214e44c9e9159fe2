"""Memory of a server across reloads: after each reload only the live generation's FAISS index
should stay in memory (the replaced one keeps only its products database, for image lookups).

A 200,000-vector HNSW index is built once from synthetic vectors (``build_index`` with imported
embeddings, no model), then "rebuilt" 5 times by publishing a byte-identical copy of the live
generation under a new name (what a rebuild publishes, without waiting for HNSW construction),
and ``reload_if_changed`` loads each one. RSS is read after every reload (after a gc), and the
peak (VmHWM, reset before each reload through /proc/self/clear_refs) during each reload.

``--emulate-old`` holds a reference to the replaced generation until the next reload, as
``ProductIndex._previous`` did, for a side-by-side figure.

    python benchmarks/bench_reload_memory.py [--vectors 200000] [--dim 128] [--reloads 5]
    [--emulate-old]
"""

from __future__ import annotations

import argparse
import csv
import gc
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE  # noqa: E402


def rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def build(folder: Path, n: int, dim: int):
    from vsearch.build import build_index
    from vsearch.embeddings.imported import ModelIdentity

    model = ModelIdentity(
        name="vectors",
        spec="vectors",
        pretrained=None,
        fingerprint=f"bench-reload-{dim}",
        dim=dim,
        supports_text=False,
    )
    index_dir = folder / "index"
    if (index_dir / "CURRENT").is_file():
        return index_dir, model
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with open(folder / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title", "category", "price"])
        w.writerows(
            [
                f"P{i // 2:06d}",
                f"img/{i:06d}.jpg",
                f"Product {i // 2}",
                f"c{i % 20}",
                f"{i % 90 + 1}.00",
            ]
            for i in range(n)
        )
    started = time.perf_counter()
    build_index(
        folder / "catalog.csv",
        index_dir,
        embedder=model,
        embeddings=vectors,
        index_type="hnsw",
        calibrate_threshold=False,
        adapt="off",
    )
    print(f"built {n} x {dim} hnsw in {time.perf_counter() - started:.0f} s", flush=True)
    return index_dir, model


def publish_copy(index_dir: Path) -> None:
    """Publish a copy of the live generation as a new one (what a rebuild of the same catalog
    does)."""
    from vsearch.store import generations as store

    live = index_dir / store.read_current(index_dir)
    tmp = store.new_generation_dir(index_dir)
    shutil.rmtree(tmp)
    shutil.copytree(live, tmp)
    store.publish_generation(index_dir, tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--reloads", type=int, default=5)
    ap.add_argument(
        "--emulate-old", action="store_true", help="keep the replaced generation, as before"
    )
    ap.add_argument("--work", type=Path, default=CACHE / "reload-memory")
    args = ap.parse_args()

    from vsearch.search import ProductIndex

    index_dir, model = build(args.work / f"{args.vectors}x{args.dim}", args.vectors, args.dim)
    gc.collect()
    before = rss_mib()
    index = ProductIndex.load(index_dir, model)
    query = np.random.default_rng(1).standard_normal(args.dim).astype(np.float32)
    query /= np.linalg.norm(query)
    index.search_vector(query, k=10)
    gc.collect()
    first = rss_mib()
    print(
        f"RSS before load {before:.0f} MiB, after the first load {first:.0f} MiB "
        f"(the index: {first - before:.0f} MiB)",
        flush=True,
    )
    held = None
    for i in range(1, args.reloads + 1):
        publish_copy(index_dir)
        replaced = index._gen if args.emulate_old else None
        reset_peak()
        assert index.reload_if_changed()
        peak = rss_mib("VmHWM")
        # ProductIndex._previous used to keep the replaced generation, set after the load
        if args.emulate_old:
            held, replaced = replaced, None
        index.search_vector(query, k=10)
        gc.collect()
        print(
            f"reload {i}: RSS {rss_mib():.0f} MiB ({rss_mib() / first:.2f}x the first load), "
            f"peak during the reload {peak:.0f} MiB",
            flush=True,
        )
    print(
        f"after {args.reloads} reloads: {rss_mib() / first:.2f}x the RSS after the first load "
        f"({'old behaviour emulated' if args.emulate_old else 'live generation only'})"
    )
    del held


if __name__ == "__main__":
    main()
