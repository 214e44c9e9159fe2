"""Catalog hygiene: the same photo listed under different products, product photos that disagree
with each other, and photos that cannot be used.

Near-identical photos are found with a model-free perceptual fingerprint (`fingerprint`): a DCT
hash (pHash) and a gradient hash (dHash) of the grey image, plus an 8x8 colour thumbnail, of the
whole photo and of the photo with its plain background trimmed. Two photos are near-identical
when, for either version, both hashes are within a few bits *and* no part of the colour thumbnail
differs much: a resized, re-encoded or zoomed-out copy matches, while a colour variant shot the
same way (a red and a blue chair), or two different products on white, do not. Thresholds were
chosen by looking at jumia pairs at each distance (see the module constants).

"Disagreeing" views need embeddings, so they are only checked on an index: a view that looks no
more like its own product's other views than two unrelated catalog photos look alike.
Library code: returns a `HygieneReport`, never prints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vsearch.errors import ImageError, VsearchError

if TYPE_CHECKING:
    from PIL import Image

#: Largest pHash / dHash Hamming distance (of 64 bits) for near-identical photos. On jumia the
#: number of cross-product pairs found is flat from 4..8 bits (393..395): a re-encoded or resized
#: copy is 0-2 bits away; beyond ~6 bits different products on white begin to collide.
PHASH_MAX = 6
DHASH_MAX = 8
#: Largest RGB distance (0..441) of any cell of the two 8x8 colour thumbnails. Re-encoded copies
#: stay under ~10; the same photo with a caption added 10..30; colour variants of one product
#: shot alike (blue vs black chair, red vs blue ear tips) 38..200.
COLOUR_MAX = 30.0
#: A photo whose shorter side is under this many pixels is reported as tiny: models look at
#: ~224 px, so such a photo is blown up several times and carries little of the product.
TINY_SIDE = 64
#: Random pairs of photos of different products sampled to learn how alike unrelated photos look
#: (a view that agrees no better with its own product is reported: 20 of jumia's 3,267 views, mostly
#: infographics and lifestyle shots next to packshots).
ODD_VIEW_PAIRS = 20_000
#: JPEGs are decoded at a reduced scale with a short side of at least this: enough to trim a margin
#: to within a pixel or two (at 64 px, jumia gave 436 cross-product pairs; at 128, 544, the extra
#: ones all re-posts of one photo at another scale or crop).
DECODE_SIDE = 128
#: Grey levels within which the four corners count as one plain background, trimmed before the
#: second set of hashes. On jumia the whole photos give 395 cross-product pairs, the trimmed ones
#: 532; either, 544 (the extra ones: the same packshot with a wider margin or zoomed).
TRIM_TOLERANCE = 24
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Hashes:
    """64-bit pHash and dHash of the grey image and its 8x8 RGB thumbnail."""

    phash: int
    dhash: int
    colour: bytes  # 8x8x3 uint8

    def distance(self, other: Hashes) -> tuple[int, int, float]:
        """(pHash bits, dHash bits, largest colour-cell distance)."""
        return (
            _popcount_int(self.phash ^ other.phash),
            _popcount_int(self.dhash ^ other.dhash),
            float(
                _colour_distance(
                    np.frombuffer(self.colour, np.uint8)[None],
                    np.frombuffer(other.colour, np.uint8)[None],
                )[0]
            ),
        )

    def matches(self, other: Hashes) -> bool:
        p, d, c = self.distance(other)
        return p <= PHASH_MAX and d <= DHASH_MAX and c <= COLOUR_MAX


@dataclass(frozen=True)
class Fingerprint:
    """A photo's perceptual fingerprint: hashes of the whole photo and of the photo with its plain
    background trimmed (so a copy with more or less white margin, or zoomed, still matches), and
    the photo's size."""

    whole: Hashes
    trimmed: Hashes  # == whole when there is no plain background to trim
    width: int
    height: int

    def near_identical(self, other: Fingerprint) -> bool:
        return self.whole.matches(other.whole) or self.trimmed.matches(other.trimmed)


@dataclass(frozen=True)
class PhotoRef:
    """One catalog photo: its product, its catalog row (header = row 1) and its file or URL."""

    product_id: str
    image: str
    row: int

    def describe(self) -> str:
        return f"{self.product_id} (row {self.row}) {self.image}"


@dataclass(frozen=True)
class DuplicateGroup:
    """Near-identical photos listed under two or more product ids."""

    photos: tuple[PhotoRef, ...]
    max_distance: int  # largest pHash distance between linked photos (0 = identical to the eye)

    @property
    def product_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.product_id for p in self.photos))


@dataclass(frozen=True)
class OddView:
    """A view far from its product's other views (embedding similarity)."""

    photo: PhotoRef
    agreement: float  # best cosine similarity to another view of the same product
    typical: float  # the catalog's median of that number
    # median similarity of two photos of different products (the bar it fell under)
    unrelated: float
    n_views: int
    closest: PhotoRef  # the product's view it agrees with best


@dataclass(frozen=True)
class BadPhoto:
    """A photo that cannot be read, or is too small to search well."""

    photo: PhotoRef
    problem: str


@dataclass(frozen=True)
class HygieneReport:
    source: str
    kind: str  # "catalog" or "index"
    n_images: int
    n_products: int
    duplicates: tuple[DuplicateGroup, ...]
    odd_views: tuple[OddView, ...]
    bad_photos: tuple[BadPhoto, ...]
    # what could not be checked and why (URLs in a catalog, views without an index)
    not_checked: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def n_findings(self) -> int:
        return len(self.duplicates) + len(self.odd_views) + len(self.bad_photos)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "n_images": self.n_images,
            "n_products": self.n_products,
            "seconds": round(self.seconds, 3),
            "not_checked": list(self.not_checked),
            "duplicates": [
                {
                    "product_ids": list(g.product_ids),
                    "max_distance": g.max_distance,
                    "photos": [asdict(p) for p in g.photos],
                }
                for g in self.duplicates
            ],
            "odd_views": [
                {
                    **asdict(v.photo),
                    "agreement": round(v.agreement, 4),
                    "typical": round(v.typical, 4),
                    "unrelated": round(v.unrelated, 4),
                    "n_views": v.n_views,
                    "closest": asdict(v.closest),
                }
                for v in self.odd_views
            ],
            "bad_photos": [{**asdict(b.photo), "problem": b.problem} for b in self.bad_photos],
        }


# ---------------------------------------------------------------- fingerprints

_DCT = None


def _dct_matrix(n: int = 32) -> np.ndarray:
    global _DCT
    if _DCT is None:
        k = np.arange(n)[:, None]
        i = np.arange(n)[None, :]
        m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
        m[0] /= np.sqrt(2)
        _DCT = m
    return _DCT


def fingerprint(image: Image.Image) -> Fingerprint:
    """The perceptual fingerprint of an upright RGB image (any size)."""
    rgb = image.convert("RGB")
    whole = _hashes(rgb)
    inner = trim_background(rgb)
    return Fingerprint(
        whole=whole,
        trimmed=whole if inner is rgb else _hashes(inner),
        width=image.width,
        height=image.height,
    )


def _hashes(rgb: Image.Image) -> Hashes:
    from PIL import Image as PILImage

    grey = rgb.convert("L")
    g32 = np.asarray(grey.resize((32, 32), PILImage.Resampling.LANCZOS), dtype=np.float64)
    m = _dct_matrix(32)
    low = (m @ g32 @ m.T)[:8, :8]
    phash = _bits_to_int((low > np.median(low)).ravel())
    g9 = np.asarray(grey.resize((9, 8), PILImage.Resampling.LANCZOS), dtype=np.float64)
    dhash = _bits_to_int((g9[:, 1:] > g9[:, :-1]).ravel())
    colour = np.asarray(rgb.resize((8, 8), PILImage.Resampling.BOX), dtype=np.uint8).tobytes()
    return Hashes(phash=phash, dhash=dhash, colour=colour)


def trim_background(rgb: Image.Image, *, tolerance: int = TRIM_TOLERANCE) -> Image.Image:
    """The photo cut to what differs from its plain background (the four corners agree within
    ``tolerance`` grey levels); the photo itself when there is no such background or little to
    cut."""
    from PIL import Image as PILImage
    from PIL import ImageChops

    grey = rgb.convert("L")
    w, h = grey.size
    corners = [
        grey.getpixel((0, 0)),
        grey.getpixel((w - 1, 0)),
        grey.getpixel((0, h - 1)),
        grey.getpixel((w - 1, h - 1)),
    ]
    bg = sorted(corners)[1]
    if max(abs(c - bg) for c in corners) > tolerance:
        return rgb
    mask = ImageChops.difference(grey, PILImage.new("L", grey.size, bg)).point(
        lambda p: 255 if p > tolerance else 0
    )
    box = mask.getbbox()
    if (
        not box
        or (box[2] - box[0]) * (box[3] - box[1]) > 0.9 * w * h
        or min(box[2] - box[0], box[3] - box[1]) < 4
    ):
        return rgb
    return rgb.crop(box)


def fingerprint_file(path: str | os.PathLike) -> Fingerprint:
    """Fingerprint of an image file; width/height are the file's own (upright), not the reduced
    decode's."""
    from PIL import Image as PILImage

    from vsearch.catalog.images import load_image

    img = load_image(path, min_side=DECODE_SIDE)
    fp = fingerprint(img)
    try:
        with PILImage.open(path) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - load_image already decoded it; keep the decoded size
        return fp
    if (img.width > img.height) != (w > h) and w != h:
        w, h = h, w  # EXIF rotation
    return replace(fp, width=w, height=h)


def _bits_to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.astype(np.uint8)).tobytes(), "big")


def _popcount_int(x: int) -> int:
    return bin(x).count("1")


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def _colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest per-cell RGB distance between rows of flattened 8x8x3 thumbnails."""
    diff = a.reshape(len(a), 64, 3).astype(np.float32) - b.reshape(len(b), 64, 3).astype(np.float32)
    return np.sqrt((diff**2).sum(-1)).max(-1)


def near_identical_pairs(
    prints: Sequence[Fingerprint], *, cells: int = 16_000_000
) -> list[tuple[int, int, int]]:
    """(i, j, pHash distance) for every near-identical pair, i < j: whole photos match, or trimmed
    ones do. Exact pairwise hash distances, a block of rows at a time (at most ``cells`` distances,
    ~16 MB, in memory); colour and dHash are compared only for pHash matches. Quadratic, but cheap:
    0.4 s for 3,000 photos, 5 s for 30,000 (twice that with both hash sets)."""
    found: dict[tuple[int, int], int] = {}
    for which in ("whole", "trimmed"):
        for i, j, d in _matching_pairs([getattr(p, which) for p in prints], cells):
            found[(i, j)] = min(d, found.get((i, j), d))
    return [(i, j, d) for (i, j), d in sorted(found.items())]


def _matching_pairs(hashes: Sequence[Hashes], cells: int) -> list[tuple[int, int, int]]:
    n = len(hashes)
    if n < 2:
        return []
    block = max(1, cells // n)
    ph = np.fromiter((h.phash for h in hashes), dtype=np.uint64, count=n)
    dh = np.fromiter((h.dhash for h in hashes), dtype=np.uint64, count=n)
    colour = np.frombuffer(b"".join(h.colour for h in hashes), dtype=np.uint8).reshape(n, 192)
    out: list[tuple[int, int, int]] = []
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        dp = _popcount(ph[rows, None] ^ ph[None, start:])
        ii, jj = np.nonzero(dp <= PHASH_MAX)
        jj = jj + start
        ii = ii + start
        keep = jj > ii
        ii, jj = ii[keep], jj[keep]
        if not len(ii):
            continue
        ok = _popcount(dh[ii] ^ dh[jj]) <= DHASH_MAX
        ii, jj = ii[ok], jj[ok]
        ok = _colour_distance(colour[ii], colour[jj]) <= COLOUR_MAX
        for i, j in zip(ii[ok].tolist(), jj[ok].tolist()):
            out.append((i, j, int(_popcount_int(int(ph[i]) ^ int(ph[j])))))
    return out


class FingerprintCache:
    """Fingerprints of photo files by path, computed once (thread pool), errors kept as messages."""

    def __init__(self) -> None:
        self.prints: dict[str, Fingerprint] = {}
        self.errors: dict[str, str] = {}

    def get(self, source: str) -> Fingerprint | None:
        if source not in self.prints and source not in self.errors:
            self._one(source)
        return self.prints.get(source)

    def fill(
        self,
        sources: Iterable[str],
        *,
        progress: ProgressCallback | None = None,
        workers: int | None = None,
    ) -> None:
        todo = [s for s in dict.fromkeys(sources) if s not in self.prints and s not in self.errors]
        workers = workers or max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            for done, _ in enumerate(pool.map(self._one, todo), start=1):
                if progress is not None:
                    progress(done, len(todo))

    def _one(self, source: str) -> None:
        try:
            self.prints[source] = fingerprint_file(source)
        except ImageError as e:
            self.errors[source] = str(e)
        except Exception as e:  # noqa: BLE001 - one odd file must not stop a check
            self.errors[source] = f"{source}: {type(e).__name__}: {e}"


# ---------------------------------------------------------------- the check


def is_index_dir(path: str | os.PathLike) -> bool:
    from vsearch.store.generations import CURRENT_FILE

    return Path(path).is_dir() and (Path(path) / CURRENT_FILE).is_file()


def check(
    path: str | os.PathLike,
    *,
    progress: ProgressCallback | None = None,
    allow_outside_paths: bool = False,
    min_side: int = TINY_SIDE,
) -> HygieneReport:
    """Check a catalog (CSV or image folder) or an index folder; see the module docstring.
    min_side: photos with a shorter side under this many pixels are reported as tiny."""
    if is_index_dir(path):
        return check_index(path, progress=progress, min_side=min_side)
    return check_catalog(
        path, progress=progress, allow_outside_paths=allow_outside_paths, min_side=min_side
    )


def check_catalog(
    path: str | os.PathLike,
    *,
    progress: ProgressCallback | None = None,
    allow_outside_paths: bool = False,
    min_side: int = TINY_SIDE,
) -> HygieneReport:
    """Duplicates and unusable photos of a catalog CSV or image folder (no model, no index)."""
    from vsearch.catalog.rows import read_catalog

    started = time.perf_counter()
    cat = read_catalog(path, allow_outside_paths=allow_outside_paths)
    photos, urls = [], 0
    for r in cat.rows:
        if r.image.startswith(("http://", "https://")):
            urls += 1
        else:
            photos.append(PhotoRef(r.product_id, r.image, r.row))
    bad = [BadPhoto(PhotoRef("", p.image, p.row), p.reason) for p in cat.fatal_problems]
    not_checked = [
        "photos that disagree with their product: needs embeddings, check an index folder instead"
    ]
    if urls:
        not_checked.append(
            f"{urls} image URLs (not downloaded by a check; check the index built from this "
            "catalog)"
        )
    return _check_photos(
        str(path), "catalog", photos, bad, None, not_checked, started, progress, min_side=min_side
    )


def check_index(
    index_dir: str | os.PathLike,
    *,
    progress: ProgressCallback | None = None,
    min_side: int = TINY_SIDE,
) -> HygieneReport:
    """Duplicates, unusable photos and disagreeing views of an index's live generation."""
    from vsearch.store import generations as store

    started = time.perf_counter()
    index_dir = Path(index_dir)
    gen = index_dir / store.read_current(index_dir)
    rows = store.read_image_records(gen)
    photos, files = [], []
    for _vid, pid, source, row, digest in rows:
        photos.append(PhotoRef(pid, source, int(row)))
        # downloaded by the build, stored by content hash
        if source.startswith(("http://", "https://")):
            files.append(str(index_dir / "downloads" / "objects" / digest[:2] / digest))
        else:
            files.append(source)
    faiss_index = store.read_faiss(gen)
    # FAISS id = images.vid
    vectors = _reconstruct(faiss_index)[np.asarray([r[0] for r in rows], dtype=np.int64)]
    if vectors.shape[0] != len(photos):
        raise VsearchError(
            f"{gen}: {vectors.shape[0]} vectors but {len(photos)} image records; rebuild the index"
        )
    return _check_photos(
        str(index_dir),
        "index",
        photos,
        [],
        vectors,
        [],
        started,
        progress,
        files=files,
        min_side=min_side,
    )


def _reconstruct(index) -> np.ndarray:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and not ivf.direct_map.type:
        ivf.make_direct_map()
    return np.asarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)


def _check_photos(
    source: str,
    kind: str,
    photos: list[PhotoRef],
    bad: list[BadPhoto],
    vectors: np.ndarray | None,
    not_checked: list[str],
    started: float,
    progress: ProgressCallback | None,
    files: list[str] | None = None,
    min_side: int = TINY_SIDE,
) -> HygieneReport:
    files = files or [p.image for p in photos]
    cache = FingerprintCache()
    cache.fill(files, progress=progress)
    readable: list[int] = []
    for i, (photo, f) in enumerate(zip(photos, files)):
        fp = cache.prints.get(f)
        if fp is None:
            bad.append(BadPhoto(photo, f"unreadable: {cache.errors.get(f, 'unknown error')}"))
            continue
        readable.append(i)
        if min(fp.width, fp.height) < min_side:
            bad.append(
                BadPhoto(
                    photo,
                    f"tiny: {fp.width}x{fp.height} px (under {min_side} px on its short side); "
                    "upload a larger photo",
                )
            )
    pairs = near_identical_pairs([cache.prints[files[i]] for i in readable])
    duplicates = _groups([(readable[i], readable[j], d) for i, j, d in pairs], photos)
    odd = odd_views(photos, vectors) if vectors is not None else []
    bad.sort(key=lambda b: (b.photo.row, b.photo.image))
    return HygieneReport(
        source=source,
        kind=kind,
        n_images=len(photos),
        n_products=len({p.product_id for p in photos}),
        duplicates=tuple(duplicates),
        odd_views=tuple(odd),
        bad_photos=tuple(bad),
        not_checked=tuple(not_checked),
        seconds=time.perf_counter() - started,
    )


def _groups(pairs: list[tuple[int, int, int]], photos: list[PhotoRef]) -> list[DuplicateGroup]:
    """Connected near-identical photos, kept when they span two or more product ids."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for i, j, _ in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    worst: dict[int, int] = {}
    for i, _j, d in pairs:
        root = find(i)
        worst[root] = max(worst.get(root, 0), d)
    for member in {x for a, b, _ in pairs for x in (a, b)}:
        members.setdefault(find(member), []).append(member)
    out = []
    for root, idx in members.items():
        group = tuple(photos[i] for i in sorted(idx))
        if len({p.product_id for p in group}) >= 2:
            out.append(DuplicateGroup(photos=group, max_distance=worst.get(root, 0)))
    out.sort(key=lambda g: (-len(g.product_ids), g.photos[0].product_id, g.photos[0].row))
    return out


def odd_views(photos: Sequence[PhotoRef], vectors: np.ndarray, *, seed: int = 0) -> list[OddView]:
    """Views that look no more like their own product's other views than two unrelated catalog
    photos look like each other: the best similarity to another view of the same product is under
    the median similarity of random pairs of photos of different products. Products with one view
    are not judged; when a product's two views disagree, both are listed."""
    by_product: dict[str, list[int]] = {}
    for i, p in enumerate(photos):
        by_product.setdefault(p.product_id, []).append(i)
    if len(by_product) < 2:
        return []
    best: dict[int, tuple[float, int]] = {}
    for idx in by_product.values():
        if len(idx) < 2:
            continue
        v = vectors[idx]
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        arg = sims.argmax(1)
        for row, i in enumerate(idx):
            best[i] = (float(sims[row, arg[row]]), idx[int(arg[row])])
    if not best:
        return []
    unrelated = unrelated_similarity(photos, vectors, seed=seed)
    typical = float(np.median([s for s, _ in best.values()]))
    out = [
        OddView(
            photo=photos[i],
            agreement=s,
            typical=typical,
            unrelated=unrelated,
            n_views=len(by_product[photos[i].product_id]),
            closest=photos[j],
        )
        for i, (s, j) in best.items()
        if s < unrelated
    ]
    out.sort(key=lambda o: (o.agreement, o.photo.row))
    return out


def unrelated_similarity(
    photos: Sequence[PhotoRef], vectors: np.ndarray, *, pairs: int = ODD_VIEW_PAIRS, seed: int = 0
) -> float:
    """Median similarity of random pairs of photos of different products (fixed seed)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(photos), pairs)
    b = rng.integers(0, len(photos), pairs)
    keep = np.array(
        [photos[i].product_id != photos[j].product_id for i, j in zip(a.tolist(), b.tolist())]
    )
    if not keep.any():
        return -1.0
    return float(np.median((vectors[a[keep]] * vectors[b[keep]]).sum(1)))


# ---------------------------------------------------------------- evaluation helper


def credit_near_duplicates(
    results: Sequence[Any],
    images_of: Callable[[str], Sequence[str]],
    cache: FingerprintCache | None = None,
) -> tuple[list[Any], int]:
    """Count a query as right when its first result is a product listing a near-identical photo of
    it.

    results: evaluate.QueryResult-like records; images_of(product_id) -> that product's photo files.
    Returns the results (credited ones with the first result added to ``expected`` and rank 1)
    and how many were credited. Queries whose photo cannot be read are left as they are.
    """
    from dataclasses import replace

    cache = cache or FingerprintCache()
    out, credited = [], 0
    for r in results:
        if r.rank == 1 or not r.ranked:
            out.append(r)
            continue
        q = cache.get(r.image)
        try:
            catalog = images_of(r.ranked[0])
        except KeyError:
            catalog = ()
        if q is not None and any(
            (fp := cache.get(src)) is not None and q.near_identical(fp) for src in catalog
        ):
            out.append(replace(r, expected=(*r.expected, r.ranked[0]), rank=1))
            credited += 1
        else:
            out.append(r)
    return out, credited
