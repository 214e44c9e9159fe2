"""Latency of the REST API and the gradio /search endpoint vs the in-process search they wrap.

    python benchmarks/bench_api_latency.py [--n 50] [--index DIR --queries DIR]

Builds the bundled sample catalog with EfficientNet-Lite0 into a temp folder unless --index is
given, serves it on a free loopback port, and times N sequential requests of each kind on the
same photos, interleaved (REST, in-process, REST, ...) so machine load hits both alike:
POST /api/v1/search (multipart upload, k=10, one keep-alive connection), gradio_client /search,
and ProductIndex.search on the photo's path.
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


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def sample_index(root: Path) -> tuple[Path, list[Path]]:
    from vsearch.build import build_index
    from vsearch.demo import write_sample_catalog, write_sample_queries

    csv = write_sample_catalog(root / "catalog")
    queries = [p for p, _ in write_sample_queries(root / "queries", csv)]
    build_index(csv, root / "index", model="efficientnet-lite0")
    return root / "index", queries


def index_and_queries(
    index: Path | None, queries: Path | None, tmp: Path
) -> tuple[Path, list[Path]]:
    """The index to serve and its query photos: the ones given, or the sample catalog built in
    tmp."""
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
    ap.add_argument(
        "--queries", type=Path, help="folder of query photos (default: generated sample photos)"
    )
    args = ap.parse_args()

    import httpx
    from gradio_client import Client, handle_file

    from vsearch.search import ProductIndex
    from vsearch.serve.service import ServeSettings, Service
    from vsearch.serve.ui import create_app, launch_app

    with tempfile.TemporaryDirectory() as tmp:
        index_dir, queries = index_and_queries(args.index, args.queries, Path(tmp))
        index = ProductIndex.load(index_dir)
        service = Service(index, ServeSettings(rate_limit=0))
        app = create_app(index, service=service)
        url = launch_app(app, index, port=free_port())
        photos = [(q, q.read_bytes()) for q in queries]
        rest, gradio, direct = [], [], []
        try:
            http = httpx.Client(base_url=url.rstrip("/"), timeout=60)
            client = Client(url, verbose=False)
            for q, data in photos[:3]:  # warm-up: model, FAISS, connection
                http.post(
                    "/api/v1/search?k=10", files={"image": (q.name, data, "image/jpeg")}
                ).raise_for_status()
                client.predict(handle_file(str(q)), api_name="/search")
                index.search(image=str(q), k=10)
            for i in range(args.n):
                q, data = photos[i % len(photos)]
                t = time.perf_counter()
                r = http.post("/api/v1/search?k=10", files={"image": (q.name, data, "image/jpeg")})
                rest.append(time.perf_counter() - t)
                r.raise_for_status()
                assert len(r.json()["results"]) == 10
                t = time.perf_counter()
                index.search(image=str(q), k=10)
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                client.predict(handle_file(str(q)), api_name="/search")
                gradio.append(time.perf_counter() - t)
        finally:
            app.close()
    d50 = pct(direct, 50) * 1e3
    print(
        f"{args.n} sequential requests each, k=10, model {index.embedder.name}, {len(photos)} "
        "photos; "
        f"load average {load_average()}"
    )
    print(
        f"  in-process ProductIndex.search:  p50 {d50:6.1f} ms, p95 {pct(direct, 95) * 1e3:6.1f} ms"
    )
    for name, times in (("REST POST /api/v1/search", rest), ("gradio_client /search", gradio)):
        p50 = pct(times, 50) * 1e3
        print(
            f"  {name:<31s}: p50 {p50:6.1f} ms, p95 {pct(times, 95) * 1e3:6.1f} ms, "
            f"mean {statistics.mean(times) * 1e3:6.1f} ms -> p50 ratio {p50 / d50:.2f}x "
            f"(+{p50 - d50:.1f} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
