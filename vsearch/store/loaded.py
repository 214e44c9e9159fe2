"""One loaded index generation: its FAISS index, products database, stored vectors and learned
transforms, read once and never changed, so a search holds it for its whole duration while a
reload swaps in the next one.

Everything a search may need is either built here at load or built once under a lock that
every reader takes: concurrent first requests must never see a half-built structure.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np

from vsearch.errors import IndexFormatError
from vsearch.learn.calibration import VerdictCalibration
from vsearch.store import generations as store


class GenerationImages:
    """What is kept of a generation after a reload replaced it: its products database only, to
    answer image lookups (``ProductIndex.image_source``) of answers given just before the swap.
    Its FAISS index and vectors are not referenced from here, so they are freed once the last
    search that held the generation ends."""

    def __init__(self, name: str, db, lock: threading.Lock):
        self.name = name
        self.db = db
        # shared with the generation: an in-flight search may still use the connection
        self.lock = lock

    def query(self, sql: str, params: tuple = ()) -> list:
        with self.lock:
            return self.db.execute(sql, params).fetchall()


class Generation(GenerationImages):
    """One immutable, fully loaded index generation; searches hold a reference for their
    duration."""

    def __init__(self, path: Path):
        self.path = path
        self.manifest = store.read_manifest(path)
        self.faiss = store.read_faiss(path)
        # sqlite3 connections are not safe for concurrent use: every query takes the lock
        super().__init__(path.name, store.open_products_db(path), threading.Lock())
        self._lazy = threading.Lock()  # built-once structures (see _pid_vids, filter_columns)
        # float16, memory-mapped (PQ types); None otherwise
        self.stored = store.read_stored_vectors(path)
        # (vid, pid) pairs streamed into one array: no list of a million tuples
        pairs = np.fromiter(
            itertools.chain.from_iterable(
                self.db.execute("SELECT vid, pid FROM images ORDER BY vid")
            ),
            dtype=np.int64,
        ).reshape(-1, 2)
        vids = pairs[:, 0]
        # removed, still in an HNSW graph
        hidden = int((self.manifest.get("incremental") or {}).get("hidden", 0))
        if len(vids) + hidden != self.faiss.ntotal or (
            len(vids) and (vids[0] < 0 or vids[-1] >= self.faiss.ntotal)
        ):
            raise IndexFormatError(
                f"{path}: {self.faiss.ntotal} vectors but {len(vids)} image records; rebuild the "
                "index"
            )
        # FAISS id -> pid; -1 = hidden
        self.vid_to_pid = np.full(self.faiss.ntotal, -1, dtype=np.int64)
        self.vid_to_pid[vids] = pairs[:, 1]
        self.hidden = (
            np.flatnonzero(self.vid_to_pid < 0).astype(np.int64)
            if hidden
            else np.empty(0, dtype=np.int64)
        )
        self.n_products = self.db.execute("SELECT COUNT(*) FROM products").fetchone()[0]
        post = self.manifest.get("postprocess") or {}
        self.whitening = self.adaptation = None
        if post.get("whitening"):
            from vsearch.learn.transforms import Whitening

            self.whitening = Whitening.load(path, post["whitening"])
        if (self.manifest.get("adaptation") or {}).get("files"):
            from vsearch.learn.transforms import Projection

            self.adaptation = Projection.load(path, self.manifest["adaptation"])
        self.verdict = VerdictCalibration.from_dict(
            self.manifest.get("verdict") or {"threshold": None}
        )
        self._make_direct_map()
        self._pid_vids: tuple[np.ndarray, np.ndarray] | None = None
        self._filter_columns: tuple[str, ...] | None = None

    def _make_direct_map(self) -> None:
        """An IVF index read without stored vectors answers ``vectors_of`` by reconstructing, which
        needs a map from id to list position (8 bytes a vector). It is built here, at load: FAISS's
        ``make_direct_map`` marks the map as built before it fills it and releases the GIL, so
        building it on first use let a second request read a half-built map."""
        if self.stored is not None:
            return
        import faiss

        ivf = faiss.try_extract_index_ivf(self.faiss)
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()

    def images_only(self) -> GenerationImages:
        """This generation reduced to its image lookups (kept after a reload; see
        GenerationImages)."""
        return GenerationImages(self.name, self.db, self.lock)

    def to_index_space(self, query: np.ndarray) -> np.ndarray:
        """Model-space query vectors [n, d] -> the space the catalog vectors are stored in
        (the learned projection, then whitening, as the build applied them)."""
        if self.adaptation is not None:
            query = self.adaptation.apply(query)
        if self.whitening is not None:
            query = self.whitening.apply(query)
        return query

    def vectors_of(self, vids: np.ndarray) -> np.ndarray:
        """Catalog vectors as stored (after whitening/DBA) for these ids only (QE, mean scoring,
        exact fallback): rows of the memory-mapped float16 copy, or reconstructed from FAISS one by
        one (IVF: through the direct map built at load), so nothing ever materialises the whole
        index."""
        vids = np.asarray(vids, dtype=np.int64)
        if self.stored is not None:
            from vsearch.store.sharded import stored_rows

            return stored_rows(self.stored, vids)
        if len(vids) == 0:
            return np.empty((0, self.faiss.d), dtype=np.float32)
        return self.faiss.reconstruct_batch(vids)

    def vids_of(self, pid: int) -> np.ndarray:
        """FAISS ids of all images of one product (two arrays, 16 bytes an image, not a dict of
        arrays), sorted once on first use under a lock; readers only ever see the finished pair."""
        pid_vids = self._pid_vids
        if pid_vids is None:
            with self._lazy:
                if self._pid_vids is None:
                    order = np.argsort(self.vid_to_pid, kind="stable")
                    self._pid_vids = (order, self.vid_to_pid[order])
                pid_vids = self._pid_vids
        order, sorted_pids = pid_vids
        lo, hi = np.searchsorted(sorted_pids, [pid, pid + 1])
        return order[lo:hi]

    def filter_columns(self) -> tuple[str, ...]:
        """Every extra catalog column any product has (the whole table, not a sample), read once."""
        columns = self._filter_columns
        if columns is None:
            with self._lazy:
                if self._filter_columns is None:
                    self._filter_columns = tuple(
                        r[0]
                        for r in self.query(
                            "SELECT DISTINCT j.key FROM products, json_each(products.extra) AS j "
                            "ORDER BY j.key"
                        )
                    )
                columns = self._filter_columns
        return columns
