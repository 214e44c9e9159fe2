"""search(locate=True) against a plain search, side by side on one built index: latency per query
(interleaved, so machine load hits both alike) and whether the first result is right.

    python benchmarks/bench_locate.py --index DIR --queries QUERIES.csv [--n 60]

QUERIES.csv: image,product_id (e.g. the eval sets of benchmarks/eval_sets.py). Quality over a whole
set is `vsearch eval --index DIR --queries Q.csv --no-duplicate-credit [--locate]`; this script is
for the latency ratio, with a first-result check on the same photos as a sanity check.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, percentiles  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--queries", type=Path, required=True)
    ap.add_argument("--n", type=int, default=60, help="photos, spread over the set")
    args = ap.parse_args()
    from vsearch.search import ProductIndex

    with open(args.queries, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows = [rows[i] for i in np.linspace(0, len(rows) - 1, min(args.n, len(rows))).astype(int)]
    index = ProductIndex.load(args.index)
    for warm in rows[:3]:
        index.search(image=warm["image"], k=10)
        index.search(image=warm["image"], k=10, locate=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    right = {False: 0, True: 0}
    print(f"load before: {load_average()}")
    for i, row in enumerate(rows):
        for locate in (False, True) if i % 2 == 0 else (True, False):
            t = time.perf_counter()
            hits = index.search(image=row["image"], k=10, locate=locate)
            times[locate].append(time.perf_counter() - t)
            right[locate] += bool(hits) and hits[0].product_id in row["product_id"].split("|")
    print(f"load after: {load_average()}")
    for locate in (False, True):
        p50, p95 = percentiles(times[locate])
        print(
            f"locate={locate!s:5}  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  first right "
            f"{right[locate]}/{len(rows)}"
        )
    print(f"p50 ratio locate/plain: {np.median(times[True]) / np.median(times[False]):.2f}x")


if __name__ == "__main__":
    main()
