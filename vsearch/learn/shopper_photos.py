"""Simulated shopper photos of catalog products: what a phone photo in a shop or at home does to
a packshot (the product smaller and off-centre on a cluttered surface, tilted, off-exposure, soft,
noisy, re-compressed).

Used by the demo to make its sample queries and by the build to calibrate the "close match"
verdict on queries that look like shoppers' photos rather than like more studio views.
Deterministic for a given ``random.Random``.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from vsearch.errors import CatalogError

Color = tuple[int, int, int]

# Colours of everyday things: the demo's products and the clutter around a product in a photo.
PALETTE: tuple[tuple[str, Color], ...] = (
    ("Coral", (240, 110, 90)),
    ("Navy", (30, 45, 95)),
    ("Forest green", (34, 110, 60)),
    ("Mustard", (215, 170, 40)),
    ("Charcoal", (60, 62, 66)),
    ("Crimson", (190, 30, 45)),
    ("Teal", (0, 128, 128)),
    ("Lavender", (160, 130, 210)),
    ("Sky blue", (90, 170, 225)),
    ("Tangerine", (245, 140, 30)),
    ("Olive", (120, 125, 45)),
    ("Plum", (110, 40, 90)),
    ("Sand", (205, 180, 140)),
    ("Rose", (230, 130, 160)),
    ("Cobalt", (40, 80, 200)),
    ("Black", (28, 28, 30)),
    ("Burgundy", (120, 25, 40)),
    ("Mint", (120, 205, 165)),
)
ACCENTS: tuple[tuple[str, Color], ...] = PALETTE + (
    ("Cream", (238, 228, 205)),
    ("Silver", (185, 188, 195)),
    ("Gold", (212, 172, 60)),
)


def shade(c: Color, f: float) -> Color:
    """Darken (f < 1) or lighten (f > 1) towards white."""
    if f <= 1:
        return tuple(int(v * f) for v in c)  # type: ignore[return-value]
    return tuple(int(v + (255 - v) * (f - 1)) for v in c)  # type: ignore[return-value]


def fit(product: Image.Image, box_w: float, box_h: float) -> Image.Image:
    """Resized to fit a box, keeping the aspect ratio."""
    scale = min(box_w / product.width, box_h / product.height)
    size = (max(1, round(product.width * scale)), max(1, round(product.height * scale)))
    return product.resize(size, Image.Resampling.BICUBIC)


def _perspective_coeffs(
    dst: list[tuple[float, float]], src: list[tuple[float, float]]
) -> list[float]:
    """Coefficients for Image.transform(PERSPECTIVE) mapping output points dst to input src."""
    import numpy as np

    a, b = [], []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b.extend([u, v])
    return np.linalg.solve(np.array(a, dtype=float), np.array(b, dtype=float)).tolist()


def _tilt(item: Image.Image, rng: random.Random) -> Image.Image:
    """Phone held at an angle: a random perspective warp, then a rotation."""
    w, h = item.size
    j = 0.12
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    dst = [(x + rng.uniform(-j, j) * w, y + rng.uniform(-j, j) * h) for x, y in src]
    minx, miny = min(p[0] for p in dst), min(p[1] for p in dst)
    dst = [(x - minx, y - miny) for x, y in dst]
    out_w = math.ceil(max(p[0] for p in dst))
    out_h = math.ceil(max(p[1] for p in dst))
    warped = item.transform(
        (out_w, out_h),
        Image.Transform.PERSPECTIVE,
        _perspective_coeffs(dst, src),
        resample=Image.Resampling.BICUBIC,
    )
    angle = rng.uniform(-22, 22)
    return warped.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)


def _scene(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A cluttered surface: wood, tiles, fabric or a speckled counter, with objects lying around."""
    w, h = size
    kind = rng.choice(("wood", "tiles", "fabric", "counter"))
    base = {
        "wood": (150, 105, 70),
        "tiles": (205, 205, 198),
        "fabric": (70, 95, 130),
        "counter": (190, 180, 165),
    }[kind]
    base = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in base)
    img = Image.new("RGB", size, base)
    d = ImageDraw.Draw(img)
    if kind == "wood":
        y = 0.0
        while y < h:
            y += rng.uniform(3, 12)
            tone = shade(base, rng.uniform(0.75, 1.12))
            amp, ph = rng.uniform(2, 8), rng.uniform(0, 6.28)
            d.line(
                [(x, y + amp * math.sin(x / 90 + ph)) for x in range(0, w + 40, 40)],
                fill=tone,
                width=rng.randint(1, 3),
            )
    elif kind == "tiles":
        step = rng.randint(70, 120)
        for x in range(0, w, step):
            d.line([(x, 0), (x, h)], fill=shade(base, 0.7), width=4)
        for y in range(0, h, step):
            d.line([(0, y), (w, y)], fill=shade(base, 0.7), width=4)
    elif kind == "fabric":
        for x in range(0, w, 6):
            d.line([(x, 0), (x, h)], fill=shade(base, 0.85), width=1)
        for y in range(0, h, 6):
            d.line([(0, y), (w, y)], fill=shade(base, 1.15), width=1)
    else:
        for _ in range(1500):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(1, 3)
            d.ellipse((x - r, y - r, x + r, y + r), fill=shade(base, rng.uniform(0.6, 1.3)))
    for _ in range(rng.randint(6, 11)):  # clutter: books, coasters, pens, paper
        col = rng.choice(ACCENTS)[1]
        col = shade(col, rng.uniform(0.7, 1.2))
        x, y = rng.uniform(-50, w), rng.uniform(-50, h)
        kind = rng.choice(("rect", "ellipse", "pen", "rect"))
        if kind == "rect":
            bw, bh = rng.uniform(60, 220), rng.uniform(40, 160)
            layer = Image.new("RGBA", (int(bw), int(bh)), col + (255,))
            ImageDraw.Draw(layer).rectangle(
                (0, 0, bw - 1, bh - 1), outline=shade(col, 0.6) + (255,), width=3
            )
            layer = layer.rotate(rng.uniform(0, 90), expand=True, resample=Image.Resampling.BICUBIC)
            img.paste(layer, (int(x), int(y)), layer)
        elif kind == "ellipse":
            r = rng.uniform(25, 80)
            d.ellipse((x - r, y - r, x + r, y + r), fill=col, outline=shade(col, 0.6), width=4)
            d.ellipse(
                (x - r * 0.6, y - r * 0.6, x + r * 0.6, y + r * 0.6),
                outline=shade(col, 0.8),
                width=3,
            )
        else:
            a = rng.uniform(0, math.pi)
            ln = rng.uniform(80, 200)
            d.line(
                [(x, y), (x + ln * math.cos(a), y + ln * math.sin(a))],
                fill=col,
                width=rng.randint(6, 12),
            )
    return img


def shopper_photo(
    product: Image.Image,
    rng: random.Random,
    *,
    size: tuple[int, int] = (800, 600),
    scene: Image.Image | None = None,
) -> Image.Image:
    """A phone photo: the product (RGBA, transparent around it) on a cluttered table, tilted,
    off-exposure, soft and noisy. ``scene``: a ready background of ``size`` (making one is most
    of the cost, so callers that need many photos reuse a few); None = draw a new one."""
    import numpy as np

    img = _scene(size, rng) if scene is None else scene.copy()
    f = size[0] / 800  # pixel sizes below were tuned at 800 px wide
    item = fit(product, size[0] * rng.uniform(0.5, 0.62), size[1] * rng.uniform(0.6, 0.75))
    item = _tilt(item, rng)
    if item.width > size[0] * 0.85 or item.height > size[1] * 0.92:  # tilting made it too big
        item = fit(item, size[0] * 0.85, size[1] * 0.92)
    x = round((size[0] - item.width) / 2 + rng.uniform(-0.1, 0.1) * size[0])
    y = round((size[1] - item.height) / 2 + rng.uniform(-0.05, 0.05) * size[1])
    alpha = item.getchannel("A")
    shadow = Image.new("L", size, 0)
    shadow.paste(
        alpha.point(lambda a: a * 110 // 255),
        (x + round(rng.randint(8, 24) * f), y + round(rng.randint(10, 28) * f)),
        alpha,
    )
    img.paste((10, 10, 10), (0, 0), shadow.filter(ImageFilter.GaussianBlur(10 * f)))
    img.paste(item, (x, y), item)
    # exposure, contrast, softness; then uneven light (vignette + a lamp to one side),
    # a colour cast and sensor noise
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.15))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.4) * f))
    arr = np.asarray(img, dtype=np.float32)
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    xs = xs / (size[0] / 2) - 1
    ys = ys / (size[1] / 2) - 1
    a = rng.uniform(0, 2 * math.pi)
    vignette = rng.uniform(0.15, 0.3) * (xs**2 + ys**2) / 2
    light = 1 - vignette + rng.uniform(0.05, 0.15) * (xs * math.cos(a) + ys * math.sin(a))
    cast = np.array([rng.uniform(0.92, 1.08) for _ in range(3)], dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(3, 7), arr.shape)
    arr = np.clip(arr * light[..., None] * cast + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def scenes(n: int, rng: random.Random, size: tuple[int, int] = (400, 300)) -> list[Image.Image]:
    """``n`` cluttered backgrounds, drawn at 800 x 600 and scaled to ``size``, for
    ``shopper_photo``."""
    return [_scene((800, 600), rng).resize(size, Image.Resampling.BILINEAR) for _ in range(n)]


def cutout(image_path: Path, *, max_side: int = 4096) -> Image.Image:
    """A catalog packshot with its light background (and grey shadow) made transparent,
    for catalogs we did not draw ourselves."""
    import numpy as np

    try:
        with Image.open(image_path) as im:
            img = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError) as exc:
        raise CatalogError(f"cannot open catalog image {image_path}: {exc}") from exc
    if max(img.size) > max_side:  # the mask does not need more pixels than the photo will have
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.float32)
    bg = np.median(
        np.concatenate(
            [
                a[:3].reshape(-1, 3),
                a[-3:].reshape(-1, 3),
                a[:, :3].reshape(-1, 3),
                a[:, -3:].reshape(-1, 3),
            ]
        ),
        axis=0,
    )
    # background pixels lie on the line from the backdrop colour towards a grey shadow
    towards = np.array([60, 60, 66], dtype=np.float32) - bg
    t = ((a - bg) @ towards) / max(float(towards @ towards), 1.0)
    resid = np.abs(a - (bg + np.clip(t, 0, 1)[..., None] * towards)).max(axis=2)
    backdrop = (resid < 22) & (t < 0.35)
    # the background is the backdrop region that touches the border; holes inside stay opaque
    mask = Image.fromarray(np.where(_border_connected(backdrop), 0, 255).astype(np.uint8), "L")
    mask = mask.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.GaussianBlur(0.8))
    out = img.convert("RGBA")
    out.putalpha(mask)
    box = mask.getbbox()
    return out.crop(box) if box else out


def _border_connected(mask):
    """The part of a boolean mask connected (4-neighbourhood) to the image border: a flood fill
    from every border pixel, as whole-array steps (Pillow's floodfill is per-pixel Python)."""
    import numpy as np

    reach = np.zeros_like(mask)
    reach[0], reach[-1], reach[:, 0], reach[:, -1] = mask[0], mask[-1], mask[:, 0], mask[:, -1]
    while True:
        grown = reach.copy()
        for _ in range(8):  # several steps per convergence check
            grown[1:] |= grown[:-1]
            grown[:-1] |= grown[1:]
            grown[:, 1:] |= grown[:, :-1]
            grown[:, :-1] |= grown[:, 1:]
            grown &= mask
        if np.array_equal(grown, reach):
            return reach
        reach = grown
