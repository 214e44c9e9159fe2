"""Incremental rebuilds: a full `vsearch build` vs the rebuild after changing 1 % of the catalog.

    python benchmarks/bench_incremental.py          # 100,000 one-image products, 512-d, HNSW
    python benchmarks/bench_incremental.py --n 20000 --index-type ivf

Vectors come in through ``--embeddings`` (clustered random unit vectors, `--model clip`, whose
identity needs no weights), so the model costs nothing and the index is the build. Each step is
the whole CLI command in a subprocess, timed from start to exit, one after another in one run,
with the load average beside it:

1. full build of the catalog (index A);
2. the catalog edited: 0.5 % of the products removed, 0.25 % new products, 0.25 % of the products
   given a new photo vector (same image key) - then the same `vsearch build` on index A
   (incremental);
3. a full build of the edited catalog into an empty index B (the from-scratch reference).

Checks on A after step 2: every new and changed product is the top hit for its own vector; no
removed product is returned (its own vector, k=10) or known (`product()`); recall@10 of A and of
B against exact search, on 1,000 queries near catalog vectors.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average  # noqa: E402


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    v = centres[rng.integers(0, 200, n)] * 0.6 + rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write(folder: Path, name: str, ids: list[str], vectors: np.ndarray) -> tuple[Path, Path]:
    csv_path, npy = folder / f"{name}.csv", folder / f"{name}.npy"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title", "price"])
        w.writerows([pid, f"img/{pid}.jpg", f"product {pid}", "9.99"] for pid in ids)
    np.save(npy, vectors.astype(np.float32))
    return csv_path, npy


def timed_build(csv_path: Path, npy: Path, index: Path, index_type: str) -> tuple[float, str, str]:
    load = load_average()
    cmd = [
        sys.executable,
        "-m",
        "vsearch",
        "build",
        str(csv_path),
        "--index",
        str(index),
        "--embeddings",
        str(npy),
        "--model",
        "clip",
        "--index-type",
        index_type,
        "--quiet",
    ]
    started = time.perf_counter()
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    seconds = time.perf_counter() - started
    if out.returncode:
        raise SystemExit(f"build failed: {out.stderr}")
    return seconds, load, out.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--index-type", default="hnsw", choices=["flat", "ivf", "hnsw"])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument(
        "--workdir", default=None, help="keep the files here (default: a temporary folder)"
    )
    args = ap.parse_args()

    from vsearch.embeddings.imported import model_identity
    from vsearch.search import ProductIndex

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-incr-"))
    work.mkdir(parents=True, exist_ok=True)
    n, dim = args.n, args.dim
    ids = [f"P{i}" for i in range(n)]
    vectors = clustered(n, dim, 0)
    rng = np.random.default_rng(1)
    picked = rng.permutation(n)
    removed = sorted(picked[: n // 200].tolist())  # 0.5 %
    changed = sorted(picked[n // 200 : n // 200 + n // 400].tolist())  # 0.25 %: a new photo vector
    n_new = n // 400  # 0.25 % new products
    keep = np.setdiff1d(np.arange(n), removed)
    vectors2 = vectors.copy()
    vectors2[changed] = clustered(len(changed), dim, 2)
    new_ids = [f"N{i}" for i in range(n_new)]
    ids2 = [ids[i] for i in keep] + new_ids
    vec2 = np.concatenate([vectors2[keep], clustered(n_new, dim, 3)])
    v1 = write(work, "catalog1", ids, vectors)
    v2 = write(work, "catalog2", ids2, vec2)
    for d in ("A", "B"):
        shutil.rmtree(work / d, ignore_errors=True)

    print(
        f"{n} products x {dim}-d, {args.index_type}; change: {len(removed)} removed, "
        f"{len(changed)} new photo, "
        f"{n_new} new products ({(len(removed) + len(changed) + n_new) / n:.2%})"
    )
    full, load1, _ = timed_build(*v1, work / "A", args.index_type)
    print(f"1. full build:         {full:7.1f} s   (load {load1})")
    inc, load2, line = timed_build(*v2, work / "A", args.index_type)
    print(
        f"2. incremental:        {inc:7.1f} s   (load {load2})  = {inc / full:.1%} of the full "
        f"build   [{line}]"
    )
    ref, load3, _ = timed_build(*v2, work / "B", args.index_type)
    print(
        f"3. full build, edited: {ref:7.1f} s   (load {load3})  incremental = {inc / ref:.1%} of "
        f"it   (load now {load_average()})"
    )

    model = model_identity("clip")
    a = ProductIndex.load(work / "A", model)
    b = ProductIndex.load(work / "B", model)
    row_of = {pid: i for i, pid in enumerate(ids2)}
    found = [
        a.search_vector(vec2[row_of[p]], k=1)[0].product_id == p
        for p in [ids[i] for i in changed] + new_ids
    ]
    returned = sum(
        bool({h.product_id for h in a.search_vector(vectors[i], k=10)} & {ids[j] for j in removed})
        for i in removed
    )
    known = 0
    for i in removed:
        try:
            a.product(ids[i])
            known += 1
        except KeyError:
            pass
    qrng = np.random.default_rng(4)
    q = vec2[qrng.choice(len(vec2), args.queries, replace=False)] + 0.03 * qrng.standard_normal(
        (args.queries, dim)
    )
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    truth = np.argsort(-(q @ vec2.T), axis=1)[:, :10]

    def recall(index) -> float:
        return float(
            np.mean(
                [
                    len({h.product_id for h in index.search_vector(v, k=10)} & {ids2[i] for i in t})
                    / 10
                    for v, t in zip(q, truth)
                ]
            )
        )

    r_a, r_b = recall(a), recall(b)
    print(
        f"changed/new products found at top-1: {sum(found)}/{len(found)}; removed products "
        f"returned: {returned} "
        f"of {len(removed)} searches, still known: {known}"
    )
    print(
        f"recall@10 vs exact ({args.queries} queries): incremental {r_a:.4f}, from scratch "
        f"{r_b:.4f} "
        f"(difference {r_a - r_b:+.4f})"
    )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
