"""Speed options that change behaviour a user sees: imported embeddings, precision fallback, index
choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_catalog_rows

from vsearch.build import build_index
from vsearch.catalog.rows import read_catalog
from vsearch.cli import main
from vsearch.embeddings.imported import load_embeddings, model_identity
from vsearch.errors import EmbeddingsImportError, ModelError
from vsearch.search import ProductIndex
from vsearch.store import generations as store


def vector_catalog(folder: Path, n: int, *, images_per_product: int = 1) -> Path:
    """A catalog whose image files never exist: imported builds must not read them."""
    return write_catalog_rows(
        folder,
        (
            [
                f"P{i:04d}",
                "|".join(f"img/{i:04d}-{v}.jpg" for v in range(images_per_product)),
                f"Product {i}",
                "mug" if i % 2 else "lamp",
                f"{i + 1}.50",
            ]
            for i in range(n)
        ),
    )


def unit(rng, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- bring your own embeddings


def test_cli_build_from_npy_needs_no_images_and_queries_load_the_named_model(tmp_path, capsys):
    # "a|b" cells: 16 image rows
    catalog = vector_catalog(tmp_path / "shop", 8, images_per_product=2)
    vectors = unit(np.random.default_rng(0), 16, 32)  # test-tiny embeds in 32 dimensions
    np.save(tmp_path / "vecs.npy", vectors.astype(np.float16))  # float16 is accepted
    index_dir = tmp_path / "index"

    rc = main(
        [
            "build",
            str(catalog),
            "--index",
            str(index_dir),
            "--embeddings",
            str(tmp_path / "vecs.npy"),
            "--model",
            "test-tiny",
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "8 products, 16 images" in capsys.readouterr().out

    index = ProductIndex.load(index_dir)  # loads test-tiny from the manifest, fingerprint checked
    assert index.embedder.name == "test-tiny"
    assert index.manifest["model"]["precision_at_build"] == "imported"
    hits = index.search_vector(vectors[5], k=3)  # row 5 = product 2, second image
    assert hits[0].product_id == "P0002"
    assert hits[0].image.endswith("img/0002-1.jpg")
    assert hits[0].score == pytest.approx(1.0, abs=2e-3)


def test_parquet_rows_are_matched_by_image_and_product_not_by_position(tmp_path, fake_embedder):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    catalog = vector_catalog(tmp_path / "shop", 6)
    vectors = unit(np.random.default_rng(1), 7, fake_embedder.dim)
    images = [f"img/{i:04d}-0.jpg" for i in range(6)] + ["img/not-in-catalog.jpg"]
    pids = [f"P{i:04d}" for i in range(6)] + ["P9999"]
    order = [3, 6, 0, 5, 1, 4, 2]  # shuffled, with one extra vector
    table = pa.table(
        {
            "product_id": [pids[i] for i in order],
            "image": [images[i] for i in order],
            "embedding": pa.array(
                [vectors[i].tolist() for i in order], type=pa.list_(pa.float32())
            ),
        }
    )
    pq.write_table(table, tmp_path / "vecs.parquet")

    report = build_index(
        catalog, tmp_path / "index", embedder=fake_embedder, embeddings=tmp_path / "vecs.parquet"
    )
    assert report.images == 6 and report.embedded == 0
    assert any("1 vector(s) match no catalog image" in p.reason for p in report.warnings)
    index = ProductIndex.load(tmp_path / "index", fake_embedder)
    for i in range(6):
        assert index.search_vector(vectors[i], k=1)[0].product_id == f"P{i:04d}"


def test_positional_parquet_with_wrong_product_order_is_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    catalog = read_catalog(vector_catalog(tmp_path / "shop", 3))
    vectors = unit(np.random.default_rng(2), 3, 8)
    pq.write_table(
        pa.table(
            {"product_id": ["P0000", "P0002", "P0001"], "vector": [v.tolist() for v in vectors]}
        ),
        tmp_path / "v.parquet",
    )
    with pytest.raises(
        EmbeddingsImportError, match=r"vector 1 is for product_id 'P0002'.*catalog row 3.*'P0001'"
    ):
        load_embeddings(tmp_path / "v.parquet", catalog)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda v: v[:-1], r"4 vectors but the catalog .* has 5 usable image rows"),
        (lambda v: v[:, :16], r"dimension 16, but the model's embeddings have dimension 32"),
        (
            lambda v: np.where(np.arange(5)[:, None] == 2, np.nan, v),
            r"1 vector\(s\) contain NaN or infinity: vector 2 \(catalog row 4\)",
        ),
        (
            lambda v: (v * 100).astype(np.int32),
            r"dtype int32; accepted: float16, float32 or float64",
        ),
        (lambda v: v[0], r"expected a 2-D array"),
        (
            lambda v: np.where(np.arange(5)[:, None] == 1, 0.0, v),
            r"all zeros \(e.g. vector 1, catalog row 3\)",
        ),
    ],
    ids=["row-count", "dim", "nan", "int-dtype", "1-d", "zero-vector"],
)
def test_bad_embeddings_files_are_refused_with_specifics(tmp_path, make, message):
    catalog = read_catalog(vector_catalog(tmp_path / "shop", 5))
    np.save(tmp_path / "v.npy", make(unit(np.random.default_rng(3), 5, 32)))
    with pytest.raises(EmbeddingsImportError, match=message):
        load_embeddings(tmp_path / "v.npy", catalog, dim=32)


def test_unnormalised_vectors_are_normalised_with_a_warning(tmp_path, fake_embedder):
    catalog = vector_catalog(tmp_path / "shop", 4)
    vectors = unit(np.random.default_rng(4), 4, fake_embedder.dim) * np.array(
        [[1.0], [3.0], [0.5], [1.0]], np.float32
    )
    np.save(tmp_path / "v.npy", vectors)
    report = build_index(
        catalog, tmp_path / "index", embedder=fake_embedder, embeddings=tmp_path / "v.npy"
    )
    assert any("2 vector(s) were not unit length" in p.reason for p in report.warnings)
    gen = tmp_path / "index" / store.read_current(tmp_path / "index")
    stored = store.read_faiss(gen).reconstruct_n(0, 4)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)


def test_unknown_suffix_and_missing_file_are_refused(tmp_path):
    catalog = read_catalog(vector_catalog(tmp_path / "shop", 2))
    (tmp_path / "v.csv").write_text("1,2\n")
    with pytest.raises(EmbeddingsImportError, match=r"suffix '.csv'; accepted: .npy"):
        load_embeddings(tmp_path / "v.csv", catalog)
    with pytest.raises(EmbeddingsImportError, match="does not exist"):
        load_embeddings(tmp_path / "nope.npy", catalog)


def test_clip_identity_from_a_checkpoint_matches_the_loaded_model_without_loading_weights(
    tmp_path, monkeypatch
):
    """The fingerprint an imported index records is the one a later query-time load computes."""
    import open_clip

    from vsearch.embedders import clip

    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"not really weights, but hashed all the same")
    captured = {}

    def fake_build(model_name, **kwargs):
        captured.update(kwargs)
        raise RuntimeError("stop before loading")

    monkeypatch.setattr(clip, "_build", fake_build)
    with pytest.raises(RuntimeError):
        clip.load_clip("ViT-B-32", str(ckpt), precision="fp32")

    def no_weights(*a, **k):
        raise AssertionError("model_identity must not build the model")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_weights)
    monkeypatch.setattr(open_clip, "create_model", no_weights)
    ident = model_identity("ViT-B-32", str(ckpt))
    assert (ident.name, ident.fingerprint, ident.dim) == (
        captured["name"],
        captured["fingerprint"],
        512,
    )
    tag = model_identity("clip")
    assert tag.fingerprint == "open_clip:ViT-B-32:laion2b_s34b_b79k" and tag.supports_text


# ---------------------------------------------------------------- precision


def test_auto_precision_falls_back_to_fp32_without_native_bf16(monkeypatch):
    from vsearch.embedders import load_embedder, precision

    monkeypatch.setattr(precision, "bf16_supported", lambda: False)
    assert precision.resolve_precision("auto", "m") == "fp32"
    assert load_embedder("test-tiny", precision="auto").precision == "fp32"
    with pytest.raises(ModelError, match="lacks native bf16.*use precision 'fp32' or 'auto'"):
        load_embedder("test-tiny", precision="bf16")
    monkeypatch.setattr(precision, "bf16_supported", lambda: True)
    assert load_embedder("test-tiny", precision="auto").precision == "bf16"


# ---------------------------------------------------------------- index choice


def test_index_type_is_chosen_by_size_and_an_explicit_choice_wins():
    assert store.choose_index_type(1_000) == "flat"
    assert store.choose_index_type(store.FLAT_MAX) == "flat"
    assert store.choose_index_type(store.FLAT_MAX + 1) == "hnsw"
    assert store.choose_index_type(5_000_000) == "hnsw"
    assert store.choose_index_type(10, "ivf") == "ivf"
    assert store.choose_index_type(10**7, "flat") == "flat"
    with pytest.raises(ValueError, match="not one of auto, flat, ivf, hnsw, ivfpq, ivfpq-fs"):
        store.choose_index_type(10, "annoy")


@pytest.mark.parametrize(
    ("index_type", "factory", "min_top1"),
    [
        ("ivf", r"IVF\d+,SQfp16", 0.97),
        ("hnsw", r"HNSW32,Flat", 0.97),
        ("ivfpq", r"IVF\d+,PQ\d+x8", 0.8),
        ("ivfpq-fs", r"IVF\d+,PQ\d+x4fs", 0.8),
    ],
)
def test_approximate_indexes_find_the_right_products(tmp_path, index_type, factory, min_top1):
    from vsearch.embeddings.imported import ModelIdentity

    dim, n = 32, 1500  # small: PQ training cost grows with dim x sub-quantizers
    model = ModelIdentity(
        name="vectors",
        spec="vectors",
        pretrained=None,
        fingerprint="vectors-32",
        dim=dim,
        supports_text=False,
    )
    rng = np.random.default_rng(5)
    centres = unit(rng, 40, dim)
    vectors = centres[rng.integers(0, 40, n)] + 0.8 * unit(rng, n, dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalog = vector_catalog(tmp_path / "shop", n)
    report = build_index(
        catalog, tmp_path / "index", embedder=model, embeddings=vectors, index_type=index_type
    )
    assert report.index_type == index_type
    index = ProductIndex.load(tmp_path / "index", model)
    assert __import__("re").fullmatch(factory, index.manifest["faiss_factory"])
    queries = rng.choice(n, 100, replace=False)
    noisy = vectors[queries] + 0.05 * unit(rng, 100, dim)
    top1 = [index.search_vector(q / np.linalg.norm(q), k=5)[0].product_id for q in noisy]
    assert np.mean([t == f"P{i:04d}" for t, i in zip(top1, queries)]) >= min_top1
    # filters still work through the approximate index
    hits = index.search_vector(vectors[queries[0]], k=5, filters={"category": "mug"})
    assert hits and all(h.category == "mug" for h in hits)


def test_single_query_search_leaves_the_thread_count_alone():
    import faiss

    index = faiss.IndexFlatIP(8)
    index.add(unit(np.random.default_rng(6), 50, 8))
    before = faiss.omp_get_max_threads()
    _, ids = store.search_single_threaded(index, unit(np.random.default_rng(6), 1, 8), 3)
    assert ids.shape == (1, 3)
    assert faiss.omp_get_max_threads() == before


def test_streamed_import_gives_the_vectors_and_errors_of_the_in_memory_import(tmp_path):
    """load_embeddings_into (big IVF builds) reads a few rows at a time into a given array; it must
    align, normalise and refuse exactly like load_embeddings."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from vsearch.embeddings.imported import load_embeddings_into

    catalog = read_catalog(vector_catalog(tmp_path / "shop", 10, images_per_product=2))
    vectors = 3 * unit(np.random.default_rng(2), 20, 16)  # not unit length: normalised, and counted
    np.save(tmp_path / "v.npy", vectors)
    images = [f"img/{i // 2:04d}-{i % 2}.jpg" for i in range(20)]
    order = np.random.default_rng(3).permutation(20)
    pq.write_table(
        pa.table(
            {
                "image": [images[i] for i in order],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors[order].reshape(-1)), 16
                ),
            }
        ),
        tmp_path / "v.parquet",
        row_group_size=6,
    )
    for source in (vectors, tmp_path / "v.npy", tmp_path / "v.parquet"):
        want = load_embeddings(source, catalog, dim=16)
        got = load_embeddings_into(source, catalog, np.empty((20, 16), np.float32), batch_rows=7)
        assert np.array_equal(got.vectors, want.vectors)
        assert (got.aligned_by, got.renormalised, got.unused) == (
            want.aligned_by,
            want.renormalised,
            want.unused,
        )
    keep = [i for i in range(20) if images[i] != "img/0003-1.jpg"]
    pq.write_table(
        pa.table(
            {
                "image": [images[i] for i in keep],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors[keep].reshape(-1)), 16
                ),
            }
        ),
        tmp_path / "short.parquet",
    )
    with pytest.raises(
        EmbeddingsImportError,
        match=r"no vector for 1 catalog image\(s\): row \d+ 'P0003' \S*img/0003-1.jpg",
    ):
        load_embeddings_into(
            tmp_path / "short.parquet", catalog, np.empty((20, 16), np.float32), batch_rows=7
        )
    with pytest.raises(EmbeddingsImportError, match="19 vectors but the catalog"):
        load_embeddings_into(vectors[:19], catalog, np.empty((20, 16), np.float32), batch_rows=7)
