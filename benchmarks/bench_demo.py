"""The bundled sample demo as a new user meets it: build the sample catalog with the offline model,
then search each sample shopper photo. Prints each photo's rank of the right product, top-1 score,
lead over the runner-up and the index's verdict, and the verdict the build calibrated.

    python benchmarks/bench_demo.py [--adapt auto|off] [--dir /tmp/vsearch-demo] [--locate]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapt", default="auto")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vsearch-demo"))
    ap.add_argument(
        "--locate", action="store_true", help="search with locate=True (the located object as well)"
    )
    args = ap.parse_args()
    from vsearch.build import build_index
    from vsearch.demo import write_sample_catalog, write_sample_queries
    from vsearch.embedders import load_embedder
    from vsearch.search import ProductIndex

    csv = write_sample_catalog(args.dir / "shop")
    queries = write_sample_queries(args.dir / "queries", csv)
    embedder = load_embedder("efficientnet-lite0")
    t = time.perf_counter()
    build_index(csv, args.dir / f"index-{args.adapt}", embedder=embedder, adapt=args.adapt)
    build_s = time.perf_counter() - t
    index = ProductIndex.load(args.dir / f"index-{args.adapt}", embedder)
    v = index.verdict
    print(
        json.dumps(
            {
                "build_s": round(build_s, 1),
                "verdict": {
                    k: v.get(k)
                    for k in (
                        "signal",
                        "threshold",
                        "precision",
                        "recall",
                        "unsold_rate",
                        "queries",
                        "reason",
                    )
                },
            }
        )
    )
    for photo, pid in queries:
        hits = index.search(image=photo, k=10, locate=args.locate)
        rank = next((h.rank for h in hits if h.product_id == pid), None)
        print(
            f"{photo.name}: rank {rank}  top {hits[0].product_id} {hits[0].score:.3f}  "
            f"lead {hits[0].score - hits[1].score:.3f}  confident {hits[0].confident}"
        )


if __name__ == "__main__":
    main()
