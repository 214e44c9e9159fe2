"""Incremental index maintenance: a rebuild that changed little updates the previous FAISS index.

A full build trains (IVF) or links (HNSW) every vector again; at 100k HNSW vectors that is most of
a build. When the live generation was built with the same model, index type and vector space
(the learned projection reused, no whitening/DBA refit), the new generation starts from a copy of
its FAISS index instead:

* **matching** - an image keeps its FAISS id when the previous generation holds the same
  (product id, content hash of the image) pair (``store.content_key``: a photo replaced in place
  with other bytes is a new image) *and* the same stored vector (compared after the index's own
  encoding, so a changed embedding, projection or DBA neighbourhood counts as a change); the rest
  are removed and added.
* **flat** - ``remove_ids`` then ``add`` on the copy. The remaining ids are renumbered to stay
  0..n-1 (so ``id == position`` still holds for readers). IVF types are built in shards whose lists
  are merged on disk and memory-mapped (``sharded_index``), so their lists are rebuilt; ``ivf`` and
  ``ivfpq`` reuse the previous generation's *trained* coarse quantizer (and PQ codebooks), which
  skips the training (most of their build) and gives exactly a from-scratch build with that
  quantizer. ``ivfpq-fs`` (repacked in memory) is always built afresh.
* **HNSW** - its graph cannot drop a node: new vectors are added, removed ones stay in the file as
  *hidden* vectors (FAISS ids with no ``images`` row; search filters them out with an id selector).

A full rebuild happens instead when this build's added + removed images exceed
``MAX_CHANGE_FRACTION`` of the previous ones, when the changes since the last full build do
(``changed_since_full`` in the manifest: an IVF quantizer trained long ago fits a drifted catalog
worse), or when hidden HNSW vectors would exceed ``MAX_HIDDEN_FRACTION`` of the file. The result
then equals a from-scratch build with the same quantizer: the same vectors under the same ids'
products.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsearch.errors import VsearchError
from vsearch.store import generations as store

# added + removed images (this build, and since the last full build) / images
MAX_CHANGE_FRACTION = 0.20
MAX_HIDDEN_FRACTION = 0.20  # HNSW: hidden (removed) vectors / vectors in the file
INCREMENTAL_TYPES = ("flat", "hnsw")  # updated in place
# rebuilt in shards, on the previous generation's trained quantizer
QUANTIZER_REUSE_TYPES = ("ivf", "ivfpq")
_SAME_VECTOR_TOL = 1e-5


@dataclass
class Update:
    """An updated FAISS index for the new generation, and the FAISS id of each new image."""

    index: Any
    factory: str
    vids: np.ndarray  # FAISS id per image, in the new generation's image order
    record: dict[str, Any]  # the manifest's "incremental" entry


def try_update(
    previous: Path | None,
    vectors: np.ndarray,
    images: list[store.ImageRecord],
    manifest: dict[str, Any],
    index_type: str,
) -> tuple[Update | None, str]:
    """The previous generation's index updated to ``vectors``, or (None, why a full build is
    needed).

    manifest: the new generation's manifest so far (model, postprocess and adaptation decided).
    """
    if previous is None:
        return None, "no previous generation"
    try:
        old = store.read_manifest(previous)
    except VsearchError as e:
        return None, f"previous generation unreadable ({e})"
    why = _incompatible(old, manifest, index_type, previous.name)
    if why:
        return None, why
    try:
        old_keys, old_vids = _old_images(previous)
        index = store.read_faiss(previous)
    except (VsearchError, sqlite3.Error) as e:  # a damaged previous generation: build afresh
        return None, f"previous generation unreadable ({e})"
    n_old = len(old_keys)
    if n_old == 0 or index.ntotal < n_old:
        return None, "previous generation is empty or inconsistent"

    # Same (product, image content) key, and the same vector as stored: the image keeps its FAISS
    # id.
    new_keys = _keys(store.content_key(im.product_id, im.source, im.content_hash) for im in images)
    _, kept_new_a, kept_old_a = np.intersect1d(new_keys, old_keys, return_indices=True)
    same = _same_vectors(index, old_vids[kept_old_a], vectors, kept_new_a)
    kept_new_a, kept_old_a = kept_new_a[same], kept_old_a[same]
    added = np.setdiff1d(np.arange(len(images)), kept_new_a)
    removed_old = np.setdiff1d(np.arange(n_old), kept_old_a)
    change = len(added) + len(removed_old)
    since = int((old.get("incremental") or {}).get("changed_since_full", 0)) + change
    why = _too_much_change(change, n_old, since, len(images))
    if why:
        return None, why

    removed_vids = old_vids[removed_old]
    vids = np.empty(len(images), dtype=np.int64)
    if index_type == "hnsw":
        hidden = index.ntotal - n_old + len(removed_vids)
        if hidden > MAX_HIDDEN_FRACTION * (index.ntotal + len(added)):
            return None, (
                f"{hidden} of {index.ntotal + len(added)} HNSW vectors would be hidden "
                f"(more than {MAX_HIDDEN_FRACTION:.0%})"
            )
        vids[kept_new_a] = old_vids[kept_old_a]
        vids[added] = index.ntotal + np.arange(len(added))
    else:
        hidden = 0
        _remove_and_renumber(index, removed_vids)
        # removed ids below each kept id
        shift = np.searchsorted(np.sort(removed_vids), old_vids[kept_old_a])
        vids[kept_new_a] = old_vids[kept_old_a] - shift
        vids[added] = index.ntotal + np.arange(len(added))
    if len(added):
        index.add(np.ascontiguousarray(vectors[added], dtype=np.float32))
    record = {
        "base": previous.name,
        "added": int(len(added)),
        "removed": int(len(removed_vids)),
        "kept": int(len(kept_new_a)),
        "hidden": int(hidden),
        "changed_since_full": since,
    }
    return Update(index, old["faiss_factory"], vids, record), ""


def reusable_quantizer(
    previous: Path | None,
    images: list[store.ImageRecord],
    manifest: dict[str, Any],
    index_type: str,
) -> tuple[dict[str, Any] | None, str]:
    """({"quantizer_from", "factory", "trained_index", and the record}, '') when an IVF build may
    start from the previous generation's trained quantizer instead of training one, or (None, why
    not). Same rules as an update: same model and vector space, and at most MAX_CHANGE_FRACTION of
    the images changed in this build and since the quantizer was trained (a drifted catalog gets a
    new one). Images are compared by (product, content hash) only: every vector is added again
    anyway."""
    if previous is None:
        return None, "no previous generation"
    try:
        old = store.read_manifest(previous)
        old_keys, _ = _old_images(previous)
    except (VsearchError, sqlite3.Error) as e:
        return None, f"previous generation unreadable ({e})"
    why = _incompatible(old, manifest, index_type, previous.name, types=QUANTIZER_REUSE_TYPES)
    if why:
        return None, why
    if not (previous / store.VECTORS_FILE).is_file() or not len(old_keys):
        return None, "previous generation is empty or inconsistent"
    new_keys = _keys(store.content_key(im.product_id, im.source, im.content_hash) for im in images)
    common = len(np.intersect1d(new_keys, old_keys))
    change = (len(new_keys) - common) + (len(old_keys) - common)
    since = int((old.get("incremental") or {}).get("changed_since_full", 0)) + change
    why = _too_much_change(change, len(old_keys), since, len(images))
    if why:  # a quantizer trained on a catalog that has since drifted is retrained
        return None, why
    return {
        "quantizer_from": old.get("incremental", {}).get("quantizer_from") or previous.name,
        "factory": old["faiss_factory"],
        "trained_index": previous / store.VECTORS_FILE,
        "added": len(new_keys) - common,
        "removed": len(old_keys) - common,
        "changed_since_full": since,
    }, ""


def _incompatible(
    old: dict[str, Any],
    new: dict[str, Any],
    index_type: str,
    previous_name: str,
    types: tuple[str, ...] = INCREMENTAL_TYPES,
) -> str:
    """Why the previous index cannot be updated into the new one ('' when it can)."""
    if index_type not in types:
        return f"index type {index_type} is always rebuilt"
    if old.get("index_type") != index_type:
        return f"index type changed ({old.get('index_type')} -> {index_type})"
    if (
        old["model"].get("fingerprint") != new["model"]["fingerprint"]
        or old.get("dim") != new["dim"]
    ):
        return "model changed"
    post_old, post_new = old.get("postprocess") or {}, new.get("postprocess") or {}
    if (
        post_old.get("whitening")
        or post_new.get("whitening")
        or post_old.get("dba")
        or post_new.get("dba")
    ):
        return "whitening/DBA are refitted on the whole catalog"
    ad_old, ad_new = old.get("adaptation") or {}, new.get("adaptation") or {}
    if ad_new.get("files"):  # a projection: only the previous one, reused, keeps the vector space
        if ad_new.get("state") != "reused" or ad_new.get("reused_from") != previous_name:
            return "the learned projection was refitted"
    elif ad_old.get("files"):
        return "the learned projection was dropped"
    return ""


def _old_images(previous: Path) -> tuple[np.ndarray, np.ndarray]:
    """Keys ("product id NUL content hash", ``store.content_key``) and FAISS ids of the previous
    generation's images."""
    rows = store.read_image_records(previous)
    return (
        _keys(store.content_key(pid, source, digest) for _, pid, source, _, digest in rows),
        np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
    )


def _keys(pairs) -> np.ndarray:
    """One matching key per (product id, image content): the identity an image keeps across
    builds."""
    keys = [f"{pid}\x00{source}" for pid, source in pairs]
    return np.asarray(keys) if keys else np.empty(0, dtype=str)


def _too_much_change(change: int, n_old: int, since: int, n_new: int) -> str:
    """Why this many changed images call for a full build ('' when they do not)."""
    if change > MAX_CHANGE_FRACTION * n_old:
        return f"{change} of {n_old} images changed (more than {MAX_CHANGE_FRACTION:.0%})"
    if since > MAX_CHANGE_FRACTION * max(n_new, 1):
        return (
            f"{since} images changed since the last full build (more than "
            f"{MAX_CHANGE_FRACTION:.0%})"
        )
    return ""


def _same_vectors(index, old_vids: np.ndarray, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per pair: is ``vectors[rows[i]]``, as this index would store it, the vector stored under
    ``old_vids[i]``? Compared a chunk at a time, so no second copy of every vector is made."""
    import faiss

    flat = faiss.downcast_index(index.storage) if isinstance(index, faiss.IndexHNSW) else index
    xb = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
    same = np.zeros(len(rows), dtype=bool)
    for start in range(0, len(rows), 8192):
        part = slice(start, start + 8192)
        new = np.ascontiguousarray(vectors[rows[part]], dtype=np.float32)
        same[part] = np.abs(new - xb[old_vids[part]]).max(axis=1, initial=0.0) <= _SAME_VECTOR_TOL
    return same


def _remove_and_renumber(index, removed: np.ndarray) -> None:
    """Remove ids; keep the rest numbered 0..n-1 in their old order (flat compacts by itself)."""
    import faiss

    if not len(removed):
        return
    before = index.ntotal
    index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(removed, dtype=np.int64)))
    if index.ntotal != before - len(removed):
        raise VsearchError(
            f"FAISS removed {before - index.ntotal} of {len(removed)} vectors; rebuild with a full "
            "build"
        )
