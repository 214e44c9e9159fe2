"""The two caches a build assembles its vectors from, side by side: the SQLite embedding cache
(``cache.EmbeddingCache.get_many``, ASSEMBLE_ROWS keys a step, as ``pipeline.embed_rows`` does) and
the Parquet shards a Ray build writes (``embedding_shards.shard_keys`` + ``fill_from_shards``: one
pass over the shards, joined with the catalog's keys). Both fill the same memory-mapped matrix in
catalog order (a random permutation of the keys, as a catalog never lists images in cache order).

Prints, per cache: bytes on disk, seconds to learn which keys are cached, seconds to assemble,
and the peak of numpy/Python allocations (tracemalloc) during the assembly.

    python benchmarks/bench_shard_cache.py [--n 200000] [--dim 512] [--dir
    /tmp/vsearch-bench-shard-cache]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vsearch-bench-shard-cache"))
    args = ap.parse_args()
    from vsearch.embeddings.cache import EmbeddingCache
    from vsearch.embeddings.pipeline import ASSEMBLE_ROWS
    from vsearch.embeddings.ray_engine import SHARD_ROWS
    from vsearch.embeddings.shards import fill_from_shards, shard_keys, write_embedding_shard

    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    fp, rng = "bench-model", np.random.default_rng(0)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(args.n)]
    with EmbeddingCache(args.dir / "cache.sqlite") as cache:
        for start in range(0, args.n, SHARD_ROWS):
            block = rng.standard_normal((min(SHARD_ROWS, args.n - start), args.dim)).astype(
                np.float32
            )
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            part = keys[start : start + len(block)]
            for s in range(0, len(block), 1024):  # committed per batch, as a build does
                cache.put_many(part[s : s + 1024], block[s : s + 1024], fp)
            write_embedding_shard(args.dir / "shards", part, block, fp)
    catalog = [keys[i] for i in rng.permutation(args.n)]
    size = lambda p: (
        sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())
        if Path(p).is_dir()
        else os.path.getsize(p)
    )
    load = os.getloadavg()[0]
    print(
        f"{args.n:,} vectors x {args.dim} (float32 {args.n * args.dim * 4 / 1e6:.0f} MB), load "
        f"{load:.1f}"
    )
    print("| cache | on disk MB | know cached keys s | assemble s | peak allocations MB |")
    print("|---|---|---|---|---|")
    results = {}
    for name in ("sqlite", "shards"):
        out = np.lib.format.open_memmap(
            args.dir / f"{name}.npy", mode="w+", dtype=np.float32, shape=(args.n, args.dim)
        )
        tracemalloc.start()
        t0 = time.perf_counter()
        if name == "sqlite":
            with EmbeddingCache(args.dir / "cache.sqlite") as cache:
                cached = cache.cached_hashes(fp)
                t1 = time.perf_counter()
                for start in range(0, args.n, ASSEMBLE_ROWS):
                    part = catalog[start : start + ASSEMBLE_ROWS]
                    got = cache.get_many(part, fp)
                    out[start : start + len(part)] = np.stack([got[k] for k in part])
        else:
            cached = shard_keys(args.dir / "shards", fp)
            t1 = time.perf_counter()
            wanted = {k: [i] for i, k in enumerate(catalog)}
            fill_from_shards(args.dir / "shards", fp, wanted, out)
            assert not wanted
        t2 = time.perf_counter()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(cached) == args.n
        out.flush()
        results[name] = out
        disk = size(args.dir / "cache.sqlite") if name == "sqlite" else size(args.dir / "shards")
        print(f"| {name} | {disk / 1e6:.0f} | {t1 - t0:.2f} | {t2 - t1:.2f} | {peak / 1e6:.0f} |")
    assert np.array_equal(results["sqlite"], results["shards"]), (
        "the two caches gave different matrices"
    )
    print("same matrix from both: yes")


if __name__ == "__main__":
    main()
