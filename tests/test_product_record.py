"""One product record flows from the catalog to the hits: what the catalog merged is what a hit
carries."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import FakeEmbedder

from vsearch.build import build_index
from vsearch.catalog.rows import Product, read_catalog
from vsearch.search import Hit, ProductIndex
from vsearch.store import generations as store


@pytest.fixture
def index(catalog_csv, tmp_path):
    build_index(catalog_csv, tmp_path / "idx", embedder=FakeEmbedder())
    return ProductIndex.load(tmp_path / "idx", FakeEmbedder())


def test_a_hit_carries_the_product_the_catalog_merged(catalog_csv, index):
    catalog = read_catalog(catalog_csv)
    hits = index.search(image=catalog_csv.parent / "images" / "p004-1.jpg", k=5)
    assert hits[0].product_id == "P004"
    for hit in hits:
        assert isinstance(hit.product, Product)
        # every field, extra columns in order
        assert hit.product == catalog.products[hit.product_id]
        assert (hit.title, hit.category, hit.price, hit.url, hit.brand) == (
            hit.product.title,
            hit.product.category,
            hit.product.price,
            hit.product.url,
            hit.product.brand,
        )
        assert hit.metadata == {"color": hit.product.extra[0][1]}
    assert catalog.rows[0].product.product_id == catalog.rows[0].product_id == "P000"


def test_hit_keeps_its_dict_form_and_comes_back_from_it(index, catalog_csv):
    hit = index.search(image=catalog_csv.parent / "images" / "p002-0.jpg", k=3)[1]
    d = hit.to_dict()
    assert list(d) == [
        "rank",
        "product_id",
        "score",
        "title",
        "category",
        "price",
        "url",
        "brand",
        "image",
        "confident",
        "metadata",
        "matched_images",
        "image_id",
        "matched_image_ids",
        "generation",
    ]
    assert d["product_id"] == hit.product_id and d["metadata"] == {"color": hit.metadata["color"]}
    # what the web API adds is ignored
    again = Hit.from_dict({**d, "image_url": "/gradio_api/file=x"})
    assert again.product == hit.product
    assert again.to_dict() == d


def test_products_and_hits_are_frozen(index, catalog_csv):
    hit = index.search(image=catalog_csv.parent / "images" / "p001-0.jpg", k=1)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        hit.product.title = "changed"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        hit.title = "changed"  # type: ignore[misc]
    assert dataclasses.replace(hit, confident=False).product is hit.product


def test_the_store_reads_back_the_product_it_wrote(tmp_path):
    import numpy as np

    product = Product(
        "X1",
        "Mug",
        "mugs",
        9.5,
        "https://shop.example/x1",
        "Acme",
        (("size", "L"), ("colour", "red")),
    )
    tmp = store.new_generation_dir(tmp_path / "idx")
    store.write_generation(
        tmp,
        vectors=np.eye(1, 4, dtype=np.float32),
        products=[product],
        images=[store.ImageRecord("X1", "a.jpg", 2, "h")],
        manifest={"model": {}},
        index_type="flat",
    )
    db = store.open_products_db(tmp)
    try:
        assert store.product_from_row(db.execute("SELECT * FROM products").fetchone()) == product
    finally:
        db.close()
