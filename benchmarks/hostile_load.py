"""Ordinary shoppers while attackers hit the server, against the same run without attackers.

    python benchmarks/hostile_load.py [--shoppers 8] [--attackers 2] [--seconds 60]
    [--slow-url-burst 12]

Loopback only, bounded in time. The server (`vsearch serve` code: `ui.create_app` + `launch_app`
on the sample index, offline model) runs in a subprocess so its own memory can be read; it is
started afresh for each of the two runs, which are the same except for the attackers:

* calm: `--shoppers` clients each search with a sample photo (multipart REST), one request at
  a time; halfway through, the catalog is rebuilt (every title changed) and published, and the
  server's watcher swaps it in.
* hostile: the same, plus `--attackers` threads that take turns sending a chunked 300 MiB
  upload to the REST search, the same to the page's upload route (/gradio_api/upload), a
  decompression-bomb PNG, and a burst of `--slow-url-burst` (12) searches at once, each by a
  distinct slow `image_url` (a local server that drips one byte every 0.5 s); and one more thread
  keeps 16 slow request bodies (one byte every 0.5 s) open at all times.

Measured per run: shopper searches, unexpected shopper errors (anything but 200), p50/p95
latency, the server's RSS (start, peak, end; sampled every 0.25 s from /proc), and /health
polled every 0.5 s throughout (slowest answer, failures). Targets: 0 unexpected shopper errors,
hostile p95 <= 2x calm p95, RSS growth <= 300 MiB, /health always answering.
The server's rate limit is off (every client is 127.0.0.1), so nothing but the body limits, the
gate and the fetch limits stands between the attackers and the shoppers. The slow URL server is
on loopback, which the server refuses by default; the benchmark's server allows it.
"""

from __future__ import annotations

import argparse
import http.server
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_api_latency import free_port, load_average, pct, sample_index  # noqa: E402
from load_test import retitled_catalog  # noqa: E402

MiB = 2**20
# the server's --body-timeout in both runs (default 60 s; shorter keeps the run short)
BODY_TIMEOUT = 10.0

SERVER = r"""
import sys, time
from vsearch.serve.service import ServeSettings, Service
from vsearch.catalog.fetch import FetchPolicy
from vsearch.serve.guard import QUERY_CONNECT_TIMEOUT, QUERY_READ_TIMEOUT
from vsearch.search import ProductIndex
from vsearch.serve.ui import create_app, launch_app

index_dir, port, body_timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
index = ProductIndex.load(index_dir)
service = Service(index, ServeSettings(rate_limit=0, body_timeout=body_timeout))
service.downloads().policy = FetchPolicy(allow_private=True, connect_timeout=QUERY_CONNECT_TIMEOUT,
                                         read_timeout=QUERY_READ_TIMEOUT)
app = create_app(index, service=service)
launch_app(app, index, host="127.0.0.1", port=port, watch_interval=1.0)
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def bomb_png(side: int = 30_000) -> bytes:
    """A PNG that claims side x side RGB pixels (2.7 GB decoded) in a few kB."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + b"\x00" * (side * 3)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(64)) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


class SlowImages(http.server.ThreadingHTTPServer):
    """Every path answers 200 image/jpeg, then drips one byte every 0.5 s (never finishing)."""

    daemon_threads = True

    def __init__(self, stop: threading.Event):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                try:
                    self.wfile.write(b"\xff\xd8")
                    while not stop.wait(0.5):
                        self.wfile.write(b"\x00")
                        self.wfile.flush()
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def chunked_multipart(field: str, total: int):
    boundary = "hostile-load-boundary"

    def body():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            'filename="huge.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        chunk = b"\xff" * MiB
        for _ in range(total // MiB):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    return body(), {"content-type": f"multipart/form-data; boundary={boundary}"}


def run_phase(
    name: str, args, index_dir: Path, catalog_csv: Path, photos, slow_base: str | None
) -> dict:
    import httpx

    from vsearch.store import generations as store

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(index_dir), str(port), str(BODY_TIMEOUT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"{name}: the server did not start")
        for _ in range(3):  # warm-up
            httpx.post(
                url + "/api/v1/search", files={"image": photos[0]}, timeout=60
            ).raise_for_status()
        rss_start = rss_mib(proc.pid)
        stop = threading.Event()
        lock = threading.Lock()
        latencies: list[float] = []
        errors: list[str] = []
        attacks: dict[str, dict[str, int]] = {}
        health = {"max_s": 0.0, "failures": 0, "polls": 0}
        rss = {"peak": rss_start}
        events: list[str] = []
        started = time.monotonic()

        def note(kind: str, outcome: str) -> None:
            with lock:
                attacks.setdefault(kind, {})
                attacks[kind][outcome] = attacks[kind].get(outcome, 0) + 1

        def shopper(n: int) -> None:
            http = httpx.Client(base_url=url, timeout=120)
            i = n
            while not stop.is_set():
                i += 1
                t = time.perf_counter()
                try:
                    r = http.post("/api/v1/search", files={"image": photos[i % len(photos)]})
                    if r.status_code != 200:
                        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:150]}")
                    with lock:
                        latencies.append(time.perf_counter() - t)
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append(f"{type(e).__name__}: {str(e)[:150]}")

        def attacker(n: int) -> None:
            kinds = [
                "rest-chunked-300MiB",
                "page-upload-chunked-300MiB",
                "decompression-bomb",
                "slow-image-url",
            ]
            bomb = bomb_png()
            i = n
            while not stop.is_set():
                kind = kinds[i % len(kinds)]
                i += 1
                try:
                    with httpx.Client(base_url=url, timeout=60) as http:
                        if kind == "rest-chunked-300MiB":
                            body, headers = chunked_multipart("image", 300 * MiB)
                            r = http.post("/api/v1/search", content=body, headers=headers)
                        elif kind == "page-upload-chunked-300MiB":
                            body, headers = chunked_multipart("files", 300 * MiB)
                            r = http.post("/gradio_api/upload", content=body, headers=headers)
                        elif kind == "decompression-bomb":
                            r = http.post(
                                "/api/v1/search", files={"image": ("bomb.png", bomb, "image/png")}
                            )
                        # a burst of distinct slow URLs at once (none cached), more than the fetch
                        # gate
                        else:

                            def slow_url() -> None:
                                try:
                                    a = httpx.post(
                                        url + "/api/v1/search",
                                        timeout=60,
                                        json={"image_url": f"{slow_base}/{uuid.uuid4().hex}.jpg"},
                                    )
                                    note(kind, str(a.status_code))
                                except Exception as e:  # noqa: BLE001
                                    note(kind, type(e).__name__)

                            burst = [
                                threading.Thread(target=slow_url, daemon=True)
                                for _ in range(args.slow_url_burst)
                            ]
                            for t in burst:
                                t.start()
                            for t in burst:
                                t.join(90)
                            continue
                    note(kind, str(r.status_code))
                except Exception as e:  # noqa: BLE001 - a cut connection is an acceptable answer to an attack
                    note(kind, type(e).__name__)

        def slow_bodies(n_open: int = 16) -> None:
            socks: list[tuple[socket.socket, float]] = []
            while not stop.is_set():
                while len(socks) < n_open:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    s.sendall(
                        b"POST /api/v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                        b"application/json\r\n"
                        b"Content-Length: 100000\r\n\r\n{"
                    )
                    s.setblocking(False)
                    socks.append((s, time.monotonic()))
                keep = []
                for s, t0 in socks:
                    try:
                        s.send(b" ")
                        answer = s.recv(64)
                    except BlockingIOError:
                        keep.append((s, t0))
                        continue
                    # the server closed it (after answering, or before we read the answer)
                    except OSError as e:
                        note("slow-body", type(e).__name__)
                        s.close()
                        continue
                    note("slow-body", answer.split(b"\r\n")[0].decode("latin-1")[9:12] or "closed")
                    s.close()
                socks = keep
                stop.wait(0.5)
            for s, _ in socks:
                s.close()

        def monitor() -> None:
            http = httpx.Client(base_url=url, timeout=5)
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    ok = http.get("/api/v1/health").status_code == 200
                except Exception:  # noqa: BLE001
                    ok = False
                took = time.perf_counter() - t
                with lock:
                    health["polls"] += 1
                    health["max_s"] = max(health["max_s"], took)
                    health["failures"] += not ok
                stop.wait(0.5)

        def memory() -> None:
            while not stop.is_set():
                rss["peak"] = max(rss["peak"], rss_mib(proc.pid))
                stop.wait(0.25)

        threads = [
            threading.Thread(target=shopper, args=(n,), daemon=True) for n in range(args.shoppers)
        ]
        threads += [
            threading.Thread(target=monitor, daemon=True),
            threading.Thread(target=memory, daemon=True),
        ]
        if slow_base is not None:
            threads += [
                threading.Thread(target=attacker, args=(n,), daemon=True)
                for n in range(args.attackers)
            ]
            threads.append(threading.Thread(target=slow_bodies, daemon=True))
        for t in threads:
            t.start()
        time.sleep(args.seconds / 2)
        t0 = time.monotonic()
        build = subprocess.run(
            [
                sys.executable,
                "-m",
                "vsearch",
                "build",
                str(retitled_catalog(catalog_csv)),
                "--index",
                str(index_dir),
                "--model",
                "efficientnet-lite0",
                "--quiet",
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        events.append(
            f"{t0 - started:.0f} s: rebuild published {store.read_current(index_dir)} after "
            f"{time.monotonic() - t0:.1f} s" + ("" if build.returncode == 0 else " (FAILED)")
        )
        time.sleep(max(0.0, started + args.seconds - time.monotonic()))
        stop.set()
        for t in threads:
            t.join(90)
        elapsed = time.monotonic() - started
        served = httpx.get(url + "/api/v1/health", timeout=10).json()["generation"]
        rss_end = rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "name": name,
        "n": len(latencies),
        "rate": len(latencies) / elapsed,
        "errors": errors,
        "p50": pct(latencies, 50),
        "p95": pct(latencies, 95),
        "health": health,
        "attacks": attacks,
        "rss_start": rss_start,
        "rss_peak": rss["peak"],
        "rss_end": rss_end,
        "events": events,
        "swapped": served == store.read_current(index_dir),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shoppers", type=int, default=8)
    ap.add_argument("--attackers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument(
        "--slow-url-burst",
        type=int,
        default=12,
        help="slow image_url searches an attacker sends at once (default 12: 2 attackers, 3x the "
        "fetch gate)",
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("building the sample index (efficientnet-lite0) ...", flush=True)
        index_dir, queries = sample_index(root)
        photos = [(q.name, q.read_bytes(), "image/jpeg") for q in queries]
        catalog_csv = root / "catalog" / "catalog.csv"
        stop_slow = threading.Event()
        slow = SlowImages(stop_slow)
        threading.Thread(target=slow.serve_forever, daemon=True).start()
        try:
            load_before = load_average()
            calm = run_phase("calm", args, index_dir, catalog_csv, photos, None)
            hostile = run_phase(
                "hostile",
                args,
                index_dir,
                catalog_csv,
                photos,
                f"http://127.0.0.1:{slow.server_address[1]}/slow",
            )
            load_after = load_average()
        finally:
            stop_slow.set()
            slow.shutdown()

    print(
        f"{args.shoppers} shoppers for {args.seconds:.0f} s per run on loopback (REST multipart "
        "search, sample "
        f"index, efficientnet-lite0, rate limit off, --body-timeout {BODY_TIMEOUT:g}; "
        f"{args.attackers} attackers, "
        f"slow-url burst {args.slow_url_burst}); "
        f"load average before {load_before}, after {load_after}"
    )
    print(
        "| run | searches | req/s | unexpected errors | p50 ms | p95 ms | /health slowest "
        "(failures/polls) "
        "| server RSS start / peak / end MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in (calm, hostile):
        h = r["health"]
        print(
            f"| {r['name']} | {r['n']} | {r['rate']:.1f} | {len(r['errors'])} | "
            f"{r['p50'] * 1e3:.0f} | "
            f"{r['p95'] * 1e3:.0f} | {h['max_s'] * 1e3:.0f} ms ({h['failures']}/{h['polls']}) | "
            f"{r['rss_start']:.0f} / {r['rss_peak']:.0f} / {r['rss_end']:.0f} |"
        )
    for r in (calm, hostile):
        for e in r["events"]:
            print(f"  {r['name']}: {e}; serving it at the end: {r['swapped']}")
        for e in r["errors"][:5]:
            print(f"  {r['name']} shopper error: {e}")
    print(
        "  attacks and the answers they got: "
        + "; ".join(
            f"{k}: " + ", ".join(f"{o} x{c}" for o, c in sorted(v.items()))
            for k, v in sorted(hostile["attacks"].items())
        )
    )
    ratio = hostile["p95"] / calm["p95"] if calm["p95"] else float("inf")
    growth = hostile["rss_peak"] - hostile["rss_start"]
    print(
        f"  hostile p95 / calm p95 = {ratio:.2f} (target <= 2); hostile RSS growth (peak - start) "
        f"= {growth:.0f} MiB "
        f"(target <= 300); calm RSS growth = {calm['rss_peak'] - calm['rss_start']:.0f} MiB"
    )
    failed = (
        calm["errors"]
        or hostile["errors"]
        or ratio > 2
        or growth > 300
        or hostile["health"]["failures"]
        or calm["health"]["failures"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
