"""``vsearch gc``: drop what no generation uses, so an index folder does not grow forever.

The embedding cache and the downloaded images outlive generations on purpose (a product removed
and added back is not re-embedded), so nothing prunes them at publish. ``collect_garbage`` keeps
exactly what the generations on disk (the live one and the previous one kept for readers that
are mid-switch) use: cache rows of their (content hash, model fingerprint) pairs (in the SQLite
cache and in the Parquet shards a Ray build writes, which also lose keys they repeat), file-hash
rows of those hashes, and downloaded objects of those hashes. Everything else goes.

Safe beside a running server: generation folders are never touched, and a server reads neither
the cache nor the downloads. It takes the build lock, so it never runs during a build (which may
have cached vectors for a generation not published yet). Confirmed shopper photos
(``--train-pairs``) are no catalog images, but a generation records the ones it learned from
(``train_pairs.json``), and their cached vectors are kept too: a rebuild with the same pairs then
embeds none of them (with ``--embeddings`` that would need the model's weights).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from . import store
from .build import DOWNLOADS_DIR, SHARDS_DIR
from .build_lock import exclusive_build
from .embedding_shards import prune_shards
from .errors import VsearchError


@dataclass(frozen=True)
class GcReport:
    """What ``collect_garbage`` removed (or would remove, with dry_run)."""

    generations: tuple[str, ...]  # the generations whose files were kept
    cache_rows: int  # embedding-cache vectors dropped
    shard_rows: int  # vectors dropped from the Parquet shards (``<index>/embeddings/``)
    file_rows: int  # remembered (path, size, mtime) -> hash entries dropped
    downloads: int  # downloaded image files deleted
    bytes_freed: int  # size of the deleted downloads (the cache file shrinks by VACUUM)


def collect_garbage(index_dir: str | os.PathLike, *, dry_run: bool = False) -> GcReport:
    """Remove cache entries and downloaded images that no generation in ``index_dir`` uses."""
    index_dir = Path(index_dir)
    store.read_current(index_dir)  # not an index: a clear error, and nothing is removed
    with exclusive_build(index_dir):
        gens = sorted(p for p in index_dir.glob(f"{store.GENERATION_PREFIX}*") if p.is_dir())
        used: set[tuple[str, str]] = set()  # (content hash, model fingerprint)
        for gen in gens:
            fingerprint = store.read_manifest(gen)["model"]["fingerprint"]
            with closing(store.open_products_db(gen)) as db:
                used.update((h, fingerprint) for (h,) in db.execute("SELECT DISTINCT content_hash FROM images"))
            used.update((h, fingerprint) for h in store.read_train_pairs(gen))
        hashes = {h for h, _ in used}
        cache_rows = file_rows = 0
        cache_path = index_dir / store.CACHE_FILE
        if cache_path.is_file():
            cache_rows, file_rows = _prune_cache(cache_path, used, hashes, dry_run)
        shard_rows = prune_shards(index_dir / SHARDS_DIR, used, dry_run=dry_run) if (index_dir / SHARDS_DIR).is_dir() else 0
        downloads, freed = _prune_downloads(index_dir / DOWNLOADS_DIR, hashes, dry_run)
    return GcReport(tuple(g.name for g in gens), cache_rows, shard_rows, file_rows, downloads, freed)


def _prune_cache(path: Path, used: set[tuple[str, str]], hashes: set[str], dry_run: bool) -> tuple[int, int]:
    try:
        with closing(sqlite3.connect(path, timeout=30)) as db:
            stale = [r for r in db.execute("SELECT content_hash, fingerprint FROM embeddings") if tuple(r) not in used]
            files = [r[0] for r in db.execute("SELECT path, content_hash FROM files") if r[1] not in hashes]
            if not dry_run and (stale or files):
                db.executemany("DELETE FROM embeddings WHERE content_hash=? AND fingerprint=?", stale)
                db.executemany("DELETE FROM files WHERE path=?", ((p,) for p in files))
                db.commit()
                db.execute("VACUUM")
    except sqlite3.Error as e:
        raise VsearchError(f"embedding cache {path} could not be pruned ({e}); nothing in the index changed") from e
    return len(stale), len(files)


def _prune_downloads(root: Path, hashes: set[str], dry_run: bool) -> tuple[int, int]:
    """Delete downloaded objects (``objects/<sha[:2]>/<sha>``) no generation uses, and their URL rows."""
    objects = root / "objects"
    if not objects.is_dir():
        return 0, 0
    gone: list[str] = []
    freed = 0
    for path in objects.glob("*/*"):
        if path.is_file() and not path.name.startswith(".") and path.name not in hashes:
            freed += path.stat().st_size
            gone.append(path.name)
            if not dry_run:
                path.unlink(missing_ok=True)
    urls = root / "urls.sqlite"
    if gone and not dry_run and urls.is_file():
        try:
            with closing(sqlite3.connect(urls, timeout=30)) as db:
                db.executemany("DELETE FROM urls WHERE sha256=?", ((h,) for h in gone))
                db.commit()
        except sqlite3.Error:
            pass  # a URL row whose object is gone is a cache miss: the next build downloads it again
    return len(gone), freed
