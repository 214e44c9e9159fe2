"""Image decoding: any photo a shopper or a catalog supplies becomes an upright RGB image, or a
clear ImageError.

Everything that can go wrong with one image (missing file, not an image, truncated upload,
decompression bomb, odd colour mode, rotated phone photo) is dealt with here, so the embedders
only ever see well-formed RGB pictures. Safe to call from many threads at once.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from typing import BinaryIO

from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from vsearch.errors import ImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_ASPECT",
    "MAX_BYTES",
    "MAX_PIXELS",
    "ImageSource",
    "content_hash",
    "load_image",
    "read_image_bytes",
]

#: Lower-case suffixes treated as images when a folder is scanned.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

#: Decompression-bomb limit in pixels. 64 MP is above any phone camera (48-50 MP sensors) and any
#: sensible catalog packshot, yet a 64 MP RGB image is only ~190 MiB decoded; a few KiB of crafted
#: PNG can otherwise declare 2^31 x 2^31 pixels and exhaust memory in a worker pool.
MAX_PIXELS: int = 64_000_000

#: Longest side / shortest side above which an image is refused: a 1x10000 strip is a banner or a
#: broken file, never a product photo, and it would be squashed to nothing by a square crop.
MAX_ASPECT: float = 50.0

#: Largest encoded file read from disk or from an upload stream (bytes).
MAX_BYTES: int = 50 * 2**20

ImageSource = str | os.PathLike | bytes | BinaryIO | Image.Image

# Formats we hand to Pillow. An allow-list keeps exotic decoders (EPS runs Ghostscript, for one)
# away from untrusted uploads. Multi-picture camera JPEGs (MPO) come through Pillow's JPEG opener.
_WANTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
_ACCEPTED = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF or AVIF"

_formats_lock = threading.Lock()
_formats: tuple[str, ...] | None = None


def _open_formats() -> tuple[str, ...]:
    """Register the HEIC/HEIF opener once, on first use, from any thread; return the formats Pillow
    can open."""
    global _formats
    if _formats is not None:
        return _formats
    with _formats_lock:
        if _formats is None:
            try:
                import pillow_heif
            except ImportError:  # HEIC files then fail as "not a recognised image"
                pass
            else:
                pillow_heif.register_heif_opener()
            Image.init()
            _formats = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)
    return _formats


def content_hash(data: bytes) -> str:
    """SHA-256 hex digest of the raw file bytes: the embedding-cache key, independent of file
    name."""
    return hashlib.sha256(data).hexdigest()


def read_image_bytes(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> bytes:
    """Read an image file whole, refusing missing, empty and oversized files with a clear
    ImageError."""
    name = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except OSError as e:
        raise ImageError(f"{name}: cannot read file ({e.strerror or e})") from None
    if os.path.isdir(path):
        raise ImageError(f"{name}: is a directory, expected an image file")
    if st.st_size == 0:
        raise ImageError(f"{name}: file is empty (0 bytes)")
    if st.st_size > max_bytes:
        raise ImageError(
            f"{name}: file is {_mib(st.st_size)}, over the {_mib(max_bytes)} limit for one image"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat()
    except OSError as e:
        raise ImageError(f"{name}: cannot read file ({e.strerror or e})") from None
    if not data:
        raise ImageError(f"{name}: file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: file is over the {_mib(max_bytes)} limit for one image")
    return data


def load_image(
    source: ImageSource,
    *,
    min_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Decode to an upright RGB image (EXIF orientation applied, transparency on white, first
    frame).

    min_side: for JPEGs, let the decoder work at the smallest 1/2, 1/4 or 1/8 scale whose short side
    is still >= min_side; a 12 MP phone photo then decodes several times faster, and the embedder
    resizes to ~224 px anyway. name: how the image is called in error messages.
    Never mutates a PIL image passed in; raises ImageError for anything that cannot be used.
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if isinstance(source, Image.Image):
        return _from_pil(source, max_pixels, name or _pil_name(source))
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        data = read_image_bytes(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "<upload>"
        if len(source) > MAX_BYTES:  # same cap as files and streams, before any copy or decode
            raise ImageError(f"{name}: upload is over the {_mib(MAX_BYTES)} limit for one image")
        data = bytes(source)
    elif hasattr(source, "read"):
        name = name or "<upload>"
        data = _read_stream(source, name)
    else:
        raise TypeError(
            "load_image() expects a path, bytes, a binary file object or a PIL image, got "
            f"{type(source).__name__}"
        )
    if not data:
        raise ImageError(f"{name}: no data (0 bytes)")
    return _decode(data, name=name, min_side=min_side, max_pixels=max_pixels)


def _read_stream(stream: BinaryIO, name: str) -> bytes:
    try:
        data = stream.read(MAX_BYTES + 1)
    except Exception as e:  # noqa: BLE001 - any stream failure is this image's failure
        raise ImageError(f"{name}: cannot read upload ({e})") from None
    if isinstance(data, str):
        raise ImageError(f"{name}: stream is opened in text mode; open it in binary mode ('rb')")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name}: upload is over the {_mib(MAX_BYTES)} limit for one image")
    return bytes(data)


def _decode(data: bytes, *, name: str, min_side: int | None, max_pixels: int) -> Image.Image:
    formats = _open_formats()
    try:
        with Image.open(io.BytesIO(data), formats=formats) as im:
            # Only the header has been parsed so far: refuse bombs before any pixel is decoded.
            _check_size(im.size, max_pixels, name)
            if min_side is not None and min_side > 0 and im.format in ("JPEG", "MPO"):
                w, h = im.size
                if min(w, h) >= 2 * min_side:
                    im.draft(None, (min_side, min_side))
            im.load()  # full decode; truncated files raise here (LOAD_TRUNCATED_IMAGES stays False)
            return _upright_rgb(im, name)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image (accepted: {_ACCEPTED})") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({e})") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode this image") from None
    except Exception as e:  # noqa: BLE001 - Pillow plugins raise OSError, ValueError, SyntaxError, struct.error...
        raise ImageError(
            f"{name}: image data is truncated or corrupt ({_describe(e)}); re-export or re-upload "
            "the file"
        ) from None


def _from_pil(src: Image.Image, max_pixels: int, name: str) -> Image.Image:
    _check_size(src.size, max_pixels, name)
    try:
        # exif_transpose returns a new image (or a copy), so the caller's image is never changed.
        return _upright_rgb(src, name)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - a lazily opened image may still fail to decode
        raise ImageError(f"{name}: image data is truncated or corrupt ({_describe(e)})") from None


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(
            f"{name}: image is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:g} megapixels (refused as a possible decompression bomb); "
            "downscale it first"
        )
    aspect = max(w, h) / min(w, h)
    if aspect > MAX_ASPECT:
        raise ImageError(
            f"{name}: image is {w}x{h}, an aspect ratio of {aspect:.0f}:1; "
            f"at most {MAX_ASPECT:g}:1 is accepted for a product photo"
        )


def _upright_rgb(im: Image.Image, name: str) -> Image.Image:
    im.load()
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - broken EXIF must not make a good picture unusable
        out = im.copy()
    assert out is not None
    return _to_rgb(out, name)


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white (packshots are on
    white)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(im)
    if mode == "La":  # premultiplied luminance+alpha: over white is L + (255 - A)
        l_chan, a_chan = im.split()
        return ImageChops.add(l_chan, ImageChops.invert(a_chan)).convert("RGB")
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        out.info = dict(im.info)
        out.info.pop("transparency", None)
        return out
    try:
        return im.convert("RGB")
    except ValueError:
        raise ImageError(
            f"{name}: colour mode {mode} cannot be converted to RGB; save the image as RGB"
        ) from None


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float images: scale into 0-255 instead of Pillow's clipping (which
    turns them white)."""
    import numpy as np

    if im.mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float32) / 257.0
    else:
        if im.mode not in ("I", "F"):
            im = im.convert("I")
        arr = np.asarray(im).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        top = float(arr.max()) if arr.size else 0.0
        if im.mode == "F" and top <= 1.0:
            arr = arr * 255.0  # float images are conventionally 0..1
        elif top > 255.0:
            # 16-bit data widened to 32-bit (e.g. 16-bit PNG, TIFF)
            arr = np.clip(arr, 0, 65535) / 257.0
    gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    return gray.convert("RGB")


def _pil_name(im: Image.Image) -> str:
    filename = getattr(im, "filename", None)
    return str(filename) if filename else "<image>"


def _describe(e: BaseException) -> str:
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
