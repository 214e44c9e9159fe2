"""End to end with the real offline model: sample catalog -> efficientnet-lite0 index -> search."""

from __future__ import annotations

import csv
import io

import pytest
from PIL import Image

from vsearch.build import build_index
from vsearch.demo import write_sample_catalog, write_sample_queries
from vsearch.search import ProductIndex


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    catalog = write_sample_catalog(root / "catalog")
    queries = write_sample_queries(root / "queries", catalog)
    report = build_index(catalog, root / "index", model="efficientnet-lite0")
    index = ProductIndex.load(root / "index", report.embedder)
    return catalog, queries, index, report


def test_sample_catalog_builds_completely(sample_index):
    _, _, index, report = sample_index
    assert report.products == 60 and report.images == 110 and not report.skipped
    assert report.model == "efficientnet-lite0" and not index.supports_text


def test_modified_catalog_photos_find_their_product_first(sample_index):
    """Re-encoded, resized and slightly cropped copies of catalog photos, as a shop's own photos would be."""
    catalog, _, index, _ = sample_index
    rows = list(csv.DictReader(open(catalog, encoding="utf-8")))
    misses = []
    for row in rows[::3]:
        img = Image.open(catalog.parent / row["image"]).convert("RGB")
        w, h = img.size
        img = img.crop((int(w * 0.06), int(h * 0.06), int(w * 0.94), int(h * 0.94))).resize((int(w * 0.7), int(h * 0.7)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=70)
        top = index.search(image=buf.getvalue(), k=3)[0]
        if top.product_id != row["product_id"]:
            misses.append((row["product_id"], top.product_id))
    assert not misses


def test_shopper_photos_find_their_product(sample_index):
    """Cluttered, rotated, EXIF-tagged 'phone photos' of catalog products (60 products: chance is 1/60)."""
    _, queries, index, _ = sample_index
    ranks = []
    for photo, product_id in queries:
        ids = [h.product_id for h in index.search(image=photo, k=5)]
        ranks.append(ids.index(product_id) + 1 if product_id in ids else None)
    assert sum(r == 1 for r in ranks) >= 4, ranks
    assert sum(r is not None and r <= 3 for r in ranks) >= 7, ranks


def test_results_come_from_the_same_category(sample_index):
    _, queries, index, _ = sample_index
    photo, product_id = queries[0]
    category = index.product(product_id)["category"]
    hits = index.search(image=photo, k=3)
    assert all(h.category == category for h in hits)
