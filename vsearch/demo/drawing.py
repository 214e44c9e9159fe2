"""Drawn sample products for the demo: recognisable objects (mugs, t-shirts, sneakers ...) in
distinct colours, patterns and shapes, rendered with Pillow, and their studio packshots.

Nothing may be downloaded and no real photos ship with the project, so the bundled demo draws its
own products. Everything is deterministic from a seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from vsearch.learn.shopper_photos import (
    ACCENTS as _ACCENTS,
)
from vsearch.learn.shopper_photos import (
    PALETTE as _PALETTE,
)
from vsearch.learn.shopper_photos import (
    Color,
)
from vsearch.learn.shopper_photos import (
    fit as _fit,
)
from vsearch.learn.shopper_photos import (
    shade as _shade,
)

SAMPLE_COLUMNS = ("product_id", "image", "title", "category", "price", "url", "brand", "color")
_SIDECAR = "sample_catalog.json"
_SIDECAR_VERSION = 1
_DEFAULT_N_PRODUCTS = 60
_DEFAULT_SEED = 0
_R = 640  # products are drawn on a 640 px canvas (2x the packshot size) and downsampled


_PATTERNS = ("solid", "solid", "stripes", "dots", "two-tone")
_PATTERN_WORDS = {"solid": "", "stripes": "striped ", "dots": "polka-dot ", "two-tone": "two-tone "}
_BRANDS = (
    "Northwind",
    "Kestrel",
    "Alder & Co",
    "Fernhill",
    "Bramble",
    "Larkspur",
    "Quillon",
    "Tidewater",
    "Harbor Lane",
    "Juniper",
    "Ottoline",
    "Marlow",
)
_LIGHT_BGS: tuple[Color, ...] = (
    (244, 244, 242),
    (248, 243, 236),
    (237, 242, 248),
    (242, 246, 240),
    (246, 240, 243),
)


@dataclass(frozen=True)
class _Category:
    slug: str
    label: str
    materials: tuple[str, ...]
    items: tuple[str, str, str]  # one noun per shape variant
    details: tuple[str, str, str]
    price: tuple[int, int]


_CATEGORIES: tuple[_Category, ...] = (
    _Category(
        "mug",
        "Mugs",
        ("ceramic", "stoneware", "enamel", "porcelain"),
        ("mug", "latte mug", "tapered mug"),
        ("350 ml", "450 ml", "300 ml"),
        (9, 24),
    ),
    _Category(
        "tshirt",
        "T-shirts",
        ("cotton", "organic cotton", "linen-blend"),
        ("crew-neck t-shirt", "V-neck t-shirt", "long-sleeve t-shirt"),
        ("regular fit", "relaxed fit", "slim fit"),
        (14, 39),
    ),
    _Category(
        "sneaker",
        "Sneakers",
        ("canvas", "suede", "mesh", "leather"),
        ("running sneaker", "high-top sneaker", "slip-on sneaker"),
        ("EU 42", "unisex", "lightweight sole"),
        (49, 139),
    ),
    _Category(
        "backpack",
        "Backpacks",
        ("nylon", "canvas", "recycled polyester"),
        ("backpack", "roll-top backpack", "daypack"),
        ("20 L", "24 L", "15 L"),
        (39, 119),
    ),
    _Category(
        "watch",
        "Watches",
        ("leather-strap", "silicone-strap", "canvas-strap"),
        ("round-face watch", "square-face watch", "chronograph watch"),
        ("38 mm", "40 mm", "42 mm"),
        (59, 299),
    ),
    _Category(
        "lamp",
        "Lamps",
        ("linen", "cotton", "paper"),
        ("drum-shade table lamp", "empire-shade table lamp", "dome table lamp"),
        ("E27, 40 cm", "E27, 35 cm", "E14, 30 cm"),
        (29, 149),
    ),
    _Category(
        "bottle",
        "Water bottles",
        ("stainless steel", "Tritan", "aluminium"),
        ("water bottle", "wide-mouth bottle", "sport bottle"),
        ("750 ml", "1 L", "600 ml"),
        (12, 39),
    ),
    _Category(
        "headphones",
        "Headphones",
        ("wireless", "wired"),
        ("over-ear headphones", "on-ear headphones", "sport headphones"),
        ("30 h battery", "foldable", "sweat-resistant"),
        (39, 249),
    ),
    _Category(
        "chair",
        "Chairs",
        ("oak", "beech", "steel"),
        ("dining chair", "upholstered chair", "café chair"),
        ("single", "stackable", "seat height 46 cm"),
        (49, 229),
    ),
    _Category(
        "sunglasses",
        "Sunglasses",
        ("acetate", "metal", "recycled plastic"),
        ("round sunglasses", "aviator sunglasses", "square sunglasses"),
        ("UV400", "polarised", "UV400, unisex"),
        (19, 159),
    ),
)


@dataclass(frozen=True)
class _Spec:
    """Everything needed to redraw one product, so queries can be re-rendered from it."""

    product_id: str
    category: _Category
    variant: int
    color_name: str
    color: Color
    accent_name: str
    accent: Color
    pattern: str
    material: str
    brand: str
    price: str

    @property
    def title(self) -> str:
        c = self.category
        return (
            f"{self.color_name} {_PATTERN_WORDS[self.pattern]}{self.material} "
            f"{c.items[self.variant]}, {c.details[self.variant]}"
        )


# ---------------------------------------------------------------- product specs


def _product_specs(n_products: int, seed: int) -> list[_Spec]:
    """Distinct products: within a category every product has its own main colour (while
    colours last) and no two share colour, accent, pattern and shape."""
    rng = random.Random(f"vsearch-sample:{seed}:specs")
    orders = {c.slug: rng.sample(range(len(_PALETTE)), len(_PALETTE)) for c in _CATEGORIES}
    seen: set[tuple] = set()
    specs = []
    for i in range(n_products):
        cat = _CATEGORIES[i % len(_CATEGORIES)]
        k = i // len(_CATEGORIES)
        color_name, color = _PALETTE[orders[cat.slug][k % len(_PALETTE)]]
        variant = (k + rng.randrange(3)) % 3 if k >= 3 else k % 3
        for _ in range(100):  # huge catalogs run out of combinations; then repeats are allowed
            accent_name, accent = rng.choice([a for a in _ACCENTS if a[0] != color_name])
            pattern = rng.choice(_PATTERNS)
            key = (cat.slug, color_name, accent_name, pattern, variant)
            if key not in seen:
                break
            variant = rng.randrange(3)
        seen.add(key)
        lo, hi = cat.price
        price = f"{rng.randint(lo, hi)}.{rng.choice(('99', '99', '49', '00'))}"
        specs.append(
            _Spec(
                product_id=f"{cat.slug}-{k + 1:03d}",
                category=cat,
                variant=variant,
                color_name=color_name,
                color=color,
                accent_name=accent_name,
                accent=accent,
                pattern=pattern,
                material=rng.choice(cat.materials),
                brand=rng.choice(_BRANDS),
                price=price,
            )
        )
    return specs


# ---------------------------------------------------------------- drawing helpers


def _outline(c: Color) -> Color:
    lum = 0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2]
    return _shade(c, 0.55) if lum > 70 else _shade(c, 1.35)


def _draw_shape(d: ImageDraw.ImageDraw, shape: tuple, fill=None, outline=None, width=0) -> None:
    kind, *args = shape
    if kind == "rrect":
        box, r = args
        d.rounded_rectangle(box, r, fill=fill, outline=outline, width=width)
    elif kind == "ellipse":
        d.ellipse(args[0], fill=fill, outline=outline, width=width)
    elif kind == "poly":
        d.polygon(args[0], fill=fill, outline=outline, width=width)
    elif kind == "chord":
        box, start, end = args
        d.chord(box, start, end, fill=fill, outline=outline, width=width)
    else:  # pragma: no cover - programming error
        raise ValueError(kind)


def _bbox(shape: tuple) -> tuple[float, float, float, float]:
    if shape[0] == "poly":
        xs = [p[0] for p in shape[1]]
        ys = [p[1] for p in shape[1]]
        return min(xs), min(ys), max(xs), max(ys)
    return shape[1]


def _pattern(spec: _Spec, box, size: tuple[int, int]) -> Image.Image:
    """The product's surface (colour + pattern) for one part, laid out over the part's box."""
    img = Image.new("RGB", size, spec.color)
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = (int(v) for v in box)
    h = max(y1 - y0, 1)
    if spec.pattern == "stripes":
        step = max(h // 6, 24)
        for y in range(y0 + step // 2, y1, step):
            d.rectangle((0, y, size[0], y + step // 2 - 2), fill=spec.accent)
    elif spec.pattern == "dots":
        step = 44
        r = 9
        for row, y in enumerate(range(y0 + 16, y1, step)):
            for x in range(x0 + 16 + (row % 2) * step // 2, x1, step):
                d.ellipse((x - r, y - r, x + r, y + r), fill=spec.accent)
    elif spec.pattern == "two-tone":
        d.rectangle((0, y0 + int(h * 0.58), size[0], size[1]), fill=spec.accent)
    return img


class _Canvas:
    """An RGBA layer with the product on transparency; parts are painted back to front."""

    def __init__(self, spec: _Spec):
        self.spec = spec
        self.img = Image.new("RGBA", (_R, _R), (0, 0, 0, 0))
        self.d = ImageDraw.Draw(self.img)

    def part(self, shape: tuple, color: Color | None = None, *, width: int = 4) -> None:
        """Paint a part; with no colour it gets the product's colour and pattern."""
        if color is None:
            mask = Image.new("L", self.img.size, 0)
            _draw_shape(ImageDraw.Draw(mask), shape, fill=255)
            self.img.paste(_pattern(self.spec, _bbox(shape), self.img.size), (0, 0), mask)
            edge = _outline(self.spec.color)
        else:
            _draw_shape(self.d, shape, fill=color + (255,))
            edge = _outline(color)
        if width:
            _draw_shape(self.d, shape, outline=edge + (255,), width=width)

    def line(self, pts, color: Color, width: int) -> None:
        self.d.line(pts, fill=color + (255,), width=width, joint="curve")

    def arc(self, box, start, end, color: Color, width: int) -> None:
        self.d.arc(box, start, end, fill=color + (255,), width=width)

    def lit(self) -> Image.Image:
        """A soft light from the upper left, so flat shapes read as objects."""
        r, g, b, a = self.img.split()
        grad = Image.linear_gradient("L").rotate(
            45, resample=Image.Resampling.BILINEAR, expand=False
        )
        grad = grad.resize(self.img.size)  # 0 at upper left .. 255 at lower right
        dark = Image.merge("RGB", (r, g, b))
        light = ImageEnhance.Brightness(dark).enhance(1.12)
        dim = ImageEnhance.Brightness(dark).enhance(0.8)
        out = Image.composite(dim, light, grad)
        return Image.merge("RGBA", (*out.split(), a))


def _draw_mug(c: _Canvas, s: _Spec) -> None:
    handle = s.accent
    if s.variant == 0:
        body, hbox = ("rrect", (190, 190, 410, 470), 26), (350, 245, 500, 405)
    elif s.variant == 1:
        body, hbox = ("rrect", (222, 140, 378, 490), 22), (330, 220, 462, 390)
    else:
        body, hbox = (
            ("poly", [(170, 195), (430, 195), (392, 465), (208, 465)]),
            (368, 250, 505, 395),
        )
    c.d.ellipse(hbox, outline=_outline(handle) + (255,), width=42)
    c.d.ellipse(hbox, outline=handle + (255,), width=34)
    c.part(body)
    x0, y0, x1, _ = _bbox(body)
    c.part(("ellipse", (x0, y0 - 18, x1, y0 + 18)), _shade(s.color, 0.45))
    c.arc((x0, y0 - 18, x1, y0 + 18), 0, 360, _shade(s.color, 1.3), 6)


def _draw_tshirt(c: _Canvas, s: _Spec) -> None:
    long = s.variant == 2
    sl = [(92, 268), (148, 305)] if not long else [(118, 455), (172, 462)]
    sr = [(548, 268), (492, 305)] if not long else [(522, 455), (468, 462)]
    pts = [
        (262, 118),
        (172, 148),
        sl[0],
        sl[1],
        (196, 262),
        (198, 512),
        (442, 512),
        (444, 262),
        sr[1],
        sr[0],
        (468, 148),
        (378, 118),
        (320, 150),
    ]
    c.part(("poly", pts))
    if s.variant == 1:
        c.line([(262, 120), (320, 215), (378, 120)], s.accent, 14)
    else:
        c.arc((258, 80, 382, 176), 20, 160, s.accent, 14)
    c.line([(220, 500), (420, 500)], _outline(s.color), 3)


def _draw_sneaker(c: _Canvas, s: _Spec) -> None:
    top = {0: 300, 1: 190, 2: 320}[s.variant]
    upper = [
        (118, 405),
        (122, top + 10),
        (150, top),
        (232, top + 10),
        (290, 260 if s.variant != 2 else 300),
        (400, 312),
        (470, 340),
        (520, 362),
        (540, 392),
        (536, 410),
    ]
    c.part(("poly", upper))
    c.part(
        ("poly", [(150, 375), (300, 340), (470, 360), (460, 385), (300, 372), (160, 400)]), s.accent
    )
    if s.variant != 2:
        for i in range(5):
            x = 300 + i * 24
            y = 270 + i * 12
            c.line([(x - 14, y + 24), (x + 14, y - 4)], (245, 245, 245), 7)
    c.part(
        ("rrect", (104, 400, 550, 452), 24),
        (244, 240, 230) if s.accent_name != "Cream" else _shade(s.color, 0.6),
    )
    c.line([(120, 438), (535, 438)], (175, 170, 160), 4)


def _draw_backpack(c: _Canvas, s: _Spec) -> None:
    strap = _shade(s.color, 0.6)
    c.arc((262, 92, 378, 190), 180, 360, _shade(s.color, 0.45), 16)
    c.part(("rrect", (160, 190, 196, 480), 14), strap)
    c.part(("rrect", (444, 190, 480, 480), 14), strap)
    if s.variant == 1:
        c.part(("rrect", (180, 175, 460, 525), 40))
        c.part(("rrect", (180, 120, 460, 190), 26), s.accent)
        c.part(("rrect", (300, 160, 340, 260), 8), _shade(s.accent, 0.6))
    else:
        c.part(("rrect", (180, 140, 460, 525), 100 if s.variant == 2 else 70))
        c.arc((200, 160, 440, 330), 200, 340, _shade(s.color, 0.5), 5)
    pocket = (
        ("ellipse", (225, 330, 415, 500)) if s.variant == 2 else ("rrect", (215, 345, 425, 500), 30)
    )
    c.part(pocket, s.accent)
    c.line([(235, 372), (405, 372)], _outline(s.accent), 5)
    c.part(("rrect", (380, 364, 396, 400), 4), (200, 200, 205))


def _draw_watch(c: _Canvas, s: _Spec) -> None:
    c.part(("rrect", (262, 40, 378, 600), 26))
    for y in (470, 505, 540):
        c.d.ellipse((313, y, 327, y + 14), fill=_shade(s.color, 0.4) + (255,))
    metal = s.accent
    dial = (28, 30, 36) if s.variant == 2 else (246, 243, 235)
    ink = (240, 240, 240) if s.variant == 2 else (40, 40, 45)
    c.part(("rrect", (442, 298, 468, 342), 6), metal)
    if s.variant == 1:
        c.part(("rrect", (200, 200, 440, 440), 48), metal, width=5)
        c.part(("rrect", (222, 222, 418, 418), 34), dial, width=3)
    else:
        c.part(("ellipse", (195, 195, 445, 445)), metal, width=5)
        c.part(("ellipse", (220, 220, 420, 420)), dial, width=3)
    for h in range(12):
        a = math.radians(h * 30)
        r0, r1 = (78, 95) if h % 3 else (68, 95)
        c.line(
            [
                (320 + r0 * math.sin(a), 320 - r0 * math.cos(a)),
                (320 + r1 * math.sin(a), 320 - r1 * math.cos(a)),
            ],
            ink,
            6 if h % 3 == 0 else 3,
        )
    if s.variant == 2:
        for cx, cy in ((285, 320), (355, 320)):
            c.d.ellipse((cx - 24, cy - 24, cx + 24, cy + 24), outline=metal + (255,), width=4)
    c.line([(320, 320), (320 + 40, 320 - 50)], ink, 9)
    c.line([(320, 320), (320 - 62, 320 - 22)], ink, 6)
    c.line([(320, 320), (320 + 10, 320 + 80)], s.color if s.variant != 2 else (230, 60, 50), 3)
    c.d.ellipse((311, 311, 329, 329), fill=ink + (255,))


def _draw_lamp(c: _Canvas, s: _Spec) -> None:
    metal = s.accent
    c.part(("ellipse", (225, 498, 415, 548)), metal)
    c.part(("rrect", (309, 300, 331, 520), 6), metal, width=3)
    c.d.ellipse((280, 300, 360, 350), fill=(255, 236, 170, 255))
    if s.variant == 0:
        shade = ("rrect", (195, 130, 445, 320), 6)
    elif s.variant == 1:
        shade = ("poly", [(245, 120), (395, 120), (465, 320), (175, 320)])
    else:
        shade = ("chord", (165, 135, 475, 475), 180, 360)
    c.part(shade)
    x0, _, x1, y1 = _bbox(shade)
    if s.variant == 2:
        y1 = 305
    c.line([(x0 + 6, y1 - 2), (x1 - 6, y1 - 2)], _shade(s.color, 0.6), 8)


def _draw_bottle(c: _Canvas, s: _Spec) -> None:
    if s.variant == 1:
        body, neck, cap = (205, 200, 435, 545), (262, 140, 378, 205), (250, 85, 390, 150)
    else:
        body, neck, cap = (245, 200, 395, 550), (285, 150, 355, 205), (275, 88, 365, 158)
    c.part(("rrect", neck, 10), (200, 202, 208))
    c.part(("rrect", body, 48))
    c.part(("rrect", cap, 18), s.accent)
    if s.variant == 2:
        c.arc(
            (cap[2] - 30, cap[1] - 20, cap[2] + 40, cap[1] + 50),
            270,
            110,
            _shade(s.accent, 0.7),
            12,
        )
        c.part(("rrect", (305, 55, 335, 95), 8), _shade(s.accent, 0.7))
    c.part(
        ("rrect", (body[0], 340, body[2], 410), 0),
        (244, 240, 230) if s.accent_name != "Cream" else (40, 40, 44),
    )
    c.line(
        [(body[0] + 30, 375), (body[2] - 30, 375)],
        s.accent if s.accent_name != "Cream" else (240, 240, 240),
        8,
    )


def _draw_headphones(c: _Canvas, s: _Spec) -> None:
    band_w = {0: 38, 1: 22, 2: 16}[s.variant]
    dark = _shade(s.color, 0.45)
    c.arc((150, 80, 490, 520), 180, 360, _outline(s.color), band_w + 8)
    c.arc((154, 84, 486, 516), 180, 360, s.color, band_w)
    if s.variant == 0:
        c.arc((168, 98, 472, 502), 205, 335, s.accent, 14)
    c.part(("rrect", (150, 270, 170, 330), 6), (190, 192, 198), width=3)
    c.part(("rrect", (470, 270, 490, 330), 6), (190, 192, 198), width=3)
    if s.variant == 2:
        left, right = ("ellipse", (110, 300, 225, 430)), ("ellipse", (415, 300, 530, 430))
    else:
        left, right = ("rrect", (115, 300, 215, 475), 44), ("rrect", (425, 300, 525, 475), 44)
    c.part(("rrect", (200, 318, 240, 455), 18), s.accent if s.variant != 0 else dark)
    c.part(("rrect", (400, 318, 440, 455), 18), s.accent if s.variant != 0 else dark)
    c.part(left)
    c.part(right)


def _draw_chair(c: _Canvas, s: _Spec) -> None:
    wood = s.accent
    legs = [
        ((190, 390), (200, 575)),
        ((450, 390), (440, 575)),
        ((235, 360), (240, 530)),
        ((405, 360), (400, 530)),
    ]
    for a, b in legs[2:]:
        c.line([a, b], _shade(wood, 0.75), 16)
    post_top = 190 if s.variant == 2 else 300
    c.line([(232, post_top), (236, 370)], wood, 16)
    c.line([(408, post_top), (404, 370)], wood, 16)
    if s.variant == 2:
        c.part(("chord", (205, 60, 435, 330), 180, 360))
        c.part(("rrect", (205, 180, 435, 210), 6))
    else:
        c.part(("rrect", (212, 80, 428, 310), 24 if s.variant == 1 else 10))
    seat = ("poly", [(205, 330), (435, 330), (470, 392), (170, 392)])
    c.part(seat)
    c.part(("rrect", (170, 388, 470, 410), 6), _shade(s.color, 0.7) if s.variant == 1 else wood)
    for a, b in legs[:2]:
        c.line([a, b], wood, 18)


def _draw_sunglasses(c: _Canvas, s: _Spec) -> None:
    tint = tuple(int(0.35 * v) for v in s.accent)
    if s.variant == 0:
        lenses = [("ellipse", (115, 235, 295, 415)), ("ellipse", (345, 235, 525, 415))]
    elif s.variant == 1:
        lenses = [
            ("poly", [(112, 240), (298, 240), (290, 330), (240, 410), (160, 405), (118, 340)]),
            ("poly", [(528, 240), (342, 240), (350, 330), (400, 410), (480, 405), (522, 340)]),
        ]
    else:
        lenses = [("rrect", (105, 235, 300, 385), 30), ("rrect", (340, 235, 535, 385), 30)]
    c.line([(110, 262), (70, 250)], _shade(s.color, 0.7), 16)
    c.line([(530, 262), (570, 250)], _shade(s.color, 0.7), 16)
    for lens in lenses:
        x0, y0, x1, y1 = _bbox(lens)
        c.part(("rrect", (x0 - 16, y0 - 16, x1 + 16, y1 + 16), 60 if s.variant != 2 else 40))
        c.part(lens, tint, width=3)
        c.line([(x0 + 30, y0 + 40), (x0 + 60, y0 + 20)], _shade(tint, 1.6), 8)
    if s.variant == 2:
        c.part(("rrect", (90, 215, 550, 262), 18))
    c.arc((282, 228, 358, 300), 200, 340, s.color, 18)


_DRAWERS = {
    "mug": _draw_mug,
    "tshirt": _draw_tshirt,
    "sneaker": _draw_sneaker,
    "backpack": _draw_backpack,
    "watch": _draw_watch,
    "lamp": _draw_lamp,
    "bottle": _draw_bottle,
    "headphones": _draw_headphones,
    "chair": _draw_chair,
    "sunglasses": _draw_sunglasses,
}


def _render_product(spec: _Spec) -> Image.Image:
    """The product alone, cropped to itself, on transparency (RGBA, drawn at 2x)."""
    canvas = _Canvas(spec)
    _DRAWERS[spec.category.slug](canvas, spec)
    layer = canvas.lit()
    return layer.crop(layer.getbbox())


# ---------------------------------------------------------------- packshots


def _packshot(product: Image.Image, view: int, rng: random.Random) -> Image.Image:
    """One catalog view: centred, soft shadow, light background; later views are turned,
    rescaled and shifted the way a second studio shot would be."""
    if view == 0:
        size, bg, frac, angle, dx, dy = (320, 320), (255, 255, 255), 0.8, 0.0, 0.0, 0.0
    else:
        size = rng.choice(((320, 320), (360, 300), (300, 360), (384, 320)))
        bg = rng.choice(_LIGHT_BGS)
        frac = rng.uniform(0.62, 0.82)
        angle = rng.choice((-1, 1)) * rng.uniform(5, 14)
        dx, dy = rng.uniform(-0.06, 0.06), rng.uniform(-0.05, 0.05)
    w2, h2 = size[0] * 2, size[1] * 2
    item = _fit(product, w2 * frac, h2 * frac)
    if angle:
        item = item.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    x = round((w2 - item.width) / 2 + dx * w2)
    y = round((h2 - item.height) / 2 + dy * h2)
    canvas = Image.new("RGB", (w2, h2), bg)
    # contact shadow: a blurred ellipse under the object, plus a faint blurred silhouette
    shadow = Image.new("L", (w2, h2), 0)
    sd = ImageDraw.Draw(shadow)
    bottom = y + item.height
    sd.ellipse(
        (x + item.width * 0.12, bottom - h2 * 0.035, x + item.width * 0.88, bottom + h2 * 0.03),
        fill=70,
    )
    shadow.paste(
        item.getchannel("A").point(lambda a: a * 40 // 255), (x + 14, y + 18), item.getchannel("A")
    )
    shadow = shadow.filter(ImageFilter.GaussianBlur(16))
    canvas.paste((60, 60, 66), (0, 0), shadow)
    canvas.paste(item, (x, y), item)
    return canvas.resize(size, Image.Resampling.LANCZOS)


def _save_jpeg(img: Image.Image, path: Path, quality: int, exif: Image.Exif | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"quality": quality, "optimize": False, "progressive": False}
    if exif is not None:
        kwargs["exif"] = exif
    img.save(path, "JPEG", **kwargs)
