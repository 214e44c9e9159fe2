"""k means k: whatever the index type and however selective the filter, a search returns
min(k, matching products) products (an ANN pass that comes back short is completed exactly)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_catalog_rows

from vsearch.build import build_index
from vsearch.search import ProductIndex

DIM = 32


def rare_catalog(folder: Path, n: int, rare: list[int]) -> Path:
    return write_catalog_rows(
        folder,
        (
            [
                f"P{i:05d}",
                f"img/{i:05d}.jpg",
                f"Product {i}",
                "rare" if i in rare else "common",
                f"{i % 50 + 1}.00",
            ]
            for i in range(n)
        ),
    )


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """3,000 products in 60 tight clusters; the 1 % 'rare' category lives in one cluster far
    from the query, so an ANN pass near the query finds none or few of them."""
    from vsearch.embeddings.imported import ModelIdentity

    rng = np.random.default_rng(11)
    n = 3000
    centres = rng.standard_normal((60, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.arange(n) % 60
    vectors = centres[labels] + 0.05 * rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query = centres[0]
    far = int(np.argmin(centres @ query))
    rare = [int(i) for i in np.flatnonzero(labels == far)[:30]]  # 1 % of the catalog
    model = ModelIdentity(
        name="vectors",
        spec="vectors",
        pretrained=None,
        fingerprint="vectors-32",
        dim=DIM,
        supports_text=False,
    )
    return tmp_path_factory.mktemp("k"), model, vectors, query, rare


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf", "ivfpq", "ivfpq-fs"])
def test_selective_category_returns_k_products_on_every_index_type(clustered, index_type):
    root, model, vectors, query, rare = clustered
    catalog = rare_catalog(root / index_type, len(vectors), set(rare))
    build_index(
        catalog,
        root / index_type / "index",
        embedder=model,
        embeddings=vectors,
        index_type=index_type,
    )
    index = ProductIndex.load(root / index_type / "index", model)
    hits = index.search_vector(query, k=10, filters={"category": "rare"})
    assert len(hits) == 10 and {h.category for h in hits} == {"rare"}
    # the exact order among the allowed products
    expected = [f"P{i:05d}" for i in sorted(rare, key=lambda i: -float(vectors[i] @ query))[:10]]
    assert [h.product_id for h in hits] == expected
    # asking for more than match gives all that match, once each
    everything = index.search_vector(query, k=50, filters={"category": "rare"})
    assert sorted(h.product_id for h in everything) == sorted(f"P{i:05d}" for i in rare)
    # a filter that combines category and price still fills k
    cheap = index.search_vector(query, k=5, filters={"category": "rare", "price": (None, 25)})
    allowed = [i for i in rare if i % 50 + 1 <= 25]
    assert len(cheap) == min(5, len(allowed)) and all(h.price <= 25 for h in cheap)
