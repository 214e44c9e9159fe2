"""Augmented views of catalog photos for ``vsearch tune``: what a shopper's phone does to a
packshot.

The product cut out and pasted on another catalog photo (clutter the model must learn to look
past), a random crop of 30-100 % of the photo, a mirror image, colour, grey, blur and JPEG
re-compression. Deterministic for a given ``random.Random``, so a resumed tune rebuilds exactly
the views it had cached.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from vsearch.learn.shopper_photos import cutout

WORK_SIDE = 320  # views are drawn at this size; the model's preprocessing resizes them again
PASTE_P = 0.5
CROP_SCALE = (0.3, 1.0)
GRAY_P = 0.1
BLUR_P = 0.3
JPEG_P = 0.5


def open_photo(path: str | Path, side: int = WORK_SIDE) -> Image.Image:
    """A catalog photo, upright RGB, its longer side at most ``side`` (JPEGs decoded at reduced
    size)."""
    with Image.open(path) as im:
        im.draft("RGB", (side, side))
        img = ImageOps.exif_transpose(im).convert("RGB")
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    return img


def augmented_view(
    path: str | Path, background: str | Path | None, rng: random.Random
) -> Image.Image:
    """One augmented view of the photo at ``path``; ``background``: another catalog photo to paste
    the product on (None, or a draw against PASTE_P, = keep the photo's own background)."""
    if background is not None and rng.random() < PASTE_P:
        img = _pasted(path, background, rng)
    else:
        img = open_photo(path)
    img = _random_resized_crop(img, rng)
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < GRAY_P:
        img = ImageOps.grayscale(img).convert("RGB")
    if rng.random() < BLUR_P:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.8)))
    if rng.random() < JPEG_P:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(25, 85))
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img


def _pasted(path: str | Path, background: str | Path, rng: random.Random) -> Image.Image:
    item = cutout(Path(path), max_side=WORK_SIDE)
    bg = open_photo(background)
    bg = bg.resize((WORK_SIDE, WORK_SIDE), Image.Resampling.BILINEAR)
    scale = rng.uniform(0.45, 0.85) * WORK_SIDE / max(item.size)
    item = item.resize(
        (max(1, round(item.width * scale)), max(1, round(item.height * scale))),
        Image.Resampling.BILINEAR,
    )
    x = rng.randint(0, max(0, WORK_SIDE - item.width))
    y = rng.randint(0, max(0, WORK_SIDE - item.height))
    bg.paste(item, (x, y), item)
    return bg


def _random_resized_crop(img: Image.Image, rng: random.Random) -> Image.Image:
    """A crop of CROP_SCALE of the area with aspect 3/4-4/3 (torchvision's recipe), or the whole
    photo."""
    w, h = img.size
    for _ in range(10):
        area = w * h * rng.uniform(*CROP_SCALE)
        aspect = rng.uniform(3 / 4, 4 / 3)
        cw, ch = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return img.crop((x, y, x + cw, y + ch))
    return img
