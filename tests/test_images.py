"""Image decoding: every photo becomes an upright RGB image, or an ImageError naming the file and
the reason."""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, features

from vsearch.catalog import images as images
from vsearch.catalog.images import (
    IMAGE_EXTENSIONS,
    MAX_ASPECT,
    MAX_PIXELS,
    content_hash,
    load_image,
    read_image_bytes,
)
from vsearch.errors import ImageError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def close(pixel, expected, tol=40):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def quadrants(w=80, h=60):
    """An upright test card: red top-left, green top-right, blue bottom-left, white bottom-right."""
    im = Image.new("RGB", (w, h))
    im.paste(RED, (0, 0, w // 2, h // 2))
    im.paste(GREEN, (w // 2, 0, w, h // 2))
    im.paste(BLUE, (0, h // 2, w // 2, h))
    im.paste(WHITE, (w // 2, h // 2, w, h))
    return im


def assert_upright_card(im, w=80, h=60):
    assert im.mode == "RGB"
    assert im.size == (w, h)
    assert close(im.getpixel((w // 4, h // 4)), RED)
    assert close(im.getpixel((3 * w // 4, h // 4)), GREEN)
    assert close(im.getpixel((w // 4, 3 * h // 4)), BLUE)
    assert close(im.getpixel((3 * w // 4, 3 * h // 4)), WHITE)


def encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_declaring(width, height):
    """A real 1x1 PNG whose IHDR is patched to declare width x height (CRC fixed so it parses)."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- files on disk -------------------------------------------------------------------------------


def test_extensions_cover_phone_and_web_formats():
    for ext in (
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".avif",
    ):
        assert ext in IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)
    assert ".txt" not in IMAGE_EXTENSIONS


def test_loads_jpeg_from_path(tmp_path):
    p = tmp_path / "card.jpg"
    quadrants().save(p, quality=95)
    assert_upright_card(load_image(p))
    assert_upright_card(load_image(str(p)))


def test_missing_file_names_it(tmp_path):
    p = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg.*not found"):
        load_image(p)


def test_directory_is_refused(tmp_path):
    d = tmp_path / "folder.jpg"
    d.mkdir()
    with pytest.raises(ImageError, match="folder.jpg.*directory"):
        load_image(d)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png.*empty"):
        load_image(p)


def test_text_with_image_extension(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a photo\n" * 20)
    with pytest.raises(ImageError, match="notes.jpg.*not a recognised image.*JPEG"):
        load_image(p)


def test_read_image_bytes(tmp_path):
    p = tmp_path / "a.png"
    data = encode(quadrants(), "PNG")
    p.write_bytes(data)
    assert read_image_bytes(p) == data
    with pytest.raises(ImageError, match="a.png.*limit"):
        read_image_bytes(p, max_bytes=len(data) - 1)
    with pytest.raises(ImageError, match="not found"):
        read_image_bytes(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="directory"):
        read_image_bytes(tmp_path)
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image_bytes(tmp_path / "zero.png")


def test_content_hash_is_sha256_of_bytes(tmp_path):
    data = encode(quadrants(), "PNG")
    assert content_hash(data) == hashlib.sha256(data).hexdigest()
    assert content_hash(data) != content_hash(data + b"\0")
    (tmp_path / "x.png").write_bytes(data)
    (tmp_path / "renamed.png").write_bytes(data)
    same = [content_hash(read_image_bytes(tmp_path / n)) for n in ("x.png", "renamed.png")]
    assert same[0] == same[1]


# --- corrupt data and limits ---------------------------------------------------------------------


def noisy(w=320, h=240):
    return Image.merge("RGB", [Image.effect_noise((w, h), 60)] * 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_errors_instead_of_grey_image(tmp_path, fmt):
    data = encode(noisy(), fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"cut\.{fmt.lower()}.*truncated or corrupt"):
        load_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_pixel_data(tmp_path):
    data = bytearray(encode(noisy(), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 10 : start + 200] = b"\xab" * 190
    with pytest.raises(ImageError, match="shelf.png.*corrupt"):
        load_image(bytes(data), name="shelf.png")


@pytest.mark.parametrize("size", [(9_000, 9_000), (100_000, 100_000), (2**31 - 1, 2**31 - 1)])
def test_decompression_bomb_refused_before_decoding(tmp_path, size):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_declaring(*size))
    limit_before = Image.MAX_IMAGE_PIXELS
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match="bomb.png.*(decompression bomb|megapixels)"):
        load_image(p)
    assert time.perf_counter() - t0 < 1.0
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_bomb_limit_is_ours_not_pillows():
    # 9000x9000 = 81 MP is below Pillow's own warning level (~89 MP) but above MAX_PIXELS.
    assert 9_000 * 9_000 > MAX_PIXELS
    with pytest.raises(ImageError, match="81.0 megapixels"):
        load_image(png_declaring(9_000, 9_000))
    small = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError, match="megapixels"):
        load_image(small, max_pixels=5_000)
    assert load_image(small, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageError, match="megapixels"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5_000)


def test_absurd_aspect_ratio():
    with pytest.raises(ImageError, match="strip.png.*aspect ratio of 100:1"):
        load_image(encode(Image.new("RGB", (2, 200)), "PNG"), name="strip.png")
    with pytest.raises(ImageError, match="aspect"):
        load_image(png_declaring(10_000, 1))
    ok = int(MAX_ASPECT) * 4
    assert load_image(encode(Image.new("RGB", (ok, 4)), "PNG")).size == (ok, 4)


# --- orientation ---------------------------------------------------------------------------------

# How a camera stores the pixels of an upright scene for each EXIF orientation (EXIF 2.3, tag
# 0x0112):
# 6 = stored rotated 90 deg counter-clockwise (display needs 90 deg clockwise), 8 = the reverse,
# etc.
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


def oriented_jpeg(orientation, upright=None):
    upright = upright or quadrants()
    stored = upright if STORED[orientation] is None else upright.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path, orientation):
    p = tmp_path / f"o{orientation}.jpg"
    p.write_bytes(oriented_jpeg(orientation))
    out = load_image(p)
    assert_upright_card(out)
    assert out.getexif().get(0x0112, 1) == 1  # no second rotation downstream


def test_pil_input_is_transposed_and_not_mutated():
    src = Image.open(io.BytesIO(oriented_jpeg(6))).convert("RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6
    src.info["exif"] = exif.tobytes()
    before = src.tobytes()
    out = load_image(src)
    assert_upright_card(out)
    assert out is not src
    assert src.mode == "RGBA" and src.size == (60, 80) and src.tobytes() == before
    assert src.getexif().get(0x0112) == 6


# --- colour modes and formats --------------------------------------------------------------------


def test_rgba_and_la_composited_on_white():
    im = Image.new("RGBA", (40, 20), (255, 0, 0, 255))
    im.paste((0, 0, 255, 0), (20, 0, 40, 20))  # fully transparent (hidden blue) right half
    out = load_image(encode(im, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == RED
    assert out.getpixel((30, 5)) == WHITE
    la = Image.new("LA", (10, 10), (0, 0))
    assert load_image(encode(la, "PNG")).getpixel((5, 5)) == WHITE
    half = Image.new("RGBA", (10, 10), (0, 0, 0, 128))
    assert close(load_image(half).getpixel((5, 5)), (127, 127, 127), tol=2)


def test_palette_with_transparency_on_white():
    im = Image.new("P", (20, 20), 0)
    im.putpalette([0, 255, 0] + [255, 0, 0] * 255)
    im.paste(1, (10, 0, 20, 20))
    data = encode(im, "PNG", transparency=0)  # index 0 (green) is transparent
    out = load_image(data)
    assert out.getpixel((5, 5)) == WHITE
    assert out.getpixel((15, 5)) == RED


def test_cmyk_jpeg():
    im = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # pure red ink
    out = load_image(encode(im, "JPEG", quality=95))
    assert out.mode == "RGB"
    assert close(out.getpixel((10, 10)), RED)


def test_16bit_grey_png_is_scaled_not_white():
    arr = np.tile(np.linspace(0, 65535, 64), (8, 1)).astype(np.uint16)  # left-to-right gradient
    out = load_image(encode(Image.fromarray(arr), "PNG"))
    assert out.mode == "RGB"
    dark, mid, bright = out.getpixel((0, 4)), out.getpixel((32, 4)), out.getpixel((63, 4))
    assert dark == (0, 0, 0) and bright == WHITE
    assert 100 < mid[0] < 160  # the gradient survives instead of clipping to white


def test_32bit_int_and_float_tiff():
    ints = np.full((8, 8), 30000, dtype=np.int32)  # 16-bit range stored as 32-bit
    out = load_image(encode(Image.fromarray(ints), "TIFF"))
    assert close(out.getpixel((1, 1)), (117, 117, 117), tol=2)
    floats = np.full((8, 8), 0.5, dtype=np.float32)
    out = load_image(encode(Image.fromarray(floats), "TIFF"))
    assert close(out.getpixel((1, 1)), (128, 128, 128), tol=2)


@pytest.mark.parametrize(
    "mode, colour, expected",
    [("1", 1, WHITE), ("L", 200, (200, 200, 200)), ("P", 3, None), ("RGB", RED, RED)],
)
def test_simple_modes(mode, colour, expected):
    im = Image.new(mode, (8, 8), colour)
    out = load_image(encode(im, "PNG"))
    assert out.mode == "RGB" and out.size == (8, 8)
    if expected is not None:
        assert out.getpixel((4, 4)) == expected


def frames(colours, size=(32, 32)):
    return [Image.new("RGB", size, c) for c in colours]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_first_frame(fmt):
    first, *rest = frames([RED, GREEN, BLUE])
    extra = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(first, fmt, save_all=True, append_images=rest, duration=100, loop=0, **extra)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = load_image(data)
    assert out.mode == "RGB"
    assert close(out.getpixel((16, 16)), RED)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "WEBP"])
def test_other_formats(fmt):
    assert_upright_card(
        load_image(encode(quadrants(), fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    )


def test_heic(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()  # to write the fixture; load_image registers its own opener
    p = tmp_path / "iphone.heic"
    quadrants().save(p, format="HEIF", quality=95)
    assert_upright_card(load_image(p))
    exif = Image.Exif()
    exif[0x0112] = 6  # iPhone portrait shot: must be rotated exactly once
    quadrants().transpose(STORED[6]).save(p, format="HEIF", quality=95, exif=exif.tobytes())
    assert_upright_card(load_image(p))


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_avif():
    assert_upright_card(load_image(encode(quadrants(), "AVIF", quality=95)))


def test_unsupported_format_refused():
    # EPS/PSD/etc. are never handed to Pillow's decoders (EPS would run Ghostscript).
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(eps)


# --- bytes, streams, names -----------------------------------------------------------------------


def test_bytes_and_streams():
    data = encode(quadrants(), "PNG")
    assert_upright_card(load_image(data))
    assert_upright_card(load_image(io.BytesIO(data)))
    assert_upright_card(load_image(bytearray(data)))


def test_error_names(tmp_path):
    with pytest.raises(ImageError, match=r"^<upload>: "):
        load_image(b"garbage bytes")
    with pytest.raises(ImageError, match=r"^<upload>: "):
        load_image(io.BytesIO(b"garbage bytes"))
    with pytest.raises(ImageError, match=r"^query-7\.jpg: "):
        load_image(b"garbage bytes", name="query-7.jpg")
    with pytest.raises(ImageError, match=r"^<upload>: no data"):
        load_image(b"")


def test_text_stream_refused(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello")
    with open(p) as f, pytest.raises(ImageError, match="binary mode"):
        load_image(f)


def test_wrong_type_is_type_error():
    with pytest.raises(TypeError, match="path, bytes"):
        load_image(42)  # type: ignore[arg-type]


# --- draft (fast JPEG decode) --------------------------------------------------------------------


def big_photo(w=2000, h=1500):
    """A smooth 3 MP scene (like a packshot); heavy noise would make entropy decoding dominate."""
    radial = Image.radial_gradient("L").resize((w, h))
    linear = Image.linear_gradient("L").resize((w, h))
    return Image.merge("RGB", [radial, linear, linear.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])


def test_draft_decodes_at_reduced_scale_and_keeps_min_side():
    data = encode(big_photo(), "JPEG", quality=90)
    full = load_image(data)
    small = load_image(data, min_side=224)
    assert full.size == (2000, 1500)
    # the decoder worked at a reduced DCT scale (speed is measured in benchmarks/, not here)
    assert 224 <= min(small.size) < 2 * 224
    assert small.size[0] / small.size[1] == pytest.approx(2000 / 1500, rel=0.01)


def test_draft_with_rotation_stays_upright():
    upright = quadrants(1500, 2000)  # portrait scene, stored landscape with orientation 6
    out = load_image(oriented_jpeg(6, upright), min_side=224)
    w, h = out.size
    assert h > w and min(w, h) >= 224 and w < 1500
    assert_upright_card(out, w, h)


def test_min_side_larger_than_image_keeps_full_size():
    data = encode(quadrants(300, 200), "JPEG")
    assert load_image(data, min_side=224).size == (300, 200)
    png = encode(quadrants(600, 500), "PNG")
    assert load_image(png, min_side=100).size == (600, 500)  # draft is a JPEG-only shortcut


# --- threads -------------------------------------------------------------------------------------


def test_parallel_decoding_matches_serial(monkeypatch):
    monkeypatch.setattr(images, "_formats", None)  # make the threads race for the lazy registration
    payloads = [oriented_jpeg(o) for o in range(1, 9)] + [
        encode(quadrants(), f) for f in ("PNG", "GIF", "WEBP")
    ]
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    payloads.append(encode(quadrants(), "HEIF", quality=95))
    barrier = threading.Barrier(4)

    def work(data):
        try:
            barrier.wait(timeout=5)
        except threading.BrokenBarrierError:
            pass
        return load_image(data).tobytes()

    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(work, payloads * 3))
    barrier.abort()
    serial = [load_image(d).tobytes() for d in payloads * 3]
    assert parallel == serial
    assert "HEIF" in images._formats


# --- fuzz ----------------------------------------------------------------------------------------

MAGICS = [
    b"",
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff\xe1",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"GIF89a",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"\x00\x00\x00\x18ftypheic",
    b"\x00\x00\x00\x1cftypavif",
]


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(MAGICS), body=st.binary(max_size=2048))
def test_random_bytes_only_raise_image_error(prefix, body):
    try:
        out = load_image(prefix + body)
    except ImageError:
        return
    assert out.mode == "RGB"


VALID = {
    fmt: encode(quadrants(16, 12), fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")
}


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(VALID)),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 10_000),
)
def test_damaged_real_files_only_raise_image_error(fmt, edits, cut):
    data = bytearray(VALID[fmt])
    for pos, value in edits:
        data[pos % len(data)] = value
    data = bytes(data[: max(1, len(data) - cut % len(data))])
    try:
        out = load_image(data)
    except ImageError:
        return
    assert out.mode == "RGB"
