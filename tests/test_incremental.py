"""Incremental rebuilds (vsearch.store.incremental) and `vsearch gc`.

An updated index must answer like a from-scratch build (same top-k for flat and IVF with the
same quantizer, HNSW recall within 0.005), never return a removed product, fall back to a full
build past the documented fractions, and survive a SIGKILL like any build.
"""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import FakeEmbedder

from vsearch.build import build_index
from vsearch.search import ProductIndex
from vsearch.store import generations as store
from vsearch.store import incremental as incremental

DIM = FakeEmbedder.dim


def vectors_of(ids: list[str], dim: int = DIM, salt: int = 0) -> np.ndarray:
    """A fixed, clustered unit vector per product id (the same id gives the same vector in every
    build)."""
    centres = np.random.default_rng(99).standard_normal((20, dim))
    out = np.empty((len(ids), dim), dtype=np.float32)
    for row, pid in enumerate(ids):
        rng = np.random.default_rng(int(pid[1:]) * 7 + salt)
        out[row] = centres[int(pid[1:]) % 20] + 0.8 * rng.standard_normal(dim)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_ids(path: Path, ids: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title"])
        w.writerows([pid, f"img/{pid}.jpg", f"product {pid}"] for pid in ids)
    return path


def build(
    folder: Path, ids: list[str], index_type: str, vectors: np.ndarray | None = None, embedder=None
):
    return build_index(
        write_ids(folder / "catalog.csv", ids),
        folder / "idx",
        embedder=embedder or FakeEmbedder(),
        embeddings=vectors_of(ids) if vectors is None else vectors,
        index_type=index_type,
    )


def edit(ids: list[str], n_removed: int, n_added: int, start: int) -> list[str]:
    """Drop every k-th product (n_removed of them) and append n_added new ones."""
    step = len(ids) // max(n_removed, 1)
    removed = set(ids[::step][:n_removed])
    return [p for p in ids if p not in removed] + [f"P{start + i}" for i in range(n_added)]


def top_ids(index: ProductIndex, queries: np.ndarray, k: int = 10) -> list[list[str]]:
    return [[h.product_id for h in index.search_vector(q, k=k)] for q in queries]


def queries_near(vectors: np.ndarray, n: int = 60) -> np.ndarray:
    rng = np.random.default_rng(5)
    q = vectors[rng.choice(len(vectors), n, replace=False)] + 0.05 * rng.standard_normal(
        (n, vectors.shape[1])
    )
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------- equal to a from-scratch build


def test_flat_update_answers_like_a_from_scratch_build(tmp_path):
    ids = [f"P{i}" for i in range(600)]
    build(tmp_path / "inc", ids, "flat")
    new_ids = edit(ids, 12, 9, start=600)
    changed = vectors_of(new_ids)
    changed[5] = vectors_of([new_ids[5]], salt=1)[0]  # P5 gets a new photo (new vector, same key)
    report = build(tmp_path / "inc", new_ids, "flat", vectors=changed)
    assert (
        report.incremental["base"]
        and report.incremental["added"] == 10
        and report.incremental["removed"] == 13
    )
    scratch = build(tmp_path / "scratch", new_ids, "flat", vectors=changed)
    assert "base" not in scratch.incremental

    inc, ref = (
        ProductIndex.load(tmp_path / "inc" / "idx", FakeEmbedder()),
        ProductIndex.load(tmp_path / "scratch" / "idx", FakeEmbedder()),
    )
    q = queries_near(changed)
    a = [[(h.product_id, round(h.score, 5)) for h in inc.search_vector(v, k=10)] for v in q]
    b = [[(h.product_id, round(h.score, 5)) for h in ref.search_vector(v, k=10)] for v in q]
    assert a == b
    assert inc.search_vector(changed[5], k=1)[0].product_id == new_ids[5]
    assert inc.search_vector(changed[5], k=1)[0].score > 0.999


def test_ivf_rebuild_reuses_the_trained_quantizer_and_answers_like_a_build_with_it(tmp_path):
    """IVF lists live on disk, merged from shards: a small change rebuilds them on the previous
    generation's trained quantizer (no training) and answers exactly like a build with that
    quantizer."""
    from vsearch.store import sharded as sharded_index

    ids = [f"P{i}" for i in range(2500)]
    first = build(tmp_path, ids, "ivf")
    new_ids = edit(ids, 40, 30, start=2500)
    report = build(tmp_path, new_ids, "ivf")
    assert report.incremental["quantizer_from"] == first.generation
    assert (report.incremental["added"], report.incremental["removed"]) == (30, 40)
    timings = store.read_manifest(tmp_path / "idx" / report.generation)["sharded_build"]
    assert timings["train_s"] < 1.0  # nothing was trained

    # A build with the same quantizer: the first generation's trained index, filled with the new
    # catalog.
    ref = sharded_index.empty_copy(tmp_path / "idx" / first.generation / store.VECTORS_FILE)
    vectors = vectors_of(new_ids)
    ref.add(vectors)
    q = queries_near(vectors)
    _, ref_ids = ref.search(q, 10)
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    assert top_ids(index, q) == [[new_ids[i] for i in row if i >= 0] for row in ref_ids]
    a = faiss_centroids(tmp_path / "idx" / first.generation)
    assert np.array_equal(a, faiss_centroids(tmp_path / "idx" / report.generation))

    # ivfpq-fs is repacked in memory: always trained afresh
    build(tmp_path / "fs", ids, "ivfpq-fs")
    assert "always rebuilt" in build(tmp_path / "fs", new_ids, "ivfpq-fs").incremental["full_build"]


def faiss_centroids(generation: Path) -> np.ndarray:
    import faiss

    from vsearch.store import sharded as sharded_index

    # keep it alive while its quantizer is read
    index = sharded_index.empty_copy(generation / store.VECTORS_FILE)
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def test_hnsw_update_has_the_recall_of_a_from_scratch_build_and_never_returns_removed_products(
    tmp_path,
):
    ids = [f"P{i}" for i in range(3000)]
    build(tmp_path / "inc", ids, "hnsw")
    new_ids = edit(ids, 30, 30, start=3000)
    report = build(tmp_path / "inc", new_ids, "hnsw")
    assert report.incremental["hidden"] == 30 and report.incremental["added"] == 30
    build(tmp_path / "scratch", new_ids, "hnsw")

    vectors = vectors_of(new_ids)
    q = queries_near(vectors, 200)
    truth = np.argsort(-(q @ vectors.T), axis=1)[:, :10]
    truth_ids = [{new_ids[i] for i in row} for row in truth]

    def recall(folder):
        index = ProductIndex.load(folder / "idx", FakeEmbedder())
        got = top_ids(index, q)
        return float(np.mean([len(set(g) & t) / 10 for g, t in zip(got, truth_ids)])), index

    r_inc, index = recall(tmp_path / "inc")
    r_ref, _ = recall(tmp_path / "scratch")
    assert r_inc >= r_ref - 0.005, (r_inc, r_ref)

    removed = sorted(set(ids) - set(new_ids))
    # a removed product's own vector: it would be the top hit if it were still there
    for v in vectors_of(removed):
        assert not set(h.product_id for h in index.search_vector(v, k=20)) & set(removed)
    assert not set(
        h.product_id
        for h in index.search_vector(
            vectors_of(removed)[0], k=20, filters={"title": [f"product {p}" for p in removed]}
        )
    )
    for pid, v in zip(new_ids[-30:], vectors[-30:]):  # every new product is found
        assert index.search_vector(v, k=1)[0].product_id == pid


# ---------------------------------------------------------------- when a full build is due


def test_a_large_change_is_a_full_build(tmp_path):
    ids = [f"P{i}" for i in range(400)]
    build(tmp_path, ids, "hnsw")
    report = build(tmp_path, edit(ids, 100, 0, start=400), "hnsw")  # 25 % removed
    assert "base" not in report.incremental and "changed" in report.incremental["full_build"]
    assert store.read_faiss(tmp_path / "idx" / report.generation).ntotal == 300


def test_hidden_hnsw_vectors_past_the_fraction_force_a_full_build(tmp_path, monkeypatch):
    # only the hidden-vector limit applies
    monkeypatch.setattr(incremental, "MAX_CHANGE_FRACTION", 1.0)
    ids = [f"P{i}" for i in range(400)]
    build(tmp_path, ids, "hnsw")
    ids = edit(ids, 48, 0, start=400)  # 12 % hidden: updated
    report = build(tmp_path, ids, "hnsw")
    assert report.incremental["hidden"] == 48
    assert store.read_faiss(tmp_path / "idx" / report.generation).ntotal == 400
    ids = edit(ids, 48, 0, start=400)  # 96 of 400 would be hidden: over 20 %
    report = build(tmp_path, ids, "hnsw")
    assert "base" not in report.incremental and "hidden" in report.incremental["full_build"]
    assert store.read_faiss(tmp_path / "idx" / report.generation).ntotal == 304
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    assert (
        len(index) == 304
        and index.search_vector(vectors_of(ids[-1:])[0], k=1)[0].product_id == ids[-1]
    )


def test_small_changes_add_up_to_a_full_build(tmp_path):
    ids = [f"P{i}" for i in range(2000)]
    build(tmp_path, ids, "hnsw")
    ids = edit(ids, 120, 120, start=2000)  # 12 % changed
    first = build(tmp_path, ids, "hnsw").incremental
    assert first["changed_since_full"] == 240
    ids = edit(ids, 120, 120, start=3000)  # another 12 %: 24 % since the full build
    second = build(tmp_path, ids, "hnsw").incremental
    assert "since the last full build" in second["full_build"] and second["changed_since_full"] == 0


def test_another_model_or_index_type_is_a_full_build(tmp_path):
    ids = [f"P{i}" for i in range(300)]
    build(tmp_path, ids, "flat")
    assert "index type" in build(tmp_path, ids, "hnsw").incremental["full_build"]
    assert (
        "model"
        in build(tmp_path, ids, "hnsw", embedder=FakeEmbedder("other")).incremental["full_build"]
    )
    assert build(tmp_path, ids, "hnsw", embedder=FakeEmbedder("other")).incremental["added"] == 0


# ---------------------------------------------------------------- SIGKILL during an incremental
# build


def test_sigkill_during_an_incremental_build_keeps_the_previous_incremental_generation(tmp_path):
    from vsearch.embedders import load_embedder

    embedder = load_embedder("test-tiny")
    ids = [f"P{i}" for i in range(20000)]
    build(tmp_path, ids, "hnsw", vectors=vectors_of(ids, embedder.dim), embedder=embedder)
    ids = edit(ids, 100, 100, start=20000)
    live = build(tmp_path, ids, "hnsw", vectors=vectors_of(ids, embedder.dim), embedder=embedder)
    assert live.incremental["hidden"] == 100  # the live generation is itself an incremental one
    index = ProductIndex.load(tmp_path / "idx", embedder)
    probes = vectors_of(["P7", "P20050", "P0"], embedder.dim)  # kept, added, removed
    before = [
        [(h.product_id, round(h.score, 5)) for h in index.search_vector(v, k=5)] for v in probes
    ]
    assert before[2][0][0] != "P0"

    next_ids = edit(ids, 100, 100, start=30000)
    np.save(tmp_path / "next.npy", vectors_of(next_ids, embedder.dim))
    write_ids(tmp_path / "catalog.csv", next_ids)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSEARCH_")}
    env["HF_HUB_OFFLINE"] = "1"
    # temporary folders of builds killed already (the next build removes them)
    seen: set[str] = set()
    cmd = [
        sys.executable,
        "-m",
        "vsearch",
        "build",
        str(tmp_path / "catalog.csv"),
        "--index",
        str(tmp_path / "idx"),
        "--model",
        "test-tiny",
        "--embeddings",
        str(tmp_path / "next.npy"),
        "--index-type",
        "hnsw",
        "--quiet",
    ]
    # Kill 1 once the new generation's folder exists (the index update is under way); kill 2 once
    # the updated FAISS file is being written there (the update is done, nothing is published yet).
    for ready in (lambda tmp: True, lambda tmp: (tmp / store.VECTORS_FILE).exists()):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            tmp = [t for t in (tmp_path / "idx").glob(".tmp-gen-*") if t.name not in seen]
            if tmp and ready(tmp[0]):
                seen.add(tmp[0].name)
                break
            time.sleep(0.0005)
        assert proc.poll() is None, (
            f"the build finished before it could be killed: {proc.communicate()}"
        )
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL

        assert store.read_current(tmp_path / "idx") == live.generation
        index = ProductIndex.load(tmp_path / "idx", embedder)
        assert [
            [(h.product_id, round(h.score, 5)) for h in index.search_vector(v, k=5)] for v in probes
        ] == before

    report = build_index(
        tmp_path / "catalog.csv",
        tmp_path / "idx",
        embedder=embedder,
        embeddings=np.load(tmp_path / "next.npy"),
        index_type="hnsw",
    )
    assert report.incremental["base"] == live.generation and report.incremental["hidden"] == 200
    assert index.reload_if_changed() and len(index) == len(next_ids)
    assert (
        index.search_vector(vectors_of(["P30050"], embedder.dim)[0], k=1)[0].product_id == "P30050"
    )
    assert not list((tmp_path / "idx").glob(".tmp-*"))


# ---------------------------------------------------------------- vsearch gc


def test_gc_drops_what_no_generation_uses_and_keeps_the_live_and_previous_ones(tmp_path, capsys):
    from conftest import write_catalog

    from vsearch import cli
    from vsearch.store.gc import collect_garbage

    shop, idx = tmp_path / "shop", tmp_path / "idx"
    csv_path = write_catalog(shop, n_products=12)
    build_index(csv_path, idx, embedder=FakeEmbedder())
    with open(csv_path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    downloads = idx / "downloads" / "objects" / "ab"
    downloads.mkdir(parents=True)
    (downloads / ("ab" + "0" * 62)).write_bytes(b"x" * 1000)  # a download no generation uses
    used_hash = _hashes(idx)[0]
    (idx / "downloads" / "objects" / used_hash[:2]).mkdir(exist_ok=True)
    # one a generation uses
    (idx / "downloads" / "objects" / used_hash[:2] / used_hash).write_bytes(b"y")

    def keep(n):  # the catalog with only its first n rows
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows[:n])

    keep(len(rows) - 2)
    build_index(csv_path, idx, embedder=FakeEmbedder())  # previous generation still has every image
    keep(len(rows) - 4)
    # now the two generations kept lack the last two rows
    build_index(csv_path, idx, embedder=FakeEmbedder())
    assert _cached(idx) == len(rows)
    # a vector of a used image, but by a model no generation uses
    db = sqlite3.connect(idx / store.CACHE_FILE)
    db.execute(
        "INSERT INTO embeddings SELECT content_hash, 'another-model', dim, vector FROM embeddings "
        "WHERE content_hash = ?",
        (used_hash,),
    )
    db.commit()
    db.close()
    total = _cached(idx)
    files_before = _cache_hashes(idx, "files")
    assert total == len(rows) + 1 and len(files_before) == len(rows)

    dry = collect_garbage(idx, dry_run=True)
    assert (dry.cache_rows, dry.file_rows, dry.downloads) == (3, 2, 1) and _cached(idx) == total
    assert cli.main(["gc", "--index", str(idx)]) == 0
    assert "deleted 3 cached embedding(s)" in capsys.readouterr().out
    assert _cached(idx) == total - 3
    # the remembered (path, size, mtime) -> hash rows go with the images no generation uses
    assert (
        set(_cache_hashes(idx, "files")) == set(files_before) & set(_hashes(idx, everything=True))
        and len(_cache_hashes(idx, "files")) == len(rows) - 2
    )
    assert not list(idx.glob(".gc-*")), "gc's scratch file is gone"
    # every image a generation uses stays cached
    assert set(_hashes(idx, everything=True)) <= set(_cache_hashes(idx))
    assert (idx / "downloads" / "objects" / used_hash[:2] / used_hash).exists()
    assert not (downloads / ("ab" + "0" * 62)).exists()
    report = build_index(csv_path, idx, embedder=FakeEmbedder())
    assert report.embedded == 0  # nothing the index uses was lost
    # the rows only the generation replaced just now had
    assert collect_garbage(idx).cache_rows == 2
    assert collect_garbage(idx).cache_rows == 0


def _hashes(idx: Path, everything: bool = False) -> list[str]:
    out = []
    gens = sorted(idx.glob("gen-*")) if everything else [idx / store.read_current(idx)]
    for gen in gens:
        db = sqlite3.connect(gen / store.PRODUCTS_FILE)
        out += [r[0] for r in db.execute("SELECT content_hash FROM images")]
        db.close()
    return out


def _cache_hashes(idx: Path, table: str = "embeddings") -> list[str]:
    """The content hashes of the cache's vectors, or (table="files") of its file-hash rows."""
    db = sqlite3.connect(idx / store.CACHE_FILE)
    try:
        return [r[0] for r in db.execute(f"SELECT content_hash FROM {table}")]
    finally:
        db.close()


def _cached(idx: Path) -> int:
    return len(_cache_hashes(idx))


def test_the_verdict_is_reused_after_a_small_change_and_recalibrated_after_a_large_one(tmp_path):
    from conftest import write_catalog

    csv_path = write_catalog(tmp_path / "shop", n_products=24)
    with open(csv_path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    def build_rows(n):
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows[:n])
        report = build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
        return store.read_manifest(tmp_path / "idx" / report.generation)["verdict"]

    first = build_rows(len(rows))
    assert "sources" in first and "calibrated_in" not in first
    small = build_rows(len(rows) - 1)  # 1 of 36 images: the calibration still holds
    assert small["calibrated_in"] and small["changed_since_calibration"] < 0.1
    live = store.read_manifest(tmp_path / "idx" / store.read_current(tmp_path / "idx"))
    assert "verdict_simulation" not in live, "a reused verdict needs no simulated shopper photos"
    assert {
        k: v for k, v in small.items() if k not in ("calibrated_in", "changed_since_calibration")
    } == first
    large = build_rows(len(rows) - 5)  # 5 of 36 since it was calibrated: over 10 %
    assert "calibrated_in" not in large
