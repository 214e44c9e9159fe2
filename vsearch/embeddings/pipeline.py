"""Embedding a catalog's images: catalog rows -> vectors in catalog order, through the cache.

Decoding runs in a small thread pool ahead of the model (Pillow and torch release the GIL), the
model sees full batches, and images whose bytes were embedded before by the same model are taken
from the SQLite cache (or the Parquet shards a Ray build wrote) instead of being decoded at all;
with a Ray job the misses are embedded on the cluster. Also the other ways a build gets vectors:
imported ones (``--embeddings``) and the photos of a train-pairs CSV. Rows whose image cannot be
used are returned as problems, never raised. ``vsearch.build`` decides what to do with the result.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vsearch.catalog.rows import Catalog, CatalogRow, RowProblem, read_catalog
from vsearch.embeddings.cache import EmbeddingCache
from vsearch.embeddings.shards import fill_from_shards, shard_keys
from vsearch.errors import ImageError, VsearchError

if TYPE_CHECKING:
    from vsearch.embedders import Embedder

DOWNLOADS_DIR = "downloads"  # catalog images fetched from URLs, in <index_dir>/
SHARDS_DIR = "embeddings"  # Parquet shards of vectors a Ray build made (vsearch.embeddings.shards)
# vectors read from the cache (or an import) per step when assembling the matrix (40 MB at 1280-d)
ASSEMBLE_ROWS = 8_192
ProgressCallback = Callable[[int, int], None]  # (rows done, rows total)


@dataclass
class _Prepared:
    """One catalog row after the decode workers: its content hash and either a tensor or nothing to
    do."""

    row: CatalogRow
    content_hash: str | None = None
    tensor: Any = None  # preprocessed image, only when the embedding is not cached
    file_entry: tuple[str, int, int, str] | None = None
    error: str | None = None
    # a miss for Ray: (name, path, bytes)
    remote: tuple[str, str | None, bytes | None] | None = None


def train_pair_vectors(
    path: str | os.PathLike,
    known: set[str],
    embedder: Any,
    cache: EmbeddingCache,
    *,
    index_dir: Path,
    batch_size: int,
    workers: int | None,
    fetch_policy: Any,
    precision: str,
) -> tuple[tuple[np.ndarray, list[str], list[str]], list[RowProblem], Any]:
    """Embed the photos of a train-pairs CSV (image,product_id) with the index's model, through the
    embedding cache. Returns ((vectors, product ids, content hashes), problems, the loaded model).
    Pairs whose product is not in the catalog are reported by row and left out."""
    # --embeddings import: the pairs still need the real model
    if not hasattr(embedder, "embed_images"):
        from vsearch.embedders import load_embedder

        model = load_embedder(embedder.spec, embedder.pretrained, precision=precision)
        if model.fingerprint != embedder.fingerprint:
            raise VsearchError(
                f"--train-pairs: the loaded model {model.name} does not match the imported "
                "vectors' model"
            )
        embedder = model
    # pair photos are never served: any path may be read
    pairs = read_catalog(path, allow_outside_paths=True)
    label = f"train pairs {pairs.source}"
    problems = [
        RowProblem(row=p.row, reason=f"{label}: {p.reason}", image=p.image, fatal=p.fatal)
        for p in pairs.problems
    ]
    rows = []
    for row in pairs.rows:
        if row.product_id in known:
            rows.append(row)
        else:
            problems.append(
                RowProblem(
                    row=row.row,
                    image=row.image,
                    reason=(
                        f"{label}: product {row.product_id!r} is not in the catalog (or has no "
                        "usable image); pair left out"
                    ),
                )
            )
    kept, vectors, _, _, image_problems = embed_rows(
        rows,
        embedder,
        cache,
        index_dir=index_dir,
        batch_size=batch_size,
        workers=workers,
        fetch_policy=fetch_policy,
        progress=None,
    )
    problems += [
        RowProblem(row=p.row, reason=f"{label}: {p.reason}", image=p.image, fatal=p.fatal)
        for p in image_problems
    ]
    return (vectors, [r.product_id for r, _ in kept], [h for _, h in kept]), problems, embedder


def imported_rows(
    cat: Catalog,
    embeddings: Any,
    model: Any,
    progress: ProgressCallback | None,
    spill: Path | None = None,
):
    """Precomputed vectors instead of the model: same shape of result as ``embed_rows``. With
    ``spill`` they are streamed into a memory map there, a batch of rows at a time."""
    from vsearch.embeddings.imported import load_embeddings, load_embeddings_into

    if spill is not None:
        out = open_matrix(spill / "raw.f32.npy", len(cat.rows), int(model.dim))
        imported = load_embeddings_into(embeddings, cat, out, batch_rows=ASSEMBLE_ROWS)
    else:
        imported = load_embeddings(embeddings, cat, dim=int(model.dim))
    if progress is not None:
        progress(len(cat.rows), len(cat.rows))
    kept = [(row, "") for row in cat.rows]  # images are never read, so there is no content hash
    notes = []
    if imported.renormalised:
        notes.append(
            RowProblem(
                row=0,
                fatal=False,
                reason=(
                    f"{imported.source}: {imported.renormalised} vector(s) were not unit length "
                    "and were L2-normalised"
                ),
            )
        )
    if imported.unused:
        notes.append(
            RowProblem(
                row=0,
                fatal=False,
                reason=(
                    f"{imported.source}: {imported.unused} vector(s) match no catalog image and "
                    "were not indexed"
                ),
            )
        )
    return kept, imported.vectors, 0, 0, notes


def embed_rows(
    rows: list[CatalogRow],
    embedder: Embedder,
    cache: EmbeddingCache,
    *,
    index_dir: Path,
    batch_size: int,
    workers: int | None,
    fetch_policy: Any,
    progress: ProgressCallback | None,
    job: dict[str, Any] | None = None,
    spill: Path | None = None,
) -> tuple[list[tuple[CatalogRow, str]], np.ndarray, int, int, list[RowProblem]]:
    """Embed every row not in the cache; return kept (row, hash) pairs with their vectors in order.
    With a Ray ``job`` the rows are only hashed here and the misses are embedded on the cluster.
    With ``spill`` (a folder) the vectors are assembled into a memory map there, ASSEMBLE_ROWS at
    a time, and new vectors are not kept in memory. Vectors come from the SQLite cache or from
    the Parquet shards in ``<index_dir>/embeddings/`` (which a Ray build writes; with ``spill``
    they are its only cache, see ``build.ON_DISK_MIN_VECTORS``), joined a shard at a time."""
    fingerprint = embedder.fingerprint
    shards_dir = index_dir / SHARDS_DIR
    cached = cache.cached_hashes(fingerprint)
    # read from the shards, not SQLite
    in_shards_only = shard_keys(shards_dir, fingerprint) - cached
    cached |= in_shards_only
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    prepare = _RowPreparer(
        embedder, cache, cached, index_dir / DOWNLOADS_DIR, fetch_policy, decode=not job
    )
    misses: dict[str, tuple[str, str | None, bytes | None]] = {}

    kept: list[tuple[CatalogRow, str]] = []
    problems: list[RowProblem] = []
    new_vectors: dict[str, np.ndarray | None] = {}  # None: read it back from the cache
    pending: list[tuple[str, Any]] = []
    pending_hashes: set[str] = set()
    file_entries: list[tuple[str, int, int, str]] = []
    embedded = 0

    def flush() -> None:
        nonlocal embedded
        if not pending:
            return
        import torch

        hashes = [h for h, _ in pending]
        vecs = embedder.embed_batch(torch.stack([t for _, t in pending]))
        cache.put_many(hashes, vecs, fingerprint)
        cache.remember_files(file_entries)
        file_entries.clear()
        new_vectors.update(zip(hashes, vecs) if spill is None else dict.fromkeys(hashes))
        embedded += len(hashes)
        pending.clear()
        pending_hashes.clear()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vsearch-decode") as pool:
        for done, item in enumerate(
            _ordered_map(pool, prepare, rows, window=max(2 * batch_size, 4 * workers)), start=1
        ):
            if item.error is not None:
                problems.append(
                    RowProblem(row=item.row.row, reason=item.error, image=item.row.image)
                )
            else:
                kept.append((item.row, item.content_hash))
                if item.file_entry:
                    file_entries.append(item.file_entry)
                if item.remote is not None:
                    misses.setdefault(item.content_hash, item.remote)
                if (
                    item.tensor is not None
                    and item.content_hash not in new_vectors
                    and item.content_hash not in pending_hashes
                ):
                    pending.append((item.content_hash, item.tensor))
                    pending_hashes.add(item.content_hash)
                    if len(pending) >= batch_size:
                        flush()
            if progress is not None and not job:
                progress(done, len(rows))
        flush()
    cache.remember_files(file_entries)
    if job:
        from vsearch.embeddings.ray_engine import embed_into_cache

        shards_only = spill is not None  # too big for the SQLite cache: the shards are the cache
        new_hashes, failed, run = embed_into_cache(
            misses,
            embedder,
            cache,
            job=job,
            progress=progress,
            shards_dir=shards_dir,
            shards_only=shards_only,
        )
        new_vectors = dict.fromkeys(new_hashes)
        if shards_only:
            in_shards_only |= new_hashes
        embedded = len(new_vectors)
        job["report"] = {
            "engine": "ray",
            "address": run.address,
            "actors": run.actors,
            "cpus_per_actor": run.cpus_per_actor,
            "worker_pids": sorted(run.worker_pids),
            "hosts": sorted(run.hosts),
            "shards": str(shards_dir),
            "shards_are_cache": shards_only,
        }
        problems += [
            RowProblem(row=r.row, reason=failed[h], image=r.image) for r, h in kept if h in failed
        ]
        kept = [(r, h) for r, h in kept if h not in failed]

    dim = int(embedder.dim)
    vectors = (
        open_matrix(spill / "raw.f32.npy", len(kept), dim)
        if spill is not None
        else np.empty((len(kept), dim), dtype=np.float32)
    )
    found = np.zeros(len(kept), dtype=bool)
    # one step's vectors at a time, in catalog order
    for start in range(0, len(kept), ASSEMBLE_ROWS):
        part = kept[start : start + ASSEMBLE_ROWS]
        from_cache = cache.get_many(
            list({h for _, h in part if new_vectors.get(h) is None and h not in in_shards_only}),
            fingerprint,
        )
        block = np.empty((len(part), dim), dtype=np.float32)
        for i, (_, h) in enumerate(part):
            vec = new_vectors.get(h)
            if vec is None:
                vec = from_cache.get(h)
            if vec is not None and vec.shape[0] == dim:
                block[i] = vec
                found[start + i] = True
        vectors[start : start + len(part)] = block
    wanted: dict[str, list[int]] = {}
    for i in np.flatnonzero(~found):
        wanted.setdefault(kept[i][1], []).append(int(i))
    # one pass over the shards; leaves what none held
    fill_from_shards(shards_dir, fingerprint, wanted, vectors)
    found[:] = True
    found[[i for rows in wanted.values() for i in rows]] = False
    problems += [
        RowProblem(
            row=kept[i][0].row,
            reason="embedding missing from the cache; rebuild to retry",
            image=kept[i][0].image,
        )
        for i in np.flatnonzero(~found)
    ]
    final_kept = [pair for pair, ok in zip(kept, found) if ok]
    _compact(vectors, found)
    reused = sum(1 for _, h in final_kept if h not in new_vectors)
    if hasattr(vectors, "flush"):
        vectors.flush()
    return final_kept, vectors[: len(final_kept)], embedded, reused, problems


def _compact(vectors: np.ndarray, keep: np.ndarray) -> None:
    """Move the rows ``keep`` marks to the front of ``vectors``, in order, in place and
    ASSEMBLE_ROWS at a time (``vectors`` may be a memory map bigger than RAM)."""
    rows = np.flatnonzero(keep)
    if len(rows) == len(keep):
        return
    for start in range(0, len(rows), ASSEMBLE_ROWS):  # a row only moves up, past rows already read
        chunk = rows[start : start + ASSEMBLE_ROWS]
        vectors[start : start + len(chunk)] = vectors[chunk]


class _RowPreparer:
    """Runs in decode workers: find a row's bytes and hash, and decode + preprocess only if
    needed."""

    def __init__(
        self,
        embedder: Embedder,
        cache: EmbeddingCache,
        cached: set[str],
        downloads: Path,
        fetch_policy: Any,
        decode: bool = True,
    ):
        # False: leave decoding to Ray workers, which read the file again themselves
        self.decode = decode
        self.embedder = embedder
        self.cache = cache
        self.cached = cached
        self.downloads = downloads
        self.fetch_policy = fetch_policy
        self.min_side = getattr(embedder, "input_size", None)

    def __call__(self, row: CatalogRow) -> _Prepared:
        try:
            return self._prepare(row)
        except ImageError as e:
            return _Prepared(row, error=str(e))
        except Exception as e:  # a bug or an unexpected library error must not kill a long build
            return _Prepared(row, error=f"{row.image}: unexpected error {type(e).__name__}: {e}")

    def _prepare(self, row: CatalogRow) -> _Prepared:
        from vsearch.catalog.images import content_hash, load_image, read_image_bytes

        entry = None
        if row.image.startswith(("http://", "https://")):
            from vsearch.catalog.fetch import FetchPolicy, downloaded_file, fetch_image

            data, digest = fetch_image(
                row.image, self.downloads, policy=self.fetch_policy or FetchPolicy()
            )
            if not self.decode and digest not in self.cached:
                return _Prepared(
                    row,
                    content_hash=digest,
                    remote=(row.image, str(downloaded_file(self.downloads, digest)), None),
                )
        else:
            try:
                st = os.stat(row.image)
            except OSError:
                st = None
            digest = self.cache.known_hash(row.image, st.st_size, st.st_mtime_ns) if st else None
            if digest is not None and digest in self.cached:
                return _Prepared(row, content_hash=digest)
            data = read_image_bytes(row.image)
            digest = content_hash(data)
            if st is not None:
                entry = (row.image, st.st_size, st.st_mtime_ns, digest)
        if digest in self.cached:
            return _Prepared(row, content_hash=digest, file_entry=entry)
        if not self.decode:
            return _Prepared(
                row, content_hash=digest, file_entry=entry, remote=(row.image, row.image, None)
            )
        image = load_image(io.BytesIO(data), min_side=self.min_side, name=row.image)
        return _Prepared(
            row, content_hash=digest, tensor=self.embedder.preprocess(image), file_entry=entry
        )


def _ordered_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """Like pool.map, in order, but with at most ``window`` items in flight (bounded memory)."""
    it = iter(items)
    futures = deque(pool.submit(fn, item) for item in islice(it, window))
    while futures:
        result = futures.popleft().result()
        for item in islice(it, 1):
            futures.append(pool.submit(fn, item))
        yield result


def open_matrix(path: Path, rows: int, dim: int) -> np.ndarray:
    """A float32 [rows, dim] .npy on disk, memory-mapped for writing: vectors in page cache, not in
    the heap."""
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
