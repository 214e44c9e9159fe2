"""Fetching catalog image URLs: refused when unsafe, bounded in time and size, downloaded once.

Every test talks to a local HTTP server on 127.0.0.1 (so happy paths pass allow_private=True);
refusals of private addresses are checked without any connection being attempted.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from PIL import Image

from vsearch.catalog import connection
from vsearch.catalog.fetch import FetchPolicy, fetch_image
from vsearch.errors import FetchError, ImageError

LOCAL = FetchPolicy(allow_private=True, connect_timeout=2.0, read_timeout=5.0)


def _encode(fmt: str, color=(200, 30, 30), size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


JPEG = _encode("JPEG")
HEIC_HEAD = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64
HTML = b"<!doctype html><html><body><h1>Not found</h1></body></html>"


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.headers: dict[str, dict[str, str]] = {}

    def record(self, handler: BaseHTTPRequestHandler) -> int:
        with self.lock:
            self.counts[handler.path] += 1
            self.headers[handler.path] = dict(handler.headers.items())
            return self.counts[handler.path]


class _Handler(BaseHTTPRequestHandler):
    state: _State  # set on a per-server subclass

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str | None = "image/jpeg",
        length: bool = True,
        **extra,
    ) -> None:
        self.send_response(status)
        if ctype is not None:
            self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, data: bytes, every: float = 0.5) -> None:
        try:
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(every)
        except OSError:
            pass  # the client gave up, as it should

    def do_GET(self) -> None:
        n = self.state.record(self)
        path = urlsplit(self.path).path
        query = urlsplit(self.path).query
        tail = f"?{query}" if query else ""
        if path in ("/good.jpg", "/host.jpg"):
            self._send(200, JPEG)
        elif path == "/twin.jpg":
            self._send(200, JPEG)
        elif path == "/slowish.jpg":
            time.sleep(0.3)
            self._send(200, JPEG)
        elif path == "/nolength.jpg":
            self._send(200, JPEG, length=False)
        elif path == "/octet":
            self._send(200, JPEG, ctype="application/octet-stream")
        elif path == "/notype":
            self._send(200, JPEG, ctype=None)
        elif path.startswith("/fmt/"):
            fmt = path.rsplit("/", 1)[1]
            body = {"heic": HEIC_HEAD, "mp4": MP4_HEAD}.get(fmt) or _encode(fmt.upper())
            self._send(200, body, ctype="image/" + fmt)
        elif path == "/slow-body":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(JPEG)))
            self.end_headers()
            self.wfile.flush()
            # 4 s of dripping, then hang up: never a hung test if the deadline breaks
            self._drip(JPEG[:8])
        elif path == "/slow-headers":
            self.wfile.write(b"HTTP/1.0 200 OK\r\n")
            self._drip(b"X-Paddi")
            self.close_connection = True
        elif path == "/huge-length":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            try:
                self.wfile.write(JPEG)
            except OSError:
                pass
        elif path == "/huge-stream":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            try:
                self.wfile.write(JPEG)
                for _ in range(64):
                    self.wfile.write(b"\0" * 16384)
            except OSError:
                pass
        elif path == "/huge-chunked":
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )
            try:
                chunk = JPEG + b"\0" * 16384
                for _ in range(64):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True
        elif path == "/short-body":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(JPEG[:50])
        elif path.startswith("/redirect/"):
            left = int(path.rsplit("/", 1)[1])
            # relative, like real servers
            target = f"/redirect/{left - 1}{tail}" if left > 1 else f"../good.jpg{tail}"
            self._send(302, b"", ctype=None, Location=target)
        elif path == "/to-file":
            self._send(302, b"", ctype=None, Location="file:///etc/passwd")
        elif path == "/to-gopher":
            self._send(301, b"", ctype=None, Location="gopher://127.0.0.1:70/_evil")
        elif path == "/to-metadata":
            self._send(307, b"", ctype=None, Location="http://169.254.169.254/latest/meta-data/")
        elif path == "/redirect-no-location":
            self._send(302, b"", ctype=None)
        elif path == "/html-page":
            self._send(200, HTML, ctype="text/html; charset=utf-8")
        elif path == "/html-as-jpeg":
            self._send(200, HTML, ctype="image/jpeg")
        elif path == "/missing.jpg":
            self._send(404, HTML, ctype="text/html")
        elif path == "/empty.jpg":
            self._send(200, b"")
        elif path == "/garbage":
            self.wfile.write(b"SPLAT\r\n\r\n")
            self.close_connection = True
        elif path == "/flaky.jpg":
            if n == 1:
                self._send(503, b"busy", ctype="text/plain")
            else:
                self._send(200, JPEG)
        else:
            self._send(404, b"no route", ctype="text/plain")


def _start(state: _State, context: ssl.SSLContext | None = None):
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.block_on_close = False
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def server():
    state = _State()
    srv, thread = _start(state)
    port = srv.server_address[1]
    srv.url = lambda path: f"http://127.0.0.1:{port}{path}"  # type: ignore[attr-defined]
    srv.state = state  # type: ignore[attr-defined]
    srv.port = port  # type: ignore[attr-defined]
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "fetch-cache"


@pytest.fixture
def connections(monkeypatch):
    """Every socket connect fetch attempts, recorded (still performed for loopback)."""
    seen: list[tuple] = []
    real = connection._open_socket

    def spy(family, sockaddr, timeout):
        seen.append(sockaddr)
        if not sockaddr[0].startswith("127.") and sockaddr[0] != "::1":
            raise AssertionError(
                f"fetch tried to connect to {sockaddr} — must never happen in tests"
            )
        return real(family, sockaddr, timeout)

    monkeypatch.setattr(connection, "_open_socket", spy)
    return seen


def _fake_dns(
    monkeypatch, table: dict[str, list[str]], delay: float = 0.0, calls: list | None = None
):
    """Answer getaddrinfo for made-up host names from ``table``; other names behave as usual."""
    real = socket.getaddrinfo

    def fake(host, port, family=0, type=0, proto=0, flags=0):
        if host in table:
            if calls is not None:
                calls.append(host)
            if delay:
                time.sleep(delay)
            out = []
            for ip in table[host]:
                fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
                addr = (ip, port, 0, 0) if fam == socket.AF_INET6 else (ip, port)
                out.append((fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr))
            return out
        return real(host, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def _fails(url, cache, policy=LOCAL, *, match: str, within: float = 5.0) -> FetchError:
    start = time.monotonic()
    with pytest.raises(FetchError, match=match) as info:
        fetch_image(url, cache, policy=policy)
    elapsed = time.monotonic() - start
    assert elapsed < within, f"took {elapsed:.2f} s"
    return info.value


# ---------------------------------------------------------------- happy paths and the cache


def test_good_jpeg_returns_bytes_and_sha_and_is_cached_on_disk(server, cache):
    data, sha = fetch_image(server.url("/good.jpg?t=basic"), cache, policy=LOCAL)
    assert data == JPEG
    assert sha == hashlib.sha256(JPEG).hexdigest()
    obj = cache / "objects" / sha[:2] / sha
    assert obj.read_bytes() == JPEG
    assert not [p for p in obj.parent.iterdir() if p.name.startswith(".tmp")]
    with sqlite3.connect(cache / "urls.sqlite") as db:
        assert db.execute("SELECT sha256 FROM urls").fetchall() == [(sha,)]
    assert server.state.headers["/good.jpg?t=basic"]["User-Agent"] == FetchPolicy().user_agent


def test_second_fetch_reads_the_cache_and_sends_no_request(server, cache):
    url = server.url("/good.jpg?t=twice")
    first = fetch_image(url, cache, policy=LOCAL)
    second = fetch_image(url, cache, policy=LOCAL)
    assert first == second
    assert server.state.counts["/good.jpg?t=twice"] == 1


def test_same_content_at_two_urls_is_stored_once(server, cache):
    _, sha1 = fetch_image(server.url("/good.jpg?t=a"), cache, policy=LOCAL)
    _, sha2 = fetch_image(server.url("/twin.jpg?t=b"), cache, policy=LOCAL)
    assert sha1 == sha2
    assert [p.name for p in (cache / "objects").rglob("*") if p.is_file()] == [sha1]


def test_corrupt_cached_object_is_fetched_again_and_repaired(server, cache):
    url = server.url("/good.jpg?t=corrupt")
    _, sha = fetch_image(url, cache, policy=LOCAL)
    (cache / "objects" / sha[:2] / sha).write_bytes(b"bit rot")
    data, sha2 = fetch_image(url, cache, policy=LOCAL)
    assert (data, sha2) == (JPEG, sha)
    assert server.state.counts["/good.jpg?t=corrupt"] == 2
    assert (cache / "objects" / sha[:2] / sha).read_bytes() == JPEG


def test_failures_are_not_cached_so_a_rebuild_retries(server, cache):
    url = server.url("/flaky.jpg?t=retry")
    _fails(url, cache, match=r"HTTP status 503")
    assert fetch_image(url, cache, policy=LOCAL)[0] == JPEG


def test_concurrent_workers_download_one_url_once(server, cache):
    url = server.url("/slowish.jpg?t=pool")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: fetch_image(url, cache, policy=LOCAL), range(8)))
    assert all(r == (JPEG, hashlib.sha256(JPEG).hexdigest()) for r in results)
    assert server.state.counts["/slowish.jpg?t=pool"] == 1


def test_concurrent_workers_fetch_different_urls(server, cache):
    urls = [server.url(f"/good.jpg?t=many{i}") for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda u: fetch_image(u, cache, policy=LOCAL), urls))
    assert {r[0] for r in results} == {JPEG}
    with sqlite3.connect(cache / "urls.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM urls").fetchone()[0] == 12


@pytest.mark.parametrize("path", ["/nolength.jpg", "/octet", "/notype"])
def test_accepts_missing_length_and_generic_or_missing_content_type(server, cache, path):
    assert fetch_image(server.url(path), cache, policy=LOCAL)[0] == JPEG


@pytest.mark.parametrize("fmt", ["png", "gif", "webp", "bmp", "tiff", "heic"])
def test_accepts_common_image_formats(server, cache, fmt):
    data, _ = fetch_image(server.url(f"/fmt/{fmt}"), cache, policy=LOCAL)
    assert len(data) > 16


def test_redirect_chain_within_the_limit_is_followed(server, cache):
    # 3 redirects, limit 3
    data, _ = fetch_image(server.url("/redirect/3?t=ok"), cache, policy=LOCAL)
    assert data == JPEG
    assert server.state.counts["/good.jpg?t=ok"] == 1


def test_host_header_is_the_original_name_and_dns_is_asked_once(
    server, cache, monkeypatch, connections
):
    """We connect to the address we checked (no second lookup that could rebind) and still send
    Host."""
    calls: list[str] = []
    _fake_dns(monkeypatch, {"shop.example": ["127.0.0.1"]}, calls=calls)
    data, _ = fetch_image(f"http://shop.example:{server.port}/host.jpg?t=pin", cache, policy=LOCAL)
    assert data == JPEG
    assert calls == ["shop.example"]
    assert connections == [("127.0.0.1", server.port)]
    assert server.state.headers["/host.jpg?t=pin"]["Host"] == f"shop.example:{server.port}"


# ---------------------------------------------------------------- refusals before any connection


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.jpg",
        "http://localhost/a.jpg",
        "http://[::1]/a.jpg",
        "http://10.0.0.1/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://192.168.1.1/a.jpg",
        "https://172.16.5.4/a.jpg",
        "http://0.0.0.0/a.jpg",
        "http://2130706433/a.jpg",  # 127.0.0.1 written as one number
        "http://0x7f.1/a.jpg",  # and in hex
        "http://[::ffff:127.0.0.1]/a.jpg",  # IPv4-mapped IPv6
        "http://[fe80::1]/a.jpg",
        "http://[fd00::1]/a.jpg",
        "http://100.64.0.1/a.jpg",  # carrier-grade NAT
        "http://224.0.0.1/a.jpg",
    ],
)
def test_default_policy_refuses_non_public_addresses_without_connecting(url, cache, connections):
    err = _fails(url, cache, FetchPolicy(), match=r"address; only public addresses", within=1.0)
    assert repr(url) in str(err)
    assert "allow_private=True" in str(err)
    assert connections == []


def test_one_private_address_among_public_ones_is_enough_to_refuse(cache, monkeypatch, connections):
    _fake_dns(monkeypatch, {"cdn.example": ["93.184.216.34", "127.0.0.1"]})
    err = _fails(
        "https://cdn.example/a.jpg",
        cache,
        FetchPolicy(),
        match=r"resolves to 127\.0\.0\.1",
        within=1.0,
    )
    assert "cdn.example" in str(err)
    assert connections == []


@pytest.mark.parametrize(
    "url, reason",
    [
        ("file:///etc/passwd", "'file:'"),
        ("ftp://files.example/a.jpg", "'ftp:'"),
        ("data:image/png;base64,iVBORw0KGgo=", "'data:'"),
        ("gopher://127.0.0.1:70/_x", "'gopher:'"),
        ("javascript:alert(1)", "'javascript:'"),
        ("//cdn.example/a.jpg", "no scheme"),
        ("http:///a.jpg", "no host"),
        ("http://cdn.example:99999/a.jpg", "not a valid URL"),
    ],
)
def test_refuses_other_schemes_and_malformed_urls(url, reason, cache, connections):
    err = _fails(url, cache, FetchPolicy(), match=reason, within=1.0)
    assert repr(url) in str(err)
    assert isinstance(err, ImageError)
    assert connections == []


def test_password_in_url_is_not_repeated_in_errors(cache, connections):
    err = _fails(
        "http://shop:s3cret@10.1.2.3/a.jpg",
        cache,
        FetchPolicy(),
        match="private address",
        within=1.0,
    )
    assert "s3cret" not in str(err) and "shop:***@10.1.2.3" in str(err)


def test_dns_lookup_is_bounded_by_the_connect_timeout(cache, monkeypatch, connections):
    _fake_dns(monkeypatch, {"slow-dns.example": ["93.184.216.34"]}, delay=3.0)
    _fails(
        "http://slow-dns.example/a.jpg",
        cache,
        FetchPolicy(connect_timeout=0.3),
        match="took longer",
        within=1.5,
    )
    assert connections == []


def test_unresolvable_host_is_reported(cache, monkeypatch):
    def broken(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", broken)
    _fails(
        "http://nowhere.invalid/a.jpg",
        cache,
        FetchPolicy(),
        match=r"'nowhere\.invalid' could not be resolved",
    )


# ---------------------------------------------------------------- redirects


def test_too_many_redirects(server, cache):
    _fails(server.url("/redirect/4?t=many"), cache, match=r"too many redirects \(more than 3\)")
    assert server.state.counts["/good.jpg?t=many"] == 0


def test_redirect_limit_is_configurable(server, cache):
    policy = FetchPolicy(allow_private=True, max_redirects=0)
    _fails(server.url("/redirect/1?t=zero"), cache, policy, match=r"more than 0")


@pytest.mark.parametrize("path, scheme", [("/to-file", "file"), ("/to-gopher", "gopher")])
def test_redirect_to_another_scheme_is_refused(server, cache, path, scheme):
    err = _fails(server.url(path), cache, match=rf"redirect 1 to '{scheme}://.*' uses '{scheme}:'")
    assert server.url(path) in str(err)


def test_each_redirect_hop_gets_the_address_check(server, cache, monkeypatch, connections):
    """A public-looking first hop must not bounce us to the cloud metadata service."""
    real = connection._refusal
    monkeypatch.setattr(
        connection, "_refusal", lambda ip: None if str(ip) == "127.0.0.1" else real(ip)
    )
    err = _fails(
        server.url("/to-metadata"),
        cache,
        FetchPolicy(),
        match=r"redirect 1 to .*169\.254\.169\.254",
        within=2.0,
    )
    assert "link-local" in str(err)
    assert server.state.counts["/to-metadata"] == 1
    assert connections == [("127.0.0.1", server.port)]


def test_redirect_without_location(server, cache):
    _fails(server.url("/redirect-no-location"), cache, match="without a Location")


# ---------------------------------------------------------------- time limits


def test_slow_drip_body_hits_the_total_deadline(server, cache):
    """A byte every 0.5 s never trips a per-read timeout; the whole-download deadline must."""
    policy = FetchPolicy(allow_private=True, connect_timeout=1.0, read_timeout=1.0)
    start = time.monotonic()
    _fails(
        server.url("/slow-body"), cache, policy, match=r"did not finish within the 1 s", within=2.5
    )
    assert time.monotonic() - start >= 0.9


def test_slow_drip_headers_hit_the_total_deadline(server, cache):
    policy = FetchPolicy(allow_private=True, connect_timeout=1.0, read_timeout=1.0)
    _fails(
        server.url("/slow-headers"),
        cache,
        policy,
        match=r"did not finish within the 1 s",
        within=2.5,
    )


@pytest.mark.skipif(
    sys.platform != "linux", reason="relies on Linux dropping SYNs when the accept queue is full"
)
def test_connect_timeout(cache):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):  # fill the accept queue; further SYNs are dropped, so connect hangs
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        policy = FetchPolicy(allow_private=True, connect_timeout=0.5, read_timeout=5.0)
        _fails(
            f"http://127.0.0.1:{port}/a.jpg",
            cache,
            policy,
            match=r"within 0\.5 s \(connect timeout\)",
            within=2.0,
        )
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_connection_refused(cache):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    _fails(f"http://127.0.0.1:{port}/a.jpg", cache, match="could not connect", within=2.0)


# ---------------------------------------------------------------- size limits


SMALL = FetchPolicy(allow_private=True, connect_timeout=2.0, read_timeout=5.0, max_bytes=64 * 1024)


def test_content_length_over_the_limit_is_refused_before_reading(server, cache):
    _fails(
        server.url("/huge-length"),
        cache,
        SMALL,
        match=r"Content-Length 1000000000 bytes exceeds the 65536-byte limit",
    )


@pytest.mark.parametrize("path", ["/huge-stream", "/huge-chunked"])
def test_body_over_the_limit_without_content_length_is_cut_off(server, cache, path):
    _fails(server.url(path), cache, SMALL, match=r"larger than the 65536-byte limit")
    assert not (cache / "objects").exists()


def test_body_just_within_the_limit_is_accepted(server, cache):
    policy = FetchPolicy(allow_private=True, max_bytes=len(JPEG))
    assert fetch_image(server.url("/nolength.jpg?t=exact"), cache, policy=policy)[0] == JPEG
    policy = FetchPolicy(allow_private=True, max_bytes=len(JPEG) - 1)
    _fails(server.url("/nolength.jpg?t=over"), cache, policy, match="larger than")


def test_body_cut_short_is_reported(server, cache):
    _fails(server.url("/short-body"), cache, match=r"connection closed after 50 of 100000 bytes")


# ---------------------------------------------------------------- what the server sends


def test_http_error_status(server, cache):
    err = _fails(
        server.url("/missing.jpg"), cache, match=r"HTTP status 404 Not Found \(expected 200\)"
    )
    assert server.url("/missing.jpg") in str(err)


def test_html_error_page_is_refused_by_content_type(server, cache):
    _fails(server.url("/html-page"), cache, match=r"Content-Type is 'text/html', not an image")


def test_html_labelled_as_image_is_refused_by_signature(server, cache):
    _fails(server.url("/html-as-jpeg"), cache, match=r"not a JPEG, PNG.*looks like an HTML page")


def test_video_with_ftyp_box_is_not_mistaken_for_heic(server, cache):
    _fails(server.url("/fmt/mp4"), cache, match=r"not a JPEG, PNG")


def test_empty_body(server, cache):
    _fails(server.url("/empty.jpg"), cache, match="empty body")


def test_garbage_response(server, cache):
    _fails(server.url("/garbage"), cache, match="malformed HTTP response")


# ---------------------------------------------------------------- https


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec",
         "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:shop.example"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    state = _State()
    srv, thread = _start(state, server_ctx)
    srv.state = state  # type: ignore[attr-defined]
    srv.port = srv.server_address[1]  # type: ignore[attr-defined]
    srv.cert = cert  # type: ignore[attr-defined]
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def trust_test_cert(tls_server, monkeypatch):
    ctx = ssl.create_default_context(cafile=str(tls_server.cert))
    monkeypatch.setattr(connection, "_ssl_context", lambda: ctx)


def test_https_sends_the_original_name_as_sni_and_verifies_it(
    tls_server, trust_test_cert, cache, monkeypatch
):
    """The certificate is for shop.example; we connect to 127.0.0.1 yet verify and send
    shop.example."""
    _fake_dns(monkeypatch, {"shop.example": ["127.0.0.1"]})
    data, _ = fetch_image(f"https://shop.example:{tls_server.port}/good.jpg", cache, policy=LOCAL)
    assert data == JPEG
    assert tls_server.state.headers["/good.jpg"]["Host"] == f"shop.example:{tls_server.port}"


def test_https_certificate_for_another_name_is_refused(
    tls_server, trust_test_cert, cache, monkeypatch
):
    _fake_dns(monkeypatch, {"evil.example": ["127.0.0.1"]})
    _fails(
        f"https://evil.example:{tls_server.port}/good.jpg",
        cache,
        match="TLS certificate of 'evil.example' not accepted",
    )


def test_newer_cache_schema_is_refused(server, cache):
    cache.mkdir()
    with sqlite3.connect(cache / "urls.sqlite") as db:
        db.execute("PRAGMA user_version=99")
    _fails(server.url("/good.jpg?t=schema"), cache, match="newer vsearch")
