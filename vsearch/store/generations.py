"""The index stage: FAISS vectors + SQLite metadata in a versioned, atomically swapped folder.

Layout of an index folder (default ``index/default``)::

    CURRENT            name of the live generation; replaced atomically with os.replace
    cache.sqlite       embedding cache (content hash + model fingerprint -> vector), shared
                       by generations
    gen-<time>-<id>/   one complete, immutable build:
        manifest.json  format version, model, dim, metric, FAISS factory, counts, build time
        vectors.faiss  one vector per catalog image (FAISS id == images.vid; an
                       incrementally updated HNSW index also holds removed images' vectors,
                       ids with no images row)
        vectors.ivfdata   IVF types: the inverted lists, merged on disk from shards, read
                          memory-mapped
        vectors.f16.npy   PQ types: the vectors as float16 (row == vid), for exact re-ranking
        products.sqlite   products, images and their metadata; the FTS5 table ``words``
                          (vsearch.store.words)
        train_pairs.json  builds with --train-pairs: the pair photos' content hashes (what
                          ``vsearch gc`` keeps cached)

A build writes a new generation beside the live one, fsyncs all of it, and only then points
CURRENT at it, so a crash (or a power loss) at any moment leaves the previous index loadable, and a
running server can switch by re-reading CURRENT. JSON and SQLite only: nothing on disk is ever
unpickled.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsearch import __version__
from vsearch.errors import IndexFormatError, VsearchError
from vsearch.product import Product
from vsearch.store.words import write_words

FORMAT_NAME = "vsearch-index"
# 2: learned projection ("adaptation") and three-state "verdict"; 3: on-disk IVF (.ivfdata,
# .f16.npy)
FORMAT_VERSION = 3
CURRENT_FILE = "CURRENT"
MANIFEST_FILE = "manifest.json"
VECTORS_FILE = "vectors.faiss"
IVFDATA_FILE = "vectors.ivfdata"
STORED_VECTORS_FILE = "vectors.f16.npy"
PRODUCTS_FILE = "products.sqlite"
CACHE_FILE = "cache.sqlite"
# content hashes of the --train-pairs photos a generation learned from
TRAIN_PAIRS_FILE = "train_pairs.json"
TRAIN_PAIRS_FORMAT = ("vsearch-train-pairs", 1)
GENERATION_PREFIX = "gen-"
KEEP_OLD_GENERATIONS = 1  # the previous generation stays for readers that are mid-switch

# Index-type selection (measured in benchmarks/bench_ann.py and bench_query.py; see
# benchmarks/RESULTS.md). Exact search costs ~0.07 ms per 1,000 vectors and query on one
# core (7 ms at 100k): beyond FLAT_MAX it would add more than ~1.5 ms to a ~21 ms bf16 query.
# "auto" then picks HNSW: on the hard synthetic set (overlapping clusters) it kept recall@10
# at 0.97-0.999 (efSearch 64-128, ~1 ms) where IVF managed 0.5-0.85 at any nprobe that fits
# in 5 ms. Its price is build time (~10x IVF's on 2 cores) and ~2.3 KB per vector. "ivf"
# (IVF with fp16 codes: ~1 KB per vector, builds in minutes at 1M) suits clustered real
# catalogs and fast rebuilds; "ivfpq" (~80 B per vector) trades recall for memory.
# The IVF types are built in shards and merged on disk (vsearch/store/sharded.py) and served
# memory-mapped; the PQ ones keep float16 vectors beside them and re-rank their candidates
# exactly; "ivfpq-fs" is PQ with 4-bit fast-scan codes (held in memory: m/2 bytes a vector).
INDEX_TYPES = ("auto", "flat", "ivf", "hnsw", "ivfpq", "ivfpq-fs")
SHARDED_TYPES = ("ivf", "ivfpq", "ivfpq-fs")
# PQ candidates re-ranked per result: recall@10 on 200k real vectors (nprobe 32) 0.935 / 0.974 /
# 0.984 at 8 / 16 / 32 with PQ64x8; 0.914 / 0.969 / 0.983 at 16 / 32 / 64 with 4-bit fast-scan.
# At 1 M: PQ64x8 0.955 at 16; fast-scan 0.917 / 0.956 / 0.972 at 32 / 48 / 64, hence 64
# (benchmarks/RESULTS.md, "Sharded, memory-mapped IVF")
RERANK_FACTORS = {"ivfpq": 16, "ivfpq-fs": 64}
RERANKED_TYPES = tuple(RERANK_FACTORS)
FLAT_MAX = 20_000
IVF_NPROBE_DIVISOR = 32  # nprobe = nlist / 32: ~3% of the lists are scanned per query
# PQ types scan at least this many lists (their RERANK_FACTORS were measured at 32)
PQ_MIN_NPROBE = 32
# k-means needs a training point per PQ code (2^8 / 2^4)
PQ_MIN_VECTORS = {"ivfpq": 256, "ivfpq-fs": 16}
# IVF/PQ training sample, up to ~2.8 M vectors (see training_sample_size)
TRAIN_SAMPLE_MAX = 256 * 1024
# k-means points per inverted list below which FAISS warns that training is too thin
MIN_TRAIN_PER_LIST = 39
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128

PRODUCT_COLUMNS = ("product_id", "title", "category", "price", "url", "brand")

_SCHEMA = """
CREATE TABLE products (
    pid INTEGER PRIMARY KEY,
    product_id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL DEFAULT '',
    category TEXT NOT NULL DEFAULT '',
    price REAL,
    url TEXT NOT NULL DEFAULT '',
    brand TEXT NOT NULL DEFAULT '',
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE images (
    vid INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL REFERENCES products(pid),
    source TEXT NOT NULL,
    row INTEGER NOT NULL,
    content_hash TEXT NOT NULL
);
CREATE INDEX images_pid ON images(pid);
CREATE INDEX products_category ON products(category);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


# the stored product's earlier name: the store keeps catalog.Product as it is
ProductRecord = Product


@dataclass(frozen=True)
class ImageRecord:
    """One indexed catalog image; its position in the list is its FAISS id (unless an incremental
    update says otherwise)."""

    product_id: str
    source: str
    row: int
    content_hash: str


def content_key(product_id: str, source: str, content_hash: str) -> tuple[str, str]:
    """What identifies a catalog image for every reuse decision (verdict, projection, IVF quantizer,
    incremental ids): its product and the hash of its bytes, so a photo replaced in place with
    other bytes counts as changed and a moved one does not. Imported vectors (``--embeddings``:
    no image is read, no hash) fall back to the image's path."""
    return str(product_id), str(content_hash or source)


# ---------------------------------------------------------------- FAISS index choice


def choose_index_type(n_vectors: int, requested: str = "auto") -> str:
    """Exact search while it is fast enough, HNSW beyond that; an explicit choice always wins."""
    if requested not in INDEX_TYPES:
        raise ValueError(f"index type {requested!r} is not one of {', '.join(INDEX_TYPES)}")
    if requested != "auto":
        return requested
    return "flat" if n_vectors <= FLAT_MAX else "hnsw"


def faiss_factory_string(index_type: str, n_vectors: int, dim: int) -> str:
    """The FAISS factory string recorded in the manifest (and used to build the index)."""
    if index_type == "flat":
        return "Flat"
    if index_type == "hnsw":
        return f"HNSW{HNSW_M},Flat"
    if index_type == "ivf":
        return f"IVF{_ivf_lists(n_vectors)},SQfp16"
    if index_type in ("ivfpq", "ivfpq-fs"):
        nlist = int(max(1, min(65536, 4 * np.sqrt(max(n_vectors, 1)))))
        m = _pq_subquantizers(dim)
        return f"IVF{nlist},PQ{m}x8" if index_type == "ivfpq" else f"IVF{nlist},PQ{m}x4fs"
    raise ValueError(f"unknown index type {index_type!r}")


def _ivf_lists(n_vectors: int) -> int:
    """A power of two near 4*sqrt(n) lists, with at least ~39 training points each."""
    target = 4 * np.sqrt(max(n_vectors, 1))
    nlist = 1 << max(0, int(round(np.log2(target))))
    while nlist > 1 and nlist * 39 > n_vectors:
        nlist //= 2
    return int(min(nlist, 65536))


def ivf_nprobe(nlist: int) -> int:
    return int(max(1, min(nlist, max(8, nlist // IVF_NPROBE_DIVISOR))))


def pq_nprobe(nlist: int) -> int:
    """PQ types: the lists ``ivf`` scans (nlist / 32), but never fewer than PQ_MIN_NPROBE, the
    setting their recall figures were measured at (up to ~1,000 lists, i.e. ~60k vectors, it is
    that floor; at 10 M vectors, 12,649 lists, it is 395 where a fixed 32 scanned 0.25 %)."""
    return int(max(1, min(nlist, max(PQ_MIN_NPROBE, nlist // IVF_NPROBE_DIVISOR))))


def nprobe_for(index_type: str, nlist: int) -> int:
    """The nprobe an IVF index type is written with (stored in the index file, used by every
    search)."""
    return pq_nprobe(nlist) if index_type in RERANKED_TYPES else ivf_nprobe(nlist)


def pq_fallback(index_type: str, n_vectors: int) -> tuple[str, str]:
    """(the type to build, '' or why not the one asked for): a PQ type's codebooks need
    PQ_MIN_VECTORS[type] training vectors (256 codes per sub-quantizer for 8-bit PQ), so a smaller
    catalog is built ``flat`` - exact, and at that size as fast and small as any."""
    if n_vectors >= PQ_MIN_VECTORS.get(index_type, 0):
        return index_type, ""
    return "flat", (
        f"index type {index_type} needs at least {PQ_MIN_VECTORS[index_type]} images to train its "
        "PQ "
        f"codebooks and the catalog has {n_vectors}: built 'flat' (exact search) instead"
    )


def _too_few_for_pq(index_type: str, n: int) -> str:
    return (
        f"index type {index_type} needs at least {PQ_MIN_VECTORS[index_type]} vectors to train its "
        "PQ codebooks, "
        f"got {n}; 'flat' (exact) or 'ivf' work at any size"
    )


def _pq_subquantizers(dim: int) -> int:
    for m in (64, 32, 16, 8, 4, 2, 1):
        if dim % m == 0 and dim // m >= 4:
            return m
    return 1


def make_faiss_index(vectors: np.ndarray, index_type: str):
    """Build a FAISS inner-product index over L2-normalised vectors (ids are row positions)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    factory = faiss_factory_string(index_type, n, dim)
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if index_type in PQ_MIN_VECTORS and n < PQ_MIN_VECTORS[index_type]:
            raise VsearchError(_too_few_for_pq(index_type, n))
        if not index.is_trained:
            index.train(_training_sample(vectors, index_type, faiss.extract_index_ivf(index).nlist))
        if index_type in ("ivf", "ivfpq", "ivfpq-fs"):
            ivf = faiss.extract_index_ivf(index)
            # stored in the index file, used by every search
            ivf.nprobe = nprobe_for(index_type, ivf.nlist)
    if n:
        index.add(vectors)
    return index, factory


def _training_sample(vectors: np.ndarray, index_type: str, nlist: int) -> np.ndarray:
    from vsearch.store.sharded import training_sample

    cap = training_sample_size(index_type, nlist)
    return training_sample(vectors, cap)


def training_sample_size(index_type: str, nlist: int) -> int:
    """How many vectors an IVF type is trained on: TRAIN_SAMPLE_MAX, raised to MIN_TRAIN_PER_LIST a
    list when there are more lists than that feeds (beyond ~6,700 lists, i.e. ~2.8 M vectors:
    the sample then grows with sqrt(n), 39 x nlist x dim x 4 bytes); ``ivf`` (no PQ codebooks to
    train) stops at 64 a list, since k-means gains nothing from more."""
    cap = max(TRAIN_SAMPLE_MAX, MIN_TRAIN_PER_LIST * int(nlist))
    return min(cap, 64 * int(nlist)) if index_type == "ivf" else cap


def _write_sharded(
    tmp_dir: Path,
    vectors: np.ndarray,
    index_type: str,
    timings: dict[str, float],
    quantizer: dict[str, Any] | None = None,
) -> str:
    """IVF types: train on a sample (or reuse ``quantizer``: the previous generation's trained
    index and factory, from ``incremental.reusable_quantizer``), add shards in parallel, merge the
    lists on disk."""
    from vsearch.store import sharded as sharded_index

    n, dim = vectors.shape
    if not quantizer and n < PQ_MIN_VECTORS.get(index_type, 0):
        raise VsearchError(_too_few_for_pq(index_type, n))
    factory = quantizer["factory"] if quantizer else faiss_factory_string(index_type, n, dim)
    nlist = int(factory.split(",")[0].removeprefix("IVF"))
    sharded_index.build_ondisk(
        tmp_dir,
        VECTORS_FILE,
        factory,
        sample=vectors[:0] if quantizer else _training_sample(vectors, index_type, nlist),
        nprobe=nprobe_for(index_type, nlist),
        shards=sharded_index.shards_of(vectors),
        n_ids=n,
        stored_file=STORED_VECTORS_FILE if index_type in RERANKED_TYPES else None,
        timings=timings,
        trained_from=quantizer["trained_index"] if quantizer else None,
    )
    return factory


def search_single_threaded(index, queries: np.ndarray, k: int, params=None):
    """``index.search`` on one OpenMP thread when there is a single query.

    One query is too little work to share: on a busy 2-core machine FAISS's thread team
    waits on cores torch is using, and a 100k exact search took 26 ms on two threads vs
    8 ms on one. The thread count is an OpenMP per-thread setting (shared with torch in
    the calling thread only), so it is restored at once and other threads never see it.
    """
    import faiss

    if len(queries) != 1:
        return index.search(queries, k, params=params)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k, params=params)
    finally:
        faiss.omp_set_num_threads(before)


# ---------------------------------------------------------------- writing a generation


def new_generation_dir(index_dir: Path) -> Path:
    """A fresh, hidden temporary folder inside index_dir for a build to write into."""
    index_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    # Microseconds too: names sort in build order (cleanup keeps the newest by name), and
    # incremental builds can publish several generations within one second.
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}"
    path = index_dir / f".tmp-{GENERATION_PREFIX}{stamp}-{secrets.token_hex(3)}"
    path.mkdir()
    return path


def write_generation(
    tmp_dir: Path,
    *,
    vectors: np.ndarray,
    images: list[ImageRecord],
    products: list[Product],
    manifest: dict[str, Any],
    index_type: str,
    prebuilt: tuple[Any, str, np.ndarray] | None = None,
    quantizer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write vectors, metadata and manifest into tmp_dir; return the manifest as written.

    prebuilt: (FAISS index, factory string, FAISS id of each image) from an incremental update
    (``vsearch.store.incremental``) instead of a new index whose ids are the image positions;
    quantizer: for the sharded IVF types, the previous generation's trained quantizer to reuse.
    """
    import faiss

    if len(images) != len(vectors):
        raise ValueError(f"{len(images)} image records but {len(vectors)} vectors")
    started = time.perf_counter()
    sharded: dict[str, float] = {}
    vids = range(len(images))
    # an incremental update of the previous generation's index (flat, HNSW)
    if prebuilt is not None:
        index, factory, prebuilt_vids = prebuilt
        vids = [int(v) for v in prebuilt_vids]
        faiss.write_index(index, str(tmp_dir / VECTORS_FILE))
    elif index_type in SHARDED_TYPES and len(vectors):
        # no copy: shards read slices
        factory = _write_sharded(tmp_dir, vectors, index_type, sharded, quantizer)
    else:
        index, factory = make_faiss_index(vectors, index_type)
        faiss.write_index(index, str(tmp_dir / VECTORS_FILE))
    faiss_seconds = time.perf_counter() - started

    pid_of = {p.product_id: i for i, p in enumerate(products)}
    db = sqlite3.connect(tmp_dir / PRODUCTS_FILE)
    try:
        db.executescript(_SCHEMA)
        db.executemany(
            "INSERT INTO products VALUES (?,?,?,?,?,?,?,?)",
            (
                (
                    i,
                    p.product_id,
                    p.title,
                    p.category,
                    p.price,
                    p.url,
                    p.brand,
                    json.dumps(dict(p.extra)),
                )
                for i, p in enumerate(products)
            ),
        )
        db.executemany(
            "INSERT INTO images VALUES (?,?,?,?,?)",
            (
                (vid, pid_of[im.product_id], im.source, im.row, im.content_hash)
                for vid, im in zip(vids, images)
            ),
        )
        # the products' text, for search by words
        words_entry = write_words(db, enumerate(products))
        db.commit()
    finally:
        db.close()

    manifest = dict(manifest)
    manifest.update(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        vsearch_version=__version__,
        metric="inner_product",
        index_type=index_type,
        faiss_factory=factory,
        dim=int(vectors.shape[1]) if vectors.ndim == 2 else int(manifest.get("dim", 0)),
        counts={"products": len(products), "images": len(images)},
        faiss_build_seconds=round(faiss_seconds, 3),
        words=words_entry,
    )
    if index_type in RERANK_FACTORS:
        manifest["rerank_factor"] = RERANK_FACTORS[index_type]
    if sharded:  # seconds to train / add the shards / merge on disk
        manifest["sharded_build"] = {k: round(v, 3) for k, v in sharded.items()}
    _write_json_atomic(tmp_dir / MANIFEST_FILE, manifest)
    _fsync_dir(tmp_dir)
    return manifest


def write_train_pairs(tmp_dir: Path, content_hashes: list[str]) -> dict[str, Any]:
    """Record which confirmed shopper photos (``--train-pairs``) a generation learned from: they are
    in no catalog table, yet ``vsearch gc`` must keep their cached vectors, or the next build with
    the same pairs re-embeds them all. Returns the manifest's ``train_pairs`` entry."""
    hashes = sorted(set(content_hashes))
    name, version = TRAIN_PAIRS_FORMAT
    _write_json_atomic(
        tmp_dir / TRAIN_PAIRS_FILE,
        {"format": name, "format_version": version, "content_hashes": hashes},
    )
    return {"file": TRAIN_PAIRS_FILE, "photos": len(hashes)}


def read_train_pairs(generation_dir: Path) -> list[str]:
    """The content hashes ``write_train_pairs`` recorded; [] for a generation built without
    pairs."""
    path = generation_dir / TRAIN_PAIRS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"{path} cannot be read ({e}); rebuild the index") from None
    if (
        not isinstance(data, dict)
        or (data.get("format"), data.get("format_version")) != TRAIN_PAIRS_FORMAT
    ):
        raise IndexFormatError(
            f"{path} is not a train-pairs record of format version {TRAIN_PAIRS_FORMAT[1]}; "
            "rebuild the index with this vsearch"
        )
    return [str(h) for h in data.get("content_hashes", [])]


def publish_generation(index_dir: Path, tmp_dir: Path) -> Path:
    """Make a finished generation live: flush every file of it to disk, rename it, then atomically
    repoint CURRENT (and flush the pointer and the folder that holds it).

    Without the flush a power loss soon after a build could leave CURRENT naming a generation
    whose FAISS index or ``.ivfdata`` was still only in the page cache, i.e. truncated on disk."""
    fsync_tree(tmp_dir)
    final = index_dir / tmp_dir.name.removeprefix(".tmp-")
    os.replace(tmp_dir, final)
    _fsync_dir(index_dir)
    pointer_tmp = index_dir / f".{CURRENT_FILE}.{secrets.token_hex(3)}"
    with open(pointer_tmp, "w", encoding="utf-8") as f:
        f.write(final.name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer_tmp, index_dir / CURRENT_FILE)
    _fsync_dir(index_dir)
    cleanup_generations(index_dir)
    return final


def cleanup_generations(index_dir: Path) -> None:
    """Remove abandoned temp folders and all but the newest old generations."""
    live = read_current(index_dir, missing_ok=True)
    for tmp in index_dir.glob(f".tmp-{GENERATION_PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)
    # a killed build's on-disk vectors (vsearch.build.SPILL_PREFIX)
    for tmp in index_dir.glob(".tmp-vectors-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for stray in index_dir.glob(f".{CURRENT_FILE}.*"):
        stray.unlink(missing_ok=True)
    old = sorted(
        (p for p in index_dir.glob(f"{GENERATION_PREFIX}*") if p.is_dir() and p.name != live),
        key=lambda p: p.name,
    )
    for p in old[: max(0, len(old) - KEEP_OLD_GENERATIONS)]:
        shutil.rmtree(p, ignore_errors=True)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` (whoever wrote it: FAISS, SQLite, numpy, hard links of
    reused files), then every folder bottom-up, so all of it is on disk before anything points to
    it."""
    folders = []
    for root, _dirs, files in os.walk(folder):
        folders.append(root)
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for root in reversed(folders):
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- reading a generation


def read_current(index_dir: Path, *, missing_ok: bool = False) -> str | None:
    """Name of the live generation folder, or None when missing_ok and nothing was built yet."""
    try:
        name = (index_dir / CURRENT_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if missing_ok:
            return None
        if not index_dir.exists():
            raise IndexFormatError(
                f"no index at {index_dir} (build one with: vsearch build CATALOG --index "
                f"{index_dir})"
            ) from None
        raise IndexFormatError(
            f"{index_dir} is not a vsearch index (no {CURRENT_FILE} file); build one with: vsearch "
            f"build CATALOG --index {index_dir}"
        ) from None
    if not name.startswith(GENERATION_PREFIX) or "/" in name or "\\" in name:
        raise IndexFormatError(
            f"{index_dir / CURRENT_FILE} names {name!r}, which is not a generation folder"
        )
    return name


def read_manifest(generation_dir: Path) -> dict[str, Any]:
    """Read and validate manifest.json; refuse formats this version does not know."""
    path = generation_dir / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFormatError(f"{path} is missing; the index is incomplete, rebuild it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{path} is not valid JSON ({e}); rebuild the index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path} is not a vsearch index manifest")
    version = manifest.get("format_version")
    if isinstance(version, int) and version < FORMAT_VERSION:
        catalog = manifest.get("catalog") or "CATALOG"
        raise IndexFormatError(
            f"{path} has index format version {version}, from an older vsearch; this vsearch "
            f"{__version__} reads "
            f"version {FORMAT_VERSION}. Rebuild with `vsearch build {catalog} --index "
            f"{generation_dir.parent}` "
            "(images already embedded are reused from the cache)"
        )
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has index format version {version!r}; this vsearch {__version__} reads "
            f"version {FORMAT_VERSION} "
            "(rebuild the index with this version, or upgrade vsearch)"
        )
    for key in ("model", "dim", "counts"):
        if key not in manifest:
            raise IndexFormatError(f"{path} lacks {key!r}; rebuild the index")
    return manifest


def read_faiss(generation_dir: Path):
    import faiss

    path = generation_dir / VECTORS_FILE
    if not path.is_file():
        raise IndexFormatError(f"{path} is missing; the index is incomplete, rebuild it")
    try:
        # on-disk IVF: memory-mapped, lists stay in the page cache
        if (generation_dir / IVFDATA_FILE).is_file():
            from vsearch.store.sharded import open_ondisk

            return open_ondisk(path)
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise IndexFormatError(
            f"{path} cannot be read by FAISS ({str(e).splitlines()[0]}); rebuild the index"
        ) from None


def read_stored_vectors(generation_dir: Path) -> np.ndarray | None:
    """The generation's float16 vectors (row == vid), memory-mapped; None for types that keep
    none."""
    from vsearch.store.sharded import open_stored

    return open_stored(generation_dir / STORED_VECTORS_FILE)


def product_from_row(row: sqlite3.Row) -> Product:
    """A row of the products table (``SELECT * FROM products``) as the Product that was written."""
    return Product(
        row["product_id"],
        row["title"],
        row["category"],
        row["price"],
        row["url"],
        row["brand"],
        tuple(json.loads(row["extra"]).items()),
    )


def open_products_db(generation_dir: Path) -> sqlite3.Connection:
    """Open a generation's metadata read-only (generations are immutable, so no locking is
    needed)."""
    path = generation_dir / PRODUCTS_FILE
    if not path.is_file():
        raise IndexFormatError(f"{path} is missing; the index is incomplete, rebuild it")
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    db = sqlite3.connect(uri, uri=True, check_same_thread=False)
    db.row_factory = sqlite3.Row
    return db


def read_image_records(generation_dir: Path) -> list[tuple[int, str, str, int, str]]:
    """(vid, product_id, source, row, content_hash) of every image of a generation, by vid: what
    the catalog check, incremental updates and verdict reuse read about a generation's images."""
    db = open_products_db(generation_dir)
    try:
        return db.execute(
            "SELECT i.vid, p.product_id, i.source, i.row, i.content_hash FROM images i "
            "JOIN products p ON p.pid = i.pid ORDER BY i.vid"
        ).fetchall()
    except sqlite3.Error as e:
        raise IndexFormatError(
            f"{generation_dir / PRODUCTS_FILE} cannot be read ({e}); rebuild the index"
        ) from None
    finally:
        db.close()
