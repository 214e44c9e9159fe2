"""Background reload: a new generation goes live without a request paying for it; a broken one
is skipped (logged once) while the old one keeps serving, and the next good one is picked up."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from conftest import FakeEmbedder, write_catalog

from vsearch.build import build_index
from vsearch.search import ProductIndex
from vsearch.serve.watcher import IndexWatcher
from vsearch.store import generations as store


def publish_copy(idx: Path, damage) -> str:
    """Publish a copy of the live generation under a newer name, damaged by ``damage(folder)``."""
    live = idx / store.read_current(idx)
    tmp = idx / f".tmp-{store.GENERATION_PREFIX}99999999-zz-broken"
    shutil.copytree(live, tmp)
    damage(tmp)
    return store.publish_generation(idx, tmp).name


def corrupt_vectors(folder: Path) -> None:
    (folder / store.VECTORS_FILE).write_bytes(b"\x00not a faiss index" * 10)


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_broken_generations_are_skipped_once_and_the_next_good_one_goes_live(tmp_path, caplog):
    shop, idx = tmp_path / "shop", tmp_path / "idx"
    csv_path = write_catalog(shop, n_products=6)
    first = build_index(csv_path, idx, embedder=FakeEmbedder())
    index = ProductIndex.load(idx, FakeEmbedder())
    query = shop / "images" / "p004-0.jpg"

    broken = publish_copy(idx, corrupt_vectors)
    with caplog.at_level(logging.ERROR, logger="vsearch.search"):
        assert not index.reload_if_changed()
        assert not index.reload_if_changed()  # not retried, not logged again
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert (
        broken in caplog.records[0].getMessage()
        and first.generation in caplog.records[0].getMessage()
    )
    assert broken in index.skipped_generations
    assert index.generation == first.generation
    assert index.search(image=query, k=1)[0].product_id == "P004"

    # a generation built with another model is refused the same way
    other = build_index(csv_path, idx, embedder=FakeEmbedder(salt="other"))
    assert not index.reload_if_changed()
    assert "built with model" in index.skipped_generations[other.generation]
    assert index.generation == first.generation

    # the next good build goes live
    write_catalog(shop, n_products=9)
    good = build_index(csv_path, idx, embedder=FakeEmbedder())
    assert index.reload_if_changed() and index.generation == good.generation and len(index) == 9


def test_watcher_swaps_in_the_background_and_tells_listeners(tmp_path):
    shop, idx = tmp_path / "shop", tmp_path / "idx"
    csv_path = write_catalog(shop, n_products=6)
    build_index(csv_path, idx, embedder=FakeEmbedder())
    index = ProductIndex.load(idx, FakeEmbedder())
    seen: list[str] = []
    watcher = IndexWatcher(index, interval=0.05)
    watcher.on_swap(seen.append)
    watcher.start()
    try:
        publish_copy(idx, corrupt_vectors)
        time.sleep(0.3)
        assert seen == [] and len(index) == 6  # the broken one never went live
        write_catalog(shop, n_products=9)
        report = build_index(csv_path, idx, embedder=FakeEmbedder())
        assert wait_for(lambda: seen == [report.generation])
        assert len(index) == 9 and "lamp" in index.categories()
    finally:
        watcher.stop()
    assert watcher.swaps == 1


def test_images_are_looked_up_by_generation_and_id(tmp_path):
    shop, idx = tmp_path / "shop", tmp_path / "idx"
    csv_path = write_catalog(shop, n_products=6)
    first = build_index(csv_path, idx, embedder=FakeEmbedder())
    index = ProductIndex.load(idx, FakeEmbedder())
    hit = index.search(image=shop / "images" / "p002-0.jpg", k=1)[0]
    assert hit.generation == first.generation and hit.image_id >= 0
    assert index.image_source(first.generation, hit.image_id) == hit.image
    assert os.path.samefile(hit.image, shop / "images" / "p002-0.jpg")
    assert index.image_source(first.generation, 10_000) is None
    assert index.image_source("gen-nope", hit.image_id) is None
    # after a swap, results handed out just before it still resolve; older ones do not
    write_catalog(shop, n_products=9)
    second = build_index(csv_path, idx, embedder=FakeEmbedder())
    assert index.reload_if_changed()
    assert index.image_source(first.generation, hit.image_id) == hit.image
    write_catalog(shop, n_products=7)
    third = build_index(csv_path, idx, embedder=FakeEmbedder())
    assert index.reload_if_changed() and index.generation == third.generation
    assert index.image_source(first.generation, hit.image_id) is None
    assert second.generation != third.generation
