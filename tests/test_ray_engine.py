"""`vsearch build --engine ray` on this machine: real Ray worker processes (not local_mode),
2 CPUs, a capped object store, and a hard timeout on every test so a hang fails instead of
blocking CI. Also the Parquet shards the Ray engine writes, which need no Ray."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import write_catalog

from vsearch.embeddings.cache import EmbeddingCache
from vsearch.embeddings.shards import (
    fill_from_shards,
    iter_embedding_shards,
    prune_shards,
    shard_fingerprint,
    shard_keys,
    write_embedding_shard,
)
from vsearch.errors import VsearchError
from vsearch.store import generations as store
from vsearch.store.gc import UsedKeys

TIMEOUT_S = 300
BAD_ROW = {
    "product_id": "BROKEN",
    "image": "images/broken.jpg",
    "title": "Broken",
    "category": "mug",
    "price": "1.00",
    "url": "",
    "brand": "",
    "color": "",
}


@pytest.fixture
def hard_timeout():
    """Fail (not hang) if a test runs past TIMEOUT_S."""

    def expire(signum, frame):
        raise TimeoutError(f"Ray test ran past {TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TIMEOUT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One Ray for this module, with 2 CPUs; its workers see the kill switch's file path."""
    ray = pytest.importorskip("ray")
    kill_switch = tmp_path_factory.mktemp("ray") / "kill-one-actor"
    from vsearch.embeddings.ray_engine import TEST_EXIT_ONCE_ENV

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        logging_level="warning",
        runtime_env={"env_vars": {TEST_EXIT_ONCE_ENV: str(kill_switch)}},
    )
    yield kill_switch
    ray.shutdown()


def _catalog(folder: Path, n_products: int = 10) -> Path:
    path = write_catalog(folder, n_products=n_products, extra_rows=[BAD_ROW])
    (folder / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return path


def _generation(index: Path) -> Path:
    return index / store.read_current(index)


def _image_rows(index: Path) -> list[tuple[str, int, str]]:
    db = sqlite3.connect(_generation(index) / "products.sqlite")
    try:
        return db.execute("SELECT source, row, content_hash FROM images ORDER BY vid").fetchall()
    finally:
        db.close()


def _raw(index: Path, hashes: list[str], fingerprint: str) -> np.ndarray:
    with EmbeddingCache(index / store.CACHE_FILE) as cache:
        got = cache.get_many(hashes, fingerprint)
    return np.stack([got[h] for h in hashes])


def test_ray_build_equals_local_build_and_embeds_in_workers(
    tmp_path, ray_cluster, hard_timeout, capsys
):
    from vsearch.cli import main
    from vsearch.search import ProductIndex

    catalog = _catalog(tmp_path / "shop")
    assert (
        main(
            [
                "build",
                str(catalog),
                "--index",
                str(tmp_path / "local"),
                "--model",
                "test-tiny",
                "--quiet",
            ]
        )
        == 0
    )
    local_err = capsys.readouterr().err
    assert (
        main(
            [
                "build",
                str(catalog),
                "--index",
                str(tmp_path / "ray"),
                "--model",
                "test-tiny",
                "--quiet",
                "--engine",
                "ray",
                "--ray-actors",
                "1",
            ]
        )
        == 0
    )
    ray_err = capsys.readouterr().err

    # the same images, rows and order; the same bad row, reported with its row number and message
    local_rows, ray_rows = _image_rows(tmp_path / "local"), _image_rows(tmp_path / "ray")
    assert ray_rows == local_rows and len(ray_rows) == 15
    bad = [line for line in ray_err.splitlines() if "broken.jpg" in line]
    assert bad and bad == [line for line in local_err.splitlines() if "broken.jpg" in line]
    assert bad[0].startswith("skipped row 17:")

    # the same vectors, raw and indexed
    manifest = store.read_manifest(_generation(tmp_path / "ray"))
    fp = manifest["model"]["fingerprint"]
    hashes = [h for _, _, h in ray_rows]
    cos = (_raw(tmp_path / "local", hashes, fp) * _raw(tmp_path / "ray", hashes, fp)).sum(axis=1)
    assert cos.min() >= 0.9999
    a, b = (
        store.read_faiss(_generation(tmp_path / "local")),
        store.read_faiss(_generation(tmp_path / "ray")),
    )
    assert a.ntotal == b.ntotal == len(ray_rows)
    assert np.allclose(a.reconstruct_n(0, a.ntotal), b.reconstruct_n(0, b.ntotal), atol=1e-5)
    # the same top-1 product for every catalog photo
    li, ri = ProductIndex.load(tmp_path / "local"), ProductIndex.load(tmp_path / "ray")
    for source, _, _ in ray_rows[:6]:
        assert (
            li.search(image=source, k=1)[0].product_id == ri.search(image=source, k=1)[0].product_id
        )

    # the Parquet shards hold exactly the vectors embedded, under the model's fingerprint
    shards = list((tmp_path / "ray" / "embeddings").glob("part-*.parquet"))
    assert shards and all(shard_fingerprint(p) == fp for p in shards)
    keys, vecs = zip(*iter_embedding_shards(tmp_path / "ray" / "embeddings", fingerprint=fp))
    keys, vecs = sum(map(list, keys), []), np.concatenate(vecs)
    assert sorted(keys) == sorted(set(hashes))
    assert np.allclose(vecs, _raw(tmp_path / "ray", keys, fp))


def test_embedding_runs_in_ray_worker_processes(tmp_path, ray_cluster, hard_timeout):
    """Also a catalog URL: the driver downloads it once, the workers read the downloaded file."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from conftest import draw_product

    from vsearch.build import build_index
    from vsearch.catalog.fetch import FetchPolicy

    served = tmp_path / "served"
    served.mkdir()
    draw_product(40).save(served / "remote.jpg", quality=92)
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/remote.jpg"
    try:
        catalog = write_catalog(
            tmp_path / "shop",
            n_products=4,
            extra_rows=[{**BAD_ROW, "product_id": "WEB", "image": url}],
        )
        report = build_index(
            catalog,
            tmp_path / "idx",
            model="test-tiny",
            engine="ray",
            ray_actors=1,
            fetch_policy=FetchPolicy(allow_private=True),
        )
    finally:
        server.shutdown()
    assert report.embedded == 7 and not report.skipped
    assert (url, 8) in [(s, r) for s, r, _ in _image_rows(tmp_path / "idx")]
    pids = report.engine["worker_pids"]
    assert pids and os.getpid() not in pids
    again = build_index(
        catalog,
        tmp_path / "idx",
        model="test-tiny",
        engine="ray",
        fetch_policy=FetchPolicy(allow_private=True),
    )
    # all cached: Ray is not even asked
    assert (again.embedded, again.reused, again.engine["actors"]) == (0, 7, 0)


def test_killed_actor_is_retried_and_every_row_is_indexed_once(tmp_path, ray_cluster, hard_timeout):
    from vsearch.build import build_index

    catalog = write_catalog(tmp_path / "shop", n_products=24)
    ray_cluster.write_text("armed")  # the first actor to take a batch deletes this file and dies
    report = build_index(
        catalog, tmp_path / "idx", model="test-tiny", engine="ray", ray_actors=1, batch_size=4
    )
    assert not ray_cluster.exists(), "no actor was killed, so this test proved nothing"
    rows = _image_rows(tmp_path / "idx")
    assert len(rows) == 36 == report.images == report.embedded and not report.skipped
    # no image twice
    assert len({r for _, r, _ in rows}) == 36 and len({h for _, _, h in rows}) == 36
    assert store.read_faiss(_generation(tmp_path / "idx")).ntotal == 36
    killed = int(Path(f"{ray_cluster}.killed").read_text())
    # its replacement did the work
    assert report.engine["worker_pids"] and killed not in report.engine["worker_pids"]
    with EmbeddingCache(tmp_path / "idx" / store.CACHE_FILE) as cache:
        assert cache.count() == 36


def test_a_batch_that_kills_every_worker_fails_the_build_after_a_bounded_number_of_restarts(
    tmp_path, ray_cluster, hard_timeout
):
    from vsearch.build import build_index
    from vsearch.embeddings.ray_engine import ACTOR_MAX_RESTARTS

    catalog = write_catalog(tmp_path / "shop", n_products=3)
    always = Path(f"{ray_cluster}.always")
    # every worker that takes a batch dies (a deterministic crash: retrying cannot help)
    always.write_text("")
    try:
        with pytest.raises(
            VsearchError,
            match=r"the Ray embedding job failed \(a model actor died and was restarted",
        ):
            build_index(catalog, tmp_path / "idx", model="test-tiny", engine="ray", ray_actors=1)
        deaths = always.read_text().split()
    finally:
        always.unlink()
    assert 1 < len(deaths) <= ACTOR_MAX_RESTARTS + 1  # retried, then given up: not forever
    assert store.read_current(tmp_path / "idx", missing_ok=True) is None


def test_a_worker_that_cannot_load_the_model_or_loads_other_weights_fails_with_its_error(
    ray_cluster, hard_timeout
):
    from vsearch.embeddings.ray_engine import RayOptions, embed_misses
    from vsearch.errors import ModelError

    with pytest.raises(ModelError, match=r"Ray worker .* could not load model no-such-model"):
        embed_misses(
            {"0" * 64: ("a.jpg", None, b"bytes")},
            model="no-such-model",
            pretrained=None,
            precision="fp32",
            fingerprint="x",
            dim=4,
            options=RayOptions(actors=1),
            on_vectors=lambda k, v: None,
        )
    with pytest.raises(
        ModelError, match=r"Ray worker .* loaded test-tiny with other weights than the driver"
    ):
        embed_misses(
            {"0" * 64: ("a.jpg", None, b"bytes")},
            model="test-tiny",
            pretrained=None,
            precision="fp32",
            fingerprint="not-the-driver's",
            dim=32,
            options=RayOptions(actors=1),
            on_vectors=lambda k, v: None,
        )


class _WeightsOnlyTheDriverReads:
    """The driver's loaded model, whose --pretrained file lives on storage the workers do not see
    (an API caller passing a loaded model: the driver checks nothing before the job starts)."""

    def __init__(self, model, pretrained):
        self._model, self.spec, self.pretrained = model, "ViT-B-32", str(pretrained)

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_a_worker_that_cannot_read_the_pretrained_file_fails_the_build_naming_the_file(
    tmp_path, ray_cluster, hard_timeout
):
    import re

    from vsearch.build import build_index
    from vsearch.embedders import load_embedder
    from vsearch.errors import ModelError

    catalog = write_catalog(tmp_path / "shop", n_products=3)
    weights = tmp_path / "not-mounted-on-workers" / "vit-b-32.bin"
    model = _WeightsOnlyTheDriverReads(load_embedder("test-tiny"), weights)
    with pytest.raises(
        ModelError,
        match=r"Ray worker .* \(pid \d+\) could not load model ViT-B-32: "
        rf".*{re.escape(str(weights))}",
    ):
        build_index(catalog, tmp_path / "idx", embedder=model, engine="ray", ray_actors=1)
    assert store.read_current(tmp_path / "idx", missing_ok=True) is None  # nothing published


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch):
    import sys

    from vsearch.embeddings.ray_engine import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(VsearchError, match=r"pip install 'vsearch\[ray\]'"):
        require_ray()


def test_embedding_shards_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    a, b = (
        rng.standard_normal((5, 8)).astype(np.float32),
        rng.standard_normal((3, 4)).astype(np.float32),
    )
    first = write_embedding_shard(tmp_path, [f"k{i}" for i in range(5)], a, "model-a")
    second = write_embedding_shard(tmp_path, ["x", "y", "z"], b, "model-b")
    assert (first.name, second.name) == ("part-00000.parquet", "part-00001.parquet")
    schema = pq.read_schema(first)
    assert (
        schema.field("vector").type == pa.list_(pa.float32(), 8)
        and schema.field("key").type == pa.string()
    )
    assert (
        schema.metadata[b"vsearch.model_fingerprint"] == b"model-a"
        and schema.metadata[b"vsearch.dim"] == b"8"
    )
    ((keys, vecs),) = iter_embedding_shards(tmp_path, fingerprint="model-b")
    assert keys == ["x", "y", "z"] and vecs.dtype == np.float32 and np.array_equal(vecs, b)
    assert len(list(iter_embedding_shards(tmp_path))) == 2
    pq.write_table(pa.table({"key": ["q"]}), tmp_path / "part-00002.parquet")
    with pytest.raises(VsearchError, match="part-00002.parquet: not a vsearch embedding shard"):
        list(iter_embedding_shards(tmp_path))


def test_the_shards_join_reads_each_vector_into_its_rows_and_gc_drops_unused_and_repeated_keys(
    tmp_path,
):
    rng = np.random.default_rng(1)
    vecs = {f"k{i}": rng.standard_normal(4).astype(np.float32) for i in range(7)}
    write_embedding_shard(
        tmp_path, ["k0", "k1", "k2"], np.stack([vecs[k] for k in ("k0", "k1", "k2")]), "model-a"
    )
    write_embedding_shard(
        tmp_path, ["k2", "k3", "k4"], np.stack([vecs[k] for k in ("k2", "k3", "k4")]), "model-a"
    )
    write_embedding_shard(
        tmp_path, ["k5", "k6"], np.stack([vecs[k] for k in ("k5", "k6")]), "model-b"
    )
    assert shard_keys(tmp_path, "model-a") == {"k0", "k1", "k2", "k3", "k4"}

    out = np.zeros((5, 4), dtype=np.float32)
    wanted = {"k4": [0, 3], "k1": [1], "k5": [2], "nowhere": [4]}  # k5 is another model's
    fill_from_shards(tmp_path, "model-a", wanted, out)
    assert set(wanted) == {"k5", "nowhere"}, "only what no shard of this model holds is left"
    assert np.array_equal(out[[0, 1, 3]], np.stack([vecs["k4"], vecs["k1"], vecs["k4"]]))
    assert not out[[2, 4]].any()

    def used():  # what gc knows the generations use, one gc run each
        keys = UsedKeys(tmp_path.parent / f"used-{len(runs)}.sqlite")
        runs.append(keys)
        keys.add(["k0", "k2", "k4"], "model-a")
        keys.add(["k6", "k1"], "model-b")
        return keys.claim

    runs: list = []
    # what a build killed mid-write leaves
    (tmp_path / ".part-killed.tmp").write_bytes(b"PAR1 half a file")
    assert (
        prune_shards(tmp_path, used(), dry_run=True) == 4
        and len(list(tmp_path.glob("part-*"))) == 3
    )
    assert (tmp_path / ".part-killed.tmp").exists()
    # k1 k3 k5 unused (k1 only by another model), k2 repeated
    assert prune_shards(tmp_path, used()) == 4
    assert not list(tmp_path.glob(".part-*"))
    assert shard_keys(tmp_path, "model-a") == {"k0", "k2", "k4"} and shard_keys(
        tmp_path, "model-b"
    ) == {"k6"}
    kept = {k: v for keys, part in iter_embedding_shards(tmp_path) for k, v in zip(keys, part)}
    assert len(kept) == 4 and all(np.array_equal(v, vecs[k]) for k, v in kept.items())
    assert sum(len(keys) for keys, _ in iter_embedding_shards(tmp_path)) == 4, "no key twice"
    assert prune_shards(tmp_path, used()) == 0
    for keys in runs:
        keys.close()


def test_compacting_keeps_the_marked_rows_in_order(monkeypatch):
    from vsearch.embeddings import pipeline

    monkeypatch.setattr(pipeline, "ASSEMBLE_ROWS", 3)
    vectors = np.arange(20, dtype=np.float32).reshape(10, 2)
    keep = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 1], dtype=bool)
    want = vectors[keep].copy()
    pipeline._compact(vectors, keep)
    assert np.array_equal(vectors[: keep.sum()], want)


def test_at_scale_the_parquet_shards_are_the_ray_builds_only_cache(
    tmp_path, ray_cluster, hard_timeout, monkeypatch
):
    """From build.ON_DISK_MIN_VECTORS images on (0 here) a Ray build of an IVF index keeps the
    vectors it makes in Parquet shards only: the SQLite cache holds none, the index answers like
    the local build's, a rebuild (Ray or local) embeds nothing and reads them back shard by
    shard, and gc drops the shard rows of images no generation uses."""
    from vsearch import build as build_module
    from vsearch.build import build_index
    from vsearch.embeddings import ray_engine as ray_engine
    from vsearch.search import ProductIndex
    from vsearch.store.gc import collect_garbage

    catalog = _catalog(tmp_path / "shop")
    build_index(catalog, tmp_path / "local", model="test-tiny", index_type="ivf")
    monkeypatch.setattr(build_module, "ON_DISK_MIN_VECTORS", 0)
    monkeypatch.setattr(ray_engine, "SHARD_ROWS", 4)
    index = tmp_path / "ray"
    first = build_index(
        catalog,
        index,
        model="test-tiny",
        index_type="ivf",
        engine="ray",
        ray_actors=1,
        batch_size=4,
    )
    rows = _image_rows(index)
    hashes = {h for _, _, h in rows}
    fp = store.read_manifest(_generation(index))["model"]["fingerprint"]
    assert first.engine["shards_are_cache"] and first.embedded == len(hashes) and len(rows) == 15
    assert [p.row for p in first.skipped] == [17]
    with EmbeddingCache(index / store.CACHE_FILE) as cache:
        assert cache.count() == 0, "at this scale the vectors live in the shards only"
    assert len(list((index / "embeddings").glob("part-*.parquet"))) >= 3
    assert shard_keys(index / "embeddings", fp) == hashes

    local, ray = ProductIndex.load(tmp_path / "local"), ProductIndex.load(index)
    for source, _, _ in rows:
        got, want = ray.search(image=source, k=3), local.search(image=source, k=3)
        assert [h.product_id for h in got] == [h.product_id for h in want]
        assert np.allclose([h.score for h in got], [h.score for h in want], atol=1e-4)

    again = build_index(
        catalog, index, model="test-tiny", index_type="ivf", engine="ray", ray_actors=1
    )
    assert (again.embedded, again.reused) == (0, 15)  # (the broken row is tried again, as locally)
    by_local = build_index(catalog, index, model="test-tiny", index_type="ivf")
    assert (by_local.embedded, by_local.reused) == (0, 15), "a local build reads the shards too"

    smaller = _catalog(tmp_path / "smaller", n_products=6)
    for _ in range(2):  # gc keeps the live and the previous generation: let the 10-product one go
        assert (
            build_index(smaller, index, model="test-tiny", index_type="ivf", engine="ray").embedded
            == 0
        )
    kept = {h for _, _, h in _image_rows(index)}
    assert kept < hashes
    report = collect_garbage(index)
    assert report.shard_rows == len(hashes - kept) and report.cache_rows == 0
    assert shard_keys(index / "embeddings", fp) == kept
    assert (
        build_index(smaller, index, model="test-tiny", index_type="ivf", engine="ray").embedded == 0
    )


def test_readme_scaling_out_commands_parse():
    """The cluster commands (docs/scaling-out.md, which the README links to): the vsearch build line
    uses flags that exist, with Ray's address from the environment, as written."""
    import re
    import shlex

    from vsearch.cli.parser import build_parser

    root = Path(__file__).resolve().parents[1]
    assert "(docs/scaling-out.md)" in (root / "README.md").read_text(encoding="utf-8")
    page = (root / "docs" / "scaling-out.md").read_text(encoding="utf-8")
    section = page.split("## Embedding on a Ray cluster", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).replace("\\\n", " ")
    line = next(ln for ln in block.splitlines() if "vsearch build" in ln)
    words = shlex.split(line.split("#")[0])
    assert words[0].startswith("RAY_ADDRESS=") and "ray start --head" in block
    args = build_parser().parse_args(words[words.index("vsearch") + 1 :])
    assert (args.engine, args.ray_actors, args.ray_address) == ("ray", 4, None)


def test_readme_cluster_recipe_on_one_machine(tmp_path):
    """The cluster recipe (docs/scaling-out.md) as far as one machine goes: `ray start --head` (its
    own process group, ended by this test), then `RAY_ADDRESS=... vsearch build ... --engine ray` in
    another process. Ray >= 2.59 authenticates with a token: both sides get the same one, never the
    user's."""
    import secrets
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    # its own temp dir (short: Ray's socket paths must fit 107 bytes), so that the "last cluster
    # started here" file, which a plain ray.init() on this machine would follow, dies with it
    temp_dir = tempfile.mkdtemp(prefix="vsr-", dir="/tmp")
    head = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from ray.scripts.scripts import main; main()",
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--object-store-memory=200000000",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        started = time.monotonic()
        for line in head.stdout:
            if "Local node IP:" in line:
                head_ip = line.split("Local node IP:")[1].strip()
            if "Ray runtime started" in line:
                break
            assert time.monotonic() - started < 180, "ray start --head did not come up"
        else:
            pytest.fail("ray start --head exited")
        catalog = write_catalog(tmp_path / "shop", n_products=4)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "vsearch",
                "build",
                str(catalog),
                "--index",
                str(tmp_path / "idx"),
                "--model",
                "test-tiny",
                "--quiet",
                "--engine",
                "ray",
            ],
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "6 images (6 embedded, 0 reused from cache)" in out.stdout
    # the cluster, not a Ray of its own
    assert f"embedded on Ray at {head_ip}:{port}: 1 actor(s) x 2 CPU(s)" in out.stdout
    assert len(list((tmp_path / "idx" / "embeddings").glob("part-*.parquet"))) == 1
