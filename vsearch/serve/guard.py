"""What every door of the server shares to stay bounded: body limits, the search gate, the rate
limit.

The page (Gradio), its gradio API and the REST API (/api/v1) are one ASGI application. Three
things protect it whatever door a request comes in by:

* `BodyGuard`, an ASGI middleware in front of the whole application, counts each request body as
  it streams in and answers 413 the moment it passes its route's limit (`BodyLimits`), declared
  length or not (chunked bodies too), and 408 when the body has not fully arrived within
  `BodyLimits.timeout` seconds (a slow drip). The handler behind it then sees a disconnected
  client and stops; nothing it would send goes out. So no request makes the server hold more
  than its limit plus a small constant.
* `Gate`: at most `limit` searches (decode + search) at once, page and API together; a bounded
  number wait. Fetching an ``image_url`` takes a slot of a second gate (`QUERY_FETCHES` at once,
  each within its download deadline), so slow URLs cannot starve the searches. Threads wait in
  `Gate.slot`; the REST handlers wait in `Gate.async_slot`, which does not hold one of the server's
  shared worker threads while waiting.
* `RateLimiter` per client address; `client_address` takes the address from ``X-Forwarded-For``
  only when the direct peer is a trusted proxy (`TrustedProxies`, off by default).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from vsearch.catalog.images import MAX_BYTES
from vsearch.errors import ServerBusyError, VsearchError

# room for a multipart body's boundaries, headers and small fields around the photo
MULTIPART_SLACK = 2**20
OTHER_BODY_BYTES = 2**20  # JSON and every other body (the page's events, image_url searches)
BODY_TIMEOUT = 60.0  # seconds for a whole request body to arrive
WAIT_SECONDS = 30.0  # longest a request waits for a search slot before "busy"
# requests waiting for a slot beyond this are told the server is busy (the page's queue size)
MAX_WAITING = 64
#: Routes whose multipart body carries one photo; every other body gets `BodyLimits.other_bytes`.
PHOTO_ROUTES = ("/api/v1/search", "/api/v1/feedback", "/gradio_api/upload")


@dataclass(frozen=True)
class BodyLimits:
    """How large and how slow a request body may be. photo_bytes: a multipart body to a photo route
    (the photo limit `images.MAX_BYTES` plus multipart overhead); other_bytes: any other body;
    timeout: seconds for the whole body to arrive (0 = no limit)."""

    photo_bytes: int = MAX_BYTES + MULTIPART_SLACK
    other_bytes: int = OTHER_BODY_BYTES
    timeout: float = BODY_TIMEOUT
    photo_routes: tuple[str, ...] = PHOTO_ROUTES

    def limit_for(self, path: str, content_type: str) -> int:
        path = path.rstrip("/")
        if content_type.startswith("multipart/form-data") and any(
            path.endswith(r) for r in self.photo_routes
        ):
            return self.photo_bytes
        return self.other_bytes


class _Refused(Exception):
    """Raised inside BodyGuard once it has answered for the handler."""


class BodyGuard:
    """Pure ASGI middleware: bounded request bodies (size while streaming, and time), see module
    doc."""

    def __init__(self, app: Any, limits: BodyLimits | None = None):
        self.app = app
        self.limits = limits or BodyLimits()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())
        }
        limit = self.limits.limit_for(scope.get("path", ""), headers.get("content-type", ""))
        mib = f"{limit / 2**20:.0f} MiB"
        state = {"started": False, "answered": False, "received": 0, "done": False}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.timeout if self.limits.timeout > 0 else None

        async def answer(status: int, detail: str) -> None:
            if state["started"] or state["answered"]:
                return
            state["answered"] = True
            body = json.dumps({"detail": detail}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await answer(
                413,
                f"request body is {int(declared) / 2**20:.1f} MiB; at most {mib} is accepted here "
                f"(a photo may be at most {MAX_BYTES // 2**20} MiB)",
            )
            return

        async def guarded_receive() -> dict:
            if state["answered"]:
                return {"type": "http.disconnect"}
            # the body is in: what follows is waiting for a disconnect (streamed answers)
            if state["done"]:
                return await receive()
            try:
                if deadline is None:
                    message = await receive()
                else:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                await answer(
                    408, f"the request body did not arrive within {self.limits.timeout:g} s"
                )
                return {"type": "http.disconnect"}
            if message.get("type") == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    await answer(
                        413,
                        f"request body is over {mib}; at most {mib} is accepted here "
                        f"(a photo may be at most {MAX_BYTES // 2**20} MiB)",
                    )
                    return {"type": "http.disconnect"}
                if not message.get("more_body", False):
                    state["done"] = True
            return message

        async def guarded_send(message: dict) -> None:
            if state["answered"]:
                return  # we answered for the handler; whatever it says after that is dropped
            if message.get("type") == "http.response.start":
                state["started"] = True
                if not state["done"] and not any(
                    k.lower() == b"connection" for k, _ in message.get("headers", ())
                ):
                    # answered before its body is in (e.g. Gradio's own size check): close the
                    # connection instead of letting the server read the rest to keep it alive
                    message = {
                        **message,
                        "headers": [*message.get("headers", ()), (b"connection", b"close")],
                    }
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not state["answered"]:
                raise


# ---------------------------------------------------------------- client addresses


class TrustedProxies:
    """Peers (addresses or networks, e.g. ``127.0.0.1``, ``10.0.0.0/8``) whose ``X-Forwarded-For``
    is believed. Empty (the default): the rate limit keys on the direct peer."""

    def __init__(self, entries: Iterable[str] = ()):
        self.networks = []
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise VsearchError(
                    f"trusted proxy {entry!r} is not an IP address or network "
                    "(e.g. 127.0.0.1, 10.0.0.0/8, ::1)"
                ) from None

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address((address or "").strip())
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


def client_address(peer: str | None, headers: Mapping[str, str], trusted: TrustedProxies) -> str:
    """The address the rate limit keys on: the direct peer, or, when the peer is a trusted proxy,
    the nearest address in ``X-Forwarded-For`` that is not one of the trusted proxies."""
    peer = peer or "?"
    if not trusted or not trusted.trusts(peer):
        return peer
    forwarded = [a.strip() for a in (headers.get("x-forwarded-for") or "").split(",") if a.strip()]
    client = peer
    for address in reversed(forwarded):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            break  # garbage from further out: keep the last hop we could read
        client = address
        if not trusted.trusts(address):
            break
    return client


def request_peer(request: Any) -> str | None:
    client = getattr(request, "client", None)
    return getattr(client, "host", None) if client else None


def request_headers(request: Any) -> dict[str, str]:
    """A gradio request's headers as a plain lower-case dict (queued events carry a copy)."""
    try:
        headers = request.headers
        return {str(k).lower(): str(headers[k]) for k in headers.keys()}
    except (AttributeError, KeyError, TypeError):
        return {}


# ---------------------------------------------------------------- rate limit and gate


class RateLimiter:
    """Token bucket per client key: `burst` requests at once, refilled at `per_minute`."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000):
        self.rate = float(per_minute) / 60.0
        self.burst = max(1, int(burst))
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, key: str) -> float | None:
        """Take one token for ``key``; None when allowed, else seconds until the next token."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self.max_clients:  # forget the longest-idle client
                self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.rate


class Gate:
    """At most `limit` searches at once, page and API together; a bounded number may wait."""

    def __init__(
        self, limit: int, max_waiting: int = MAX_WAITING, wait_seconds: float = WAIT_SECONDS
    ):
        self.limit = max(1, int(limit))
        self.max_waiting = max(0, int(max_waiting))
        self.wait_seconds = wait_seconds
        self._slots = threading.BoundedSemaphore(self.limit)
        self._waiting = 0
        self._lock = threading.Lock()
        self._wait_threads: Any = None  # anyio limiter for async waiters, made in the event loop

    def _enter_queue(self) -> None:
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise ServerBusyError(
                    f"the server is busy ({self.limit} searches running, "
                    f"{self._waiting} waiting); try again in a moment"
                )
            self._waiting += 1

    def _leave_queue(self) -> None:
        with self._lock:
            self._waiting -= 1

    def _timed_out(self) -> ServerBusyError:
        return ServerBusyError(
            f"no search slot came free within {self.wait_seconds:.0f} s; try again in a moment"
        )

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            self._enter_queue()
            try:
                got = self._slots.acquire(timeout=self.wait_seconds)
            finally:
                self._leave_queue()
            if not got:
                raise self._timed_out()
        try:
            yield
        finally:
            self._slots.release()

    @asynccontextmanager
    async def async_slot(self) -> AsyncIterator[None]:
        """`slot` for async handlers: the wait runs on the gate's own threads (at most
        max_waiting of them), never on the server's shared worker threads that every other
        route (/health, images) needs."""
        if not self._slots.acquire(blocking=False):
            import anyio

            self._enter_queue()
            try:
                if self._wait_threads is None:
                    self._wait_threads = anyio.CapacityLimiter(self.max_waiting + 1)
                got = await anyio.to_thread.run_sync(
                    self._slots.acquire, True, self.wait_seconds, limiter=self._wait_threads
                )
            finally:
                self._leave_queue()
            if not got:
                raise self._timed_out()
        try:
            yield
        finally:
            self._slots.release()


# ---------------------------------------------------------------- query photos fetched by image_url


# : A shopper's image_url is fetched within about 3 + 8 s, so a slow URL holds a search slot no
# longer.
QUERY_CONNECT_TIMEOUT = 3.0
QUERY_READ_TIMEOUT = 8.0
QUERY_CACHE_FILES = 256
QUERY_CACHE_BYTES = 256 * 2**20
#: image_url downloads at once (`Service.fetch_gate`). They wait on the network, not the CPU, so
#: they have a gate of their own: slow URLs never hold the search slots that shoppers' photos need.
QUERY_FETCHES = 8


class QueryDownloads:
    """Photos the server fetched for ``image_url`` searches: a temp folder that keeps at most
    ``max_files`` photos and ``max_bytes`` together, the least recently used going first, and
    goes away with `close`. (A catalog build's cache, `fetch.fetch_image`, keeps every image
    instead; a server that runs for months must not keep every URL a client ever sent.)"""

    def __init__(
        self,
        *,
        max_files: int = QUERY_CACHE_FILES,
        max_bytes: int = QUERY_CACHE_BYTES,
        policy: Any = None,
    ):
        import tempfile
        from pathlib import Path

        from vsearch.catalog.fetch import FetchPolicy

        self.root = Path(tempfile.mkdtemp(prefix="vsearch-query-downloads-"))
        self.max_files, self.max_bytes = max(1, int(max_files)), max(1, int(max_bytes))
        self.policy = policy or FetchPolicy(
            connect_timeout=QUERY_CONNECT_TIMEOUT, read_timeout=QUERY_READ_TIMEOUT
        )
        # url -> size, least recently used first
        self._entries: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def _path(self, url: str) -> Any:
        import hashlib

        return self.root / hashlib.sha256(url.encode("utf-8")).hexdigest()

    def fetch(self, url: str) -> bytes:
        """The photo's bytes, from the cache or downloaded under `policy`; FetchError otherwise."""
        import os

        from vsearch.catalog.fetch import download

        url = url.strip() if isinstance(url, str) else url
        with self._lock:
            known = url in self._entries
            if known:
                self._entries.move_to_end(url)
        if known:
            try:
                return self._path(url).read_bytes()
            except OSError:  # evicted meanwhile: fetch again
                pass
        data, _ = download(url, self.policy)
        path = self._path(url)
        tmp = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        evicted = []
        with self._lock:
            self._bytes += len(data) - self._entries.pop(url, 0)
            self._entries[url] = len(data)
            while len(self._entries) > 1 and (
                len(self._entries) > self.max_files or self._bytes > self.max_bytes
            ):
                old, size = self._entries.popitem(last=False)
                self._bytes -= size
                evicted.append(old)
        for old in evicted:
            self._path(old).unlink(missing_ok=True)
        return data

    def close(self) -> None:
        import shutil

        with self._lock:
            self._entries.clear()
            self._bytes = 0
        shutil.rmtree(self.root, ignore_errors=True)
