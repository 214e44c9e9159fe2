"""Concurrent clients against /search on loopback: throughput, latency percentiles, errors, server RSS.

    python benchmarks/load_test.py [--clients 8] [--seconds 30] [--index DIR]

The server runs in this process (sample index, offline model, the app's own queue settings);
each client is a thread with its own gradio_client.Client. Stops by itself after --seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_api_latency import free_port, index_and_queries, pct  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--index", type=Path)
    ap.add_argument("--queries", type=Path)
    args = ap.parse_args()

    from gradio_client import Client, handle_file

    from vsearch.search import ProductIndex
    from vsearch.ui import create_app, launch_app

    with tempfile.TemporaryDirectory() as tmp:
        index_dir, queries = index_and_queries(args.index, args.queries, Path(tmp))
        bad = Path(tmp) / "not-an-image.txt"
        bad.write_text("load test: every 10th request is a bad upload")
        index = ProductIndex.load(index_dir)
        app = create_app(index)
        url = launch_app(app, index, host="127.0.0.1", port=free_port())
        Client(url, verbose=False).predict(handle_file(str(queries[0])), api_name="/search")  # warm-up
        rss_before = rss_mib()
        latencies: list[float] = []
        errors: list[str] = []
        expected_errors = 0
        lock = threading.Lock()
        deadline = time.monotonic() + args.seconds

        def worker(n: int) -> None:
            nonlocal expected_errors
            client = Client(url, verbose=False)
            i = n
            while time.monotonic() < deadline:
                i += 1
                bad_request = i % 10 == 0
                t = time.perf_counter()
                try:
                    src = bad if bad_request else queries[i % len(queries)]
                    client.predict(handle_file(str(src)), api_name="/search")
                    ok = not bad_request
                except Exception as e:  # noqa: BLE001
                    ok = bad_request and "not a recognised image" in str(e)
                    if not ok:
                        with lock:
                            errors.append(f"{type(e).__name__}: {e}")
                dt = time.perf_counter() - t
                with lock:
                    if bad_request:
                        expected_errors += ok
                    elif ok:
                        latencies.append(dt)

        started = time.monotonic()
        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.seconds + 60)
        elapsed = time.monotonic() - started
        rss_after = rss_mib()
        app.close()
    n = len(latencies)
    print(f"{args.clients} concurrent clients for {args.seconds:.0f} s on loopback "
          f"(queue concurrency {max(1, min(4, os.cpu_count() or 1))}):")
    print(f"  {n} good searches, {n / elapsed:.1f} req/s; "
          f"latency p50 {pct(latencies, 50) * 1e3:.0f} ms, p95 {pct(latencies, 95) * 1e3:.0f} ms, "
          f"p99 {pct(latencies, 99) * 1e3:.0f} ms" if n else "  no successful searches")
    print(f"  bad uploads answered with a clear error: {expected_errors}; unexpected errors: {len(errors)}")
    for e in errors[:5]:
        print(f"    {e}")
    print(f"  server process RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after "
          "(clients share this process)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
