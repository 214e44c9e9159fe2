"""Driver memory of a sharded IVF build: vectors streamed from Parquet shards vs held in memory.

    python benchmarks/bench_streamed_build.py --n 200000 --dim 512

Writes N synthetic unit vectors (clustered) as Parquet shards keyed by image, and a one-image-per-
product catalog of N rows; then builds the same index twice, each in a fresh process
(``build_index(..., embeddings=FOLDER, index_type=TYPE)``): once streamed (vectors assembled into a
memory map on disk, projected and added a shard at a time: ``build.ON_DISK_MIN_VECTORS`` = 0) and
once in memory (``ON_DISK_MIN_VECTORS`` above N). Each child samples its anonymous memory
(RssAnon: what nothing on disk backs) every 20 ms and reports the peak, with the peak RSS
(VmHWM, which also counts page-cache pages of the memory map it touched) and the wall time. A
third child runs the streamed build on 8-d vectors: the memory that does not grow with the vectors
(the catalog's Python objects, torch and FAISS imports), subtracted to show what does.
``--shard`` sets the vectors per add task (``sharded_index.SHARD_VECTORS``, 200,000 by default:
at 200k the whole catalog would be one shard). The two generations' top-10 answers for 200 queries
are compared. ``--train-sample`` caps the IVF training sample (``store.TRAIN_SAMPLE_MAX``; k-means
on 2 shared cores is the slow part).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, write_synthetic_catalog  # noqa: E402

# the same streamed build with 8-d vectors: the memory that does not grow with the vectors
BASELINE_DIM = 8


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def child(args) -> None:
    """One build in this process; prints its memory and time as JSON."""
    from vsearch import build
    from vsearch.build import build_index
    from vsearch.embeddings.imported import ModelIdentity
    from vsearch.store import generations as store
    from vsearch.store import sharded as sharded_index

    build.ON_DISK_MIN_VECTORS = 10**12 if args.mode == "in-memory" else 0
    dim = BASELINE_DIM if args.mode == "baseline" else args.dim
    sharded_index.SHARD_VECTORS = args.shard
    store.TRAIN_SAMPLE_MAX = args.train_sample
    store.MIN_TRAIN_PER_LIST = 0  # exactly --train-sample
    model = ModelIdentity(
        name="synthetic",
        spec="synthetic",
        pretrained=None,
        fingerprint=f"synthetic-{dim}",
        dim=dim,
        supports_text=False,
    )
    work = Path(args.work)
    peak = {"anon_kb": _status_kb("RssAnon")}
    start_anon = peak["anon_kb"]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["anon_kb"] = max(peak["anon_kb"], _status_kb("RssAnon"))
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    started = time.perf_counter()
    build_index(
        work / "catalog.csv",
        work / f"index-{args.mode}",
        embedder=model,
        embeddings=work / f"parquet-{dim}",
        index_type=args.type,
    )
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    print(
        json.dumps(
            {
                "mode": args.mode,
                "seconds": round(seconds, 1),
                "start_anon_mb": round(start_anon / 1024),
                "peak_anon_mb": round(peak["anon_kb"] / 1024),
                "peak_rss_mb": round(_status_kb("VmHWM") / 1024),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--type", default="ivf", choices=("ivf", "ivfpq", "ivfpq-fs"))
    ap.add_argument("--files", type=int, default=8, help="Parquet shards of the input")
    ap.add_argument("--train-sample", type=int, default=20_000)
    ap.add_argument(
        "--shard",
        type=int,
        default=25_000,
        help="vectors per add task (sharded_index.SHARD_VECTORS)",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="streamed", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="vsearch-streamed-") as tmp:
        work = Path(tmp)
        write_synthetic_catalog(args.n, work / "catalog.csv")
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((1000, args.dim)).astype(np.float32)
        for dim in (args.dim, BASELINE_DIM):
            (work / f"parquet-{dim}").mkdir()
            for f, part in enumerate(np.array_split(np.arange(args.n), args.files)):
                x = centres[rng.integers(0, 1000, len(part)), :dim] + 0.8 * rng.standard_normal(
                    (len(part), dim)
                ).astype(np.float32)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                table = pa.table(
                    {
                        "image": pa.array([f"img/{i:07d}.jpg" for i in part]),
                        "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim),
                    }
                )
                pq.write_table(
                    table, work / f"parquet-{dim}" / f"part-{f:05d}.parquet", row_group_size=10_000
                )
        results = {}
        for mode in ("streamed", "in-memory", "baseline"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--mode",
                    mode,
                    "--work",
                    str(work),
                    "--n",
                    str(args.n),
                    "--dim",
                    str(args.dim),
                    "--type",
                    args.type,
                    "--train-sample",
                    str(args.train_sample),
                    "--shard",
                    str(args.shard),
                ],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        from vsearch.embeddings.imported import ModelIdentity
        from vsearch.search import ProductIndex

        model = ModelIdentity(
            name="synthetic",
            spec="synthetic",
            pretrained=None,
            fingerprint=f"synthetic-{args.dim}",
            dim=args.dim,
            supports_text=False,
        )
        a, b = (ProductIndex.load(work / f"index-{m}", model) for m in ("streamed", "in-memory"))
        queries = (
            pq.read_table(work / f"parquet-{args.dim}" / "part-00000.parquet")
            .column("vector")
            .to_numpy(zero_copy_only=False)
        )
        same = sum(
            [h.product_id for h in a.search_vector(np.asarray(q, np.float32), k=10)]
            == [h.product_id for h in b.search_vector(np.asarray(q, np.float32), k=10)]
            for q in queries[:200]
        )
    vector_mb = args.n * args.dim * 4 / 2**20
    s, m, base = results["streamed"], results["in-memory"], results["baseline"]
    print(
        f"{args.n:,} x {args.dim}-d float32 vectors ({vector_mb:.0f} MB), {args.files} Parquet "
        f"files, {args.type}, "
        f"training sample {args.train_sample:,}, shards of {args.shard:,}; load average "
        f"{load_average()}"
    )
    print("| build | wall s | peak anonymous MB (start) | peak RSS MB |")
    print("|---|---|---|---|")
    for r in (s, m, base):
        print(
            f"| {r['mode']}{' (streamed, 8-d)' if r is base else ''} | {r['seconds']} | "
            f"{r['peak_anon_mb']} "
            f"({r['start_anon_mb']}) | {r['peak_rss_mb']} |"
        )
    grow_s, grow_m = (
        s["peak_anon_mb"] - base["peak_anon_mb"],
        m["peak_anon_mb"] - base["peak_anon_mb"],
    )
    print(
        f"peak anonymous memory streamed / in memory: {s['peak_anon_mb'] / m['peak_anon_mb']:.2f}; "
        "above the 8-d "
        f"baseline (what grows with the vectors): streamed {grow_s} MB, in memory {grow_m} MB, "
        f"vectors {vector_mb:.0f} MB; "
        f"same top-10 for {same}/200 queries"
    )


if __name__ == "__main__":
    main()
