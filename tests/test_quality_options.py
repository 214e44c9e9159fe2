"""Each retrieval-quality switch does what it claims, on small synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FakeEmbedder, LocatingFake, draw_product, write_catalog
from PIL import Image, ImageOps

from vsearch.build import build_index
from vsearch.errors import ModelError, VsearchError
from vsearch.learn import transforms as post
from vsearch.learn.calibration import VerdictCalibration
from vsearch.query_options import product_score
from vsearch.search import ProductIndex


def _clustered(seed=0, n=200, d=32, nuisance_dims=4, nuisance=2.0, noise=0.3):
    """Products = random centres; every photo adds strong variation along a few shared directions
    (lighting, background): the situation whitening is for."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, nuisance_dims)))[0].T  # [nuisance_dims, d]
    centres = rng.normal(size=(n, d))

    def photos():
        return post.l2_normalise(
            centres
            + nuisance * rng.normal(size=(n, nuisance_dims)) @ basis
            + noise * rng.normal(size=(n, d))
        )

    return photos(), photos()


def _r1(catalog, queries):
    return float(np.mean(np.argmax(queries @ catalog.T, axis=1) == np.arange(len(queries))))


def test_whitening_removes_a_shared_direction_and_improves_recall():
    catalog, queries = _clustered()
    w = post.fit_whitening(catalog, power=0.5, shrinkage=0.1)
    assert _r1(w.apply(catalog), w.apply(queries)) > _r1(catalog, queries)
    centred = post.fit_whitening(catalog, power=0.0, shrinkage=0.0)
    assert np.allclose(np.linalg.norm(centred.apply(queries), axis=1), 1.0, atol=1e-5)
    # dim kept
    assert post.fit_whitening(catalog, components=5).apply(queries).shape == queries.shape


def test_whitening_round_trips_through_npy_files(tmp_path):
    catalog, queries = _clustered()
    w = post.fit_whitening(catalog)
    entry = w.save(tmp_path)
    back = post.Whitening.load(tmp_path, entry)
    assert np.allclose(back.apply(queries), w.apply(queries), atol=1e-6)
    assert np.load(tmp_path / entry["projection"], allow_pickle=False).shape == (32, 32)
    with pytest.raises(ValueError, match="n >= 2"):
        post.fit_whitening(catalog[:1])


def test_dba_pulls_a_products_views_together():
    rng = np.random.default_rng(1)
    a = rng.normal(size=16)
    views = post.l2_normalise(
        np.stack([a + 0.6 * rng.normal(size=16) for _ in range(2)] + list(rng.normal(size=(6, 16))))
    )
    before = float(views[0] @ views[1])
    aug = post.database_augment(views, k=1, alpha=1.0)
    assert float(aug[0] @ aug[1]) > before
    assert np.allclose(post.database_augment(views, k=0), views)


def test_query_expansion_moves_the_query_towards_its_matches():
    rng = np.random.default_rng(2)
    target = post.l2_normalise(rng.normal(size=(3, 16)) * 0.3 + rng.normal(size=16))
    q = post.l2_normalise(target[0] + 1.5 * rng.normal(size=16)[None])[0]
    scores = target @ q
    expanded = post.query_expand(q, target, scores, alpha=1.0)
    assert (target @ expanded).mean() > scores.mean()


def test_nearest_reads_the_database_a_block_at_a_time_and_merges_the_blocks(monkeypatch):
    """The verdict calibration scores a big catalog through a cross-fitted projection this way:
    blocks of rows, each projected, top-k merged - the same answer as the whole projected array."""
    rng = np.random.default_rng(0)
    db, q = (
        rng.normal(size=(100, 16)).astype(np.float32),
        rng.normal(size=(9, 16)).astype(np.float32),
    )
    m = rng.normal(size=(16, 16)).astype(np.float32)
    whole_s, whole_i = post.nearest(q, post.l2_normalise(db @ m), 5)
    seen = []

    def project(block):
        seen.append(len(block))
        return post.l2_normalise(block @ m)

    monkeypatch.setattr(post, "BLOCK_ROWS", 7)
    s, i = post.nearest(q, db, 5, transform=project)
    assert max(seen) == 7 and sum(seen) == 100
    np.testing.assert_array_equal(i, whole_i)
    np.testing.assert_allclose(s, whole_s, atol=1e-5)


def test_product_score_modes():
    s = np.array([0.2, 0.9, 0.5])
    assert product_score(s, "max") == pytest.approx(0.9)
    assert product_score(s, "mean") == pytest.approx(1.6 / 3)
    assert product_score(s, "top2") == pytest.approx(0.7)
    assert product_score(np.array([0.4]), "top2") == pytest.approx(0.4)
    with pytest.raises(ValueError, match="max, mean, top2"):
        product_score(s, "median")


def _vector_shop(tmp_path, vectors, pids):
    """An index whose catalog vectors are given directly (images exist but are not embedded)."""
    folder = tmp_path / "shop"
    folder.mkdir(parents=True)
    lines = ["product_id,image,category"]
    for i, pid in enumerate(pids):
        draw_product(i).save(folder / f"{i}.jpg")
        lines.append(f"{pid},{i}.jpg,{'c' + pid[-1]}")
    (folder / "catalog.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "catalog.csv"


def test_product_scoring_mean_prefers_products_whose_images_all_match(tmp_path):
    d = FakeEmbedder.dim
    rng = np.random.default_rng(3)
    q = post.l2_normalise(rng.normal(size=(1, d)))[0]
    other = post.l2_normalise(rng.normal(size=(1, d)))[0]

    def towards(w):
        return post.l2_normalise((w * q + (1 - w) * other)[None])[0]

    # A: one image almost identical to the query, one unrelated; B: two good images.
    vecs = np.stack([towards(0.97), -q, towards(0.85), towards(0.85)])
    csv_path = _vector_shop(tmp_path, vecs, ["A", "A", "B", "B"])
    build_index(
        csv_path, tmp_path / "idx", embedder=FakeEmbedder(), embeddings=vecs.astype(np.float32)
    )
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    assert [h.product_id for h in index.search_vector(q, k=2)] == ["A", "B"]
    assert [h.product_id for h in index.search_vector(q, k=2, product_scoring="mean")] == ["B", "A"]
    assert [h.product_id for h in index.search_vector(q, k=2, product_scoring="top2")] == ["B", "A"]
    with pytest.raises(VsearchError, match="product_scoring"):
        index.search_vector(q, k=2, product_scoring="best")


def test_flip_tta_helps_a_mirrored_photo(catalog_csv, tmp_path):
    build_index(catalog_csv, tmp_path / "idx", embedder=FakeEmbedder())
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    mirrored = ImageOps.mirror(draw_product(2, view=1))  # asymmetric: view 1 is shifted right
    plain = index.search(image=mirrored, k=1, tta="none")[0]
    flipped = index.search(image=mirrored, k=1, tta="flip")[0]
    assert flipped.product_id == "P002"
    assert flipped.score > plain.score if plain.product_id == "P002" else True
    assert not np.allclose(
        index.embed_query(mirrored, tta="flip"), index.embed_query(mirrored, tta="none")
    )
    with pytest.raises(VsearchError, match="tta"):
        index.search(image=mirrored, tta="rotate")


def test_locate_zooms_in_on_the_item_and_scores_both_looks(catalog_csv, tmp_path):
    build_index(catalog_csv, tmp_path / "idx", embedder=FakeEmbedder())
    index = ProductIndex.load(tmp_path / "idx", LocatingFake())
    rng = np.random.default_rng(0)
    table = Image.fromarray(rng.integers(0, 255, (288, 288, 3), dtype=np.uint8))
    table.paste(draw_product(2), (150, 40))  # small, top right, on clutter
    located = index.search(image=table, k=3, locate=True)
    # the second look: around the product, not the whole table
    (close_up,) = index.embedder.seen[-1]
    assert 96 <= close_up.width == close_up.height < 288
    left, top = next(
        (x, y)
        for x in range(0, 200)
        for y in range(0, 200)
        if np.array_equal(
            np.asarray(table.crop((x, y, x + close_up.width, y + close_up.height))),
            np.asarray(close_up),
        )
    )
    assert (
        left <= 150 and top <= 40 and left + close_up.width >= 246 and top + close_up.height >= 136
    )
    # each product scored by its best image under the whole photo and under the close-up, averaged
    zoom = FakeEmbedder().embed_images([close_up])[0]
    whole_vec = FakeEmbedder().embed_images([table])[0]
    by_whole = {h.product_id: h.score for h in index.search_vector(whole_vec, k=12)}
    by_zoom = {h.product_id: h.score for h in index.search_vector(zoom, k=12)}
    expected = sorted(((by_whole[p] + by_zoom[p]) / 2, p) for p in by_whole)[::-1][:3]
    assert [(h.product_id, round(h.score, 5)) for h in located] == [
        (p, round(s, 5)) for s, p in expected
    ]
    assert [h.rank for h in located] == [1, 2, 3]
    # the largest k: every product, once
    assert len(index.search(image=table, k=1000, locate=True)) == 12
    # the verdict stays the calibrated one-look verdict of each product, whatever the new order
    one_look = {h.product_id: h.confident for h in index.search(image=table, k=50)}
    assert [h.confident for h in located] == [one_look[h.product_id] for h in located]
    # as if calibrated
    index._gen.verdict = VerdictCalibration.from_dict({"threshold": 0.12, "signal": "score"})
    one_look = {h.product_id: h.confident for h in index.search(image=table, k=50)}
    relocated = index.search(image=table, k=12, locate=True)
    assert {True, False} <= {h.confident for h in relocated}
    assert [h.confident for h in relocated] == [one_look[h.product_id] for h in relocated]
    # filters and held-out images hold in both looks
    # P002 is a lamp
    mugs = index.search(image=table, k=3, locate=True, filters={"category": "mug"})
    assert mugs and all(h.product.category == "mug" for h in mugs)
    p002 = [vid for vid, _ in index.images_by_product()["P002"]]
    assert all(
        h.product_id != "P002"
        for h in index.search(image=table, k=12, locate=True, exclude_images=p002)
    )
    with pytest.raises(VsearchError, match="text"):
        index.search(image=table, text="red mug", locate=True)
    with pytest.raises(VsearchError, match="test-time augmentation"):
        index.search(image=table, tta="flip", locate=True)
    with pytest.raises(ModelError, match="cannot locate"):
        ProductIndex.load(tmp_path / "idx", FakeEmbedder()).search(image=table, locate=True)


def test_build_options_are_stored_and_used_at_query_time(tmp_path):
    csv_path = write_catalog(tmp_path / "shop", n_products=30, views=2)
    build_index(csv_path, tmp_path / "plain", embedder=FakeEmbedder(), whitening=False)
    build_index(
        csv_path,
        tmp_path / "tuned",
        embedder=FakeEmbedder(),
        whitening={"power": 0.5, "shrinkage": 0.5},
        dba={"k": 1},
        query_defaults={"tta": "flip", "query_expansion": {"k": 2}, "product_scoring": "top2"},
    )
    plain = ProductIndex.load(tmp_path / "plain", FakeEmbedder())
    tuned = ProductIndex.load(tmp_path / "tuned", FakeEmbedder())
    assert plain.manifest["postprocess"]["whitening"] is None
    gen = tmp_path / "tuned" / tuned.generation
    assert (gen / "whitening_projection.npy").is_file() and not list(gen.glob("*.pkl"))
    assert tuned.manifest["postprocess"]["dba"] == {"k": 1, "alpha": 3.0}
    assert tuned.query_defaults() == {
        "tta": "flip",
        "query_expansion": {"k": 2},
        "product_scoring": "top2",
    }
    photo = draw_product(4, view=1, size=110)
    assert tuned.search(image=photo, k=1)[0].product_id == "P004"
    # the stored defaults are what a bare search uses; explicit arguments override them
    a = tuned.search(image=photo, k=5)
    b = tuned.search(image=photo, k=5, tta="flip", query_expansion={"k": 2}, product_scoring="top2")
    c = tuned.search(image=photo, k=5, tta="none", query_expansion={"k": 0}, product_scoring="max")
    assert [h.score for h in a] == [h.score for h in b] != [h.score for h in c]
    # whitened scores differ from raw cosine, so the catalog vectors really were transformed
    assert plain.search(image=photo, k=1)[0].score != pytest.approx(
        tuned.search(image=photo, k=1, tta="none", query_expansion={"k": 0})[0].score
    )


def test_unknown_build_options_are_refused(tmp_path, catalog_csv):
    with pytest.raises(ValueError, match="accepted"):
        build_index(catalog_csv, tmp_path / "x", embedder=FakeEmbedder(), whitening={"strength": 1})
    with pytest.raises(ValueError, match="unknown query option"):
        build_index(
            catalog_csv, tmp_path / "y", embedder=FakeEmbedder(), query_defaults={"rerank": True}
        )


def test_clip_text_fusion_and_zero_shot_category(tmp_path):
    csv_path = write_catalog(tmp_path / "shop", n_products=9, views=1)
    build_index(csv_path, tmp_path / "idx", model="test-tiny")
    index = ProductIndex.load(tmp_path / "idx")
    photo = tmp_path / "shop" / "images" / "p003-0.jpg"
    image_only = index.embed_query(photo)
    fused = index.embed_query(photo, "a red mug", text_weight=0.5)
    assert not np.allclose(image_only, fused)
    hits = index.search(image=photo, k=9, zero_shot_categories=1)
    assert len({h.category for h in hits}) == 1 and len(hits) == 3
    assert len(index.search(image=photo, k=9, zero_shot_categories=2)) == 6
    # an explicit category filter wins over the zero-shot guess
    hits = index.search(image=photo, k=9, zero_shot_categories=1, filters={"category": "lamp"})
    assert {h.category for h in hits} == {"lamp"}


def test_zero_shot_needs_a_text_model(catalog_csv, tmp_path):
    build_index(catalog_csv, tmp_path / "idx", embedder=FakeEmbedder())
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    with pytest.raises(ModelError, match="text model"):
        index.search(image=draw_product(0), zero_shot_categories=1)


def test_efficientnet_read_out_specs():
    from vsearch.embedders.efficientnet import parse_efficientnet_spec

    assert parse_efficientnet_spec("efficientnet-lite0") == {"pooling": "avg", "multiscale": False}
    assert parse_efficientnet_spec("efficientnet-lite0:gem-ms") == {
        "pooling": "gem",
        "multiscale": True,
    }
    with pytest.raises(ModelError, match="gem-ms"):
        parse_efficientnet_spec("efficientnet-lite0:max")


@pytest.mark.slow
def test_efficientnet_multiscale_changes_vectors_and_round_trips_its_spec():
    from vsearch.embedders import load_embedder

    plain = load_embedder("efficientnet-lite0", precision="fp32")
    ms = load_embedder("efficientnet-lite0:gem-ms", precision="fp32")
    assert ms.spec == "efficientnet-lite0:gem-ms" and plain.spec == "efficientnet-lite0"
    assert ms.fingerprint != plain.fingerprint
    img = Image.new("RGB", (200, 160), (200, 60, 40))
    img.paste(draw_product(3, size=120), (40, 20))
    a, b = plain.embed_images([img]), ms.embed_images([img])
    assert a.shape == b.shape == (1, 1280) and np.isclose(np.linalg.norm(b), 1.0, atol=1e-5)
    assert float(a[0] @ b[0]) < 0.9999


def test_auto_whitening_is_kept_only_when_held_out_views_improve(tmp_path):
    catalog, queries = _clustered(n=60)
    # each product: two photos with different nuisance
    two_views = np.concatenate([catalog, queries])
    pids = [f"P{i:03d}" for i in range(60)] * 2
    csv_path = _vector_shop(tmp_path, two_views, pids)
    from vsearch.learn.calibration import held_out_recall

    before, n = held_out_recall(two_views, np.asarray(pids))
    assert n == 120 and before < 0.9
    # adaptation off: it would already remove the nuisance whitening is tested on here
    build_index(
        csv_path,
        tmp_path / "multi",
        embedder=FakeEmbedder(),
        embeddings=_pad(two_views),
        whitening="auto",
        adapt="off",
    )
    info = ProductIndex.load(tmp_path / "multi", FakeEmbedder()).manifest["postprocess"]
    assert info["whitening_auto"]["kept"] and info["whitening"] is not None
    assert info["whitening_auto"]["r1_whitened"] > info["whitening_auto"]["r1_raw"]
    # single-image products: nothing to hold out, so "auto" leaves whitening off
    csv_single = _vector_shop(tmp_path / "s", catalog, [f"P{i:03d}" for i in range(60)])
    build_index(
        csv_single,
        tmp_path / "single",
        embedder=FakeEmbedder(),
        embeddings=_pad(catalog),
        whitening="auto",
    )
    info = ProductIndex.load(tmp_path / "single", FakeEmbedder()).manifest["postprocess"]
    assert info["whitening"] is None and info["whitening_auto"]["kept"] is False


def _pad(vectors):
    """Synthetic 32-d vectors placed in the fake embedder's 192-d space."""
    out = np.zeros((len(vectors), FakeEmbedder.dim), dtype=np.float32)
    out[:, : vectors.shape[1]] = vectors
    return out


def test_one_blas_thread_is_shared_by_overlapping_queries():
    """Two searches overlap in time: the BLAS limit holds until the last one leaves, and is then
    restored (a limit per query would be lifted under the second one, or left on for good)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from vsearch.learn.transforms import single_threaded_blas

    def blas_threads():
        return [
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        ]

    before = blas_threads()
    if not before or max(before) == 1:
        pytest.skip("numpy's BLAS runs on one thread here already")
    first, second = single_threaded_blas(), single_threaded_blas()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first query is done while the second still computes
    assert blas_threads() == [1] * len(before)
    second.__exit__(None, None, None)
    assert blas_threads() == before
