"""Sample-demo-like shops of other seeds: the bundled demo is one drawn catalog (seed 0) with 8
shopper photos, too few to judge a default on. This draws other catalogs the same way
(``write_sample_catalog(seed=S)``, 60 products) with more shopper photos each
(``write_sample_queries``), builds each with the catalog adaptation on (default) and off, and
prints R@1, how many right products rank below 3rd, the close-match calls (right / wrong) and
the build's shopper check of the projection.

    python benchmarks/bench_demo_seeds.py [--seeds 1,2,3,4,5] [--photos 24] [--dir /tmp/demo-seeds]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--photos", type=int, default=24)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/demo-seeds"))
    args = ap.parse_args()
    from vsearch.build import build_index
    from vsearch.demo import write_sample_catalog, write_sample_queries
    from vsearch.embedders import load_embedder
    from vsearch.search import ProductIndex

    embedder = load_embedder("efficientnet-lite0")
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(
        "| seed | adapt | R@1 | right product below 3rd | close match right / wrong | shopper "
        "check (fixed / broken, p) |"
    )
    print("|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        folder = args.dir / f"s{seed}"
        csv = write_sample_catalog(folder / "shop", seed=seed)
        queries = write_sample_queries(
            folder / "queries", csv, n_queries=args.photos, seed=seed + 100
        )
        for mode in ("auto", "off"):
            build_index(csv, folder / f"index-{mode}", embedder=embedder, adapt=mode)
            index = ProductIndex.load(folder / f"index-{mode}", embedder)
            ranks, right, wrong = [], 0, 0
            for photo, pid in queries:
                hits = index.search(image=photo, k=10)
                ranks.append(next((h.rank for h in hits if h.product_id == pid), 11))
                right += bool(hits[0].confident) and hits[0].product_id == pid
                wrong += bool(hits[0].confident) and hits[0].product_id != pid
            ranks = np.asarray(ranks)
            check = index.manifest["adaptation"].get("shopper_check")
            what = f"{check['fixed']} / {check['broken']}, p {check['p_value']}" if check else "-"
            print(
                f"| {seed} | {mode} | {np.mean(ranks == 1):.3f} | {int((ranks > 3).sum())} | "
                f"{right} / {wrong} | {what} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
