"""Build -> save -> load -> search round trips, with the deterministic fake embedder."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from conftest import FakeEmbedder, draw_product, write_catalog

from vsearch.build import build_index
from vsearch.errors import CatalogError, IndexFormatError, ModelMismatchError, VsearchError
from vsearch.search import ProductIndex
from vsearch.store import generations as store


def _build(csv_path, index_dir, embedder=None, **kw):
    return build_index(csv_path, index_dir, embedder=embedder or FakeEmbedder(), **kw)


def test_catalog_image_finds_its_own_product_first(catalog_csv, tmp_path):
    report = _build(catalog_csv, tmp_path / "idx")
    assert (
        report.products == 12
        and report.images == 18
        and report.embedded == 18
        and report.reused == 0
    )
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    for i in (0, 3, 7):
        hits = index.search(image=catalog_csv.parent / "images" / f"p{i:03d}-0.jpg", k=5)
        assert hits[0].product_id == f"P{i:03d}"
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert hits[0].title == f"Product {i}"
        assert hits[0].image.endswith(f"p{i:03d}-0.jpg")


def test_modified_copy_still_finds_product(catalog_csv, tmp_path):
    _build(catalog_csv, tmp_path / "idx")
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    img = draw_product(4).resize((150, 150)).crop((6, 6, 144, 144))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=60)
    for query in (buf.getvalue(), img, io.BytesIO(buf.getvalue())):
        assert index.search(image=query, k=3)[0].product_id == "P004"


def test_products_appear_once_scored_by_best_image(catalog_csv, tmp_path):
    _build(catalog_csv, tmp_path / "idx")
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    hits = index.search(image=catalog_csv.parent / "images" / "p002-1.jpg", k=12)
    ids = [h.product_id for h in hits]
    assert len(ids) == len(set(ids)) == 12
    assert hits[0].product_id == "P002"
    assert hits[0].image.endswith("p002-1.jpg")  # the view that matched best is the one shown
    assert set(Path(p).name for p in hits[0].matched_images) == {"p002-0.jpg", "p002-1.jpg"}
    assert [h.rank for h in hits] == list(range(1, 13))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_filters_narrow_results(catalog_csv, tmp_path):
    _build(catalog_csv, tmp_path / "idx")
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    photo = catalog_csv.parent / "images" / "p000-0.jpg"
    lamps = index.search(image=photo, k=10, filters={"category": "lamp"})
    assert lamps and all(h.category == "lamp" for h in lamps) and len(lamps) == 4
    cheap = index.search(image=photo, k=10, filters={"price": (None, 10)})
    assert {h.product_id for h in cheap} == {"P000", "P001", "P002"}
    mid = index.search(image=photo, k=10, filters={"price": (10, 20), "brand": "Acme"})
    assert mid and all(10 <= h.price <= 20 and h.brand == "Acme" for h in mid)
    color = index.search(image=photo, k=10, filters={"color": ["c1", "c2"]})
    assert color and all(h.metadata["color"] in ("c1", "c2") for h in color)
    assert index.search(image=photo, k=10, filters={"category": "no-such"}) == []
    assert index.categories() == ["lamp", "mug", "shirt"]
    assert index.price_range() == (5.0, 32.5)


def test_incremental_rebuild_embeds_only_changes(tmp_path):
    shop = tmp_path / "shop"
    csv_path = write_catalog(shop)
    idx = tmp_path / "idx"
    first = _build(csv_path, idx)
    assert (first.embedded, first.reused) == (18, 0)
    again = _build(csv_path, idx)
    assert (again.embedded, again.reused, again.removed_products) == (0, 18, 0)

    # edit: drop product P005, change one image of P000, add a new product P100
    rows = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    rows = [r for r in rows if r["product_id"] != "P005"]
    draw_product(9, 2).save(shop / "images" / "p000-1.jpg")
    draw_product(11, 3).save(shop / "images" / "new.jpg")
    rows.append({**rows[0], "product_id": "P100", "image": "images/new.jpg", "title": "New"})
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    edited = _build(csv_path, idx)
    assert edited.embedded == 2
    assert edited.reused == 16
    assert edited.removed_products == 1 and edited.products == 12
    index = ProductIndex.load(idx, FakeEmbedder())
    with pytest.raises(KeyError):
        index.product("P005")
    assert index.search(image=shop / "images" / "new.jpg", k=1)[0].product_id == "P100"


def test_index_refuses_a_different_model(catalog_csv, tmp_path):
    _build(catalog_csv, tmp_path / "idx")
    with pytest.raises(ModelMismatchError, match="fake-thumbnail"):
        ProductIndex.load(tmp_path / "idx", FakeEmbedder(salt="other-weights"))


def test_bad_rows_are_skipped_and_reported(tmp_path):
    shop = tmp_path / "shop"
    (shop / "images").mkdir(parents=True)
    (shop / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (shop / "images" / "empty.png").write_bytes(b"")
    csv_path = write_catalog(
        shop,
        n_products=4,
        extra_rows=[
            {"product_id": "BAD1", "image": "images/missing.jpg"},
            {"product_id": "BAD2", "image": "images/corrupt.jpg"},
            {"product_id": "BAD3", "image": "images/empty.png"},
        ],
    )
    report = _build(csv_path, tmp_path / "idx")
    assert report.products == 4
    skipped = {p.row: p for p in report.skipped if p.row}
    assert set(skipped) == {8, 9, 10}  # header is row 1; 6 good rows come first
    assert (
        "missing.jpg" in skipped[8].reason
        and "corrupt.jpg" in skipped[9].reason
        and "empty.png" in skipped[10].reason
    )
    with pytest.raises(CatalogError, match="strict"):
        _build(csv_path, tmp_path / "idx2", strict=True)
    assert not (tmp_path / "idx2" / store.CURRENT_FILE).exists()


def test_failed_build_leaves_previous_index_intact(catalog_csv, tmp_path, monkeypatch):
    idx = tmp_path / "idx"
    first = _build(catalog_csv, idx)

    def explode(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "write_generation", explode)
    with pytest.raises(VsearchError, match="previous index is unchanged"):
        _build(catalog_csv, idx)
    index = ProductIndex.load(idx, FakeEmbedder())
    assert index.generation == first.generation
    assert len(index) == 12
    assert not list(idx.glob(".tmp-*"))


def test_running_index_switches_to_a_rebuilt_one(tmp_path):
    shop = tmp_path / "shop"
    csv_path = write_catalog(shop, n_products=6)
    idx = tmp_path / "idx"
    _build(csv_path, idx)
    index = ProductIndex.load(idx, FakeEmbedder())
    assert not index.reload_if_changed()
    write_catalog(shop, n_products=9)
    _build(csv_path, idx)
    assert index.reload_if_changed()
    assert len(index) == 9
    assert index.search(image=shop / "images" / "p008-0.jpg", k=1)[0].product_id == "P008"


def test_unknown_format_version_is_refused(catalog_csv, tmp_path):
    report = _build(catalog_csv, tmp_path / "idx")
    manifest_path = tmp_path / "idx" / report.generation / store.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="version 99"):
        ProductIndex.load(tmp_path / "idx", FakeEmbedder())


def test_missing_index_has_a_clear_error(tmp_path):
    with pytest.raises(IndexFormatError, match="vsearch build"):
        ProductIndex.load(tmp_path / "nothing", FakeEmbedder())


def test_folder_of_images_is_a_catalog(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        draw_product(i).save(folder / f"item_{i}.png")
    report = _build(folder, tmp_path / "idx")
    assert report.products == 5
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    assert index.search(image=folder / "item_3.png", k=1)[0].product_id == "item_3"


def test_model_batches_are_full_and_identical_images_are_embedded_once(tmp_path):
    # draw_product repeats itself every 30 products: products 30..39 reuse the pictures of 0..9
    csv_path = write_catalog(tmp_path / "shop", n_products=40, views=1)
    emb = FakeEmbedder()
    report = _build(csv_path, tmp_path / "idx", embedder=emb, batch_size=16)
    # single-image products: no simulated shopper photos for the verdict either, so these are all
    assert emb.batches == [16, 14]
    assert "verdict_simulation" not in ProductIndex.load(tmp_path / "idx", FakeEmbedder()).manifest
    two_views = write_catalog(tmp_path / "shop2", n_products=40, views=2)
    emb = FakeEmbedder()
    _build(two_views, tmp_path / "idx2", embedder=emb, batch_size=16)
    # catalog images first (60 rows, 45 distinct pictures), then the simulated photos of the verdict
    simulated = ProductIndex.load(tmp_path / "idx2", FakeEmbedder()).manifest["verdict_simulation"][
        "photos"
    ]
    assert emb.batches[:3] == [16, 16, 13] and simulated > 0 and sum(emb.batches[3:]) == simulated
    assert (report.images, report.embedded, report.products) == (40, 30, 40)
