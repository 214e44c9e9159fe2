"""One checked hop of a catalog image fetch: which address we may connect to, and for how long.

`fetch` decides what to download and keep (redirects, status, size, image signature, the cache);
this module is the part that touches the network for one URL: it parses the hop, resolves the host
with a time limit, refuses non-public addresses, and opens an HTTP(S) connection pinned to the
address it checked (the name still goes out as Host and TLS SNI), with a per-read timeout and one
total deadline. Kept apart so the SSRF and slow-drip defences can be read, and tested, on their
own; the policy behind them is described in `vsearch.catalog.fetch`.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from vsearch.errors import FetchError

__all__ = [
    "Clock",
    "HopTimeout",
    "PinnedConnection",
    "Target",
    "check_addresses",
    "fail",
    "parse_hop",
    "resolve_host",
    "show_url",
]

# keep URL syntax as written, percent-encode spaces and non-ASCII
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, no brackets
    port: int
    request_target: str  # path + query, percent-encoded


def show_url(url: str) -> str:
    """The URL for messages, with any password hidden."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            netloc = f"{parts.username}:***@{parts.hostname}" + (
                f":{parts.port}" if parts.port else ""
            )
            return repr(urlunsplit(parts._replace(netloc=netloc)))
    except ValueError:
        pass
    return repr(url)


def fail(url: str, reason: str) -> FetchError:
    return FetchError(f"cannot fetch image {show_url(url)}: {reason}")


def parse_hop(url: str, origin: str, hop: int) -> Target:
    """Check the syntax and scheme of one hop; ``origin`` is the catalog's URL, named in errors."""
    where = "" if hop == 0 else f"redirect {hop} to {show_url(url)} "
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise fail(origin, f"{where}is not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"'{scheme}:'" if scheme else "no scheme"
        raise fail(origin, f"{where}uses {shown}; only http:// and https:// URLs are fetched")
    host = parts.hostname or ""
    if not host:
        raise fail(origin, f"{where}has no host name (write e.g. https://shop.example/a.jpg)")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise fail(origin, f"{where}has an invalid host name {host!r}") from None
    if any(c in host for c in " \t\r\n/\\"):
        raise fail(origin, f"{where}has an invalid host name {host!r}")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    target = quote(target, safe=_TARGET_SAFE)
    return Target(url, scheme, host, port or (443 if scheme == "https" else 80), target)


def _refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is not public, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for label, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-public", not ip.is_global),
    ):
        if flag:
            return label
    return None


def resolve_host(t: Target, origin: str, where: str, timeout: float) -> list[tuple]:
    """getaddrinfo with a time limit (it has none of its own); returns (family, sockaddr) pairs."""
    try:
        ipaddress.ip_address(t.host)
        literal = True
    except ValueError:
        literal = False
    args = (t.host, t.port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if literal:
        try:
            infos = socket.getaddrinfo(*args, socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError) as e:
            raise fail(origin, f"{where}host {t.host!r} is not a usable address ({e})") from None
    else:
        box: dict = {}

        def work() -> None:
            try:
                box["infos"] = socket.getaddrinfo(*args)
            except (OSError, UnicodeError) as e:
                box["error"] = e

        worker = threading.Thread(target=work, name="vsearch-dns", daemon=True)
        worker.start()
        worker.join(max(timeout, 0.0))
        if worker.is_alive():
            raise fail(origin, f"{where}looking up host {t.host!r} took longer than {timeout:g} s")
        if "error" in box:
            raise fail(origin, f"{where}host {t.host!r} could not be resolved ({box['error']})")
        infos = box["infos"]
    out, seen = [], set()
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        key = (family, sockaddr[0])
        if key not in seen:
            seen.add(key)
            out.append((family, sockaddr))
    if not out:
        raise fail(origin, f"{where}host {t.host!r} has no IPv4 or IPv6 address")
    return out


def check_addresses(
    addrs: list[tuple], t: Target, origin: str, where: str, allow_private: bool
) -> None:
    """Refuse the hop if ANY address is non-public: the OS may pick any of them; ``allow_private``
    is ``FetchPolicy.allow_private``."""
    if allow_private:
        return
    for _family, sockaddr in addrs:
        ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        reason = _refusal(ip)
        if reason is not None:
            named = (
                f"host {t.host!r}"
                if str(ip) == t.host
                else f"host {t.host!r} resolves to {ip}, which"
            )
            raise fail(
                origin,
                f"{where}{named} is a {reason} address; only public addresses are fetched "
                "(set FetchPolicy(allow_private=True) for an intranet catalog)",
            )


def _open_socket(family: int, sockaddr: tuple, timeout: float) -> socket.socket:
    """Connect to one already-checked address (never a name, so no second DNS lookup)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


_SSL_CONTEXT: ssl.SSLContext | None = None
_SSL_LOCK = threading.Lock()


def _ssl_context() -> ssl.SSLContext:
    """The system's default verifying context, built once on first https fetch."""
    global _SSL_CONTEXT
    with _SSL_LOCK:
        if _SSL_CONTEXT is None:
            _SSL_CONTEXT = ssl.create_default_context()
        return _SSL_CONTEXT


class HopTimeout(TimeoutError):
    """A read timed out; ``deadline`` tells the total deadline from the per-read limit."""

    def __init__(self, deadline: bool):
        super().__init__("deadline" if deadline else "read")
        self.deadline = deadline


class Clock:
    """Per-read timeout plus one total deadline, started at the first connection; both are
    ``FetchPolicy.read_timeout``."""

    def __init__(self, read_timeout: float):
        self.read_timeout = read_timeout
        self.deadline: float | None = None

    def start(self) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.read_timeout

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def read_limit(self) -> tuple[float, bool]:
        """(seconds the next read may wait, whether that limit is the total deadline)."""
        left = self.remaining()
        if left <= 0:
            raise HopTimeout(deadline=True)
        if left < self.read_timeout:
            return left, True
        return self.read_timeout, False


class _DeadlineReader(io.RawIOBase):
    """Raw stream over a socket that re-arms the socket timeout before every recv."""

    def __init__(self, owner: _DeadlineSocket):
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        limit, is_deadline = self._owner.clock.read_limit()
        sock = self._owner.sock
        sock.settimeout(limit)
        try:
            return sock.recv_into(buf)
        except TimeoutError:
            raise HopTimeout(deadline=is_deadline) from None

    def close(self) -> None:
        if not self.closed:
            self._owner.release()
        super().close()


class _DeadlineSocket:
    """The few socket methods http.client uses, with the deadline applied to every read.

    Like a real socket, it stays open while a reader from makefile() is open: http.client closes
    the connection as soon as it has the headers of a "Connection: close" response.
    """

    def __init__(self, sock: socket.socket, clock: Clock):
        self.sock, self.clock = sock, clock
        self._readers = 0
        self._closed = False

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        self._readers += 1
        return io.BufferedReader(_DeadlineReader(self))

    def release(self) -> None:
        self._readers -= 1
        if self._closed and self._readers <= 0:
            self.sock.close()

    def sendall(self, data) -> None:
        limit, is_deadline = self.clock.read_limit()
        self.sock.settimeout(limit)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise HopTimeout(deadline=is_deadline) from None

    def close(self) -> None:
        self._closed = True
        if self._readers <= 0:
            self.sock.close()


class PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) connection to checked addresses, sending the original host name as Host and SNI."""

    def __init__(self, t: Target, addrs: list[tuple], clock: Clock, connect_timeout: float):
        super().__init__(t.host, t.port)
        self.default_port = 443 if t.scheme == "https" else 80  # so Host omits the default port
        self._target, self._addrs, self._clock = t, addrs, clock
        self._connect_timeout = connect_timeout

    def connect(self) -> None:
        last: OSError | None = None
        raw = None
        give_up = time.monotonic() + self._connect_timeout  # shared by all addresses of the host
        for family, sockaddr in self._addrs:
            left = give_up - time.monotonic()
            if left <= 0:
                last = TimeoutError("timed out")
                break
            try:
                raw = _open_socket(family, sockaddr, left)
                break
            except OSError as e:
                last = e
        if raw is None:
            assert last is not None
            raise last
        self._clock.start()
        try:
            if self._target.scheme == "https":
                limit, is_deadline = self._clock.read_limit()
                raw.settimeout(limit)
                try:
                    raw = _ssl_context().wrap_socket(raw, server_hostname=self._target.host)
                except TimeoutError:
                    raise HopTimeout(deadline=is_deadline) from None
        except BaseException:
            raw.close()
            raise
        self.sock = _DeadlineSocket(raw, self._clock)
