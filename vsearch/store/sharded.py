"""Indexes too big for one machine: IVF trained once on a sample, filled shard by shard, merged on
disk.

FAISS's own recipe (``faiss/contrib/ondisk.py``, ``demos/demo_ondisk_ivf.py``) in three plain
steps that run on one machine or many: ``train_ivf`` on a sample; ``add_shard`` (or
``add_parquet_shard``) fills a copy of the trained, empty index with one shard of vectors, each
shard on its own (a local pool, or Ray tasks); ``merge_shards`` merges the shards' inverted lists
into one ``.ivfdata`` file with FAISS's on-disk merge. No step holds more than one shard of
vectors. The merged index is read memory-mapped (``open_ondisk``): a server's private memory
holds the coarse quantizer and the list directory, the codes stay in the page cache.

PQ codes only approximate the vectors, so PQ indexes keep the vectors as float16 in a ``.npy``
beside them (memory-mapped too): ``rerank`` rescores the PQ candidates exactly from it, and
query expansion and mean scoring read the few rows they need instead of reconstructing the index.

Embedding shards (the Ray embedding engine writes them) are Parquet files with columns ``key``
(string: the image's content hash) and ``vector`` (``fixed_size_list<float32>[dim]``), and schema
metadata ``vsearch.model_fingerprint`` and ``vsearch.dim``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vsearch.embeddings.shards import read_shard_vectors
from vsearch.errors import IndexFormatError, VsearchError

# vectors one shard task adds (float32 1280-d: ~1 GB); the build's memory step
SHARD_VECTORS = 200_000
# PQ candidates rescored exactly per result wanted (the index type may ask for more)
RERANK_FACTOR = 16
RERANK_MIN = 64
ENGINES = ("local", "ray")


# ---------------------------------------------------------------- the three steps


def train_ivf(sample: np.ndarray, factory: str, *, nprobe: int):
    """An empty IVF index whose coarse quantizer (and PQ) is trained on ``sample``: trained once,
    copied into every shard, so the shards' inverted lists can be merged list by list."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    index = faiss.index_factory(sample.shape[1], _buildable(factory), faiss.METRIC_INNER_PRODUCT)
    if faiss.try_extract_index_ivf(index) is None:
        raise VsearchError(
            f"factory {factory!r} is not an IVF index; only IVF indexes are built in shards"
        )
    index.train(sample)
    faiss.extract_index_ivf(index).nprobe = int(nprobe)
    return index


def add_shard(
    trained_path: str | os.PathLike,
    ids: np.ndarray,
    vectors: np.ndarray,
    out_path: str | os.PathLike,
    stored_path: str | os.PathLike | None = None,
) -> str:
    """Add one shard (FAISS id = the image's vid) to a copy of the trained index and write it to
    ``out_path``; with ``stored_path``, also write the vectors' float16 rows there (at row = id)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    index = faiss.read_index(str(trained_path))
    if len(ids):
        index.add_with_ids(vectors, ids)
    faiss.write_index(index, str(out_path))
    if stored_path is not None and len(ids):
        stored = np.load(stored_path, mmap_mode="r+")
        stored[ids] = vectors.astype(np.float16)
        stored.flush()
        del stored
    return str(out_path)


def add_parquet_shard(
    trained_path: str | os.PathLike,
    parquet_path: str | os.PathLike,
    out_path: str | os.PathLike,
    ids_of_key: Mapping[str, Sequence[int]],
    fingerprint: str | None = None,
    stored_path: str | os.PathLike | None = None,
) -> str:
    """``add_shard`` for one Parquet file of embeddings, read a row group at a time. A key maps to
    the vids of every catalog image with that content; keys not in the catalog are skipped."""
    import faiss

    index = faiss.read_index(str(trained_path))
    stored = np.load(stored_path, mmap_mode="r+") if stored_path is not None else None
    for keys, vectors in read_shard_vectors(parquet_path, dim=index.d, fingerprint=fingerprint):
        rows, ids = [], []
        for row, key in enumerate(keys):
            for vid in ids_of_key.get(key, ()):
                rows.append(row)
                ids.append(vid)
        if not ids:
            continue
        chosen = np.ascontiguousarray(vectors[rows])
        index.add_with_ids(chosen, np.asarray(ids, dtype=np.int64))
        if stored is not None:
            stored[np.asarray(ids)] = chosen.astype(np.float16)
    faiss.write_index(index, str(out_path))
    if stored is not None:
        stored.flush()
    return str(out_path)


def merge_shards(
    trained_path: str | os.PathLike,
    shard_paths: Sequence[str | os.PathLike],
    out_index: str | os.PathLike,
    ivfdata: str | os.PathLike,
) -> int:
    """Merge the shards' inverted lists into ``ivfdata`` (FAISS's on-disk merge, shards read
    memory-mapped) and write the index that refers to it; return the number of vectors.

    ``ivfdata`` belongs in the same folder as ``out_index``: readers find it there
    (``IO_FLAG_ONDISK_SAME_DIR``) wherever the folder is moved."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    index = faiss.read_index(str(trained_path))
    with _c_stdout_to_stderr():  # OnDiskInvertedLists printf()s "resizing ..." while it merges
        merge_ondisk(index, [str(p) for p in shard_paths], str(ivfdata))
    faiss.write_index(index, str(out_index))
    return int(index.ntotal)


# ---------------------------------------------------------------- running shard tasks


def run_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[tuple],
    *,
    engine: str = "local",
    workers: int | None = None,
) -> list:
    """``fn(*task)`` for every task, in parallel; results in task order.

    "local": a thread pool (FAISS releases the GIL while it adds); "ray": one Ray task each, on
    a running cluster or a local one started here (the files must be on storage every node sees).
    """
    if engine not in ENGINES:
        raise VsearchError(f"shard engine {engine!r} is not one of {', '.join(ENGINES)}")
    workers = max(1, int(workers or min(4, os.cpu_count() or 1)))
    if engine == "ray":
        try:
            import ray
        except ImportError:
            raise VsearchError(
                "the Ray shard engine needs Ray: pip install 'vsearch[ray]' (or use the local "
                "engine)"
            ) from None
        if not ray.is_initialized():
            ray.init(
                address="local",
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=256 * 1024**2,
            )
        remote = ray.remote(num_cpus=1)(fn)
        return ray.get([remote.remote(*task) for task in tasks])
    if workers == 1 or len(tasks) <= 1:
        return [fn(*task) for task in tasks]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vsearch-shard") as pool:
        return list(pool.map(lambda task: fn(*task), tasks))


def build_ondisk(
    out_dir: Path,
    index_file: str,
    factory: str,
    *,
    sample: np.ndarray,
    nprobe: int,
    shards: Iterable[tuple[np.ndarray, np.ndarray]],
    n_ids: int,
    stored_file: str | None = None,
    engine: str = "local",
    workers: int | None = None,
    timings: dict[str, float] | None = None,
    trained_from: str | os.PathLike | None = None,
) -> Any:
    """Train, add shards (ids, vectors) in parallel, merge on disk: ``out_dir/index_file`` plus its
    ``.ivfdata`` (and ``stored_file``, float16 vectors with row = id, when given). Returns the
    merged index. A fast-scan factory (``...x4fs``) is built and merged as 4-bit PQ, then repacked
    in memory into fast-scan blocks (its codes are small: m/2 bytes a vector) and written as one
    file. ``timings`` (a dict) receives the seconds of each step and the number of shards.
    ``trained_from``: an earlier index built by this function whose trained quantizer (and PQ) is
    reused instead of training on ``sample`` (see ``empty_copy``)."""
    import time

    import faiss

    clock = time.perf_counter()
    timings = {} if timings is None else timings

    out_dir = Path(out_dir)
    work = out_dir / ".shards"
    work.mkdir(exist_ok=True)
    trained = work / "trained.faiss"
    if trained_from is not None:
        reused = empty_copy(trained_from)
        # this build's setting, not the one it was trained with
        faiss.extract_index_ivf(reused).nprobe = int(nprobe)
        faiss.write_index(reused, str(trained))
    else:
        faiss.write_index(train_ivf(sample, factory, nprobe=nprobe), str(trained))
    timings["train_s"], clock = time.perf_counter() - clock, time.perf_counter()
    stored_path = None
    if stored_file is not None:
        stored_path = out_dir / stored_file
        np.lib.format.open_memmap(
            stored_path, mode="w+", dtype=np.float16, shape=(n_ids, sample.shape[1])
        ).flush()
    tasks = [
        (trained, ids, vecs, work / f"shard-{i:05d}.faiss", stored_path)
        for i, (ids, vecs) in enumerate(shards)
    ]
    shard_paths = run_tasks(add_shard, tasks, engine=engine, workers=workers)
    timings["add_s"], clock = time.perf_counter() - clock, time.perf_counter()
    index = _merge_and_finish(trained, shard_paths, out_dir, index_file, factory, nprobe, work)
    timings["merge_s"], timings["shards"] = time.perf_counter() - clock, len(tasks)
    return index


def empty_copy(path: str | os.PathLike):
    """The trained, empty index of an on-disk IVF index file (its lists are not read): its coarse
    quantizer, PQ codebooks and nprobe, ready for ``add_shard``. What makes a rebuild of a catalog
    that changed little skip the training, most of an IVF build."""
    import faiss

    index = faiss.read_index(str(path), faiss.IO_FLAG_SKIP_IVF_DATA)
    ivf = faiss.extract_index_ivf(index)
    if not isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists):
        raise IndexFormatError(
            f"{path} is not an on-disk IVF index; its quantizer cannot be reused"
        )
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns it now
    ivf.ntotal = index.ntotal = 0
    return index


def _merge_and_finish(
    trained: Path,
    shard_paths: Sequence[str],
    out_dir: Path,
    index_file: str,
    factory: str,
    nprobe: int,
    work: Path,
):
    import faiss

    out = out_dir / index_file
    if _is_fast_scan(factory):
        tmp_index, tmp_data = work / "merged.faiss", work / "merged.ivfdata"
        merge_shards(trained, shard_paths, tmp_index, tmp_data)
        merged = open_ondisk(tmp_index)
        index = faiss.IndexIVFPQFastScan(merged)
        index.nprobe = int(nprobe)
        del merged
        faiss.write_index(index, str(out))
    else:
        merge_shards(trained, shard_paths, out, out_dir / (Path(index_file).stem + ".ivfdata"))
        index = open_ondisk(out)
    _remove_tree(work)
    return index


def shards_of(
    vectors: np.ndarray, ids: np.ndarray | None = None, size: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) slices of an in-memory (or memory-mapped) array, ``size`` rows each (views, no
    copies)."""
    size = int(size or SHARD_VECTORS)
    ids = (
        np.arange(len(vectors), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    )
    for start in range(0, len(vectors), size):
        yield ids[start : start + size], vectors[start : start + size]


def training_sample(
    vectors: np.ndarray, cap: int, seed: int = 0, size: int | None = None
) -> np.ndarray:
    """At most ``cap`` rows, drawn without replacement (deterministic for a seed), gathered shard
    by shard (``size`` rows, default SHARD_VECTORS): on a memory map only the sample and one
    shard's pages are touched, never the whole matrix."""
    n = len(vectors)
    if n <= cap:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))
    size = int(size or SHARD_VECTORS)
    out = np.empty((cap, vectors.shape[1]), dtype=np.float32)
    bounds = np.searchsorted(rows, np.arange(0, n + size, size))
    for shard, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if hi > lo:
            out[lo:hi] = vectors[shard * size : (shard + 1) * size][rows[lo:hi] - shard * size]
    return out


def map_shards(
    fn: Callable[[np.ndarray], np.ndarray],
    vectors: np.ndarray,
    out: np.ndarray,
    size: int | None = None,
) -> np.ndarray:
    """``out[i] = fn(vectors[i])`` a shard at a time (a learned projection over a memory-mapped
    matrix), so the whole matrix is never in memory; returns ``out``."""
    size = int(size or SHARD_VECTORS)
    for start in range(0, len(vectors), size):
        out[start : start + size] = fn(np.asarray(vectors[start : start + size]))
    if hasattr(out, "flush"):
        out.flush()
    return out


# ---------------------------------------------------------------- reading


def open_ondisk(path: str | os.PathLike):
    """Read a merged index with its lists memory-mapped, read-only, from the ``.ivfdata`` beside it.

    The index file records the ``.ivfdata``'s absolute path at build time, and the build's folder
    is renamed when it is published. FAISS's IO_FLAG_ONDISK_SAME_DIR would follow it but printf()s
    to stdout on every load (that would corrupt ``vsearch search --json``), so the lists are read
    without their data and mapped here from the file beside the index."""
    import faiss

    path = Path(path)
    index = faiss.read_index(str(path), faiss.IO_FLAG_SKIP_IVF_DATA)
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise IndexFormatError(f"{path} is not an on-disk IVF index; rebuild the index")
    data = path.with_name(Path(lists.filename).name)
    if not data.is_file():
        raise IndexFormatError(
            f"{data} is missing (the inverted lists of {path.name}); rebuild the index"
        )
    lists.filename = str(data)
    lists.read_only = True
    lists.do_mmap()
    return index


def open_stored(path: str | os.PathLike) -> np.ndarray | None:
    """The stored float16 vectors (row = id), memory-mapped; None when the generation has none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        stored = np.load(path, mmap_mode="r")
    except ValueError as e:
        raise IndexFormatError(
            f"{path} is not a readable .npy of vectors ({e}); rebuild the index"
        ) from None
    mapping = getattr(stored, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise"):
        import mmap

        # rows are read a few at a time: no read-ahead of neighbours
        mapping.madvise(mmap.MADV_RANDOM)
    return stored


def stored_rows(stored: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of the stored vectors as float32 (sorted reads: neighbouring ids share pages)."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        return np.asarray(stored[ids], dtype=np.float32)
    order = np.argsort(ids, kind="stable")
    out = np.empty((len(ids), stored.shape[1]), dtype=np.float32)
    out[order] = stored[ids[order]]
    return out


def rerank(
    search: Callable[[int], tuple[np.ndarray, np.ndarray]],
    stored: np.ndarray,
    query: np.ndarray,
    n: int,
    ntotal: int,
    factor: int | None = None,
    depth: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``n`` by exact inner product among the PQ index's ``factor * n`` candidates, or
    ``factor * depth`` (at least n) when only the first ``depth`` of the n must be as good as
    the measured recall: a product search fetches ~4 images a product to fold them into k
    products, but its answer rests on the best few (``store.nearest.RERANK_DEPTH_PER_RESULT``).

    ``search(m)`` returns the approximate (scores, ids) of the best m, ids -1 for none."""
    per = n if depth is None else min(n, depth)
    m = int(min(max(int(factor or RERANK_FACTOR) * per, n, RERANK_MIN), max(ntotal, 1)))
    _, ids = search(m)
    ids = ids[ids >= 0]
    scores = stored_rows(stored, ids) @ np.asarray(query, dtype=np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:n]
    out_scores = np.full(n, -np.inf, dtype=np.float32)
    out_ids = np.full(n, -1, dtype=np.int64)
    out_scores[: len(order)], out_ids[: len(order)] = scores[order], ids[order]
    return out_scores, out_ids


# ---------------------------------------------------------------- helpers


def _is_fast_scan(factory: str) -> bool:
    return factory.endswith("fs")


def _buildable(factory: str) -> str:
    """The factory the shards are built with: fast-scan is merged as plain 4-bit PQ, then
    repacked."""
    return factory[:-2] if _is_fast_scan(factory) else factory


@contextlib.contextmanager
def _c_stdout_to_stderr() -> Iterator[None]:
    """Send what C code writes to stdout to stderr instead (stdout may be a command's JSON
    answer)."""
    import ctypes
    import sys

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
