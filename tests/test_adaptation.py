"""Catalog adaptation: the projection's properties, when a build fits / reuses / skips it, and
--train-pairs with its per-row problems."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import FakeEmbedder, draw_product, write_catalog

from vsearch.build import build_index
from vsearch.errors import IndexFormatError
from vsearch.learn.adaptation import TooFewPairsError, fit_adaptation, training_pairs
from vsearch.learn.fit import REFIT_FRACTION, changed_fraction, member_keys
from vsearch.search import ProductIndex
from vsearch.store import generations as store


def _clustered(n_products=60, views=3, d=24, noise=0.35, seed=0):
    """Products as points; their photos vary strongly along a few shared 'nuisance' directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_products, d))
    nuisance = rng.normal(size=(3, d)) * 3.0  # e.g. background / lighting: same for every product
    x = np.concatenate(
        [
            centres
            + rng.normal(size=(n_products, 3)) @ nuisance
            + noise * rng.normal(size=centres.shape)
            for _ in range(views)
        ]
    )
    labels = np.tile(np.arange(n_products).astype(str), views)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def _loo_r1(x, labels):
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return float(np.mean(labels[sims.argmax(axis=1)] == labels))


def test_projection_whitens_the_matching_pair_scatter():
    x, labels = _clustered()
    p = fit_adaptation(x, training_pairs(x, labels), shrinkage=0.0, keep=1.0)
    y = (x - p.mean) @ p.matrix  # before the final normalisation
    pairs = training_pairs(y, labels)
    scatter = pairs.scatter / pairs.weight
    # within-product variation is white: equal in every direction
    ev = np.linalg.eigvalsh(scatter)
    assert ev.max() / ev.min() < 1.01


def test_projection_finds_the_product_behind_the_nuisance():
    x, labels = _clustered()
    before = _loo_r1(x, labels)
    p = fit_adaptation(x, training_pairs(x, labels))
    after = _loo_r1(p.apply(x), labels)
    assert before < 0.7 and after > before + 0.2, (before, after)
    assert np.allclose(np.linalg.norm(p.apply(x), axis=1), 1, atol=1e-5)


def test_projection_is_deterministic():
    x, labels = _clustered()
    a = fit_adaptation(x, training_pairs(x, labels))
    b = fit_adaptation(x.copy(), training_pairs(x.copy(), labels.copy()))
    assert np.array_equal(a.matrix, b.matrix) and np.array_equal(a.mean, b.mean)


def test_fitting_reads_a_memory_mapped_catalog_a_chunk_at_a_time(tmp_path, monkeypatch):
    """A catalog bigger than RAM arrives as a memory map (build.ON_DISK_MIN_VECTORS): the fit reads
    it BLOCK_ROWS rows at a time, never a whole copy, and learns what it learns from the array in
    memory."""
    import tracemalloc

    from vsearch.learn import transforms as transforms

    x, labels = _clustered(n_products=250, views=20, d=128)
    x, labels = x.astype(np.float32), labels.astype("U4")
    mm = np.lib.format.open_memmap(
        tmp_path / "raw.f32.npy", mode="w+", dtype=np.float32, shape=x.shape
    )
    mm[:] = x
    mm.flush()
    mm = np.load(tmp_path / "raw.f32.npy", mmap_mode="r")
    whole = fit_adaptation(x, training_pairs(x, labels))
    monkeypatch.setattr(transforms, "BLOCK_ROWS", 250)
    tracemalloc.start()
    try:
        chunked = fit_adaptation(mm, training_pairs(mm, labels))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the same projection, up to rounding
    assert ((chunked.apply(x) * whole.apply(x)).sum(axis=1) > 0.9999).all()
    # the vectors are 2.6 MB; one copy of them (or of their centred version) would pass this bound
    assert peak < 0.6 * x.nbytes, (peak, x.nbytes)


def test_the_verdict_calibration_reads_a_memory_mapped_catalog_a_block_at_a_time(
    tmp_path, monkeypatch
):
    """The build's verdict on a catalog bigger than RAM: the cross-fitted projections are fitted and
    applied a block of rows at a time (no projected copy of the catalog), with the same verdict.
    Memory is compared with an 8-d twin, which has the same labels and bookkeeping but no vectors
    to speak of."""
    import tracemalloc

    from vsearch.learn import transforms as transforms
    from vsearch.learn.verdict import calibrate

    monkeypatch.setattr(transforms, "BLOCK_ROWS", 1_000)

    def run(d):
        x, labels = _clustered(n_products=2_000, views=20, d=d)
        x, labels = x.astype(np.float32), labels.astype("U4")
        adapted = fit_adaptation(x, training_pairs(x, labels)).apply(x)
        np.save(tmp_path / f"raw{d}.npy", x)
        np.save(tmp_path / f"adapted{d}.npy", adapted)
        raw_mm, adapted_mm = (
            np.load(tmp_path / f"{name}{d}.npy", mmap_mode="r") for name in ("raw", "adapted")
        )
        whole = calibrate(x, labels, adapted=True, index_vectors=adapted).to_dict()
        tracemalloc.start()
        try:
            streamed = calibrate(raw_mm, labels, adapted=True, index_vectors=adapted_mm).to_dict()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return whole, streamed, peak, x.nbytes

    whole, streamed, peak, nbytes = run(128)
    assert streamed["queries"] == whole["queries"] > 0
    assert (streamed["threshold"], streamed["signal"]) == (
        whole["threshold"],
        whole["signal"],
    ) or abs(streamed["threshold"] - whole["threshold"]) < 1e-4
    _, _, twin_peak, _ = run(8)
    # the vectors are 20 MB; one projected copy of the catalog would pass this bound
    assert peak - twin_peak < 0.3 * nbytes, (peak, twin_peak, nbytes)


def test_too_few_products_with_pairs_is_refused_with_a_clear_message():
    x, labels = _clustered(n_products=10)
    with pytest.raises(
        TooFewPairsError, match="at least 20 products with two or more images.*--adapt off"
    ):
        fit_adaptation(x, training_pairs(x, labels))


def test_shopper_photos_count_as_pairs_for_single_image_products():
    x, labels = _clustered(n_products=30, views=1)
    photos = x + 0.3 * np.random.default_rng(3).normal(size=x.shape)
    with pytest.raises(TooFewPairsError):
        fit_adaptation(x, training_pairs(x, labels))
    pairs = training_pairs(x, labels, shopper_vectors=photos, shopper_labels=labels)
    assert pairs.shopper_pairs == 30 and pairs.products == 30
    unknown = training_pairs(
        x, labels, shopper_vectors=photos[:3], shopper_labels=np.array(["nope"] * 3)
    )
    assert unknown.shopper_pairs == 0  # photos of products not in the catalog are ignored
    fit_adaptation(x, pairs)


def test_the_shopper_check_drops_a_projection_only_when_it_breaks_shopper_photos_significantly():
    from vsearch.learn.fit import shopper_check
    from vsearch.learn.transforms import Projection

    # views 1-2 are the catalog; view 3 the shopper photos, each "made from" its first catalog image
    def shop(x, labels):
        return x[:120], labels[:120], (x[120:], labels[120:], np.arange(60))

    # photos vary along nuisance directions
    catalog, pids, simulated = shop(*_clustered(n_products=60, views=3))
    helps = shopper_check(
        catalog, pids, fit_adaptation(catalog, training_pairs(catalog, pids)), simulated
    )
    assert helps["photos"] == 60 and helps["fixed"] > helps["broken"] and not helps["rejected"]

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(60, 24))
    views = np.concatenate([centres + 0.5 * rng.normal(size=centres.shape) for _ in range(3)])
    catalog, pids, simulated = shop(
        views / np.linalg.norm(views, axis=1, keepdims=True), np.tile(np.arange(60).astype(str), 3)
    )
    basis = np.linalg.qr(rng.normal(size=(24, 2)))[0]
    crushed = Projection(
        mean=np.zeros(24, np.float32), matrix=(basis @ basis.T).astype(np.float32), info={}
    )
    # a 2-d shadow of a shop the raw vectors answer well
    hurts = shopper_check(catalog, pids, crushed, simulated)
    assert (
        hurts["right_without"] >= 45
        and hurts["broken"] > hurts["fixed"]
        and hurts["p_value"] < 0.05
        and hurts["rejected"]
    )
    # p must be below alpha
    assert not shopper_check(catalog, pids, crushed, simulated, alpha=hurts["p_value"])["rejected"]


def test_info_shows_how_a_kept_projection_did_on_the_simulated_shopper_photos(tmp_path, capsys):
    from vsearch.cli import main

    build_index(_catalog(tmp_path / "shop"), tmp_path / "idx", embedder=FakeEmbedder())
    a = ProductIndex.load(tmp_path / "idx", FakeEmbedder()).manifest["adaptation"]
    check = a["shopper_check"]
    assert a["state"] == "fitted" and not check["rejected"] and check["photos"] > 0
    assert main(["info", "--index", str(tmp_path / "idx")]) == 0
    assert (
        f"simulated shopper photos right with it {check['right_with']} of {check['photos']}, "
        f"without {check['right_without']}"
    ) in capsys.readouterr().out


def test_a_build_whose_projection_fails_the_shopper_check_keeps_none(tmp_path, monkeypatch, capsys):
    from vsearch.cli import main
    from vsearch.learn import fit as learn

    calls = []

    def failing(raw, product_ids, projection, simulated, **kw):
        calls.append(len(simulated[0]))
        return {
            "photos": len(simulated[0]),
            "right_without": 9,
            "right_with": 2,
            "fixed": 1,
            "broken": 8,
            "p_value": 0.0195,
            "rejected": True,
        }

    monkeypatch.setattr(learn, "shopper_check", failing)
    csv_path = _catalog(tmp_path / "shop")
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    a = index.manifest["adaptation"]
    assert calls and a["state"] == "rejected" and a["shopper_check"]["broken"] == 8
    # the projection's files are gone; the list of what it learned from stays, to reuse the decision
    assert "files" not in a and [
        p.name for p in (tmp_path / "idx" / index.generation).glob("adaptation*")
    ] == [learn.MEMBERS_FILE]
    assert main(["info", "--index", str(tmp_path / "idx")]) == 0
    assert (
        "dropped, because it made 8 simulated shopper photos wrong and 1 right"
        in capsys.readouterr().out
    )

    # an unchanged rebuild reuses the decision: no refit, no check, no simulated photos, same space
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    again = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    a = again.manifest["adaptation"]
    assert len(calls) == 1 and a["state"] == "rejected" and a["reused_from"] == index.generation
    assert "verdict_simulation" not in again.manifest and "files" not in a
    assert main(["info", "--index", str(tmp_path / "idx")]) == 0
    assert f"decision reused from {index.generation}" in capsys.readouterr().out
    # on request: fitted and checked again
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder(), adapt="refit")
    assert (
        len(calls) == 2
        and "reused_from"
        not in ProductIndex.load(tmp_path / "idx", FakeEmbedder()).manifest["adaptation"]
    )


def test_changed_fraction_counts_added_and_removed_members():
    before = member_keys(["a", "a", "b", "b"], ["1", "2", "3", "4"])
    assert len(before) == 4
    assert changed_fraction(before, before) == 0
    after = member_keys(["a", "a", "b", "b", "b"], ["1", "2", "3", "4", "5"])
    assert changed_fraction(before, after) == pytest.approx(0.25)
    assert member_keys(["a", "b"], ["1", "2"]) == []  # single-image products teach nothing


def _catalog(folder, n_products=44, views=2):
    """write_catalog gives every other product ``views`` photos: 44 products -> 22 with pairs."""
    return write_catalog(folder, n_products=n_products, views=views)


def test_build_fits_then_reuses_then_refits_the_projection(tmp_path):
    csv_path = _catalog(tmp_path / "shop")
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    first = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    a = first.manifest["adaptation"]
    assert a["state"] == "fitted" and a["catalog_products"] == 22 and a["catalog_images"] == 44
    # one more product (2 images on 44 members = 4.5 %): below the refit fraction, so it is reused
    rows = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    with open(csv_path, "a", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        for view in range(2):
            draw_product(40, view).save(csv_path.parent / "images" / f"new-{view}.jpg")
            w.writerow({**rows[0], "product_id": "NEW", "image": f"images/new-{view}.jpg"})
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    second = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    b = second.manifest["adaptation"]
    assert b["state"] == "reused" and b["reused_from"] == first.generation
    assert 0 < b["changed_fraction"] <= REFIT_FRACTION
    gen = tmp_path / "idx" / second.generation
    assert np.array_equal(
        np.load(gen / "adaptation_matrix.npy"),
        np.load(tmp_path / "idx" / first.generation / "adaptation_matrix.npy"),
    )
    assert second.search(image=csv_path.parent / "images" / "new-0.jpg", k=1)[0].product_id == "NEW"
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder(), adapt="refit")
    assert (
        ProductIndex.load(tmp_path / "idx", FakeEmbedder()).manifest["adaptation"]["state"]
        == "fitted"
    )
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder(), adapt="off")
    off = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    assert off.manifest["adaptation"] == {"state": "off"} and not list(
        (tmp_path / "idx" / off.generation).glob("adaptation*")
    )


def test_a_large_change_refits(tmp_path):
    build_index(_catalog(tmp_path / "a", n_products=44), tmp_path / "idx", embedder=FakeEmbedder())
    # +36 %
    build_index(_catalog(tmp_path / "b", n_products=60), tmp_path / "idx", embedder=FakeEmbedder())
    assert (
        ProductIndex.load(tmp_path / "idx", FakeEmbedder()).manifest["adaptation"]["state"]
        == "fitted"
    )


def test_the_query_goes_through_the_same_projection_as_the_catalog(tmp_path):
    csv_path = _catalog(tmp_path / "shop")
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    image = csv_path.parent / "images" / "p014-1.jpg"
    hit = index.search(image=image, k=1)[0]
    # itself, in the same space
    assert hit.product_id == "P014" and hit.score == pytest.approx(1.0, abs=1e-4)


def test_train_pairs_are_learned_from_and_bad_rows_are_reported_by_row(tmp_path):
    # single-image products: nothing to learn alone
    csv_path = _catalog(tmp_path / "shop", n_products=24, views=1)
    build_index(csv_path, tmp_path / "plain", embedder=FakeEmbedder())
    assert (
        ProductIndex.load(tmp_path / "plain", FakeEmbedder()).manifest["adaptation"]["state"]
        == "skipped"
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    lines = ["image,product_id"]
    for i in range(24):
        draw_product(i, view=1).save(photos / f"shot-{i}.jpg")
        lines.append(f"photos/shot-{i}.jpg,P{i:03d}")
    lines += ["photos/shot-1.jpg,NOT-SOLD", "photos/missing.jpg,P002"]
    (photos / "broken.jpg").write_bytes(b"not an image")
    lines.append("photos/broken.jpg,P003")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(lines) + "\n")
    report = build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder(), train_pairs=pairs)
    problems = {p.row: p.reason for p in report.problems if "train pairs" in p.reason}
    assert "NOT-SOLD" in problems[26] and "not in the catalog" in problems[26]
    assert 27 in problems and "missing.jpg" in (
        problems[27] + str([p.image for p in report.problems])
    )
    assert 28 in problems
    a = ProductIndex.load(tmp_path / "idx", FakeEmbedder()).manifest["adaptation"]
    assert a["state"] == "fitted" and a["shopper_pairs"] == 24
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    assert len(index) == 24  # pair photos never enter the catalog
    assert index.manifest["verdict"]["sources"].get("train_pairs") == 24


def test_gc_keeps_the_cached_vectors_of_the_train_pairs_the_live_generation_learned_from(tmp_path):
    """The pair photos are no catalog images, but the next build with the same pairs must not
    re-embed them after a gc (with --embeddings that would need the model's weights)."""
    from vsearch.store.gc import collect_garbage

    csv_path = _catalog(tmp_path / "shop", n_products=24, views=1)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(24):
        draw_product(i, view=1).save(photos / f"shot-{i}.jpg")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "image,product_id\n" + "".join(f"photos/shot-{i}.jpg,P{i:03d}\n" for i in range(24))
    )
    first = FakeEmbedder()
    build_index(csv_path, tmp_path / "idx", embedder=first, train_pairs=pairs)
    assert sum(first.batches) == 48  # 24 catalog images + 24 pair photos
    gen = tmp_path / "idx" / store.read_current(tmp_path / "idx")
    assert store.read_manifest(gen)["train_pairs"]["photos"] == 24
    assert collect_garbage(tmp_path / "idx").cache_rows == 0
    again = FakeEmbedder()
    build_index(csv_path, tmp_path / "idx", embedder=again, train_pairs=pairs, adapt="refit")
    # nothing ran through the model: catalog and pairs came from the cache
    assert again.batches == []
    # a build without the pairs no longer uses them: then gc drops them
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    # the older generation goes too
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder(), adapt="refit")
    assert collect_garbage(tmp_path / "idx").cache_rows == 24


def test_indexes_of_the_old_format_are_refused_with_the_rebuild_command(tmp_path):
    csv_path = _catalog(tmp_path / "shop", n_products=6)
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    gen = tmp_path / "idx" / store.read_current(tmp_path / "idx")
    manifest = json.loads((gen / store.MANIFEST_FILE).read_text())
    manifest["format_version"] = 1
    (gen / store.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(
        IndexFormatError,
        match=r"format version 1.*Rebuild with `vsearch build .*catalog.csv --index",
    ):
        ProductIndex.load(tmp_path / "idx", FakeEmbedder())


def test_feedback_export_feeds_a_build_through_train_pairs(tmp_path):
    """The opt-in loop end to end: confirmations -> reviewed CSV -> --train-pairs -> a fitted
    projection."""
    from vsearch.serve.feedback import FeedbackStore

    csv_path = _catalog(tmp_path / "shop", n_products=24, views=1)
    index_dir = tmp_path / "idx"
    build_index(csv_path, index_dir, embedder=FakeEmbedder())
    assert ProductIndex.load(index_dir, FakeEmbedder()).manifest["adaptation"]["state"] == "skipped"
    store_ = FeedbackStore(index_dir)
    for i in range(24):
        store_.record(draw_product(i, view=1).resize((120, 120)), f"P{i:03d}")
    # beside the photos, and absolute paths elsewhere
    for out in (None, tmp_path / "elsewhere" / "pairs.csv"):
        report = store_.export_pairs(out)
        assert report.pairs == 24
        build = build_index(csv_path, index_dir, embedder=FakeEmbedder(), train_pairs=report.path)
        assert not [p for p in build.problems if "train pairs" in p.reason]
        a = ProductIndex.load(index_dir, FakeEmbedder()).manifest["adaptation"]
        assert a["state"] in ("fitted", "reused") and a["shopper_pairs"] == 24
