"""Parquet shards of embeddings: the vectors a build made, in a form any tool can read back.

One file holds rows of ``key`` (string: SHA-256 of the image file's bytes, the embedding-cache
key) and ``vector`` (``fixed_size_list<float32>[dim]``, L2-normalised), and says in its schema
metadata which model made them (``vsearch.model_fingerprint``) and their width (``vsearch.dim``).
Files are written whole under a temporary name and renamed, so a reader never sees half a file.
A key may appear in more than one file (an image embedded again after its cache entry was lost);
the vectors are the same, so readers keep either.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from vsearch.errors import EmbeddingsImportError, VsearchError

FORMAT_VERSION = "1"
META_FINGERPRINT = b"vsearch.model_fingerprint"
META_DIM = b"vsearch.dim"
META_VERSION = b"vsearch.format_version"


def write_embedding_shard(
    folder: str | os.PathLike, keys: list[str], vectors: np.ndarray, fingerprint: str
) -> Path:
    """Write one shard ``part-NNNNN.parquet`` (the next free number) in ``folder``; returns its
    path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(keys) != vectors.shape[0]:
        raise ValueError(f"{len(keys)} keys for vectors of shape {vectors.shape}")
    dim = int(vectors.shape[1])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    column = pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.reshape(-1), type=pa.float32()), dim
    )
    schema = pa.schema(
        [("key", pa.string()), ("vector", pa.list_(pa.float32(), dim))],
        metadata={
            META_FINGERPRINT: fingerprint.encode(),
            META_DIM: str(dim).encode(),
            META_VERSION: FORMAT_VERSION.encode(),
        },
    )
    table = pa.table([pa.array(keys, type=pa.string()), column], schema=schema)
    tmp = folder / f".part-{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp)
    for number in range(len(list(folder.glob("part-*.parquet"))), 10**6):
        path = folder / f"part-{number:05d}.parquet"
        try:
            os.link(tmp, path)  # atomic, and never replaces another build's shard
        except FileExistsError:
            continue
        except OSError:  # file systems without hard links
            if path.exists():
                continue
            os.replace(tmp, path)
            return path
        tmp.unlink()
        return path
    raise VsearchError(f"{folder}: no free shard name")  # pragma: no cover


def shard_paths(folder: str | os.PathLike, fingerprint: str | None = None) -> list[Path]:
    """The shard files in ``folder`` in file-name order (only ``fingerprint``'s, if given).

    A file that is not such a shard (no vsearch metadata, a newer format) raises VsearchError
    naming it. Only schemas are read.
    """
    import pyarrow.parquet as pq

    paths = []
    for path in sorted(Path(folder).glob("part-*.parquet")):
        try:
            meta = pq.read_schema(path).metadata or {}
        except Exception as e:
            raise VsearchError(f"{path}: not a readable Parquet file ({e})") from e
        version = meta.get(META_VERSION, b"").decode()
        if META_FINGERPRINT not in meta or META_DIM not in meta or version != FORMAT_VERSION:
            raise VsearchError(
                f"{path}: not a vsearch embedding shard of format {FORMAT_VERSION} "
                "(needs schema metadata vsearch.model_fingerprint, vsearch.dim, "
                "vsearch.format_version)"
            )
        if fingerprint is None or meta[META_FINGERPRINT].decode() == fingerprint:
            paths.append(path)
    return paths


def iter_embedding_shards(
    folder: str | os.PathLike, fingerprint: str | None = None
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield (keys, float32 [n, dim] vectors) for each shard in ``folder``, in file-name order.

    With ``fingerprint``, shards of other models are skipped (see ``shard_paths`` for errors).
    """
    for path in shard_paths(folder, fingerprint):
        dim = int(_metadata(path)[META_DIM])
        parts = list(read_shard_vectors(path, dim=dim))
        yield (
            [k for keys, _ in parts for k in keys],
            np.concatenate([v for _, v in parts])
            if parts
            else np.empty((0, dim), dtype=np.float32),
        )


def shard_keys(folder: str | os.PathLike, fingerprint: str) -> set[str]:
    """Every key the shards of ``fingerprint`` hold: the key column only, never the vectors.

    The build asks this once, like the SQLite cache's ``cached_hashes``: a key costs ~150 bytes
    of driver memory, a 1280-d vector 5 KB.
    """
    import pyarrow.parquet as pq

    keys: set[str] = set()
    if not Path(folder).is_dir():
        return keys
    for path in shard_paths(folder, fingerprint):
        keys.update(pq.read_table(path, columns=["key"]).column("key").to_pylist())
    return keys


def fill_from_shards(
    folder: str | os.PathLike, fingerprint: str, wanted: dict[str, list[int]], out: np.ndarray
) -> None:
    """Copy the vector of each key in ``wanted`` (key -> rows of ``out``) from the shards of
    ``fingerprint``, reading each shard once, a row group at a time: a join of the catalog's
    keys with the shards, so the vectors never sit in memory together (``out`` may be a memory
    map). Keys found are removed from ``wanted``; what is left was in no shard."""
    if not wanted or not Path(folder).is_dir():
        return
    for path in shard_paths(folder, fingerprint):
        for keys, vectors in read_shard_vectors(path, dim=out.shape[1]):
            for j, key in enumerate(keys):
                rows = wanted.pop(key, None)
                if rows is not None:
                    out[rows] = vectors[j]
            if not wanted:
                return


def prune_shards(
    folder: str | os.PathLike,
    claim: Callable[[list[str], str], list[bool]],
    *,
    dry_run: bool = False,
) -> int:
    """Keep the rows ``claim(keys, model fingerprint)`` says yes to - a generation uses them, and
    no earlier row claimed the same key (gc: ``UsedKeys.claim``) - and drop the others; returns
    how many rows went. Shards are read a row group at a time in name order, so the first copy of
    a repeated key wins. A shard that loses rows is written again under a new name before the old
    file is removed, so a reader sees every kept vector at all times (perhaps twice, which readers
    allow). Half-written files a killed build left (``.part-*.tmp``) are deleted too: call this
    only while no build writes (gc holds the build lock)."""
    if not dry_run:
        for tmp in Path(folder).glob(".part-*.tmp"):
            tmp.unlink(missing_ok=True)
    dropped = 0
    for path in shard_paths(folder):
        fingerprint = shard_fingerprint(path)
        keys, vectors = [], []
        total = 0
        for part_keys, part_vectors in read_shard_vectors(path):
            total += len(part_keys)
            for key, vector, keep in zip(
                part_keys, part_vectors, claim(list(part_keys), fingerprint)
            ):
                if keep:
                    keys.append(key)
                    vectors.append(vector)
        if len(keys) == total:
            continue
        dropped += total - len(keys)
        if dry_run:
            continue
        if keys:
            write_embedding_shard(folder, keys, np.stack(vectors), fingerprint)
        path.unlink()
    return dropped


def _metadata(path: Path) -> dict[bytes, bytes]:
    import pyarrow.parquet as pq

    return pq.read_schema(path).metadata or {}


def shard_fingerprint(path: str | os.PathLike) -> str:
    """The model fingerprint a shard file records."""
    return _metadata(Path(path)).get(META_FINGERPRINT, b"").decode()


def read_shard_vectors(
    path: str | os.PathLike, *, dim: int | None = None, fingerprint: str | None = None
) -> Iterator[tuple[list[str], np.ndarray]]:
    """(keys, float32 vectors) of one Parquet embedding file, one row group at a time (so a big
    file never sits in memory whole). Any file with ``key`` and ``vector`` columns is accepted;
    with ``fingerprint``, one whose metadata names another model is refused."""
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(str(path))
    except (OSError, ValueError) as e:
        raise EmbeddingsImportError(f"{path}: not a readable Parquet file ({e})") from None
    meta = {k.decode(): v.decode() for k, v in (f.schema_arrow.metadata or {}).items()}
    names = set(f.schema_arrow.names)
    if not {"key", "vector"} <= names:
        raise EmbeddingsImportError(
            f"{path}: needs columns 'key' and 'vector', has {', '.join(sorted(names))}"
        )
    if fingerprint is not None and meta.get("vsearch.model_fingerprint") not in (None, fingerprint):
        raise EmbeddingsImportError(
            f"{path}: vectors of model {meta['vsearch.model_fingerprint'][:12]}, the index's model "
            f"is {fingerprint[:12]}"
        )
    for g in range(f.num_row_groups):
        table = f.read_row_group(g, columns=["key", "vector"])
        column = table.column("vector").combine_chunks()
        width = getattr(column.type, "list_size", None)
        if width is None or (dim is not None and width != dim):
            raise EmbeddingsImportError(
                f"{path}: 'vector' must be fixed_size_list<float32>[{dim}], is {column.type}"
            )
        flat = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        yield table.column("key").to_pylist(), flat.reshape(len(table), width)
