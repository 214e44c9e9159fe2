"""The bundled sample catalog and its shopper photos, so a fresh machine has something to search.

``write_sample_catalog`` draws packshots (``vsearch.demo.drawing``) and writes a catalog CSV;
``write_sample_queries`` photographs some of its products the way a shopper would
(``vsearch.learn.shopper_photos``). Everything is deterministic from a seed, so a rebuilt demo index
is byte-for-byte the same input.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

from PIL import Image

from vsearch.demo.drawing import (
    _DEFAULT_N_PRODUCTS,
    _DEFAULT_SEED,
    _SIDECAR,
    _SIDECAR_VERSION,
    SAMPLE_COLUMNS,
    _packshot,
    _product_specs,
    _render_product,
    _save_jpeg,
    _Spec,
)
from vsearch.errors import CatalogError
from vsearch.learn.shopper_photos import cutout as _cutout
from vsearch.learn.shopper_photos import shopper_photo as _shopper_photo

__all__ = ["write_sample_catalog", "write_sample_queries", "SAMPLE_COLUMNS"]


def write_sample_catalog(
    dest: str | os.PathLike,
    *,
    n_products: int = _DEFAULT_N_PRODUCTS,
    images_per_product: tuple[int, int] = (1, 3),
    seed: int = _DEFAULT_SEED,
) -> Path:
    """Write dest/images/*.jpg and dest/catalog.csv; return the CSV path.

    Idempotent: the same arguments give byte-identical files, so the demo index never
    needs re-embedding just because the sample was regenerated.
    """
    lo, hi = images_per_product
    if n_products < 1:
        raise ValueError(f"n_products must be at least 1, got {n_products}")
    if not 1 <= lo <= hi <= 6:
        raise ValueError(
            "images_per_product must be (low, high) with 1 <= low <= high <= 6, got "
            f"{images_per_product}"
        )
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    count_rng = random.Random(f"vsearch-sample:{seed}:counts")
    rows = []
    for spec in _product_specs(n_products, seed):
        product = _render_product(spec)
        view_rng = random.Random(f"vsearch-sample:{seed}:{spec.product_id}:views")
        for view in range(count_rng.randint(lo, hi)):
            rel = f"images/{spec.product_id}-{view + 1}.jpg"
            _save_jpeg(_packshot(product, view, view_rng), dest / rel, quality=90)
            rows.append(
                (
                    spec.product_id,
                    rel,
                    spec.title,
                    spec.category.label,
                    spec.price,
                    f"https://shop.example/p/{spec.product_id}",
                    spec.brand,
                    spec.color_name,
                )
            )
    csv_path = dest / "catalog.csv"
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SAMPLE_COLUMNS)
        w.writerows(rows)
    sidecar = {
        "generator": "vsearch.sample",
        "version": _SIDECAR_VERSION,
        "n_products": n_products,
        "seed": seed,
    }
    (dest / _SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return csv_path


def _read_catalog(catalog_csv: Path) -> dict[str, Path]:
    """First image of each product, from a catalog CSV (product_id + image columns)."""
    if not catalog_csv.is_file():
        raise CatalogError(f"catalog CSV not found: {catalog_csv}")
    first: dict[str, Path] = {}
    with open(catalog_csv, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"product_id", "image"} - set(reader.fieldnames or ())
        if missing:
            raise CatalogError(
                f"{catalog_csv}: missing column(s) {', '.join(sorted(missing))}; "
                "a catalog needs product_id and image"
            )
        for row in reader:
            pid = (row["product_id"] or "").strip()
            ref = (row["image"] or "").split("|")[0].strip()
            if pid and ref and pid not in first and not ref.startswith(("http://", "https://")):
                p = Path(ref)
                first[pid] = p if p.is_absolute() else catalog_csv.parent / p
    if not first:
        raise CatalogError(f"{catalog_csv}: no product with a local image to photograph")
    return first


def _sidecar_specs(catalog_csv: Path) -> dict[str, _Spec]:
    """Specs of a catalog this module wrote (so queries are redrawn, not cut out of packshots)."""
    try:
        meta = json.loads((catalog_csv.parent / _SIDECAR).read_text(encoding="utf-8"))
        if meta.get("generator") != "vsearch.sample" or meta.get("version") != _SIDECAR_VERSION:
            return {}
        return {s.product_id: s for s in _product_specs(int(meta["n_products"]), int(meta["seed"]))}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_sample_queries(
    dest: str | os.PathLike,
    catalog_csv: Path | None = None,
    *,
    n_queries: int = 8,
    seed: int = 1,
) -> list[tuple[Path, str]]:
    """Write 'shopper photos' of some catalog products to dest/ and return
    (photo path, expected product_id) pairs; dest/queries.csv lists the same pairs.

    With no catalog_csv the photos show products of the default sample catalog. Products of
    a sample catalog are redrawn; any other catalog's products are cut out of their first
    image. The first photo (and the fourth) is stored sideways with an EXIF orientation tag,
    as phones do.
    """
    if n_queries < 1:
        raise ValueError(f"n_queries must be at least 1, got {n_queries}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if catalog_csv is None:
        specs = {s.product_id: s for s in _product_specs(_DEFAULT_N_PRODUCTS, _DEFAULT_SEED)}
        images: dict[str, Path] = {}
    else:
        catalog_csv = Path(catalog_csv)
        images = _read_catalog(catalog_csv)
        specs = {pid: s for pid, s in _sidecar_specs(catalog_csv).items() if pid in images}
    ids = sorted(set(specs) | set(images))
    rng = random.Random(f"vsearch-sample:{seed}:queries")
    chosen = rng.sample(ids, min(n_queries, len(ids)))
    pairs: list[tuple[Path, str]] = []
    for i, pid in enumerate(chosen):
        product = _render_product(specs[pid]) if pid in specs else _cutout(images[pid])
        photo = _shopper_photo(product, random.Random(f"vsearch-sample:{seed}:query:{i}"))
        orientation = {0: 6, 3: 8}.get(i)
        exif = None
        if orientation:
            # pixels stored turned; the tag tells viewers how to turn them upright
            photo = photo.transpose(
                Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270
            )
            exif = Image.Exif()
            exif[0x0112] = orientation
        path = dest / f"shopper-{i + 1:02d}.jpg"
        _save_jpeg(photo, path, quality=80, exif=exif)
        pairs.append((path, pid))
    with open(dest / "queries.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("image", "product_id"))
        w.writerows((p.name, pid) for p, pid in pairs)
    return pairs
