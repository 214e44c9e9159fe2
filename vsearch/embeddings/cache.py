"""Embedding cache: never re-embed an image whose bytes and model have not changed.

Keyed by (sha256 of the image file's bytes, model fingerprint), so a renamed or re-listed file is
reused and an edited one is re-embedded. A second table remembers (path, size, mtime) -> hash so
an unchanged local file is not even re-read on a rebuild. SQLite in WAL mode with one commit per
batch: a build killed at any moment keeps every batch it finished, and the next build resumes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    content_hash TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (content_hash, fingerprint)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash TEXT NOT NULL
) WITHOUT ROWID;
"""


class EmbeddingCache:
    """A small SQLite store shared by every build of one index folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- file hashes
    def known_hash(self, path: str, size: int, mtime_ns: int) -> str | None:
        """The content hash recorded for this exact file version, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT content_hash FROM files WHERE path=? AND size=? AND mtime_ns=?",
                (path, size, mtime_ns),
            ).fetchone()
        return row[0] if row else None

    def remember_files(self, entries: list[tuple[str, int, int, str]]) -> None:
        """Record (path, size, mtime_ns, content_hash) for files read in this build."""
        if not entries:
            return
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?)", entries)
            self._db.commit()

    # -- embeddings
    def cached_hashes(self, fingerprint: str) -> set[str]:
        with self._lock:
            return {
                r[0]
                for r in self._db.execute(
                    "SELECT content_hash FROM embeddings WHERE fingerprint=?", (fingerprint,)
                )
            }

    def get_many(self, hashes: list[str], fingerprint: str) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(hashes), 500):
                chunk = hashes[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for h, dim, blob in self._db.execute(
                    "SELECT content_hash, dim, vector FROM embeddings WHERE fingerprint=? AND "
                    f"content_hash IN ({marks})",
                    (fingerprint, *chunk),
                ):
                    out[h] = np.frombuffer(blob, dtype=np.float32, count=dim)
        return out

    def put_many(self, hashes: list[str], vectors: np.ndarray, fingerprint: str) -> None:
        """Store one batch and commit, so a killed build keeps it."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?,?,?,?)",
                ((h, fingerprint, int(v.shape[0]), v.tobytes()) for h, v in zip(hashes, vectors)),
            )
            self._db.commit()

    def count(self, fingerprint: str | None = None) -> int:
        with self._lock:
            if fingerprint is None:
                return self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
            return self._db.execute(
                "SELECT COUNT(*) FROM embeddings WHERE fingerprint=?", (fingerprint,)
            ).fetchone()[0]
