"""Crash safety, full disks and serving while rebuilding: a shop never loses its working index.

The kill test runs the real CLI in a subprocess and SIGKILLs it mid-build several times; the
other tests simulate the same failures in-process where a subprocess could not aim them.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FakeEmbedder, write_catalog_rows
from PIL import Image

from vsearch import cli
from vsearch.build import build_index
from vsearch.embeddings.cache import EmbeddingCache
from vsearch.errors import VsearchError
from vsearch.search import ProductIndex
from vsearch.store import generations as store


def noise_catalog(folder: Path, ids: list[str], n_images: int, *, title: str = "") -> Path:
    """One product per distinct random-noise image (so every image has its own hash and vector)."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        p = images / f"{i:04d}.png"
        if not p.exists():
            arr = np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(p)
    return write_catalog_rows(
        folder,
        (
            [pid, f"images/{i:04d}.png", title or f"product {pid}", "noise", f"{1 + i % 50}.00"]
            for i, pid in enumerate(ids)
        ),
    )


def fingerprint_of(hits) -> list[tuple[str, float, str]]:
    return [(h.product_id, round(h.score, 5), h.title) for h in hits]


def cache_state(path: Path, dim: int) -> int:
    """Check the embedding cache is a sound SQLite file whose every vector has the model's dim;
    return its size."""
    db = sqlite3.connect(path, timeout=10)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        bad = db.execute(
            "SELECT COUNT(*) FROM embeddings WHERE dim != ? OR length(vector) != 4 * ?", (dim, dim)
        ).fetchone()[0]
        assert bad == 0, f"{bad} cached vectors have the wrong size"
        return db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    finally:
        db.close()


def cached_count(path: Path) -> int:
    try:
        db = sqlite3.connect(path, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:  # not created yet, or the table is not there yet
        return 0


# ---------------------------------------------------------------- SIGKILL mid-build (real CLI)


def test_sigkilled_builds_keep_the_old_index_and_the_cache_and_the_next_build_resumes(tmp_path):
    from vsearch.embedders import load_embedder

    embedder = load_embedder("test-tiny")
    shop, idx = tmp_path / "shop", tmp_path / "idx"
    old_ids = [f"OLD{i:03d}" for i in range(40)]
    csv_path = noise_catalog(shop, old_ids, 40)
    first = build_index(csv_path, idx, embedder=embedder, batch_size=16)
    queries = [shop / "images" / f"{i:04d}.png" for i in (0, 7, 33)]
    index = ProductIndex.load(idx, embedder)
    baseline = [fingerprint_of(index.search(image=q, k=5)) for q in queries]

    total = 300
    csv_path = noise_catalog(shop, old_ids + [f"NEW{i:03d}" for i in range(40, total)], total)
    cache_path = idx / store.CACHE_FILE
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSEARCH_")}
    env["HF_HUB_OFFLINE"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "vsearch",
        "build",
        str(csv_path),
        "--index",
        str(idx),
        "--model",
        "test-tiny",
        "--batch-size",
        "4",
        "--workers",
        "1",
        "--quiet",
    ]

    counts = [cache_state(cache_path, embedder.dim)]
    # Kill 1 while the process is still starting; kills 2-4 each once 30 more images were embedded.
    for kill in range(4):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        if kill == 0:
            time.sleep(0.3)
        else:
            while (
                cached_count(cache_path) < counts[-1] + 30
                and proc.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.02)
        assert proc.poll() is None, f"build finished before kill {kill}: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL

        # The previous index is untouched: same generation, identical answers.
        assert store.read_current(idx) == first.generation
        index = ProductIndex.load(idx, embedder)
        assert len(index) == 40
        assert [fingerprint_of(index.search(image=q, k=5)) for q in queries] == baseline
        # The cache is sound, every vector has the model's size, and nothing finished was lost.
        counts.append(cache_state(cache_path, embedder.dim))
        assert counts[-1] >= counts[-2]
        if kill > 0:
            assert counts[-1] < total, (
                "kill landed after embedding; the catalog is too small to aim it"
            )

    assert counts[-1] >= 40 + 90, f"killed builds kept too little: {counts}"

    # The next build completes and embeds only what no killed build had finished.
    report = build_index(csv_path, idx, embedder=embedder, batch_size=16)
    assert report.embedded == total - counts[-1] and report.reused == counts[-1]
    assert report.products == total and not report.skipped
    assert index.reload_if_changed() and len(index) == total
    assert index.search(image=shop / "images" / "0250.png", k=1)[0].product_id == "NEW250"
    assert not list(idx.glob(".tmp-*")) and not list(idx.glob(f".{store.CURRENT_FILE}.*"))
    assert cache_state(cache_path, embedder.dim) == total


class _Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so no `except Exception` in the code swallows it."""


@pytest.mark.parametrize("crash_at", [0, 1, 2, "cleanup"])
def test_crash_at_every_step_of_publishing_leaves_a_loadable_index(tmp_path, monkeypatch, crash_at):
    """A kill between the renames of a publish (too narrow to hit with a timer) is simulated
    here."""
    shop, idx = tmp_path / "shop", tmp_path / "idx"
    csv_path = noise_catalog(shop, [f"A{i}" for i in range(10)], 20)
    first = build_index(csv_path, idx, embedder=FakeEmbedder())
    noise_catalog(shop, [f"B{i}" for i in range(20)], 20)

    calls = {"n": 0}
    real_replace = os.replace

    def replace(src, dst):  # os.replace calls in a build: manifest, generation folder, CURRENT
        if calls["n"] == crash_at:
            raise _Killed()
        calls["n"] += 1
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    if crash_at == "cleanup":
        monkeypatch.setattr(
            store, "cleanup_generations", lambda d: (_ for _ in ()).throw(_Killed())
        )
    # a killed process cleans nothing
    monkeypatch.setattr("vsearch.build.shutil.rmtree", lambda *a, **k: None)
    with pytest.raises(_Killed):
        build_index(csv_path, idx, embedder=FakeEmbedder())
    monkeypatch.undo()

    index = ProductIndex.load(idx, FakeEmbedder())
    if crash_at == "cleanup":  # CURRENT was already replaced: the new index is complete and live
        assert index.generation != first.generation and len(index) == 20
    else:
        assert index.generation == first.generation and len(index) == 10
    hit = index.search(image=shop / "images" / "0003.png", k=1)[0]
    assert hit.product_id in ("A3", "B3")

    report = build_index(csv_path, idx, embedder=FakeEmbedder())  # the next build tidies up
    assert report.embedded == 0 and report.products == 20
    assert not list(idx.glob(".tmp-*")) and not list(idx.glob(f".{store.CURRENT_FILE}.*"))
    assert len(list(idx.glob(f"{store.GENERATION_PREFIX}*"))) <= 1 + store.KEEP_OLD_GENERATIONS


# ---------------------------------------------------------------- full disk, unwritable folder


def test_index_folder_that_cannot_be_created_is_a_clear_error(tmp_path, capsys, monkeypatch):
    # Tests run as root in CI, where chmod does not stop writes: a regular file where a folder must
    # go does.
    csv_path = noise_catalog(tmp_path / "shop", ["P1", "P2"], 2)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(VsearchError, match="cannot write to the index folder .*not-a-folder/idx"):
        build_index(csv_path, blocker / "idx", embedder=FakeEmbedder())

    monkeypatch.setattr(
        "vsearch.embedders.load_embedder",
        lambda *a, **k: pytest.fail("model loaded before the folder check"),
    )
    assert cli.main(["build", str(csv_path), "--index", str(blocker / "idx"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("vsearch: error: cannot write to the index folder") and "not-a-folder" in err
    )
    assert "Traceback" not in err and err.count("\n") == 1


def _two_versions(tmp_path):
    shop, idx = tmp_path / "shop", tmp_path / "idx"
    csv_path = noise_catalog(shop, [f"A{i}" for i in range(10)], 10)
    first = build_index(csv_path, idx, embedder=FakeEmbedder())
    before = fingerprint_of(
        ProductIndex.load(idx, FakeEmbedder()).search(image=shop / "images" / "0002.png", k=5)
    )
    noise_catalog(shop, [f"B{i}" for i in range(16)], 16)  # 6 new images to embed
    return csv_path, idx, first, before, shop


def _assert_unchanged(idx, first, before, shop):
    index = ProductIndex.load(idx, FakeEmbedder())
    assert index.generation == first.generation and len(index) == 10
    assert fingerprint_of(index.search(image=shop / "images" / "0002.png", k=5)) == before
    assert not list(idx.glob(".tmp-*"))


def test_read_only_file_system_at_publish_is_a_clear_error_and_the_old_index_stays(
    tmp_path, monkeypatch
):
    csv_path, idx, first, before, shop = _two_versions(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == store.CURRENT_FILE:
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(
        VsearchError,
        match=f"could not write the index in {idx}.*Read-only.*previous index is unchanged",
    ):
        build_index(csv_path, idx, embedder=FakeEmbedder())
    monkeypatch.undo()
    _assert_unchanged(idx, first, before, shop)
    # works once the disk is back
    assert build_index(csv_path, idx, embedder=FakeEmbedder()).products == 16


def test_disk_full_while_caching_embeddings_is_a_clear_error_and_the_old_index_stays(
    tmp_path, monkeypatch
):
    csv_path, idx, first, before, shop = _two_versions(tmp_path)

    def full(self, *a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(EmbeddingCache, "put_many", full)
    with pytest.raises(
        VsearchError,
        match=r"embedding cache .*cache\.sqlite failed \(database or disk is full\).*unchanged",
    ):
        build_index(csv_path, idx, embedder=FakeEmbedder(), batch_size=2)
    monkeypatch.undo()
    _assert_unchanged(idx, first, before, shop)


def test_damaged_cache_file_is_a_clear_error_naming_it(tmp_path):
    csv_path, idx, first, before, shop = _two_versions(tmp_path)
    for p in idx.glob(f"{store.CACHE_FILE}*"):
        p.unlink()
    (idx / store.CACHE_FILE).write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(VsearchError, match=r"cache\.sqlite.*delete that file"):
        build_index(csv_path, idx, embedder=FakeEmbedder())
    _assert_unchanged(idx, first, before, shop)
    (idx / store.CACHE_FILE).unlink()
    assert build_index(csv_path, idx, embedder=FakeEmbedder()).embedded == 16  # the advice works


# ---------------------------------------------------------------- serving while rebuilding


class SlowFakeEmbedder(FakeEmbedder):
    """Stretches the build so that many searches run while it is in progress."""

    def embed_batch(self, batch):
        time.sleep(0.03)
        return super().embed_batch(batch)


def test_searches_during_a_rebuild_see_old_or_new_never_a_mix_and_switch_without_restart(tmp_path):
    shop, idx = tmp_path / "shop", tmp_path / "idx"
    csv_path = noise_catalog(shop, [f"OLD{i:02d}" for i in range(20)], 20, title="old")
    build_index(csv_path, idx, embedder=FakeEmbedder())
    index = ProductIndex.load(idx, FakeEmbedder())
    queries = [shop / "images" / f"{i:04d}.png" for i in (1, 5, 12)]
    noise_catalog(shop, [f"NEW{i:02d}" for i in range(40)], 40, title="new")

    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:  # what a server does per request: pick up a published index, then answer
        n = 0
        while not stop.is_set():
            try:
                index.reload_if_changed()
                hits = index.search(image=queries[n % len(queries)], k=5)
                n += 1
                versions = {h.product_id[:3] for h in hits} | {h.title.upper() for h in hits}
                assert len(hits) == 5 and len(versions) == 1, (
                    f"mixed result: {fingerprint_of(hits)}"
                )
                seen.append(versions.pop())
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    searcher = threading.Thread(target=serve)
    searcher.start()
    try:
        time.sleep(0.1)
        report = build_index(csv_path, idx, embedder=SlowFakeEmbedder(), batch_size=2, workers=1)
        deadline = time.monotonic() + 5
        while (not seen or seen[-1] != "NEW") and not errors and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        searcher.join(timeout=10)
    assert not errors, errors[0]
    assert report.embedded == 20
    # Answers kept coming during the build, the switch happened once, and never back.
    switch = seen.index("NEW")
    assert switch > 10, f"only {switch} searches ran during the build"
    assert set(seen[:switch]) == {"OLD"} and set(seen[switch:]) == {"NEW"}
    assert index.generation == report.generation and len(index) == 40
    assert index.search(image=shop / "images" / "0033.png", k=1)[0].product_id == "NEW33"
