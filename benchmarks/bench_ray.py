"""`vsearch build --engine ray` vs the local engine on one machine, side by side.

    # 2,000 real photos (1,000 jumia + 1,000 abo), EfficientNet-Lite0
    python benchmarks/bench_ray.py
    python benchmarks/bench_ray.py --n 400 --rounds 1    # quicker

Each round builds the same catalog into an empty index folder (empty cache) with the local
engine and with the Ray engine, alternating, in separate fresh processes (so neither build finds
the model or Ray already warm in the other's process); wall time is the whole build as a user
sees it: model load, hashing, embedding, index, learning step. The Ray engine is timed twice:
"ray (cold)" starts Ray itself inside the build (`vsearch build --engine ray` on a machine with no
cluster) and "ray (cluster up)" joins a Ray already running (`ray.init(num_cpus=2)` before the
clock, as after `ray start --head`). Agreement: per-image cosine between the local and the Ray
build's raw vectors (from each index's cache), and whether every catalog image's nearest other
catalog image (top-1) is the same in both builds. Load average is printed before and after.
Ray's overhead is what this measures on 2 CPUs; the gain comes with more nodes.

``--shards-cache`` builds `--index-type ivf` with ``build.ON_DISK_MIN_VECTORS`` lowered to 0, so
every build takes the path of a catalog of 100,000+ images: vectors assembled on disk, and the Ray
build's vectors kept only in Parquet shards (the raw vectors are then read back from them).
"""

from __future__ import annotations

import argparse
import csv
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

RAY_INIT = {"num_cpus": 2, "include_dashboard": False, "object_store_memory": 300 * 1024**2}

SHARDS_CACHE_ENV = "VSEARCH_BENCH_SHARDS_CACHE"  # parent -> child: take the 100,000+ image path


def write_catalog(path: Path, n: int) -> Path:
    """n/2 jumia photos (their products) + n/2 abo photos (one product each)."""
    with open(SHARED_DATA / "jumia" / "manifest.csv", newline="", encoding="utf-8") as f:
        jumia = list(csv.DictReader(f))[: n // 2]
    with open(SHARED_DATA / "abo" / "manifest.csv", newline="", encoding="utf-8") as f:
        abo = list(csv.DictReader(f))[: n - len(jumia)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title", "category"])
        for r in jumia:
            w.writerow(
                [
                    r["product_id"],
                    str(SHARED_DATA / "jumia" / r["image"]),
                    r["title"],
                    r["category"],
                ]
            )
        for r in abo:
            w.writerow([f"abo-{r['item_id']}", str(SHARED_DATA / "abo" / r["image"]), "", "abo"])
    return path


def one_build(catalog: str, index: str, engine: str, model: str, ray_up: bool) -> None:
    """Child process: one timed build; prints a JSON line."""
    if ray_up:
        import ray

        ray.init(**RAY_INIT)
    from vsearch import build
    from vsearch.build import build_index

    options = {}
    if os.environ.get(SHARDS_CACHE_ENV) == "1":
        build.ON_DISK_MIN_VECTORS = 0
        options["index_type"] = "ivf"
    started = time.perf_counter()
    report = build_index(
        catalog, index, model=model, engine=engine, allow_outside_paths=True, **options
    )
    wall = time.perf_counter() - started
    print(
        json.dumps(
            {
                "wall": wall,
                "embed_seconds": report.embed_seconds,
                "images": report.images,
                "embedded": report.embedded,
                "problems": len(report.problems),
                "engine": report.engine,
            }
        )
    )


def raw_vectors(index: Path, catalog: Path, model: str) -> np.ndarray:
    """Each catalog row's raw model vector, from the index's embedding cache (or its Parquet
    shards, where they are the cache), in catalog order."""
    from vsearch.catalog.images import content_hash
    from vsearch.embeddings.cache import EmbeddingCache
    from vsearch.embeddings.imported import model_identity
    from vsearch.embeddings.pipeline import SHARDS_DIR
    from vsearch.embeddings.shards import fill_from_shards
    from vsearch.store import generations as store

    identity = model_identity(model, None)
    fp = identity.fingerprint
    with open(catalog, newline="", encoding="utf-8") as f:
        hashes = [content_hash(Path(r["image"]).read_bytes()) for r in csv.DictReader(f)]
    with EmbeddingCache(index / store.CACHE_FILE) as cache:
        got = cache.get_many(list(set(hashes)), fp)
    wanted = {h: [i] for i, h in enumerate(dict.fromkeys(h for h in hashes if h not in got))}
    if wanted:
        out = np.zeros((len(wanted), int(identity.dim)), dtype=np.float32)
        keys = list(wanted)
        fill_from_shards(index / SHARDS_DIR, fp, wanted, out)
        assert not wanted, f"{len(wanted)} vectors in neither the cache nor the shards"
        got.update(zip(keys, out))
    return np.stack([got[h] for h in hashes])


def top1_excluding_self(v: np.ndarray) -> np.ndarray:
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    return sims.argmax(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument(
        "--shards-cache",
        action="store_true",
        help="ivf builds on the 100,000+ image path (see above)",
    )
    ap.add_argument(
        "--child",
        nargs=5,
        metavar=("CATALOG", "INDEX", "ENGINE", "MODEL", "RAY_UP"),
        help=argparse.SUPPRESS,
    )
    args = ap.parse_args()
    if args.child:
        cat, index, engine, model, ray_up = args.child
        one_build(cat, index, engine, model, ray_up == "1")
        return

    print(
        f"load average before: {load_average()}"
        + ("; --shards-cache: ivf on the 100,000+ image path" if args.shards_cache else "")
    )
    runs: dict[str, list[dict]] = {"local": [], "ray (cold)": [], "ray (cluster up)": []}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)
        catalog = write_catalog(tmp / "catalog.csv", args.n)
        for r in range(args.rounds):
            for label, engine, up in (
                ("local", "local", "0"),
                ("ray (cold)", "ray", "0"),
                ("ray (cluster up)", "ray", "1"),
            ):
                index = tmp / f"{engine}-{up}-{r}"
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        str(catalog),
                        str(index),
                        engine,
                        args.model,
                        up,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=1800,
                    env={
                        **os.environ,
                        "HF_HUB_OFFLINE": "1",
                        SHARDS_CACHE_ENV: "1" if args.shards_cache else "0",
                    },
                )
                if out.returncode != 0:
                    raise SystemExit(f"{label} build failed:\n{out.stderr[-3000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                runs[label].append(result)
                print(
                    f"round {r} {label:17s} wall {result['wall']:6.1f} s, embed "
                    f"{result['embed_seconds']:6.1f} s, "
                    f"{result['images']} images, {result['embedded']} embedded, "
                    f"{result['problems']} problems "
                    f"{result['engine'] or ''}  (load {load_average()})",
                    flush=True,
                )
        local = raw_vectors(tmp / "local-0-0", catalog, args.model)
        remote = raw_vectors(tmp / "ray-0-0", catalog, args.model)
        cos = (local * remote).sum(axis=1)
        same_top1 = top1_excluding_self(local) == top1_excluding_self(remote)
    best_local = min(x["wall"] for x in runs["local"])
    print(f"\n{args.n} images, {args.model}, {args.rounds} round(s); best wall time of the rounds:")
    for label, rs in runs.items():
        wall = min(x["wall"] for x in rs)
        embed = min(x["embed_seconds"] for x in rs)
        print(
            f"  {label:17s} {wall:6.1f} s  ({args.n / wall:5.1f} images/s, embed stage "
            f"{embed:6.1f} s)  "
            f"ratio to local {wall / best_local:.2f}x"
        )
    print(
        f"min cosine local vs ray: {cos.min():.6f}; same top-1 (nearest other catalog image) for "
        f"{int(same_top1.sum())}/{len(same_top1)} images"
    )
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
