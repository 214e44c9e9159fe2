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

from vsearch.embeddings.pipeline import DOWNLOADS_DIR, SHARDS_DIR
from vsearch.embeddings.shards import prune_shards
from vsearch.errors import VsearchError
from vsearch.store import generations as store
from vsearch.store.lock import exclusive_build

USED_KEYS_FILE = ".gc-used-keys.sqlite"  # scratch, beside the index, while gc runs


@dataclass(frozen=True)
class GcReport:
    """What ``collect_garbage`` removed (or would remove, with dry_run)."""

    generations: tuple[str, ...]  # the generations whose files were kept
    cache_rows: int  # embedding-cache vectors dropped
    shard_rows: int  # vectors dropped from the Parquet shards (``<index>/embeddings/``)
    file_rows: int  # remembered (path, size, mtime) -> hash entries dropped
    downloads: int  # downloaded image files deleted
    bytes_freed: int  # size of the deleted downloads (the cache file shrinks by VACUUM)
    # tuned model weights (``vsearch tune``) neither a generation nor tuned/CURRENT.json names
    tuned_files: int = 0


def collect_garbage(index_dir: str | os.PathLike, *, dry_run: bool = False) -> GcReport:
    """Remove cache entries and downloaded images that no generation in ``index_dir`` uses."""
    index_dir = Path(index_dir)
    store.read_current(index_dir)  # not an index: a clear error, and nothing is removed
    with exclusive_build(index_dir), closing(UsedKeys(index_dir / USED_KEYS_FILE)) as used:
        gens = sorted(p for p in index_dir.glob(f"{store.GENERATION_PREFIX}*") if p.is_dir())
        for gen in gens:
            fingerprint = store.read_manifest(gen)["model"]["fingerprint"]
            used.add_generation(gen, fingerprint)
            used.add(store.read_train_pairs(gen), fingerprint)
        cache_rows = file_rows = 0
        cache_path = index_dir / store.CACHE_FILE
        if cache_path.is_file():
            cache_rows, file_rows = _prune_cache(cache_path, used, dry_run)
        shard_rows = (
            prune_shards(index_dir / SHARDS_DIR, used.claim, dry_run=dry_run)
            if (index_dir / SHARDS_DIR).is_dir()
            else 0
        )
        downloads, freed = _prune_downloads(index_dir / DOWNLOADS_DIR, used, dry_run)
        tuned = _prune_tuned(index_dir, [store.read_manifest(g) for g in gens], dry_run)
    return GcReport(
        tuple(g.name for g in gens), cache_rows, shard_rows, file_rows, downloads, freed, tuned
    )


def _prune_tuned(index_dir: Path, manifests: list[dict], dry_run: bool) -> int:
    """Delete tuned weight files no generation was built with and that are not the current tuned
    model (their cached vectors go with the rest: the cache is pruned by (content, model
    fingerprint))."""
    from vsearch.embeddings.tuned_model import TUNED_DIR, weight_files_in_use

    folder = index_dir / TUNED_DIR
    if not folder.is_dir():
        return 0
    keep = weight_files_in_use(index_dir, manifests)
    stale = [p for p in folder.glob("*.safetensors") if p.name not in keep]
    for p in stale if not dry_run else []:
        p.unlink(missing_ok=True)
    return len(stale)


class UsedKeys:
    """The (content hash, model fingerprint) pairs the generations use, in a scratch SQLite file
    (deleted on close) rather than in memory: at 100 M images a Python set of them would take
    ~20 GB, the table a few GB of disk, and every question below is a join or a batch lookup."""

    def __init__(self, path: Path):
        self.path = path
        path.unlink(missing_ok=True)  # a gc killed earlier may have left one
        # uri: ATTACH below opens generations read-only by URI
        self.db = sqlite3.connect(path, uri=True)
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "CREATE TABLE used (hash TEXT NOT NULL, fp TEXT NOT NULL, claimed INTEGER NOT NULL "
            "DEFAULT 0,"
            " PRIMARY KEY (hash, fp)) WITHOUT ROWID;"
            "CREATE TEMP TABLE probe (k TEXT PRIMARY KEY) WITHOUT ROWID;"
        )

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)

    def add_generation(self, generation: Path, fingerprint: str) -> None:
        """Every content hash of a generation's images, read inside SQLite (nothing goes through
        Python)."""
        db_path = generation / store.PRODUCTS_FILE
        if not db_path.is_file():
            raise VsearchError(
                f"{db_path} is missing; gc removed nothing (rebuild or delete {generation.name})"
            )
        self.db.execute("ATTACH DATABASE ? AS gen", (f"{db_path.resolve().as_uri()}?mode=ro",))
        try:
            self.db.execute(
                "INSERT OR IGNORE INTO used (hash, fp) SELECT DISTINCT content_hash, ? FROM "
                "gen.images",
                (fingerprint,),
            )
            self.db.commit()
        finally:
            self.db.execute("DETACH DATABASE gen")

    def add(self, hashes: list[str], fingerprint: str) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO used (hash, fp) VALUES (?, ?)",
            ((h, fingerprint) for h in hashes),
        )
        self.db.commit()

    def _probe(self, keys: list[str]) -> None:
        self.db.execute("DELETE FROM probe")
        self.db.executemany("INSERT OR IGNORE INTO probe VALUES (?)", ((k,) for k in keys))

    def known_hashes(self, hashes: list[str]) -> set[str]:
        """Those of ``hashes`` some generation uses (with any model)."""
        self._probe(hashes)
        return {
            k
            for (k,) in self.db.execute(
                "SELECT k FROM probe WHERE EXISTS (SELECT 1 FROM used WHERE used.hash = probe.k)"
            )
        }

    def claim(self, keys: list[str], fingerprint: str) -> list[bool]:
        """Per key: used with this model and not claimed before (by an earlier call or earlier in
        ``keys``); those are now claimed. What ``prune_shards`` keeps: each used vector once."""
        self._probe(keys)
        free = {
            k
            for (k,) in self.db.execute(
                "SELECT hash FROM used JOIN probe ON used.hash = probe.k WHERE used.fp = ? AND "
                "used.claimed = 0",
                (fingerprint,),
            )
        }
        self.db.execute(
            "UPDATE used SET claimed = 1 WHERE fp = ? AND claimed = 0 AND hash IN (SELECT k FROM "
            "probe)",
            (fingerprint,),
        )
        out = []
        for k in keys:
            out.append(k in free)
            free.discard(k)
        return out


def _prune_cache(path: Path, used: UsedKeys, dry_run: bool) -> tuple[int, int]:
    """Delete the cache's vectors and file-hash rows no generation uses: joins against ``used``."""
    stale = (
        "NOT EXISTS (SELECT 1 FROM u.used WHERE u.used.hash = embeddings.content_hash AND "
        "u.used.fp = embeddings.fingerprint)"
    )
    orphan = "NOT EXISTS (SELECT 1 FROM u.used WHERE u.used.hash = files.content_hash)"
    try:
        with closing(sqlite3.connect(path, timeout=30, uri=True)) as db:
            db.execute("ATTACH DATABASE ? AS u", (f"{used.path.resolve().as_uri()}?mode=ro",))
            n_stale = db.execute(f"SELECT COUNT(*) FROM embeddings WHERE {stale}").fetchone()[0]
            n_files = db.execute(f"SELECT COUNT(*) FROM files WHERE {orphan}").fetchone()[0]
            if not dry_run and (n_stale or n_files):
                db.execute(f"DELETE FROM embeddings WHERE {stale}")
                db.execute(f"DELETE FROM files WHERE {orphan}")
                db.commit()
                db.execute("DETACH DATABASE u")
                db.execute("VACUUM")
    except sqlite3.Error as e:
        raise VsearchError(
            f"embedding cache {path} could not be pruned ({e}); nothing in the index changed"
        ) from e
    return n_stale, n_files


def _prune_downloads(root: Path, used: UsedKeys, dry_run: bool) -> tuple[int, int]:
    """Delete downloaded objects (``objects/<sha[:2]>/<sha>``) no generation uses, and their URL
    rows."""
    objects = root / "objects"
    if not objects.is_dir():
        return 0, 0
    gone: list[str] = []
    freed = 0
    # one <sha[:2]> folder at a time
    for folder in sorted(p for p in objects.iterdir() if p.is_dir()):
        files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        known = used.known_hashes([p.name for p in files])
        for path in files:
            if path.name not in known:
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
            # a URL row whose object is gone is a cache miss: the next build downloads it again
            pass
    return len(gone), freed
