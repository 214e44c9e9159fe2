"""How much memory `vsearch gc` needs as the index grows: its used-key set lives in a scratch
SQLite file (vsearch.store.gc.UsedKeys) instead of a Python set of (content hash, model) pairs.

Builds a synthetic generation database (N images) and embedding cache (N + N/10 vectors, 64-d,
the extra tenth unused) and runs what gc runs on them: the used keys of the generation, then the
cache prune (dry run and real). Reports wall time and the peak of Python allocations
(tracemalloc: SQLite's own page cache is outside it and bounded by SQLite's cache_size), beside
what a Python set of the same keys - the previous implementation - takes.

    python benchmarks/bench_gc.py [--n 50000,200000,1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from vsearch.store import generations as store
from vsearch.store.gc import UsedKeys, _prune_cache

FP = "efficientnet-lite0:bench"


def _hash(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def make(folder: Path, n: int) -> tuple[Path, Path]:
    gen = folder / "gen-bench"
    gen.mkdir()
    db = sqlite3.connect(gen / store.PRODUCTS_FILE)
    db.execute("CREATE TABLE images (vid INTEGER PRIMARY KEY, content_hash TEXT NOT NULL)")
    db.executemany("INSERT INTO images VALUES (?, ?)", ((i, _hash(i)) for i in range(n)))
    db.commit()
    db.close()
    cache = folder / store.CACHE_FILE
    db = sqlite3.connect(cache)
    db.executescript(
        "CREATE TABLE embeddings (content_hash TEXT NOT NULL, fingerprint TEXT NOT NULL, dim "
        "INTEGER NOT NULL,"
        " vector BLOB NOT NULL, PRIMARY KEY (content_hash, fingerprint)) WITHOUT ROWID;"
        "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT "
        "NULL,"
        " content_hash TEXT NOT NULL) WITHOUT ROWID;"
    )
    blob = np.zeros(64, np.float32).tobytes()
    total = n + n // 10
    db.executemany(
        "INSERT INTO embeddings VALUES (?, ?, 64, ?)", ((_hash(i), FP, blob) for i in range(total))
    )
    db.executemany(
        "INSERT INTO files VALUES (?, 1, 1, ?)", ((f"img/{i}.jpg", _hash(i)) for i in range(total))
    )
    db.commit()
    db.close()
    return gen, cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="50000,200000,1000000")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(
        "| images | gc: used keys + cache prune | peak Python allocations | a Python set of the "
        "keys (before) |"
    )
    print("|---|---|---|---|")
    for n in (int(x) for x in args.n.split(",")):
        with tempfile.TemporaryDirectory() as d:
            folder = Path(d)
            gen, cache = make(folder, n)
            tracemalloc.start()
            t = time.perf_counter()
            used = UsedKeys(folder / ".gc-used-keys.sqlite")
            used.add_generation(gen, FP)
            dry = _prune_cache(cache, used, dry_run=True)
            done = _prune_cache(cache, used, dry_run=False)
            used.close()
            seconds = time.perf_counter() - t
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert dry == done == (n // 10, n // 10), (dry, done)
            tracemalloc.start()
            as_set = {(_hash(i), FP) for i in range(n)}
            set_bytes = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            del as_set
            print(
                f"| {n:,} | {seconds:.1f} s | {peak / 2**20:.1f} MiB "
                f"| {set_bytes / 2**20:.0f} MiB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
