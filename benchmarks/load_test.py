"""Concurrent clients against the REST API while the catalog changes: a corrupt generation is
dropped in and a rebuild is published mid-run.

    python benchmarks/load_test.py [--clients 8] [--seconds 30] [--gradio]

The server runs in this process (sample index, offline model, the app's own concurrency limit;
the per-client rate limit is off because every client is 127.0.0.1). Each client is a thread with
its own HTTP connection; every 10th request is a bad upload that must get a 400. At 1/4 of the run
a copy of the live generation with a corrupt vectors file is published (it must never serve); at
1/2 the catalog is rebuilt by `vsearch build` in a subprocess with every title changed, so each
answer can be checked against the generation it names: no answer may mix two generations.
--gradio drives the gradio_client /search endpoint instead (no generation checks).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_api_latency import free_port, load_average, pct, sample_index  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def titles_of(generation_dir: Path) -> dict[str, str]:
    db = sqlite3.connect(f"file:{generation_dir / 'products.sqlite'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT product_id, title FROM products"))
    finally:
        db.close()


def publish_corrupt_copy(index_dir: Path) -> str:
    from vsearch.store import generations as store

    live = index_dir / store.read_current(index_dir)
    tmp = store.new_generation_dir(index_dir)
    shutil.rmtree(tmp)
    shutil.copytree(live, tmp)
    (tmp / store.VECTORS_FILE).write_bytes(b"corrupt" * 1000)
    return store.publish_generation(index_dir, tmp).name


def retitled_catalog(csv_path: Path) -> Path:
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["title"] = (r.get("title") or r["product_id"]) + " (v2)"
    out = csv_path.with_name("catalog-v2.csv")
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument(
        "--gradio", action="store_true", help="load the gradio /search endpoint instead of REST"
    )
    args = ap.parse_args()

    import httpx
    from gradio_client import Client, handle_file

    from vsearch.search import ProductIndex
    from vsearch.serve.service import ServeSettings, Service
    from vsearch.serve.ui import create_app, launch_app
    from vsearch.store import generations as store

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("building the sample index (efficientnet-lite0) ...", flush=True)
        index_dir, queries = sample_index(root)
        photos = [(q.name, q.read_bytes()) for q in queries]
        bad = ("not-an-image.txt", b"load test: every 10th request is a bad upload")
        index = ProductIndex.load(index_dir)
        titles = {index.generation: titles_of(index_dir / index.generation)}
        service = Service(index, ServeSettings(rate_limit=0))
        app = create_app(index, service=service)
        url = launch_app(app, index, host="127.0.0.1", port=free_port()).rstrip("/")
        httpx.post(url + "/api/v1/search", files={"image": photos[0]}).raise_for_status()  # warm-up
        if args.gradio:
            Client(url + "/", verbose=False).predict(
                handle_file(str(queries[0])), api_name="/search"
            )
        rss_before = rss_mib()
        latencies: list[float] = []
        errors: list[str] = []
        # (generation, [(gen, pid, title)])
        answers: list[tuple[str, list[tuple[str, str, str]]]] = []
        expected_errors = 0
        lock = threading.Lock()
        started = time.monotonic()
        deadline = started + args.seconds
        events: list[str] = []

        def worker(n: int) -> None:
            nonlocal expected_errors
            http = httpx.Client(base_url=url, timeout=60)
            client = Client(url + "/", verbose=False) if args.gradio else None
            i = n
            while time.monotonic() < deadline:
                i += 1
                bad_request = i % 10 == 0
                name, data = bad if bad_request else photos[i % len(photos)]
                t = time.perf_counter()
                try:
                    if client is not None:
                        path = queries[i % len(queries)] if not bad_request else root / name
                        if bad_request:
                            path.write_bytes(data)
                        client.predict(handle_file(str(path)), api_name="/search")
                        ok, body = not bad_request, None
                    else:
                        r = http.post("/api/v1/search", files={"image": (name, data, "image/jpeg")})
                        body = r.json()
                        ok = r.status_code == (400 if bad_request else 200)
                        if bad_request and ok:
                            ok = "not a recognised image" in body["detail"]
                        if not ok:
                            raise RuntimeError(f"HTTP {r.status_code}: {body}")
                except Exception as e:  # noqa: BLE001
                    ok = bad_request and "not a recognised image" in str(e)
                    if not ok:
                        with lock:
                            errors.append(f"{type(e).__name__}: {str(e)[:200]}")
                    body = None
                dt = time.perf_counter() - t
                with lock:
                    if bad_request:
                        expected_errors += ok
                    elif ok:
                        latencies.append(dt)
                        if body is not None:
                            answers.append(
                                (
                                    body["generation"],
                                    [
                                        (h["generation"], h["product_id"], h["title"])
                                        for h in body["results"]
                                    ],
                                )
                            )

        threads = [
            threading.Thread(target=worker, args=(n,), daemon=True) for n in range(args.clients)
        ]
        for t in threads:
            t.start()
        time.sleep(args.seconds / 4)
        corrupt = publish_corrupt_copy(index_dir)
        events.append(f"{time.monotonic() - started:.1f} s: published corrupt generation {corrupt}")
        time.sleep(max(0.0, started + args.seconds / 2 - time.monotonic()))
        v2 = retitled_catalog(root / "catalog" / "catalog.csv")
        t0 = time.monotonic()
        build = subprocess.run(
            [
                sys.executable,
                "-m",
                "vsearch",
                "build",
                str(v2),
                "--index",
                str(index_dir),
                "--model",
                "efficientnet-lite0",
                "--quiet",
            ],
            capture_output=True,
            text=True,
        )
        new_gen = store.read_current(index_dir)
        events.append(
            f"{t0 - started:.1f} s: rebuild started; published {new_gen} after "
            f"{time.monotonic() - t0:.1f} s"
            + ("" if build.returncode == 0 else f" (FAILED: {build.stderr.strip()[-300:]})")
        )
        titles[new_gen] = titles_of(index_dir / new_gen)
        for t in threads:
            t.join(args.seconds + 60)
        elapsed = time.monotonic() - started
        rss_after = rss_mib()
        served_at_end = index.generation
        skipped = sorted(index.skipped_generations)
        app.close()

    mixed = [a for a in answers if any(g != a[0] for g, _, _ in a[1])]
    wrong = [
        a
        for a in answers
        if a[0] in titles and any(titles[a[0]].get(pid) != title for _, pid, title in a[1])
    ]
    by_gen: dict[str, int] = {}
    for g, _ in answers:
        by_gen[g] = by_gen.get(g, 0) + 1
    n = len(latencies)
    mode = "gradio_client /search" if args.gradio else "REST POST /api/v1/search"
    print(
        f"{args.clients} concurrent clients for {args.seconds:.0f} s on loopback against {mode} "
        f"(concurrency limit {service.gate.limit}, rate limit off); load average {load_average()}"
    )
    for e in events:
        print(f"  {e}")
    print(
        f"  {n} good searches, {n / elapsed:.1f} req/s; latency p50 {pct(latencies, 50) * 1e3:.0f} "
        "ms, "
        f"p95 {pct(latencies, 95) * 1e3:.0f} ms, p99 {pct(latencies, 99) * 1e3:.0f} ms"
        if n
        else "  no successful searches"
    )
    print(
        f"  bad uploads answered with a clear error: {expected_errors}; unexpected errors: "
        f"{len(errors)}"
    )
    for e in errors[:5]:
        print(f"    {e}")
    if not args.gradio:
        print(
            f"  answers per generation: {by_gen}; corrupt generation served: "
            f"{by_gen.get(corrupt, 0)} times; "
            f"skipped by the server: {skipped}"
        )
        print(
            f"  answers mixing generations: {len(mixed)}; answers whose titles are not their "
            f"generation's: {len(wrong)}"
        )
        print(f"  serving at the end: {served_at_end} (the rebuild: {new_gen})")
    print(
        f"  server process RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after (clients "
        "share this process)"
    )
    failed = errors or (
        not args.gradio
        and (
            mixed
            or wrong
            or by_gen.get(corrupt)
            or served_at_end != new_gen
            or corrupt not in skipped
            or build.returncode != 0
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
