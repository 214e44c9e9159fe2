"""The server under hostile traffic, through every door: bounded and timed request bodies, one
search gate and rate limit for the page, its gradio API and the REST API, the API key on the
gradio API, trusted proxies, the bounded image_url cache, and page images after Gradio's sweep."""

from __future__ import annotations

import http.server
import io
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import FakeEmbedder, draw_product

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from test_ui import shopper_photo, start_server  # noqa: E402

MiB = 2**20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("guard"), rate_limit=0)
    yield srv
    srv.app.close()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory):
    """A server that gives a request body 2 s to arrive."""
    srv = start_server(tmp_path_factory.mktemp("impatient"), rate_limit=0, body_timeout=2.0)
    yield srv
    srv.app.close()


def _url(srv, route: str) -> str:
    return srv.url.rstrip("/") + route


def png_bytes(product: int) -> bytes:
    buf = io.BytesIO()
    draw_product(product, size=96).save(buf, format="PNG")
    return buf.getvalue()


def _status_kib() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def peak_growth_mib(fn) -> float:
    """How far this process's resident memory rose above where it was while ``fn`` ran (the
    server runs in this process): the peak (VmHWM, reset first) where Linux allows it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        peak = True
    except OSError:
        peak = False
    before = _status_kib()["VmRSS"]
    fn()
    after = _status_kib()
    return ((after["VmHWM"] if peak else after["VmRSS"]) - before) / 1024


# ---------------------------------------------------------------- bounded request bodies


@pytest.mark.parametrize(
    ("route", "field"), [("/api/v1/search", "image"), ("/gradio_api/upload", "files")]
)
def test_a_chunked_200_mib_body_is_refused_with_413_while_it_streams(server, route, field):
    """No Content-Length, so nothing can be refused up front: the body is counted as it arrives."""
    sent = [0]
    boundary = "vsearch-test-boundary"

    def body():  # made lazily, 1 MiB at a time: the test never holds the 200 MiB either
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            'filename="big.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        chunk = b"\xff" * MiB
        for part in [head] + [chunk] * 200 + [f"\r\n--{boundary}--\r\n".encode()]:
            sent[0] += len(part)
            yield part

    answers = []

    def post():
        r = httpx.post(
            _url(server, route),
            content=body(),
            timeout=120,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        answers.append(r)

    t0 = time.monotonic()
    grew = peak_growth_mib(post)
    print(
        f"{route}: refused after {sent[0] / MiB:.0f} MiB sent, {time.monotonic() - t0:.1f} s, "
        f"memory +{grew:.0f} MiB"
    )
    (r,) = answers
    assert r.status_code == 413, r.text
    # the guard's words, or Gradio's own per-file check when it counts first: both while streaming
    assert (
        "at most" in r.text and "50 MiB" in r.text
    ) or f"maximum allowed size of {50 * MiB} bytes" in r.text
    assert sent[0] < 150 * MiB, f"the server read {sent[0] / MiB:.0f} MiB before refusing"
    assert grew < 100, f"the server's memory grew by {grew:.0f} MiB"
    ok = httpx.post(
        _url(server, "/api/v1/search?k=1"), files={"image": ("p.png", png_bytes(4), "image/png")}
    )
    assert ok.status_code == 200 and ok.json()["results"][0]["product_id"] == "P004"


def test_a_declared_oversize_json_body_is_refused_before_it_is_read(server):
    r = httpx.post(
        _url(server, "/api/v1/search"),
        content=b"{" + b" " * (2 * MiB) + b"}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and "at most 1 MiB" in r.json()["detail"]


@pytest.mark.parametrize(
    "route", ["/api/v1/search", "/gradio_api/upload", "/gradio_api/queue/join"]
)
def test_a_slow_body_is_cut_off_with_408_after_the_body_timeout(impatient, route):
    """A client that drips a few bytes a second is answered 408 once body_timeout (2 s here) is
    up."""
    port = int(impatient.url.rstrip("/").rsplit(":", 1)[1])
    json_route = route.endswith("join")
    ctype = "application/json" if json_route else "multipart/form-data; boundary=x"
    start = (
        b""
        if json_route
        else b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n'
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
            + start
        )
        started = time.monotonic()
        s.setblocking(False)
        answer = b""
        while time.monotonic() - started < 15 and b"\r\n\r\n" not in answer:
            try:
                s.send(b" " if json_route else b"a")
            except OSError:
                pass
            time.sleep(0.25)
            try:
                answer += s.recv(4096)
            except BlockingIOError:
                pass
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive within 2 s" in answer or b"\r\n\r\n" in answer
    assert 1.8 <= took < 8, f"cut off after {took:.1f} s"


# ---------------------------------------------------------------- one gate, one rate limit


class SlowFake(FakeEmbedder):
    """The fake model, taking ``delay`` seconds for the next query it embeds."""

    def __init__(self):
        super().__init__()
        self.delay = 0.0
        self.started = threading.Event()
        self.finished_at = 0.0

    def embed_images(self, images):
        delay, self.delay = self.delay, 0.0
        if delay:
            self.started.set()
            time.sleep(delay)
            self.finished_at = time.monotonic()
        return super().embed_images(images)


def test_page_handlers_gradio_api_and_rest_share_one_gate(tmp_path):
    """Gate at 1: while one slow gradio-API search runs, the page's search, its crop preview and a
    REST search all wait for the slot instead of running beside it."""
    srv = start_server(tmp_path / "srv", concurrency=1, rate_limit=0)
    try:
        slow = SlowFake()
        srv.index.embedder = slow
        photo = shopper_photo(tmp_path, 5)
        hits = [h.to_dict() for h in srv.index.search(image=photo, k=1)]
        slow.delay = 3.0
        ended: dict[str, float] = {}
        fns = {f.fn.__name__: f.fn for f in srv.app.fns.values()}

        def run(name, fn):
            fn()
            ended[name] = time.monotonic()

        first = threading.Thread(
            target=run,
            args=(
                "gradio api",
                lambda: Client(srv.url, verbose=False).predict(
                    handle_file(photo), api_name="/search"
                ),
            ),
        )
        first.start()
        assert slow.started.wait(30), "the first search never reached the model"
        others = {
            "rest": lambda: httpx.post(
                _url(srv, "/api/v1/search?k=1"),
                timeout=60,
                files={"image": ("p.png", png_bytes(3), "image/png")},
            ).raise_for_status(),
            "page search": lambda: fns["ui_search"](photo, 0, 0, 0, 0, "", 3, [], 0, 0),
            "crop preview": lambda: fns["prepare_crop"](photo),
            "why it matched": lambda: fns["show_why"](photo, 0, 0, 0, 0, hits, _Select(0)),
        }
        threads = [threading.Thread(target=run, args=(n, f)) for n, f in others.items()]
        for t in threads:
            t.start()
        for t in [first, *threads]:
            t.join(60)
        assert set(ended) == {"gradio api", *others}
        early = {
            n: round(slow.finished_at - ended[n], 2) for n in others if ended[n] < slow.finished_at
        }
        assert not early, (
            "ran beside the slow search instead of waiting for the slot (s before it ended): "
            f"{early}"
        )
    finally:
        srv.app.close()


class _Select:
    def __init__(self, index):
        self.index = index


def test_with_an_api_key_the_gradio_api_needs_it_too(tmp_path):
    srv = start_server(tmp_path / "srv", api_key="s3cret", rate_limit=0)
    try:
        photo = handle_file(shopper_photo(tmp_path, 6))
        with pytest.raises(Exception, match="(?i)login|auth|401|credentials"):
            Client(srv.url, verbose=False).predict(photo, api_name="/search")
        for route in ("/gradio_api/upload", "/gradio_api/queue/join", "/config"):
            r = (
                httpx.post(_url(srv, route), files={"files": ("p.png", png_bytes(1), "image/png")})
                if route.endswith("upload")
                else httpx.request(
                    "POST" if "queue" in route else "GET",
                    _url(srv, route),
                    json={} if "queue" in route else None,
                )
            )
            assert r.status_code == 401, (route, r.status_code, r.text[:200])
        with pytest.raises(Exception):  # noqa: B017 (gradio_client's error type varies by version)
            Client(srv.url, auth=("shop", "wrong"), verbose=False)
        hits = Client(srv.url, auth=("shop", "s3cret"), verbose=False).predict(
            photo, api_name="/search"
        )
        assert hits[0]["product_id"] == "P006"
    finally:
        srv.app.close()


def test_the_page_and_gradio_api_take_from_the_same_rate_limit(tmp_path):
    from gradio_client.exceptions import AppError

    srv = start_server(tmp_path / "srv", rate_limit=1, rate_burst=2)  # 2 at once, then one a minute
    try:
        client = Client(srv.url, verbose=False)
        photo = handle_file(shopper_photo(tmp_path, 2))
        assert client.predict(photo, api_name="/search")[0]["product_id"] == "P002"
        # REST and page: one bucket
        assert httpx.get(_url(srv, "/api/v1/health")).status_code == 200
        with pytest.raises(AppError, match="too many requests"):
            client.predict(photo, api_name="/search")
        assert httpx.get(_url(srv, "/api/v1/health")).status_code == 429
    finally:
        srv.app.close()


def test_forwarded_addresses_key_the_rate_limit_only_from_trusted_proxies(tmp_path):
    def codes(srv, forwarded: list[str]) -> list[int]:
        return [
            httpx.get(_url(srv, "/api/v1/health"), headers={"X-Forwarded-For": f}).status_code
            for f in forwarded
        ]

    trusted = start_server(
        tmp_path / "a", rate_limit=1, rate_burst=2, trusted_proxies=("127.0.0.1",)
    )
    try:  # behind a trusted proxy every shopper has a bucket of their own
        assert codes(trusted, ["1.2.3.4", "1.2.3.4", "1.2.3.4"]) == [200, 200, 429]
        # the proxy appends the real client
        assert codes(trusted, ["5.6.7.8", "9.9.9.9, 1.2.3.4"]) == [200, 429]
    finally:
        trusted.app.close()
    untrusted = start_server(tmp_path / "b", rate_limit=1, rate_burst=2)
    try:  # off by default: anyone could write the header, so it is ignored
        assert codes(untrusted, ["1.2.3.4", "5.6.7.8", "9.9.9.9"]) == [200, 200, 429]
    finally:
        untrusted.app.close()
    other_proxy = start_server(
        tmp_path / "c", rate_limit=1, rate_burst=2, trusted_proxies=("10.0.0.0/8",)
    )
    try:  # the peer (127.0.0.1) is not the trusted proxy
        assert codes(other_proxy, ["1.2.3.4", "5.6.7.8", "9.9.9.9"]) == [200, 200, 429]
    finally:
        other_proxy.app.close()


def test_client_address_walks_forwarded_for_from_the_nearest_hop():
    from vsearch.errors import VsearchError
    from vsearch.serve.guard import TrustedProxies, client_address

    proxies = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    assert (
        client_address("127.0.0.1", {"x-forwarded-for": "6.6.6.6, 1.2.3.4, 10.1.1.1"}, proxies)
        == "1.2.3.4"
    )
    assert client_address("127.0.0.1", {}, proxies) == "127.0.0.1"
    assert client_address("8.8.8.8", {"x-forwarded-for": "1.2.3.4"}, proxies) == "8.8.8.8"
    assert client_address("127.0.0.1", {"x-forwarded-for": "junk, 1.2.3.4"}, proxies) == "1.2.3.4"
    assert (
        client_address("127.0.0.1", {"x-forwarded-for": "1.2.3.4"}, TrustedProxies()) == "127.0.0.1"
    )
    with pytest.raises(VsearchError, match="'proxy.example' is not an IP address or network"):
        TrustedProxies(["proxy.example"])


# ---------------------------------------------------------------- image_url: bounded, under the
# gate


class _Images(http.server.ThreadingHTTPServer):
    daemon_threads = True


def image_server(delay: threading.Event | None = None):
    """A loopback HTTP server: /N.png is product N's PNG; with ``delay``, answers only once it is
    set (or after 20 s). Counts the requests it answered."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if delay is not None:
                delay.wait(20)
            hits.append(self.path)
            data = png_bytes(int(self.path.strip("/").split(".")[0]) % 14)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    srv = _Images(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}", hits


def test_image_url_photos_live_in_a_bounded_cache():
    from vsearch.catalog.fetch import FetchPolicy
    from vsearch.serve.guard import QueryDownloads

    srv, base, hits = image_server()
    cache = QueryDownloads(max_files=2, policy=FetchPolicy(allow_private=True))
    try:
        for n in (1, 2, 3):
            assert cache.fetch(f"{base}/{n}.png") == png_bytes(n)
        # the least recently used went
        assert len(cache) == 2 and len(list(cache.root.iterdir())) == 2
        cache.fetch(f"{base}/3.png")
        assert len(hits) == 3  # a cached photo is not fetched again
        cache.fetch(f"{base}/1.png")
        assert len(hits) == 4 and len(list(cache.root.iterdir())) == 2
        by_bytes = QueryDownloads(
            max_bytes=len(png_bytes(1)) + 10, policy=FetchPolicy(allow_private=True)
        )
        by_bytes.fetch(f"{base}/1.png")
        by_bytes.fetch(f"{base}/2.png")
        assert len(by_bytes) == 1 and by_bytes.total_bytes <= len(png_bytes(1)) + 10
        assert len(list(by_bytes.root.iterdir())) == 1
        by_bytes.close()
        assert not by_bytes.root.exists()
    finally:
        cache.close()
        srv.shutdown()


def test_a_bad_parameter_is_refused_before_the_image_url_is_fetched(tmp_path):
    """k=0, an unknown category or a bad price beside an image_url: 400 naming the parameter, and
    the photo's server never asked (no download spent on a request that cannot run)."""
    from vsearch.catalog.fetch import FetchPolicy

    images, base, hits = image_server()
    srv = start_server(tmp_path / "srv", rate_limit=0)
    try:
        srv.service.downloads().policy = FetchPolicy(allow_private=True)
        for extra, word in (
            ({"k": 0}, "k must"),
            ({"category": "nope"}, "unknown category"),
            ({"min_price": "cheap"}, "min_price"),
        ):
            r = httpx.post(
                _url(srv, "/api/v1/search"),
                json={"image_url": f"{base}/3.png", **extra},
                timeout=30,
            )
            assert r.status_code == 400 and word in r.json()["detail"], (extra, r.text[:200])
        assert hits == []
        ok = httpx.post(_url(srv, "/api/v1/search"), json={"image_url": f"{base}/3.png", "k": 1})
        assert ok.status_code == 200 and ok.json()["results"][0]["product_id"] == "P003"
        assert hits == ["/3.png"]
    finally:
        srv.app.close()
        images.shutdown()


def test_slow_image_urls_hold_the_gate_not_the_server(tmp_path):
    """45 searches by slow image_url: each fetch takes a slot of the fetch gate, the rest wait
    without holding the server's worker threads, so /health and catalog images keep answering,
    and a shopper's photo search (search gate at 1) is not held up behind them."""
    from vsearch.catalog.fetch import FetchPolicy

    release = threading.Event()
    images, base, _ = image_server(release)
    srv = start_server(tmp_path / "srv", concurrency=1, rate_limit=0)
    threads = []
    try:
        srv.service.downloads().policy = FetchPolicy(
            allow_private=True, connect_timeout=2, read_timeout=25
        )
        codes: list[int] = []

        def search(n):
            r = httpx.post(
                _url(srv, "/api/v1/search"),
                json={"image_url": f"{base}/{n}.png", "k": 1},
                timeout=90,
            )
            codes.append(r.status_code)

        threads = [threading.Thread(target=search, args=(n,), daemon=True) for n in range(45)]
        for t in threads:
            t.start()
        gate = srv.service.fetch_gate
        deadline = time.monotonic() + 20
        while gate._waiting < 45 - gate.limit and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gate._slots._value == 0 and gate._waiting == 45 - gate.limit, (
            gate._slots._value,
            gate._waiting,
        )
        t0 = time.monotonic()
        health = httpx.get(_url(srv, "/api/v1/health"), timeout=10)
        product = httpx.get(_url(srv, "/api/v1/products/P001"), timeout=10)
        assert health.status_code == 200 and product.status_code == 200
        shopper = httpx.post(
            _url(srv, "/api/v1/search?k=1"),
            files={"image": ("p.png", png_bytes(7), "image/png")},
            timeout=20,
        )
        assert shopper.status_code == 200 and shopper.json()["results"][0]["product_id"] == "P007"
        assert time.monotonic() - t0 < 5
    finally:
        release.set()
        for t in threads:
            t.join(60)
        srv.app.close()
        images.shutdown()
    assert codes.count(200) == 45, codes


# ---------------------------------------------------------------- small ones


def test_an_exact_price_filter_with_a_price_range_answers_not_500(server):
    photo = {"image": ("p.png", png_bytes(2), "image/png")}
    r = httpx.post(_url(server, "/api/v1/search?filter=price=10&min_price=5&k=20"), files=photo)
    assert r.status_code == 200, r.text
    assert [h["price"] for h in r.json()["results"]] == [10.0]
    outside = httpx.post(_url(server, "/api/v1/search?filter=price=10&min_price=20"), files=photo)
    assert outside.status_code == 200 and outside.json()["results"] == []
    bad = httpx.post(_url(server, "/api/v1/search?filter=price=cheap&min_price=5"), files=photo)
    assert bad.status_code == 400 and "is not a number" in bad.json()["detail"]
    two = httpx.post(_url(server, "/api/v1/search?filter=price=10&filter=price=12.5"), files=photo)
    assert two.status_code == 400 and "one price" in two.json()["detail"]


def test_the_docs_page_uses_swagger_files_served_by_the_app(server):
    page = httpx.get(_url(server, "/api/v1/docs"))
    assert page.status_code == 200 and "cdn" not in page.text.lower()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/api/v1/docs-files/{name}" in page.text
        asset = httpx.get(_url(server, f"/api/v1/docs-files/{name}"))
        assert asset.status_code == 200 and len(asset.content) > 10_000


def test_page_images_are_copied_again_after_the_cache_sweep(server, tmp_path):
    from vsearch.serve.page_files import PageFiles

    files = PageFiles(server.index)
    files.cache_dir = str(tmp_path / "cache")
    first = files.path(server.index.generation, 0)
    assert first and Path(first).is_file()
    Path(first).unlink()  # what Gradio's delete_cache does to an old copy
    again = files.path(server.index.generation, 0)
    assert again and Path(again).is_file()
    old = time.time() - 7200
    import os

    os.utime(again, (old, old))
    files.path(server.index.generation, 0)
    # handed out again: touched, its age starts over
    assert Path(again).stat().st_mtime > time.time() - 60


def test_serve_passes_its_guard_flags_on_and_refuses_bad_ones_before_loading(monkeypatch, capsys):
    from vsearch import cli
    from vsearch.serve import ui as ui

    got: dict = {}
    monkeypatch.delenv("VSEARCH_TRUSTED_PROXIES", raising=False)
    # the index is never loaded here
    monkeypatch.setattr(ui, "serve", lambda index, **kw: got.update(kw))
    assert (
        cli.main(
            [
                "serve",
                "--index",
                "idx",
                "--trusted-proxies",
                "127.0.0.1, 10.0.0.0/8",
                "--body-timeout",
                "5",
            ]
        )
        == 0
    )
    assert got["trusted_proxies"] == ("127.0.0.1", "10.0.0.0/8") and got["body_timeout"] == 5
    got.clear()
    assert cli.main(["serve", "--index", "idx"]) == 0
    assert "trusted_proxies" not in got and "body_timeout" not in got  # serve's own defaults apply
    got.clear()
    assert cli.main(["serve", "--index", "idx", "--trusted-proxies", "127.0.0.1,proxy.local"]) == 1
    assert "'proxy.local' is not an IP address or network" in capsys.readouterr().err and not got
    assert cli.main(["serve", "--index", "idx", "--body-timeout", "-1"]) == 1
    assert (
        "--body-timeout must be 0 (no limit) or more seconds" in capsys.readouterr().err and not got
    )
