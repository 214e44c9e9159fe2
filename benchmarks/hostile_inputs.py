"""The hostile-input zoo: generate every bad image, path, URL and CSV a shop could hand vsearch,
run real builds over them and print one table row per input: what it was and what vsearch did.

    # test-tiny model (the test plugin `make test` installs), temp folder
    python benchmarks/hostile_inputs.py
    python benchmarks/hostile_inputs.py --keep zoo/      # keep the generated files and index

Every input must end up either indexed or skipped with a reason that names it; the build must
finish; nothing may hang. The script exits 1 if any input breaks that rule. The generators here
are also used by tests/test_hostile_inputs.py, so the table and the tests cover the same zoo.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image, ImageDraw

INDEXED, SKIPPED, EITHER = "indexed", "skipped", "either"


@dataclass(frozen=True)
class Case:
    """One hostile input: the ``image`` cell written to the catalog and what vsearch must do with
    it."""

    name: str  # also the product_id
    image: str  # the catalog cell (relative path, absolute path or URL)
    expect: str  # INDEXED, SKIPPED or EITHER (decoder-dependent, but must not crash)
    reason: str = ""  # for SKIPPED: a fragment the skip reason must contain
    note: str = ""


# ---------------------------------------------------------------- image generators


def card(w: int = 80, h: int = 60) -> Image.Image:
    """An upright, asymmetric picture (so a wrong rotation is visible in the embedding)."""
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, w // 2, h // 2), fill=(220, 30, 30))
    d.rectangle((w // 2, 0, w, h // 2), fill=(30, 170, 60))
    d.rectangle((0, h // 2, w // 2, h), fill=(30, 60, 210))
    return im


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def raw_png(
    w: int, h: int, bit_depth: int, color_type: int, raw: bytes, extra: bytes = b""
) -> bytes:
    """A PNG written by hand, so headers can lie (bombs) and depths Pillow cannot save can be
    made."""
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + extra
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


# How a camera stores an upright scene for each EXIF orientation (tag 0x0112).
STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def oriented_jpeg(orientation: int) -> bytes:
    upright = card()
    stored = upright if STORED[orientation] is None else upright.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def _frames(n: int = 3) -> list[Image.Image]:
    colours = [(220, 30, 30), (30, 170, 60), (30, 60, 210)]
    return [Image.new("RGB", (40, 40), colours[i % 3]) for i in range(n)]


def _heic() -> bytes | None:
    try:
        import pillow_heif
    except ImportError:
        return None
    pillow_heif.register_heif_opener()
    try:
        return encode(card(), "HEIF", quality=90)
    except Exception:  # noqa: BLE001 - libheif built without an encoder
        return None


def _avif() -> bytes | None:
    from PIL import features

    if not features.check("avif"):
        return None
    return encode(card(), "AVIF", quality=90)


def image_files() -> list[tuple[str, str, bytes | None, str, str]]:
    """(name, file name, bytes, expect, reason fragment) for every hostile image file."""
    good = encode(card(), "JPEG", quality=90)
    png = encode(card(), "PNG")
    corrupt_png = bytearray(png)
    corrupt_png[len(corrupt_png) // 2] ^= 0xFF  # breaks the IDAT CRC / zlib stream
    mid_garbage = bytearray(good)
    mid_garbage[len(good) // 2 : len(good) // 2 + 40] = b"\x00" * 40
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.info["transparency"] = 0
    ImageDraw.Draw(pal).rectangle((10, 10, 30, 30), fill=0)
    gray16 = Image.fromarray(
        __import__("numpy").linspace(0, 65535, 40 * 40, dtype="uint16").reshape(40, 40)
    )
    rgb16 = b"".join(b"\x00" + struct.pack(">HHH", 65535, 1000 * y, 30000) * 40 for y in range(40))
    heic, avif = _heic(), _avif()
    text_bomb = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 * 2**20), 9))
    first, *rest = _frames()
    many_frames = _frames(300)
    files = [
        ("good-jpeg", "good.jpg", good, INDEXED, ""),
        ("good-png", "good.png", png, INDEXED, ""),
        (
            "progressive-jpeg",
            "progressive.jpg",
            encode(card(), "JPEG", progressive=True),
            INDEXED,
            "",
        ),
        (
            "truncated-jpeg",
            "truncated.jpg",
            good[: len(good) // 2],
            SKIPPED,
            "truncated or corrupt",
        ),
        ("truncated-png", "truncated.png", png[: len(png) // 2], SKIPPED, "truncated or corrupt"),
        ("corrupt-png-crc", "corrupt.png", bytes(corrupt_png), SKIPPED, "truncated or corrupt"),
        ("jpeg-zeroed-scan-data", "zeroed-scan.jpg", bytes(mid_garbage), EITHER, "corrupt"),
        ("jpeg-header-only", "header-only.jpg", good[:20], SKIPPED, "not a recognised image"),
        ("zero-byte", "empty.jpg", b"", SKIPPED, "empty"),
        (
            "text-as-jpg",
            "notes.jpg",
            b"just some text, not a picture\n" * 20,
            SKIPPED,
            "not a recognised image",
        ),
        (
            "html-as-png",
            "page.png",
            b"<!doctype html><html><body>404</body></html>",
            SKIPPED,
            "not a recognised image",
        ),
        (
            "svg-as-png",
            "vector.png",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
            SKIPPED,
            "not a recognised image",
        ),
        (
            "eps-as-jpg",
            "ghostscript.jpg",
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
            SKIPPED,
            "not a recognised image",
        ),
        (
            "psd-signature",
            "layers.jpg",
            b"8BPS\x00\x01" + b"\x00" * 64,
            SKIPPED,
            "not a recognised image",
        ),
        (
            "zip-as-jpg",
            "archive.jpg",
            b"PK\x03\x04" + b"\x00" * 60,
            SKIPPED,
            "not a recognised image",
        ),
        (
            "jpeg-plus-zip-polyglot",
            "polyglot.jpg",
            good + b"PK\x03\x04" + b"\x00" * 200,
            INDEXED,
            "",
        ),
        (
            "png-bomb-100k-x-100k",
            "bomb.png",
            raw_png(100_000, 100_000, 8, 2, b""),
            SKIPPED,
            "decompression bomb",
        ),
        (
            "gif-bomb-65535-x-65535",
            "bomb.gif",
            b"GIF89a"
            + struct.pack("<HH", 65535, 65535)
            + b"\x00\x00\x00"
            + b",\x00\x00\x00\x00"
            + struct.pack("<HH", 65535, 65535)
            + b"\x00\x02\x02D\x01\x00;",
            SKIPPED,
            "decompression bomb",
        ),
        ("png-zero-width", "zero-width.png", raw_png(0, 10, 8, 2, b""), SKIPPED, ""),
        (
            "png-ztxt-text-bomb",
            "text-bomb.png",
            raw_png(8, 8, 8, 2, b"".join(b"\x00" + b"\x80" * 24 for _ in range(8)), text_bomb),
            EITHER,
            "",
        ),
        (
            "1x10000-strip",
            "strip-tall.png",
            encode(Image.new("RGB", (1, 10000), (9, 9, 9)), "PNG"),
            SKIPPED,
            "aspect ratio",
        ),
        (
            "10000x1-strip",
            "strip-wide.png",
            encode(Image.new("RGB", (10000, 1), (9, 9, 9)), "PNG"),
            SKIPPED,
            "aspect ratio",
        ),
        (
            "aspect-50-to-1-edge",
            "edge-50.png",
            encode(Image.new("RGB", (500, 10), (9, 9, 9)), "PNG"),
            INDEXED,
            "",
        ),
        (
            "aspect-51-to-1",
            "edge-51.png",
            encode(Image.new("RGB", (510, 10), (9, 9, 9)), "PNG"),
            SKIPPED,
            "aspect ratio",
        ),
        ("1x1-pixel", "dot.png", encode(Image.new("RGB", (1, 1), (200, 0, 0)), "PNG"), INDEXED, ""),
        (
            "animated-gif",
            "anim.gif",
            encode(first, "GIF", save_all=True, append_images=rest, duration=100, loop=0),
            INDEXED,
            "",
        ),
        (
            "animated-gif-300-frames",
            "anim300.gif",
            encode(
                many_frames[0], "GIF", save_all=True, append_images=many_frames[1:], duration=20
            ),
            INDEXED,
            "",
        ),
        (
            "animated-webp",
            "anim.webp",
            encode(first, "WEBP", save_all=True, append_images=rest, duration=100, lossless=True),
            INDEXED,
            "",
        ),
        (
            "animated-png",
            "anim.png",
            encode(first, "PNG", save_all=True, append_images=rest, duration=100),
            INDEXED,
            "",
        ),
        ("cmyk-jpeg", "cmyk.jpg", encode(card().convert("CMYK"), "JPEG"), INDEXED, ""),
        ("16-bit-grey-png", "grey16.png", encode(gray16, "PNG"), INDEXED, ""),
        ("16-bit-rgb-png", "rgb16.png", raw_png(40, 40, 16, 2, rgb16), INDEXED, ""),
        (
            "32-bit-float-tiff",
            "float.tif",
            encode(Image.new("F", (40, 40), 0.5), "TIFF"),
            INDEXED,
            "",
        ),
        ("palette-transparency-png", "palette.png", encode(pal, "PNG"), INDEXED, ""),
        ("rgba-png", "rgba.png", encode(card().convert("RGBA"), "PNG"), INDEXED, ""),
        ("la-png", "la.png", encode(card().convert("LA"), "PNG"), INDEXED, ""),
        ("1-bit-png", "bilevel.png", encode(card().convert("1"), "PNG"), INDEXED, ""),
        (
            "multipage-tiff",
            "pages.tif",
            encode(first, "TIFF", save_all=True, append_images=rest),
            INDEXED,
            "",
        ),
        ("bmp", "plain.bmp", encode(card(), "BMP"), INDEXED, ""),
        (
            "webp-lossless-alpha",
            "alpha.webp",
            encode(card().convert("RGBA"), "WEBP", lossless=True),
            INDEXED,
            "",
        ),
        ("exif-orientation-9-invalid", "orient9.jpg", _jpeg_with_orientation(9), INDEXED, ""),
        (
            "exif-garbage-block",
            "bad-exif.jpg",
            encode(card(), "JPEG", exif=b"Exif\x00\x00" + b"\xff" * 64),
            INDEXED,
            "",
        ),
        ("heic", "phone.heic", heic, INDEXED, ""),
        ("avif", "modern.avif", avif, INDEXED, ""),
    ]
    files += [
        (f"exif-orientation-{o}", f"orient{o}.jpg", oriented_jpeg(o), INDEXED, "")
        for o in range(1, 9)
    ]
    return files


def _jpeg_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return encode(card(), "JPEG", exif=exif.tobytes())


def write_image_zoo(folder: Path) -> list[Case]:
    """Write the hostile image files plus the special files and path tricks; return one Case
    each."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    for name, file_name, data, expect, reason in image_files():
        if data is None:  # HEIC/AVIF encoder not available here: say so in the table
            continue
        (images / file_name).write_bytes(data)
        cases.append(Case(name, f"images/{file_name}", expect, reason))
    # Special files.
    big = images / "sparse-60mb.jpg"
    with open(big, "wb") as f:
        f.truncate(60 * 2**20)  # sparse: costs no disk, but stat() says 60 MiB
    cases.append(Case("60-mib-file", "images/sparse-60mb.jpg", SKIPPED, "limit"))
    (images / "folder.jpg").mkdir(exist_ok=True)
    cases.append(Case("directory-named-jpg", "images/folder.jpg", SKIPPED, "directory"))
    if hasattr(os, "mkfifo") and not (images / "pipe.jpg").exists():
        os.mkfifo(images / "pipe.jpg")  # reading it would block forever
    if (images / "pipe.jpg").exists():
        cases.append(Case("fifo-named-jpg", "images/pipe.jpg", SKIPPED, "pipe.jpg"))
    cases.append(Case("missing-file", "images/not-there.jpg", SKIPPED, "not found"))
    link = images / "passwd-link.jpg"
    if not link.is_symlink():
        link.symlink_to("/etc/passwd")
    cases.append(
        Case(
            "symlink-to-etc-passwd", "images/passwd-link.jpg", SKIPPED, "leaves the catalog folder"
        )
    )
    cases.append(
        Case("dotdot-escape", "../../../../etc/passwd", SKIPPED, "leaves the catalog folder")
    )
    cases.append(Case("absolute-path", "/etc/passwd", SKIPPED, "outside the catalog folder"))
    cases.append(Case("file-url", "file:///etc/passwd", SKIPPED, ""))
    cases.append(Case("javascript-url", "javascript:alert(1)", SKIPPED, ""))
    # The same picture twice under different products and names: indexed twice, embedded once.
    (images / "good-copy.jpg").write_bytes((images / "good.jpg").read_bytes())
    cases.append(Case("duplicate-bytes-other-name", "images/good-copy.jpg", INDEXED, ""))
    return cases


def write_catalog(folder: Path, cases: list[Case]) -> Path:
    """One product per case, in order: case i is spreadsheet row i + 2."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "catalog.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title", "price"])
        for case in cases:
            w.writerow([case.name, case.image, f"hostile {case.name}", "1.00"])
    return path


# ---------------------------------------------------------------- URL zoo (local HTTP server)


class HostileServer:
    """A loopback HTTP server with slow, huge, redirecting and wrong-type answers; counts
    requests."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        good = encode(card(), "JPEG", quality=90)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str = "image/jpeg", **headers) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(headers.pop("length", len(body))))
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with owner.lock:
                    owner.counts[self.path] += 1
                p = self.path
                if p == "/good.jpg":
                    self._send(200, good)
                elif p == "/good-again.jpg":
                    self._send(200, good)
                elif p == "/slow.jpg":  # one byte every 0.4 s: hits the total read deadline
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(good)))
                    self.end_headers()
                    with contextlib.suppress(OSError):
                        for i in range(len(good)):
                            self.wfile.write(good[i : i + 1])
                            self.wfile.flush()
                            time.sleep(0.4)
                elif p == "/huge-declared.jpg":
                    self._send(200, good, length=10 * 2**30)
                elif p == "/huge-stream.jpg":  # no Content-Length, endless body
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.end_headers()
                    with contextlib.suppress(OSError):
                        self.wfile.write(good[:200])
                        for _ in range(4096):
                            self.wfile.write(b"\x00" * 65536)
                elif p == "/page.html":
                    self._send(200, b"<!doctype html><html><body>sale!</body></html>", "text/html")
                elif p == "/html-as-jpeg.jpg":
                    self._send(200, b"<!doctype html><html><body>sale!</body></html>" * 4)
                elif p == "/corrupt.jpg":
                    self._send(200, good[: len(good) // 2])
                elif p == "/missing.jpg":
                    self._send(404, b"not found", "text/plain")
                elif p == "/to-file":
                    self._send(302, b"", Location="file:///etc/passwd")
                elif p == "/loop":
                    self._send(302, b"", Location="/loop")
                elif p == "/redirect-good":
                    self._send(302, b"", Location="/good-again.jpg")
                else:
                    self._send(404, b"", "text/plain")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HostileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def total_requests(self) -> int:
        with self.lock:
            return sum(self.counts.values())


def url_cases(base: str) -> list[Case]:
    return [
        Case("url-good", f"{base}/good.jpg", INDEXED),
        Case("url-redirect-to-good", f"{base}/redirect-good", INDEXED),
        Case("url-slow-drip", f"{base}/slow.jpg", SKIPPED, "slow.jpg"),
        Case("url-huge-declared", f"{base}/huge-declared.jpg", SKIPPED, "huge-declared"),
        Case("url-huge-stream", f"{base}/huge-stream.jpg", SKIPPED, "huge-stream"),
        Case("url-html-page", f"{base}/page.html", SKIPPED, "page.html"),
        Case("url-html-labelled-jpeg", f"{base}/html-as-jpeg.jpg", SKIPPED, "html-as-jpeg"),
        Case("url-truncated-jpeg", f"{base}/corrupt.jpg", SKIPPED, "corrupt.jpg"),
        Case("url-404", f"{base}/missing.jpg", SKIPPED, "404"),
        Case("url-redirect-to-file-scheme", f"{base}/to-file", SKIPPED, "to-file"),
        Case("url-redirect-loop", f"{base}/loop", SKIPPED, "loop"),
    ]


def url_policy():
    """Loopback allowed (the test server), tight limits so slow/huge answers fail within seconds."""
    from vsearch.catalog.fetch import FetchPolicy

    return FetchPolicy(
        allow_private=True, connect_timeout=2.0, read_timeout=1.5, max_bytes=4 * 2**20
    )


# ---------------------------------------------------------------- CSV zoo


def csv_zoo(folder: Path) -> list[tuple[str, bytes]]:
    """(name, file bytes) for hostile catalog files; each refers to one good image at
    images/good.jpg."""
    head = b"product_id,image,title,price\n"
    ok = b"P1,images/good.jpg,Mug,9.99\n"
    return [
        ("utf8-bom", b"\xef\xbb\xbf" + head + ok),
        ("quoted-comma-newline", head + b'P1,images/good.jpg,"Mug, large\nsecond line",9.99\n'),
        ("missing-required-column", b"product_id,title\nP1,Mug\n"),
        (
            "extra-columns",
            b"product_id,image,title,price,colour,size\nP1,images/good.jpg,Mug,9.99,red,L\n",
        ),
        ("too-many-cells-in-row", head + ok + b"P2,images/good.jpg,Cup,1.00,surprise,more\n"),
        ("duplicate-rows", head + ok + ok),
        ("conflicting-metadata", head + ok + b"P1,images/good.jpg,Bowl,12.00\n"),
        ("non-numeric-price", head + b"P1,images/good.jpg,Mug,cheap\n"),
        ("negative-price", head + b"P1,images/good.jpg,Mug,-3\n"),
        ("nan-price", head + b"P1,images/good.jpg,Mug,NaN\n"),
        (
            "very-long-field",
            head
            + b"P1,images/good.jpg,"
            + b"x" * 2_000_000
            + b",9.99\n"
            + b"P2,images/good.jpg,Cup,1\n",
        ),
        ("invalid-utf8", head + b"P1,images/good.jpg,Mu\xff\xfeg,9.99\nP2,images/good.jpg,Cup,1\n"),
        ("nul-character", head + b"P1,images/good.jpg,Mu\x00g,9.99\nP2,images/good.jpg,Cup,1\n"),
        ("unclosed-quote", head + b'P1,images/good.jpg,"Mug,9.99\nP2,images/good.jpg,Cup,1\n'),
        ("semicolon-separated", b"product_id;image;title;price\nP1;images/good.jpg;Mug;9,99\n"),
        ("empty-file", b""),
        ("header-only", head),
        ("binary-garbage", bytes(range(256)) * 40),
        ("xlsx-saved-as-csv", b"PK\x03\x04" + b"\x00" * 100),
        (
            "formula-injection-cell",
            head + b'P1,images/good.jpg,"=HYPERLINK(""http://evil"")",9.99\n',
        ),
        ("empty-product-id", head + b",images/good.jpg,Mug,9.99\n" + ok),
        ("pipe-separated-images", head + b"P1,images/good.jpg|images/missing.jpg,Mug,9.99\n"),
    ]


# ---------------------------------------------------------------- running the zoo


@dataclass(frozen=True)
class Outcome:
    case: Case
    outcome: str  # INDEXED or SKIPPED
    detail: str
    ok: bool


def outcomes_of(cases: list[Case], report, index_dir: Path, embedder) -> list[Outcome]:
    """Match each case (row i + 2) to what the build did with it."""
    from vsearch.search import ProductIndex

    index = ProductIndex.load(index_dir, embedder)
    by_row: dict[int, list[str]] = {}
    for p in report.problems:
        by_row.setdefault(p.row, []).append(p.reason)
    out = []
    for i, case in enumerate(cases):
        reasons = by_row.get(i + 2, [])
        try:
            index.product(case.name)
            got, detail = INDEXED, "; ".join(reasons) or "indexed"
        except KeyError:
            got, detail = SKIPPED, "; ".join(reasons) or "(no reason given)"
        if case.expect == EITHER:
            ok = got == INDEXED or bool(reasons)
        elif got != case.expect:
            ok = False
        else:
            ok = got == INDEXED or (bool(reasons) and case.reason.lower() in detail.lower())
        out.append(Outcome(case, got, detail, ok))
    return out


def run_csv_zoo(folder: Path, embedder) -> list[tuple[str, str, bool]]:
    """Build each hostile CSV; (name, outcome text, ok). A CatalogError with a message is a fine
    outcome."""
    from vsearch.build import build_index
    from vsearch.errors import CatalogError

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "images" / "good.jpg").write_bytes(encode(card(), "JPEG"))
    rows = []
    for name, data in csv_zoo(folder):
        path = folder / f"{name}.csv"
        path.write_bytes(data)
        try:
            r = build_index(path, folder / f"idx-{name}", embedder=embedder, batch_size=8)
            probs = "; ".join(f"row {p.row}: {p.reason}"[:90] for p in r.problems[:2])
            rows.append(
                (
                    name,
                    f"built: {r.products} product(s), {len(r.skipped)} skipped, {len(r.warnings)} "
                    "warning(s)" + (f" [{probs}]" if probs else ""),
                    True,
                )
            )
        except CatalogError as e:
            rows.append((name, f"CatalogError: {str(e)[:140]}", bool(str(e))))
    return rows


def run(folder: Path, model: str = "test-tiny") -> int:
    from vsearch.build import build_index
    from vsearch.embedders import load_embedder
    from vsearch.errors import VsearchError

    embedder = load_embedder(model)
    table: list[tuple[str, str, str, bool]] = []
    failures = 0

    started = time.perf_counter()
    cases = write_image_zoo(folder / "images-shop")
    csv_path = write_catalog(folder / "images-shop", cases)
    report = build_index(csv_path, folder / "idx-images", embedder=embedder, batch_size=16)
    image_seconds = time.perf_counter() - started
    for o in outcomes_of(cases, report, folder / "idx-images", embedder):
        table.append(("image/path", o.case.name, f"{o.outcome}: {o.detail}", o.ok))

    started = time.perf_counter()
    with HostileServer() as server:
        ucases = url_cases(server.base)
        url_csv = write_catalog(folder / "url-shop", ucases)
        report = build_index(
            url_csv,
            folder / "idx-urls",
            embedder=embedder,
            batch_size=16,
            fetch_policy=url_policy(),
        )
        first = server.total_requests()
        for o in outcomes_of(ucases, report, folder / "idx-urls", embedder):
            table.append(("url", o.case.name, f"{o.outcome}: {o.detail}", o.ok))
        again = build_index(
            url_csv,
            folder / "idx-urls",
            embedder=embedder,
            batch_size=16,
            fetch_policy=url_policy(),
        )
        good_refetched = server.counts["/good.jpg"] > 1
        table.append(
            (
                "url",
                "rebuild-does-not-refetch",
                f"good.jpg requested {server.counts['/good.jpg']}x over 2 builds; 2nd build "
                f"embedded {again.embedded}, "
                f"{server.total_requests() - first} requests (failed URLs are retried)",
                not good_refetched,
            )
        )
        try:
            build_index(
                write_catalog(
                    folder / "private-shop",
                    [Case("url-loopback-default-policy", f"{server.base}/good.jpg", SKIPPED)],
                ),
                folder / "idx-private",
                embedder=embedder,
            )
            table.append(
                ("url", "url-loopback-default-policy", "indexed (should be refused)", False)
            )
        except VsearchError as e:
            table.append(
                (
                    "url",
                    "url-loopback-default-policy",
                    f"refused: {str(e)[:150]}",
                    "loopback" in str(e) or "private" in str(e),
                )
            )
    url_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for name, text, ok in run_csv_zoo(folder / "csv-shop", embedder):
        table.append(("csv", name, text, ok))
    csv_seconds = time.perf_counter() - started

    width = max(len(r[1]) for r in table)
    print(f"| kind | input{' ' * (width - 5)} | outcome | ok |")
    print(f"|---|{'-' * (width + 2)}|---|---|")
    for kind, name, text, ok in table:
        text = text.replace("|", "/").replace("\n", " ")
        print(f"| {kind} | {name.ljust(width)} | {text[:220]} | {'yes' if ok else '**NO**'} |")
        failures += not ok
    counts = Counter(kind for kind, *_ in table)
    indexed = sum(1 for _, _, text, _ in table if text.startswith("indexed"))
    print(
        f"\n{len(table)} hostile inputs ({', '.join(f'{n} {k}' for k, n in counts.items())}); "
        f"{indexed} indexed, {len(table) - indexed} skipped/refused with a reason; {failures} "
        "broke the rules. "
        f"Time: images {image_seconds:.1f} s, URLs {url_seconds:.1f} s, CSVs {csv_seconds:.1f} s "
        f"(model {model})."
    )
    skipped_formats = [n for n, _, d, *_ in image_files() if d is None]
    if skipped_formats:
        print(f"not tried (no encoder on this machine): {', '.join(skipped_formats)}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep", type=Path, default=None, help="write the zoo and indexes here and keep them"
    )
    parser.add_argument(
        "--model",
        default="test-tiny",
        help="embedder (default: test-tiny, from the test plugin `make test` installs; the "
        "pipeline is what is tested)",
    )
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args.keep, args.model)
    with tempfile.TemporaryDirectory(prefix="vsearch-zoo-") as tmp:
        return run(Path(tmp), args.model)


if __name__ == "__main__":
    sys.exit(main())
