"""Indexes built in shards: trained once, shards added apart, lists merged on disk, served
memory-mapped.

The merge must not change a single answer: a sharded build gives the ids and scores a single
build with the same trained quantizer gives on the same vectors. A generation of an on-disk type
loads without materialising its vectors (no ``reconstruct_n``), and QE, mean/top-2 scoring and
the exact fallback read only the vectors they need.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_catalog_rows

from vsearch.build import build_index
from vsearch.embeddings.shards import read_shard_vectors
from vsearch.errors import EmbeddingsImportError
from vsearch.search import ProductIndex
from vsearch.store import generations as store
from vsearch.store import sharded as sharded_index

DIM = 32
FACTORIES = ["IVF32,SQfp16", "IVF32,PQ8x8", "IVF32,PQ8x4fs"]


def unit(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    centres = unit(rng, 40)
    labels = rng.integers(0, 40, 4000)
    # neighbours apart by more than float16 rounding
    vectors = centres[labels] + 0.6 * unit(rng, 4000)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # shopper photos of catalog items
    queries = unit(rng, 25) * 0.05 + vectors[rng.choice(4000, 25, replace=False)]
    return vectors.astype(np.float32), (
        queries / np.linalg.norm(queries, axis=1, keepdims=True)
    ).astype(np.float32)


def single_build(sample, factory, ids, vectors):
    """The reference: one index, trained like the sharded build, every vector added in one go."""
    import faiss

    index = sharded_index.train_ivf(sample, factory, nprobe=8)
    index.add_with_ids(vectors, ids)
    if factory.endswith("fs"):
        index = faiss.IndexIVFPQFastScan(index)
        index.nprobe = 8
    return index


def search_both(a, b, queries, k=10):
    import faiss

    faiss.omp_set_num_threads(1)  # thread count must not decide ties
    return a.search(queries, k), b.search(queries, k)


@pytest.mark.parametrize("factory", FACTORIES)
def test_sharded_build_and_merge_equals_a_single_build(tmp_path, data, factory, monkeypatch):
    import faiss

    vectors, queries = data
    ids = np.arange(len(vectors), dtype=np.int64) * 3 + 7  # explicit ids (vids), not row positions
    sample = vectors[::2]
    merged = sharded_index.build_ondisk(
        tmp_path,
        "vectors.faiss",
        factory,
        sample=sample,
        nprobe=8,
        # 5 shards, last one short
        shards=sharded_index.shards_of(vectors, ids, size=900),
        n_ids=int(ids.max()) + 1,
        workers=2,
    )
    reference = single_build(sample, factory, ids, vectors)
    quantizers = [faiss.extract_index_ivf(x).quantizer for x in (merged, reference)]
    assert np.array_equal(*(q.reconstruct_n(0, q.ntotal) for q in quantizers)), (
        "training must be the same for the comparison to mean anything"
    )
    assert merged.ntotal == reference.ntotal == len(vectors)
    (d1, i1), (d2, i2) = search_both(merged, reference, queries)
    assert np.array_equal(i1, i2)
    assert np.array_equal(d1, d2)
    assert set(np.unique(i1)) <= set(ids.tolist())
    # merged lists live in the .ivfdata, read memory-mapped from beside the index
    if not factory.endswith("fs"):
        assert (tmp_path / "vectors.ivfdata").is_file()
        reread = sharded_index.open_ondisk(tmp_path / "vectors.faiss")
        assert isinstance(
            faiss.downcast_InvertedLists(faiss.extract_index_ivf(reread).invlists),
            faiss.OnDiskInvertedLists,
        )
        (d3, i3), _ = search_both(reread, reference, queries)
        assert np.array_equal(i3, i2) and np.array_equal(d3, d2)
    assert not (tmp_path / ".shards").exists()


def write_parquet(path: Path, keys, vectors, fingerprint="fp-test", row_group_size=100):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vector_type = pa.list_(pa.float32(), vectors.shape[1])
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1)), vectors.shape[1]
            ),
        }
    )
    assert table.schema.field("vector").type == vector_type
    table = table.replace_schema_metadata(
        {"vsearch.model_fingerprint": fingerprint, "vsearch.dim": str(vectors.shape[1])}
    )
    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_shards_merge_to_the_single_build_of_the_catalog(tmp_path, data):
    vectors, queries = data
    vectors = vectors[:1000]
    keys = [f"h{i:04d}" for i in range(1000)]
    write_parquet(tmp_path / "part-0.parquet", keys[:600], vectors[:600])
    write_parquet(
        tmp_path / "part-1.parquet",
        keys[600:] + ["not-in-catalog"],
        np.vstack([vectors[600:], vectors[:1]]),
    )
    # the catalog: image vid 1000 shows the same photo (content hash) as vid 5; h0999 is no longer
    # in it
    ids_of_key = {k: [i] for i, k in enumerate(keys[:999])}
    ids_of_key["h0005"] = [5, 1000]
    factory = "IVF16,PQ8x8"
    trained = tmp_path / "trained.faiss"
    import faiss

    faiss.write_index(sharded_index.train_ivf(vectors, factory, nprobe=16), str(trained))
    stored = tmp_path / "stored.npy"
    np.lib.format.open_memmap(stored, mode="w+", dtype=np.float16, shape=(1001, DIM)).flush()
    shards = sharded_index.run_tasks(
        sharded_index.add_parquet_shard,
        [
            (
                trained,
                tmp_path / f"part-{i}.parquet",
                tmp_path / f"shard-{i}.faiss",
                ids_of_key,
                "fp-test",
                stored,
            )
            for i in (0, 1)
        ],
        workers=2,
    )
    n = sharded_index.merge_shards(
        trained, shards, tmp_path / "merged.faiss", tmp_path / "merged.ivfdata"
    )
    assert n == 1000  # 999 catalog photos, one of them twice; the stray key skipped
    expected_ids = np.r_[np.arange(999), 1000]
    expected_vectors = np.vstack([vectors[:999], vectors[5]])
    reference = faiss.read_index(str(trained))
    reference.add_with_ids(expected_vectors, expected_ids)
    (d1, i1), (d2, i2) = search_both(
        sharded_index.open_ondisk(tmp_path / "merged.faiss"), reference, queries
    )
    assert np.array_equal(i1, i2) and np.array_equal(d1, d2)
    rows = sharded_index.open_stored(stored)
    assert np.array_equal(rows[expected_ids], expected_vectors.astype(np.float16))


def test_parquet_of_another_model_or_dim_is_refused(tmp_path, data):
    vectors, _ = data
    write_parquet(tmp_path / "a.parquet", ["k0", "k1"], vectors[:2], fingerprint="other-model")
    with pytest.raises(EmbeddingsImportError, match="model"):
        list(read_shard_vectors(tmp_path / "a.parquet", dim=DIM, fingerprint="fp-test"))
    with pytest.raises(EmbeddingsImportError, match=r"fixed_size_list<float32>\[64\]"):
        list(read_shard_vectors(tmp_path / "a.parquet", dim=64))


# ---------------------------------------------------------------- generations served memory-mapped


def catalog(folder: Path, n: int) -> Path:
    """Two photos per product; category 'rare' is the last 4 products (k=5 asks for more: the exact
    fallback)."""
    return write_catalog_rows(
        folder,
        (
            [
                f"P{i // 2:05d}",
                f"img/{i:05d}.jpg",
                f"Product {i // 2}",
                "rare" if i >= n - 8 else "common",
                "1.00",
            ]
            for i in range(n)
        ),
    )


@pytest.fixture(scope="module")
def model():
    from vsearch.embeddings.imported import ModelIdentity

    return ModelIdentity(
        name="vectors",
        spec="vectors",
        pretrained=None,
        fingerprint="vectors-32",
        dim=DIM,
        supports_text=False,
    )


@pytest.fixture(scope="module")
def flat_index(tmp_path_factory, data, model):
    root = tmp_path_factory.mktemp("flat")
    build_index(
        catalog(root, len(data[0])),
        root / "index",
        embedder=model,
        embeddings=data[0],
        index_type="flat",
    )
    return ProductIndex.load(root / "index", model)


@pytest.fixture
def no_reconstruct_n(monkeypatch):
    """Any reconstruct_n on any FAISS index fails the test."""
    import faiss

    def refuse(*args, **kwargs):
        raise AssertionError("reconstruct_n materialises the whole index")

    for obj in vars(faiss).values():
        if isinstance(obj, type) and "reconstruct_n" in vars(obj):
            monkeypatch.setattr(obj, "reconstruct_n", refuse)


@pytest.mark.parametrize("index_type", store.SHARDED_TYPES)
def test_a_memory_mapped_generation_serves_qe_and_mean_scoring_without_reconstructing(
    tmp_path, data, model, flat_index, index_type, monkeypatch, no_reconstruct_n
):
    import faiss

    vectors, queries = data
    monkeypatch.setattr(sharded_index, "SHARD_VECTORS", 1500)  # three shards
    build_index(
        catalog(tmp_path, len(vectors)),
        tmp_path / "index",
        embedder=model,
        embeddings=vectors,
        index_type=index_type,
    )
    index = ProductIndex.load(tmp_path / "index", model)
    gen = tmp_path / "index" / index.generation
    assert index.manifest["format_version"] == store.FORMAT_VERSION
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index._gen.faiss).invlists)
    if index_type == "ivfpq-fs":
        # fast-scan codes (m/2 bytes a vector) are held in memory
        assert not (gen / store.IVFDATA_FILE).exists()
    else:
        assert (gen / store.IVFDATA_FILE).is_file() and isinstance(lists, faiss.OnDiskInvertedLists)
    reranked = index_type in store.RERANKED_TYPES
    assert (gen / store.STORED_VECTORS_FILE).is_file() == reranked
    assert (index._gen.stored is not None) == reranked and not any(
        p.name == ".shards" for p in gen.iterdir()
    )
    for q in queries[:8]:
        for options in (
            {},
            {"query_expansion": {"k": 3, "alpha": 3.0}},
            {"product_scoring": "mean"},
            {"product_scoring": "top2"},
            {"filters": {"category": "rare"}},
        ):
            got = index.search_vector(q, k=5, **options)
            want = flat_index.search_vector(q, k=5, **options)
            # the same answer up to float16 rounding (which may swap two products a few 1e-4 apart)
            assert got[0].product_id == want[0].product_id, (index_type, options)
            assert len({h.product_id for h in got} & {h.product_id for h in want}) >= 4, (
                index_type,
                options,
            )
            assert np.allclose([h.score for h in got], [h.score for h in want], atol=3e-3), (
                index_type,
                options,
            )
    depths = []  # a product search needs the measured recall for its first 2 (k + 1) images only
    real_rerank = sharded_index.rerank
    monkeypatch.setattr(
        sharded_index,
        "rerank",
        lambda *a, **kw: depths.append(a[6:7] or kw.get("depth")) or real_rerank(*a, **kw),
    )
    index.search_vector(queries[0], k=5)
    assert depths == ([(12,)] if reranked else [])


def test_run_tasks_refuses_an_unknown_engine():
    from vsearch.errors import VsearchError

    with pytest.raises(VsearchError, match="not one of local, ray"):
        sharded_index.run_tasks(print, [()], engine="dask")


@pytest.mark.slow
def test_ray_tasks_build_the_same_shards_as_the_local_pool(tmp_path, data):
    ray = pytest.importorskip("ray")
    import faiss

    vectors, queries = data
    sample, factory = vectors[::2], "IVF32,SQfp16"
    built = {}
    try:
        for engine in ("local", "ray"):
            if engine == "ray":
                ray.init(
                    address="local",
                    num_cpus=1,
                    include_dashboard=False,
                    log_to_driver=False,
                    object_store_memory=100 * 1024**2,
                )
            out = tmp_path / engine
            out.mkdir()
            built[engine] = sharded_index.build_ondisk(
                out,
                "vectors.faiss",
                factory,
                sample=sample,
                nprobe=8,
                shards=sharded_index.shards_of(vectors, size=1500),
                n_ids=len(vectors),
                engine=engine,
                workers=2,
            )
    finally:
        ray.shutdown()
    (d1, i1), (d2, i2) = search_both(built["ray"], built["local"], queries)
    assert np.array_equal(i1, i2) and np.array_equal(d1, d2)
    assert faiss.extract_index_ivf(built["ray"]).ntotal == len(vectors)


# ---------------------------------------------------------------- a build that never holds every
# vector


def _parquet_shards(folder: Path, images: list[str], vectors: np.ndarray, files: int) -> Path:
    """``files`` Parquet files of (image, vector), the rows shuffled across them (matched by key,
    not order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    order = np.random.default_rng(5).permutation(len(images))
    for f, part in enumerate(np.array_split(order, files)):
        table = pa.table(
            {
                "image": pa.array([images[i] for i in part]),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors[part].reshape(-1)), vectors.shape[1]
                ),
            }
        )
        pq.write_table(table, folder / f"part-{f:05d}.parquet", row_group_size=500)
    return folder


# vectors per add task, IVF/PQ training sample, import step
STREAM = {"shard": 1000, "sample": 2000, "batch": 500}


def _streamed_build(
    tmp_path, monkeypatch, *, n: int, dim: int, views: int, on_disk: bool, **options
):
    """An ivfpq build (PQ4x8: quick to train) of ``n`` images from 6 Parquet files, with the sizes
    of STREAM; ``on_disk`` picks the streamed build or the in-memory one. Returns (the index, the
    vectors, the peak bytes tracemalloc saw during the build)."""
    import tracemalloc

    import faiss  # noqa: F401  (imported before measuring: module imports are not the build's memory)
    import pyarrow.parquet  # noqa: F401

    from vsearch import build as build_module
    from vsearch.catalog.rows import read_catalog
    from vsearch.embeddings import pipeline
    from vsearch.embeddings.imported import ModelIdentity

    rng = np.random.default_rng(11)
    centres = unit(rng, 60, dim)
    vectors = centres[rng.integers(0, 60, n)] + 0.7 * unit(rng, n, dim)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    images = [f"img/{i:05d}.jpg" for i in range(n)]
    cat = read_catalog(
        write_catalog_rows(
            tmp_path / "shop",
            (
                [f"P{i // views:05d}", images[i], f"Product {i // views}", "mug", "1.00"]
                for i in range(n)
            ),
        )
    )
    shards = _parquet_shards(tmp_path / "parquet", images, vectors, files=6)
    model = ModelIdentity(
        name="vectors",
        spec="vectors",
        pretrained=None,
        fingerprint=f"vectors-{dim}",
        dim=dim,
        supports_text=False,
    )
    monkeypatch.setattr(build_module, "ON_DISK_MIN_VECTORS", 0 if on_disk else 10**9)
    monkeypatch.setattr(pipeline, "ASSEMBLE_ROWS", STREAM["batch"])
    monkeypatch.setattr(sharded_index, "SHARD_VECTORS", STREAM["shard"])
    monkeypatch.setattr(store, "TRAIN_SAMPLE_MAX", STREAM["sample"])
    # exactly STREAM["sample"], however many lists
    monkeypatch.setattr(store, "MIN_TRAIN_PER_LIST", 0)
    monkeypatch.setattr(store, "_pq_subquantizers", lambda d: 4)
    tracemalloc.start()
    try:
        build_index(
            cat,
            tmp_path / "index",
            embedder=model,
            embeddings=shards,
            index_type="ivfpq",
            **options,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not list((tmp_path / "index").glob(".tmp-*")), "the on-disk vectors outlived the build"
    return ProductIndex.load(tmp_path / "index", model), vectors, peak


def _same_answers(a: ProductIndex, b: ProductIndex, queries: np.ndarray) -> None:
    sa = np.load(a.index_dir / a.generation / store.STORED_VECTORS_FILE)
    sb = np.load(b.index_dir / b.generation / store.STORED_VECTORS_FILE)
    # the same float16 vectors up to one rounding step: BLAS may sum a shard's product in another
    # order than the whole matrix's (a projection left out would differ by far more)
    assert sa.shape == sb.shape and np.allclose(
        sa.astype(np.float32), sb.astype(np.float32), rtol=2e-3, atol=1e-4
    )
    for q in queries:
        got, want = a.search_vector(q, k=10), b.search_vector(q, k=10)
        assert [h.product_id for h in got] == [h.product_id for h in want]
        assert np.allclose([h.score for h in got], [h.score for h in want], atol=1e-6)


def test_a_streamed_ivfpq_build_from_parquet_answers_like_the_in_memory_one_holding_one_shard(
    tmp_path, monkeypatch
):
    """tracemalloc sees every numpy array the build allocates (not FAISS's C++ memory). What does
    not depend on the vectors' width (the catalog's Python objects) is taken out by a build of the
    same catalog at width 8: what is left grows with one shard + the training sample + a few
    import steps in the streamed build, and with all the vectors in the in-memory one."""
    n, dim, small = 12_000, 256, 8
    streamed, vectors, peak_streamed = _streamed_build(
        tmp_path / "streamed", monkeypatch, n=n, dim=dim, views=1, on_disk=True
    )
    in_memory, _, peak_in_memory = _streamed_build(
        tmp_path / "memory", monkeypatch, n=n, dim=dim, views=1, on_disk=False
    )
    _, _, peak_small = _streamed_build(
        tmp_path / "small", monkeypatch, n=n, dim=small, views=1, on_disk=True
    )
    assert streamed.manifest["sharded_build"]["shards"] == n // STREAM["shard"]
    _same_answers(streamed, in_memory, vectors[::1000])

    every = n * (dim - small) * 4  # all the vectors' bytes beyond width 8
    bound = (STREAM["shard"] + STREAM["sample"] + 6 * STREAM["batch"]) * (dim - small) * 4
    assert bound <= every / 2
    print(
        f"vector-width-dependent peak: streamed {(peak_streamed - peak_small) / 1e6:.1f} MB, in "
        "memory "
        f"{(peak_in_memory - peak_small) / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB, all vectors "
        f"{every / 1e6:.1f} MB"
    )
    assert peak_in_memory - peak_small > every  # the measurement does see the vectors
    assert peak_streamed - peak_small < bound, (peak_streamed, peak_small, bound, every)


def test_a_streamed_build_applies_the_learned_projection_a_shard_at_a_time(tmp_path, monkeypatch):
    """Two views per product: the projection is fitted (on every vector, memory-mapped) and applied
    shard by shard into another memory map; the answers are the in-memory build's."""
    from vsearch.store import sharded as shards_module

    calls = []
    real = shards_module.map_shards
    monkeypatch.setattr(
        shards_module,
        "map_shards",
        lambda fn, x, out, size=None: calls.append(len(x)) or real(fn, x, out, size),
    )
    streamed, vectors, _ = _streamed_build(
        tmp_path / "streamed", monkeypatch, n=4000, dim=32, views=2, on_disk=True
    )
    in_memory, _, _ = _streamed_build(
        tmp_path / "memory", monkeypatch, n=4000, dim=32, views=2, on_disk=False
    )
    assert (
        streamed.manifest["adaptation"]["state"]
        == in_memory.manifest["adaptation"]["state"]
        == "fitted"
    )
    assert calls == [4000]
    _same_answers(streamed, in_memory, vectors[::400])


def test_the_training_sample_grows_with_the_lists_past_the_fixed_cap():
    # 1 M vectors: 65 a list
    assert store.training_sample_size("ivfpq", 4000) == store.TRAIN_SAMPLE_MAX
    # 100 M vectors: 39 a list, not 6.6
    assert store.training_sample_size("ivfpq", 40_000) == 39 * 40_000
    assert store.training_sample_size("ivf", 1024) == 64 * 1024  # ivf stops at 64 a list
    assert store.training_sample_size("ivf", 65_536) == 39 * 65_536


def test_a_streamed_build_whitens_from_a_sample_a_shard_at_a_time_and_refuses_dba(
    tmp_path, monkeypatch
):
    """Whitening at scale is fitted on the training sample (STREAM["sample"] of 4,000 vectors) and
    applied shard by shard into a memory map; it answers like a whitening fitted on every vector
    in memory. DBA needs every vector at once, so such a build refuses it before any work."""
    from vsearch.errors import VsearchError
    from vsearch.store import sharded as shards_module

    calls = []
    real = shards_module.map_shards
    monkeypatch.setattr(
        shards_module,
        "map_shards",
        lambda fn, x, out, size=None: calls.append(len(x)) or real(fn, x, out, size),
    )
    options = {"adapt": "off", "whitening": {"power": 0.5, "shrinkage": 0.1}}
    streamed, vectors, _ = _streamed_build(
        tmp_path / "streamed", monkeypatch, n=4000, dim=32, views=2, on_disk=True, **options
    )
    in_memory, _, _ = _streamed_build(
        tmp_path / "memory", monkeypatch, n=4000, dim=32, views=2, on_disk=False, **options
    )
    assert streamed.manifest["postprocess"]["whitening"]["fitted_on"] == STREAM["sample"]
    assert in_memory.manifest["postprocess"]["whitening"]["fitted_on"] == 4000
    assert calls == [4000], "the whitened vectors were made a shard at a time"
    queries = vectors[::100]
    same = [
        streamed.search_vector(q, k=1)[0].product_id
        == in_memory.search_vector(q, k=1)[0].product_id
        for q in queries
    ]
    assert np.mean(same) >= 0.9

    with pytest.raises(VsearchError, match="DBA .* not available for an ivfpq build"):
        _streamed_build(
            tmp_path / "dba", monkeypatch, n=4000, dim=32, views=2, on_disk=True, dba={"k": 2}
        )
    assert (
        not (tmp_path / "dba" / "index").exists()
        or store.read_current(tmp_path / "dba" / "index", missing_ok=True) is None
    )


def test_a_streamed_build_from_the_embedding_cache_equals_the_in_memory_build(
    tmp_path, monkeypatch
):
    """The model path: vectors the build embedded are not kept in memory but read back from the
    cache into the on-disk matrix, a step at a time; a rebuild reads them all from the cache."""
    from conftest import FakeEmbedder, write_catalog

    from vsearch import build as build_module
    from vsearch.embeddings import pipeline

    shop = write_catalog(tmp_path / "shop", n_products=30)
    monkeypatch.setattr(pipeline, "ASSEMBLE_ROWS", 7)
    answers = {}
    for mode, threshold in (("disk", 0), ("memory", 10**9)):
        monkeypatch.setattr(build_module, "ON_DISK_MIN_VECTORS", threshold)
        for attempt in ("embedded", "from cache"):
            embedder = FakeEmbedder()
            report = build_index(
                shop, tmp_path / mode, embedder=embedder, index_type="ivf", adapt="refit"
            )
            assert (report.embedded > 0) == (attempt == "embedded")
            index = ProductIndex.load(tmp_path / mode, embedder)
            answers[mode, attempt] = [
                [(h.product_id, round(h.score, 5)) for h in index.search(image=p, k=5)]
                for p in sorted((tmp_path / "shop" / "images").glob("*.jpg"))[:10]
            ]
            assert not list((tmp_path / mode).glob(".tmp-*"))
    assert (
        answers["disk", "embedded"]
        == answers["memory", "embedded"]
        == answers["disk", "from cache"]
    )


def test_a_product_search_re_ranks_enough_candidates_for_its_first_results_not_every_image(
    monkeypatch,
):
    """rerank scores factor x depth approximate candidates exactly (at least the n it returns):
    a product search fetches 4k images to fold into k products, but only its first 2 (k + 1) need
    the measured recall (bench_product_rerank: ivfpq-fs 1,408 rows instead of 2,560 a query)."""
    rng = np.random.default_rng(0)
    stored = rng.standard_normal((5000, 8)).astype(np.float16)
    query = rng.standard_normal(8).astype(np.float32)
    asked = []

    def approximate(m):  # a PQ pass that returns the first m ids in a fixed shuffled order
        asked.append(m)
        ids = rng.permutation(5000)[:m]
        return np.zeros(m, np.float32), ids

    scores, ids = sharded_index.rerank(approximate, stored, query, 40, 5000, 64, depth=11)
    assert asked[-1] == 64 * 11 and len(ids) == 40
    assert np.all(np.diff(scores) <= 0) and np.allclose(
        scores, stored[ids].astype(np.float32) @ query, atol=1e-3
    )
    sharded_index.rerank(approximate, stored, query, 40, 5000, 64)
    assert asked[-1] == 64 * 40  # without depth: every one of the n
    sharded_index.rerank(approximate, stored, query, 40, 5000, 1, depth=11)
    assert asked[-1] == 64  # never fewer than RERANK_MIN or n
