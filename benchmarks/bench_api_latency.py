"""Latency of the /search API vs the in-process search it wraps (sample index, offline model).

    python benchmarks/bench_api_latency.py [--n 50] [--index DIR]

Builds the bundled sample catalog with EfficientNet-Lite0 into a temp folder unless --index is
given, serves it on a free loopback port, and times N sequential gradio_client calls.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def sample_index(root: Path) -> tuple[Path, list[Path]]:
    from vsearch.build import build_index
    from vsearch.demo import write_sample_catalog, write_sample_queries

    csv = write_sample_catalog(root / "catalog")
    queries = [p for p, _ in write_sample_queries(root / "queries", csv)]
    build_index(csv, root / "index", model="efficientnet-lite0")
    return root / "index", queries


def index_and_queries(index: Path | None, queries: Path | None, tmp: Path) -> tuple[Path, list[Path]]:
    """The index to serve and its query photos: the ones given, or the sample catalog built in tmp."""
    if index is None:
        print("building the sample index (efficientnet-lite0) ...", flush=True)
        return sample_index(tmp)
    if queries is None:
        raise SystemExit("--index needs --queries (a folder of .jpg query photos)")
    return index, sorted(queries.glob("*.jpg"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--index", type=Path)
    ap.add_argument("--queries", type=Path, help="folder of query photos (default: generated sample photos)")
    args = ap.parse_args()

    from gradio_client import Client, handle_file

    from vsearch.search import ProductIndex
    from vsearch.ui import create_app, launch_app

    with tempfile.TemporaryDirectory() as tmp:
        index_dir, queries = index_and_queries(args.index, args.queries, Path(tmp))
        index = ProductIndex.load(index_dir)
        app = create_app(index)
        url = launch_app(app, index, port=free_port())
        try:
            client = Client(url, verbose=False)
            client.predict(handle_file(str(queries[0])), api_name="/search")  # warm-up
            api = []
            for i in range(args.n):
                t = time.perf_counter()
                client.predict(handle_file(str(queries[i % len(queries)])), api_name="/search")
                api.append(time.perf_counter() - t)
            direct = []
            for i in range(args.n):
                t = time.perf_counter()
                index.search(image=str(queries[i % len(queries)]), k=10)
                direct.append(time.perf_counter() - t)
        finally:
            app.close()
    p50, p95, d50 = pct(api, 50) * 1e3, pct(api, 95) * 1e3, pct(direct, 50) * 1e3
    print(f"/search over HTTP ({args.n} sequential, k=10, model {index.embedder.name}): "
          f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, mean {statistics.mean(api) * 1e3:.1f} ms")
    print(f"in-process index.search: p50 {d50:.1f} ms -> API/in-process ratio {p50 / d50:.2f}x "
          f"(glue + upload + queue: {p50 - d50:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
