"""Download catalog images from http(s) URLs safely, once.

Shops feed messy catalogs, and a catalog is untrusted input: a URL may point at the cloud metadata
service or an intranet host (SSRF), at a server that drips one byte a second, or at a gigabyte of
HTML. So every hop of every fetch is checked before any traffic is sent:

* only ``http`` and ``https``; every address the host resolves to must be public unless
  ``FetchPolicy.allow_private`` (intranet catalogs). We connect to the address we checked, not to
  the result of a second DNS lookup, so a host cannot pass the check and then "rebind" to
  127.0.0.1; the original name still goes out in the ``Host`` header and as TLS SNI, and the
  certificate is verified against that name.
* redirects are followed by hand (at most ``max_redirects``), each target checked like the first.
* connecting is bounded by ``connect_timeout``; each read by ``read_timeout``, and the whole
  download (from the first connection to the last byte, redirects included) by ``read_timeout``
  as well, so a slow-drip server cannot hold a build worker. A call therefore ends within about
  ``connect_timeout + read_timeout``.
* the body is capped at ``max_bytes`` twice: by ``Content-Length`` before reading, and by counting
  while streaming (the header may be absent or lie).
* status must be 200; ``Content-Type``, when sent, must be ``image/*`` or a generic binary type
  (``application/octet-stream``, ``binary/octet-stream``), because many CDNs and object stores label
  images that way; a missing type is accepted. The first bytes must then look like an image
  (JPEG, PNG, GIF, WebP, BMP, TIFF, HEIC/AVIF), which turns away HTML error pages served as 200.
  Decoding proper happens later, in ``vsearch.catalog.images``.

Results are cached by content: ``cache_dir/objects/<sha[:2]>/<sha>`` (written to a temp file then
``os.replace``d, so a crash never leaves half an image) plus ``cache_dir/urls.sqlite`` mapping URL
to sha256, so a rebuild reads from disk and never refetches. Failures are not cached: a rebuild
retries them, since most are transient. Safe to call from a pool of threads; concurrent calls for
the same URL download it once.

The network side of one hop (address checks, the pinned connection, the deadlines) is
`vsearch.catalog.connection`; this module follows redirects, checks the response and keeps it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sqlite3
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

from vsearch.catalog.connection import (
    Clock,
    HopTimeout,
    PinnedConnection,
    Target,
    check_addresses,
    fail,
    parse_hop,
    resolve_host,
    show_url,
)
from vsearch.errors import FetchError

__all__ = ["FetchPolicy", "download", "fetch_image"]

_SCHEMA_VERSION = 1
_CHUNK = 64 * 1024
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_GENERIC_BINARY_TYPES = {"application/octet-stream", "binary/octet-stream"}
_HEIF_BRANDS = {
    b"heic",
    b"heix",
    b"hevc",
    b"hevx",
    b"heim",
    b"heis",
    b"mif1",
    b"msf1",
    b"avif",
    b"avis",
}


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for one fetch. Defaults suit public shop CDNs; see the module docstring for why."""

    connect_timeout: float = 5.0
    read_timeout: float = 15.0  # per read AND a total deadline for the whole download
    max_bytes: int = 20 * 2**20
    max_redirects: int = 3
    # private/loopback/link-local/reserved addresses (intranet catalogs)
    allow_private: bool = False
    user_agent: str = "vsearch/0.1 (+catalog image fetch)"


def fetch_image(
    url: str, cache_dir: str | os.PathLike, *, policy: FetchPolicy = FetchPolicy()
) -> tuple[bytes, str]:
    """Return (image bytes, sha256 hex) for ``url``, downloading it at most once per ``cache_dir``.

    Raises FetchError naming the URL and the reason when the URL is refused or the download fails.
    """
    url = url.strip() if isinstance(url, str) else url
    if not isinstance(url, str) or not url:
        raise FetchError(f"cannot fetch image {url!r}: expected an http:// or https:// URL")
    parse_hop(url, url, hop=0)  # refuse file:, data: ... before touching the cache
    cache = _Cache(Path(cache_dir))
    with _url_lock(cache.root, url):
        hit = cache.lookup(url)
        if hit is not None:
            return hit
        data, sha = _download(url, policy)
        cache.store(url, data, sha)
        return data, sha


def download(url: str, policy: FetchPolicy = FetchPolicy()) -> tuple[bytes, str]:
    """(image bytes, sha256 hex) for ``url`` under the same checks as `fetch_image`, but not kept
    anywhere: for callers with a cache of their own (the server's `guard.QueryDownloads`)."""
    url = url.strip() if isinstance(url, str) else url
    if not isinstance(url, str) or not url:
        raise FetchError(f"cannot fetch image {url!r}: expected an http:// or https:// URL")
    parse_hop(url, url, hop=0)
    return _download(url, policy)


def downloaded_file(cache_dir: str | os.PathLike, sha: str) -> Path:
    """Where ``fetch_image`` keeps the bytes whose SHA-256 is ``sha`` (Ray workers read them
    there)."""
    return _Cache(Path(cache_dir)).object_path(sha)


# ---------------------------------------------------------------- cache


_INFLIGHT: dict[tuple[str, str], list] = {}  # (cache root, url) -> [lock, number of users]
_INFLIGHT_GUARD = threading.Lock()


@contextmanager
def _url_lock(root: Path, url: str) -> Iterator[None]:
    """Serialise work on one URL, so two workers never download it twice; other URLs run freely."""
    key = (os.path.abspath(root), url)
    with _INFLIGHT_GUARD:
        entry = _INFLIGHT.setdefault(key, [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            yield
    finally:
        with _INFLIGHT_GUARD:
            entry[1] -= 1
            if entry[1] == 0:
                del _INFLIGHT[key]


class _Cache:
    """Content-addressed objects plus a URL -> sha256 map; one short SQLite connection per call."""

    def __init__(self, root: Path):
        self.root = root
        self.db_path = root / "urls.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.db_path, timeout=30.0)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise FetchError(
                    f"URL cache {self.db_path} was written by a newer vsearch (schema {version}, "
                    "this one "
                    f"knows {_SCHEMA_VERSION}); upgrade vsearch or use another cache folder"
                )
            if version < _SCHEMA_VERSION:
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                except sqlite3.OperationalError:
                    pass  # e.g. a network file system; the default journal still works
                with db:
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS urls (url TEXT PRIMARY KEY, sha256 TEXT NOT "
                        "NULL,"
                        " size INTEGER NOT NULL, fetched_at REAL NOT NULL)"
                    )
                    db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def object_path(self, sha: str) -> Path:
        return self.root / "objects" / sha[:2] / sha

    def lookup(self, url: str) -> tuple[bytes, str] | None:
        """Cached bytes for ``url``, or None; an object that is missing or corrupt counts as a
        miss."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT sha256 FROM urls WHERE url=?", (url,)).fetchone()
        if row is None:
            return None
        sha = row[0]
        try:
            data = self.object_path(sha).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != sha:
            return None
        return data, sha

    def store(self, url: str, data: bytes, sha: str) -> None:
        path = self.object_path(sha)
        if not (path.is_file() and path.stat().st_size == len(data)):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR REPLACE INTO urls (url, sha256, size, fetched_at) VALUES (?, ?, ?, ?)",
                (url, sha, len(data), time.time()),
            )


# ---------------------------------------------------------------- download
# ---------------------------------------------------------------- download


def _download(url: str, policy: FetchPolicy) -> tuple[bytes, str]:
    clock = Clock(policy.read_timeout)
    connect_budget = time.monotonic() + policy.connect_timeout  # DNS + connect of the first hop
    current = url
    for hop in range(policy.max_redirects + 2):
        where = "" if hop == 0 else f"redirect {hop} to {show_url(current)}: "
        if hop > policy.max_redirects:
            raise fail(
                url,
                f"too many redirects (more than {policy.max_redirects}); last one pointed to "
                f"{show_url(current)}",
            )
        t = parse_hop(current, url, hop)
        if clock.deadline is None:
            timeout = connect_budget - time.monotonic()
        else:
            timeout = min(policy.connect_timeout, clock.remaining())
        if timeout <= 0 and clock.deadline is None:
            raise fail(
                url,
                f"could not connect to {t.host!r} within {policy.connect_timeout:g} s (connect "
                "timeout)",
            )
        if timeout <= 0:
            raise fail(
                url, f"{where}download did not finish within the {policy.read_timeout:g} s deadline"
            )
        addrs = resolve_host(t, url, where, timeout)
        check_addresses(addrs, t, url, where, policy.allow_private)
        if clock.deadline is None:
            timeout = connect_budget - time.monotonic()
        else:
            timeout = min(policy.connect_timeout, clock.remaining())
        result = _one_hop(t, addrs, clock, max(timeout, 0.001), policy, url, where)
        if isinstance(result, tuple):
            return result
        current = urljoin(current, result)
    raise AssertionError("unreachable")


def _one_hop(
    t: Target,
    addrs: list[tuple],
    clock: Clock,
    connect_timeout: float,
    policy: FetchPolicy,
    origin: str,
    where: str,
) -> tuple[bytes, str] | str:
    """Fetch one hop: (bytes, sha) on success, or the Location of a redirect."""
    conn = PinnedConnection(t, addrs, clock, connect_timeout)
    try:
        phase = "connect"
        try:
            conn.connect()
            phase = "read"
            conn.request(
                "GET",
                t.request_target,
                headers={
                    "User-Agent": policy.user_agent,
                    "Accept": "image/*, application/octet-stream;q=0.8, */*;q=0.1",
                    "Accept-Encoding": "identity",
                    "Connection": "close",
                },
            )
            resp = conn.getresponse()
            if resp.status in _REDIRECT_STATUSES:
                location = resp.getheader("Location")
                if not location:
                    raise fail(
                        origin, f"{where}HTTP {resp.status} redirect without a Location header"
                    )
                return location.strip()
            if resp.status != 200:
                raise fail(
                    origin,
                    f"{where}HTTP status {resp.status} {resp.reason[:60]} (expected 200)".replace(
                        "  ", " "
                    ),
                )
            _check_content_type(resp.getheader("Content-Type"), origin, where)
            _check_length(resp.getheader("Content-Length"), policy, origin, where)
            data, sha = _read_body(resp, policy, origin, where)
        except HopTimeout as e:
            if e.deadline:
                raise fail(
                    origin,
                    f"{where}download did not finish within the {policy.read_timeout:g} s deadline",
                ) from None
            raise fail(
                origin, f"{where}no data for {policy.read_timeout:g} s (read timeout)"
            ) from None
        except TimeoutError:
            if phase == "connect":
                raise fail(
                    origin,
                    f"{where}could not connect to {t.host!r} within {policy.connect_timeout:g} s "
                    "(connect timeout)",
                ) from None
            raise fail(
                origin, f"{where}no data for {policy.read_timeout:g} s (read timeout)"
            ) from None
        except ssl.SSLCertVerificationError as e:
            raise fail(
                origin,
                f"{where}TLS certificate of {t.host!r} not accepted ({e.verify_message or e})",
            ) from None
        except ssl.SSLError as e:
            raise fail(origin, f"{where}TLS error with {t.host!r} ({e})") from None
        except http.client.IncompleteRead as e:
            raise fail(
                origin,
                f"{where}connection closed after {len(e.partial)} bytes, before the body was "
                "complete",
            ) from None
        except (http.client.HTTPException, ValueError) as e:
            raise fail(
                origin, f"{where}malformed HTTP response ({type(e).__name__}: {e})"
            ) from None
        except OSError as e:
            if phase == "connect":
                raise fail(
                    origin,
                    f"{where}could not connect to {t.host!r} port {t.port} ({e.strerror or e})",
                ) from None
            raise fail(origin, f"{where}connection failed ({e.strerror or e})") from None
    finally:
        conn.close()
    if not data:
        raise fail(origin, f"{where}the server sent an empty body")
    kind = _image_kind(data)
    if kind is None:
        head = data[:16]
        hint = " (looks like an HTML page)" if data.lstrip()[:1] == b"<" else ""
        raise fail(
            origin,
            f"{where}the body is not a JPEG, PNG, GIF, WebP, BMP, TIFF or HEIC/AVIF image{hint}; "
            f"first bytes {head!r}",
        )
    return data, sha


def _check_content_type(value: str | None, origin: str, where: str) -> None:
    if value is None or not value.strip():
        return  # many CDNs omit it; the signature check below still applies
    main = value.split(";", 1)[0].strip().lower()
    if main.startswith("image/") or main in _GENERIC_BINARY_TYPES:
        return
    raise fail(
        origin,
        f"{where}Content-Type is {main!r}, not an image (accepted: image/*, "
        "application/octet-stream, or none)",
    )


def _check_length(value: str | None, policy: FetchPolicy, origin: str, where: str) -> None:
    if value is None:
        return
    try:
        size = int(value.strip())
        if size < 0:
            raise ValueError
    except ValueError:
        raise fail(origin, f"{where}invalid Content-Length {value!r}") from None
    if size > policy.max_bytes:
        raise fail(
            origin,
            f"{where}Content-Length {size} bytes exceeds the {policy.max_bytes}-byte limit "
            "(max_bytes)",
        )


def _read_body(
    resp: http.client.HTTPResponse, policy: FetchPolicy, origin: str, where: str
) -> tuple[bytes, str]:
    """Stream the body, counting bytes, so a missing or lying Content-Length cannot blow the cap."""
    digest = hashlib.sha256()
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = resp.read(min(_CHUNK, policy.max_bytes - total + 1))
        if not chunk:
            break
        total += len(chunk)
        if total > policy.max_bytes:
            raise fail(
                origin, f"{where}body is larger than the {policy.max_bytes}-byte limit (max_bytes)"
            )
        digest.update(chunk)
        parts.append(chunk)
    declared = resp.getheader("Content-Length")
    # read(amt) does not flag a short body
    if not resp.chunked and declared is not None and total != int(declared.strip()):
        raise fail(
            origin,
            f"{where}connection closed after {total} of {int(declared)} bytes, before the body was "
            "complete",
        )
    return b"".join(parts), digest.hexdigest()


def _image_kind(data: bytes) -> str | None:
    """Name of the image format the first bytes announce, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if data[4:8] == b"ftyp":
        box = int.from_bytes(data[:4], "big")
        end = min(len(data), box if 16 <= box <= 4096 else 16)
        brands = {data[8:12]} | {data[i : i + 4] for i in range(16, end - 3, 4)}
        if brands & _HEIF_BRANDS:
            return "heif"
    return None
