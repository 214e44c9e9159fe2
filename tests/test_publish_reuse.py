"""Durable, content-keyed publish.

* every file of a generation is on disk (fsynced) before CURRENT names it;
* every reuse rule (verdict, learned projection, IVF quantizer, incremental FAISS ids) keys an
  image on its content hash, so a photo replaced in place with other bytes is a changed image;
* the verdict is calibrated with the query-side settings searches use by default (and says so
  in ``verdict["query_settings"]``), or withheld where they cannot be applied;
* PQ types scan more lists as nlist grows, and a catalog too small for PQ is built flat, said so.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import FakeEmbedder, draw_product, write_catalog, write_catalog_rows
from PIL import Image

from vsearch import cli
from vsearch.build import build_index
from vsearch.errors import VsearchError
from vsearch.learn import query_scores
from vsearch.search import ProductIndex
from vsearch.store import generations as store


def noise_catalog(folder: Path, n: int, views: int = 1) -> Path:
    """n products of random-noise images (every image its own hash and vector), ``views`` each."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        for v in range(views):
            p = images / f"{i:04d}-{v}.png"
            if not p.exists():
                arr = np.random.default_rng(1000 * v + i).integers(
                    0, 256, (24, 24, 3), dtype=np.uint8
                )
                Image.fromarray(arr).save(p)
            rows.append([f"N{i}", f"images/{p.name}", f"noise {i}", "noise", "1.00"])
    return write_catalog_rows(folder, rows)


def manifest_of(idx: Path) -> dict:
    return store.read_manifest(idx / store.read_current(idx))


# ---------------------------------------------------------------- fsync before the pointer switch


@pytest.mark.parametrize("kind", ["flat-adapted", "ivfpq"])
def test_every_file_of_a_generation_is_fsynced_before_current_names_it(tmp_path, monkeypatch, kind):
    """A rebuild (hard-linked reused projection, incremental update / reused quantizer) and a PQ
    build (.ivfdata, .f16.npy): every file and the folder are fsynced before CURRENT is replaced,
    and the pointer and the index folder after."""
    idx = tmp_path / "idx"
    if kind == "ivfpq":
        csv_path, options = noise_catalog(tmp_path / "shop", 300), {"index_type": "ivfpq"}
    else:
        csv_path, options = write_catalog(tmp_path / "shop", n_products=44), {"index_type": "flat"}
    build_index(csv_path, idx, embedder=FakeEmbedder(), **options)
    # a small change: the rebuild reuses what it can
    with open(csv_path, "a", encoding="utf-8") as f:
        f.write(
            f"EXTRA,images/{sorted(p.name for p in (csv_path.parent / 'images').iterdir())[0]},"
            "extra,x,1.00\n"
        )

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    report = build_index(csv_path, idx, embedder=FakeEmbedder(), **options)
    monkeypatch.undo()

    gen = idx / report.generation
    switch = events.index(("replace", str(idx / store.CURRENT_FILE)))
    tmp_name = f".tmp-{report.generation}"
    synced_before = {
        Path(path).relative_to(idx.resolve() / tmp_name)
        for what, path in events[:switch]
        if what == "fsync" and Path(path).is_relative_to(idx.resolve() / tmp_name)
    }
    files = {p.relative_to(gen) for p in gen.rglob("*") if p.is_file()}
    assert store.VECTORS_FILE in {str(f) for f in files} and store.PRODUCTS_FILE in {
        str(f) for f in files
    }
    if kind == "ivfpq":
        assert {store.IVFDATA_FILE, store.STORED_VECTORS_FILE} <= {str(f) for f in files}
    else:
        m = store.read_manifest(gen)
        assert m["adaptation"]["state"] == "reused" and m["incremental"].get("base"), (
            "the rebuild reused nothing"
        )
        assert any(str(f).startswith("adaptation") for f in files)
    assert files <= synced_before, (
        f"not fsynced before CURRENT was switched: {sorted(map(str, files - synced_before))}"
    )
    assert Path(".") in synced_before, "the generation folder itself was not fsynced"
    after = [path for what, path in events[switch + 1 :] if what == "fsync"]
    assert str(idx.resolve()) in after, (
        "the index folder was not fsynced after CURRENT was replaced"
    )
    pointer_synced = [
        i
        for i, (what, path) in enumerate(events[:switch])
        if what == "fsync" and Path(path).name.startswith(f".{store.CURRENT_FILE}.")
    ]
    assert pointer_synced, "the new CURRENT file was not fsynced before it replaced the old one"


# ---------------------------------------------------------------- content-keyed reuse


def _replace_photo(path: Path, how: str) -> None:
    """Replace a catalog photo in place: another picture, or the same pixels in other bytes."""
    before = path.stat()
    if how == "other picture":
        draw_product(41, 1).save(path, format="JPEG", quality=92)
    else:  # bytes after the JPEG's end marker: decoders ignore them, the hash does not
        with open(path, "ab") as f:
            f.write(b"other bytes")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))


@pytest.mark.parametrize("rule", ["verdict", "projection", "ivf quantizer", "incremental ids"])
def test_a_photo_replaced_in_place_with_other_bytes_counts_as_changed(tmp_path, rule):
    """44 products, 22 of them with two photos (66 images, 44 adaptation members). One photo of
    a two-photo product is replaced under the same path: one image removed and one added for
    the rule (for the FAISS ids even when the picture, hence the vector, is the same)."""
    csv_path = write_catalog(tmp_path / "shop", n_products=44)
    index_type = "ivf" if rule == "ivf quantizer" else "flat"
    idx = tmp_path / "idx"
    build_index(csv_path, idx, embedder=FakeEmbedder(), index_type=index_type)
    first = manifest_of(idx)
    assert first["adaptation"]["state"] == "fitted" and "sources" in first["verdict"]
    _replace_photo(
        csv_path.parent / "images" / "p000-0.jpg",
        "same pixels" if rule == "incremental ids" else "other picture",
    )
    report = build_index(csv_path, idx, embedder=FakeEmbedder(), index_type=index_type)
    assert report.embedded == 1
    m = manifest_of(idx)
    if rule == "verdict":
        assert m["verdict"]["calibrated_in"], (
            "the verdict should still be reused after a 1-image change"
        )
        assert m["verdict"]["changed_since_calibration"] == pytest.approx(2 / 66, abs=1e-4)
    elif rule == "projection":
        assert m["adaptation"]["state"] == "reused"
        assert m["adaptation"]["changed_fraction"] == pytest.approx(2 / 44, abs=1e-4)
    elif rule == "ivf quantizer":
        assert m["incremental"]["quantizer_from"] and (
            m["incremental"]["added"],
            m["incremental"]["removed"],
        ) == (1, 1)
    else:
        assert m["incremental"]["base"] and (
            m["incremental"]["added"],
            m["incremental"]["removed"],
        ) == (1, 1)
        assert m["incremental"]["kept"] == 65


def test_a_moved_photo_with_the_same_bytes_is_no_change(tmp_path):
    """The other side of a content key: the same bytes under a new path keep their identity."""
    csv_path = write_catalog(tmp_path / "shop", n_products=44)
    idx = tmp_path / "idx"
    build_index(csv_path, idx, embedder=FakeEmbedder())
    images = csv_path.parent / "images"
    os.rename(images / "p002-0.jpg", images / "moved.jpg")
    csv_path.write_text(
        csv_path.read_text(encoding="utf-8").replace("images/p002-0.jpg", "images/moved.jpg"),
        encoding="utf-8",
    )
    build_index(csv_path, idx, embedder=FakeEmbedder())
    m = manifest_of(idx)
    assert (m["incremental"]["added"], m["incremental"]["removed"]) == (0, 0)
    assert (
        m["verdict"]["changed_since_calibration"] == 0 and m["adaptation"]["changed_fraction"] == 0
    )


# ---------------------------------------------------------------- the verdict's query settings


def _flat_index(tmp_path: Path):
    """A flat index without projection or whitening: index vectors == model vectors, vid == row."""
    # 60 images: search and calibration see every product
    csv_path = noise_catalog(tmp_path / "shop", 30, views=2)
    build_index(
        csv_path, tmp_path / "idx", embedder=FakeEmbedder(), adapt="off", calibrate_threshold=False
    )
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    gen = tmp_path / "idx" / index.generation
    vectors = store.read_faiss(gen).reconstruct_n(0, len(store.read_image_records(gen)))
    pids = np.asarray([r[1] for r in store.read_image_records(gen)])
    return index, vectors, pids


@pytest.mark.parametrize(
    "settings",
    [
        {"query_expansion": {"k": 3, "alpha": 3.0}, "product_scoring": "max"},
        {"query_expansion": {"k": 0, "alpha": 3.0}, "product_scoring": "mean"},
        {"query_expansion": {"k": 5, "alpha": 1.0}, "product_scoring": "top2"},
    ],
)
def test_calibration_scores_are_the_scores_search_gives_with_the_same_settings(tmp_path, settings):
    """What the verdict is calibrated on (top score, lead over the runner-up, and the same photo
    when its product is not sold) equals what ``search_vector`` answers with those settings."""
    index, vectors, pids = _flat_index(tmp_path)
    rng = np.random.default_rng(3)
    rows = rng.choice(len(vectors), 12, replace=False)
    queries = vectors[rows] + 0.6 * rng.standard_normal((12, vectors.shape[1])).astype(
        np.float32
    ) / np.sqrt(vectors.shape[1])
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    got = query_scores.verdict_from_queries(
        vectors,
        pids,
        queries,
        pids[rows],
        exclude=[[int(r)] for r in rows],
        settings={"tta": "none", **settings},
    )
    want_top, want_margin, want_unsold, want_unsold_margin = [], [], [], []
    opts = {
        "query_expansion": settings["query_expansion"],
        "product_scoring": settings["product_scoring"],
    }
    for q, row in zip(queries, rows):
        # k=16: 64 images fetched
        hits = index.search_vector(q, k=16, exclude_images=[int(row)], **opts)
        want_top.append(hits[0].score)
        want_margin.append(hits[0].score - hits[1].score)
        own = np.flatnonzero(pids == pids[row]).tolist()
        hits = index.search_vector(q, k=16, exclude_images=own, **opts)
        want_unsold.append(hits[0].score)
        want_unsold_margin.append(hits[0].score - hits[1].score)
    np.testing.assert_allclose(got.top, want_top, atol=1e-4)
    np.testing.assert_allclose(got.margin, want_margin, atol=1e-4)
    np.testing.assert_allclose(got.unsold_top, want_unsold, atol=1e-4)
    np.testing.assert_allclose(got.unsold_margin, want_unsold_margin, atol=1e-4)


def test_a_build_with_default_qe_calibrates_its_verdict_with_qe_and_records_it(
    tmp_path, monkeypatch
):
    csv_path = write_catalog(tmp_path / "shop", n_products=30)
    expanded = []
    real = query_scores.query_expand
    monkeypatch.setattr(
        query_scores, "query_expand", lambda *a, **k: expanded.append(1) or real(*a, **k)
    )

    build_index(csv_path, tmp_path / "plain", embedder=FakeEmbedder())
    plain = manifest_of(tmp_path / "plain")["verdict"]
    assert not expanded
    assert plain["query_settings"] == {
        "tta": "none",
        "query_expansion": {"k": 0, "alpha": 3.0},
        "product_scoring": "max",
    }

    build_index(
        csv_path,
        tmp_path / "qe",
        embedder=FakeEmbedder(),
        query_defaults={"query_expansion": {"k": 3}},
    )
    qe = manifest_of(tmp_path / "qe")["verdict"]
    assert qe["query_settings"] == {
        "tta": "none",
        "query_expansion": {"k": 3, "alpha": 3.0},
        "product_scoring": "max",
    }
    assert len(expanded) >= 2 * qe["queries"], (
        "every calibration query (sold and unsold) should be expanded"
    )


def test_a_verdict_is_not_reused_for_other_query_settings(tmp_path):
    csv_path = write_catalog(tmp_path / "shop", n_products=30)
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    assert manifest_of(tmp_path / "idx")["verdict"]["calibrated_in"], (
        "same settings, same catalog: reused"
    )
    build_index(
        csv_path,
        tmp_path / "idx",
        embedder=FakeEmbedder(),
        query_defaults={"product_scoring": "mean"},
    )
    v = manifest_of(tmp_path / "idx")["verdict"]
    assert "calibrated_in" not in v and v["query_settings"]["product_scoring"] == "mean"


def test_default_tta_embeds_the_simulated_photos_with_it_or_withholds_the_verdict(tmp_path):
    csv_path = write_catalog(tmp_path / "shop", n_products=30)
    seen = []

    class Counting(FakeEmbedder):
        def embed_images(self, images):
            seen.append(len(images))
            return super().embed_images(images)

    build_index(csv_path, tmp_path / "idx", embedder=Counting(), query_defaults={"tta": "flip"})
    m = manifest_of(tmp_path / "idx")
    assert m["verdict"]["query_settings"]["tta"] == "flip" and "sources" in m["verdict"]
    assert (
        m["verdict_simulation"]["tta"] == "flip"
        and sum(seen) == 2 * m["verdict_simulation"]["photos"]
    )

    # imported vectors: no model loaded, no photo to flip - no verdict, and the manifest says why
    class Identity:  # what build_index makes for --embeddings: the model's identity, no weights
        name = spec = FakeEmbedder.name
        pretrained, dim, supports_text, fingerprint = (
            None,
            FakeEmbedder.dim,
            False,
            FakeEmbedder().fingerprint,
        )

    with open(csv_path, encoding="utf-8") as f:
        n_rows = len(list(csv.DictReader(f)))
    vectors = (
        np.random.default_rng(0).standard_normal((n_rows, FakeEmbedder.dim)).astype(np.float32)
    )
    build_index(
        csv_path,
        tmp_path / "imp",
        embedder=Identity(),
        embeddings=vectors,
        query_defaults={"tta": "flip"},
    )
    v = manifest_of(tmp_path / "imp")["verdict"]
    assert (
        v["threshold"] is None
        and "tta 'flip'" in v["reason"]
        and "--default-tta none" in v["reason"]
    )
    assert v["query_settings"]["tta"] == "flip"
    build_index(csv_path, tmp_path / "imp", embedder=Identity(), embeddings=vectors)
    assert manifest_of(tmp_path / "imp")["verdict"].get("sources"), (
        "without tta the same build gets its verdict"
    )


# ---------------------------------------------------------------- PQ: nprobe and tiny catalogs


def test_pq_nprobe_scales_with_nlist_like_ivf():
    for n in (1_000, 200_000, 1_000_000, 10_000_000):
        nlist = int(store.faiss_factory_string("ivfpq", n, 192).split(",")[0].removeprefix("IVF"))
        assert (
            store.nprobe_for("ivfpq", nlist)
            == store.nprobe_for("ivfpq-fs", nlist)
            == max(32, min(nlist, nlist // 32))
        )
    assert store.nprobe_for("ivfpq", 12_649) == 395  # 10 M vectors: 3 % of the lists, not 0.25 %
    assert store.nprobe_for("ivfpq", 20) == 20  # never more lists than there are


@pytest.mark.parametrize("index_type", ["ivfpq", "ivfpq-fs"])
def test_built_pq_indexes_carry_the_scaled_nprobe_also_on_a_reused_quantizer(
    tmp_path, monkeypatch, index_type
):
    import faiss

    monkeypatch.setattr(store, "PQ_MIN_NPROBE", 1)  # so that a 300-image index shows the scaling
    monkeypatch.setattr(store, "IVF_NPROBE_DIVISOR", 4)
    csv_path = noise_catalog(tmp_path / "shop", 300)
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder(), index_type=index_type)
    gen = tmp_path / "idx" / store.read_current(tmp_path / "idx")
    ivf = faiss.extract_index_ivf(store.read_faiss(gen))
    assert ivf.nlist == 69 and ivf.nprobe == 69 // 4
    if index_type == "ivfpq":  # a rebuild on the reused quantizer takes this build's nprobe
        monkeypatch.setattr(store, "IVF_NPROBE_DIVISOR", 2)
        with open(csv_path, "a", encoding="utf-8") as f:
            f.write("EXTRA,images/0000-0.png,extra,noise,1.00\n")
        build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder(), index_type=index_type)
        m = manifest_of(tmp_path / "idx")
        assert m["incremental"].get("quantizer_from")
        gen = tmp_path / "idx" / store.read_current(tmp_path / "idx")
        assert faiss.extract_index_ivf(store.read_faiss(gen)).nprobe == 69 // 2


def test_ivfpq_on_a_tiny_catalog_is_built_flat_and_says_so(tmp_path, capsys):
    csv_path = noise_catalog(tmp_path / "shop", 100)
    report = build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder(), index_type="ivfpq")
    assert report.index_type == "flat"
    m = manifest_of(tmp_path / "idx")
    assert m["index_type"] == "flat" and m["index_type_fallback"]["requested"] == "ivfpq"
    assert (
        "needs at least 256 images" in m["index_type_fallback"]["reason"]
        and "has 100" in m["index_type_fallback"]["reason"]
    )
    assert any("built 'flat'" in w.reason for w in report.warnings)
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    assert index.search(image=csv_path.parent / "images" / "0007-0.png", k=1)[0].product_id == "N7"

    # the CLI: one warning line naming the count and the fallback, no FAISS trace
    assert (
        cli.main(
            [
                "build",
                str(csv_path),
                "--index",
                str(tmp_path / "cli"),
                "--model",
                "test-tiny",
                "--index-type",
                "ivfpq",
                "--quiet",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert (
        "warning catalog: index type ivfpq needs at least 256 images to train its PQ codebooks and "
        "the catalog has 100: "
        "built 'flat' (exact search) instead" in err
    )
    assert "index flat" in out
    assert (
        "Traceback" not in err + out
        and "faiss" not in (err + out).lower()
        and "Error in" not in err + out
    )

    # called directly, the index maker names the count and what works
    with pytest.raises(
        VsearchError,
        match=r"ivfpq needs at least 256 vectors .* got 100; 'flat' \(exact\) or 'ivf'",
    ):
        store.make_faiss_index(np.eye(100, 192, dtype=np.float32), "ivfpq")


def test_ivfpq_fs_trains_on_a_small_catalog_its_4_bit_codes_allow(tmp_path):
    csv_path = noise_catalog(tmp_path / "shop", 40)
    assert (
        build_index(
            csv_path, tmp_path / "idx", embedder=FakeEmbedder(), index_type="ivfpq-fs"
        ).index_type
        == "ivfpq-fs"
    )
    assert (
        build_index(
            noise_catalog(tmp_path / "tiny", 10),
            tmp_path / "idx2",
            embedder=FakeEmbedder(),
            index_type="ivfpq-fs",
        ).index_type
        == "flat"
    )
