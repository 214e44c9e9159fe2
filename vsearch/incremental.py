"""Incremental index maintenance: a rebuild that changed little updates the previous FAISS index.

A full build trains (IVF) or links (HNSW) every vector again; at 100k HNSW vectors that is most of
a build. When the live generation was built with the same model, index type and vector space
(the learned projection reused, no whitening/DBA refit), the new generation starts from a copy of
its FAISS index instead:

* **matching** - an image keeps its FAISS id when the previous generation holds the same
  (product id, image) pair *and* the same stored vector (compared after the index's own encoding,
  so a changed embedding, projection or DBA neighbourhood counts as a change); the rest are removed
  and added.
* **flat / IVF** - ``remove_ids`` then ``add`` on the copy: IVF keeps its trained quantizer. The
  remaining ids are renumbered to stay 0..n-1 (so ``id == position`` still holds for readers).
* **HNSW** - its graph cannot drop a node: new vectors are added, removed ones stay in the file as
  *hidden* vectors (FAISS ids with no ``images`` row; search filters them out with an id selector).

A full rebuild happens instead when this build's added + removed images exceed
``MAX_CHANGE_FRACTION`` of the previous ones, when the changes since the last full build do
(``changed_since_full`` in the manifest: an IVF quantizer trained long ago fits a drifted catalog
worse), or when hidden HNSW vectors would exceed ``MAX_HIDDEN_FRACTION`` of the file. The result
then equals a from-scratch build with the same quantizer: the same vectors under the same ids' products.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import store
from .errors import VsearchError

MAX_CHANGE_FRACTION = 0.20  # added + removed images (this build, and since the last full build) / images
MAX_HIDDEN_FRACTION = 0.20  # HNSW: hidden (removed) vectors / vectors in the file
INCREMENTAL_TYPES = ("flat", "ivf", "hnsw")  # ivfpq: lossy codes, always rebuilt
_SAME_VECTOR_TOL = 1e-5


@dataclass
class Update:
    """An updated FAISS index for the new generation, and the FAISS id of each new image."""

    index: Any
    factory: str
    vids: np.ndarray  # FAISS id per image, in the new generation's image order
    record: dict[str, Any]  # the manifest's "incremental" entry


def try_update(previous: Path | None, vectors: np.ndarray, images: list[store.ImageRecord], manifest: dict[str, Any],
               index_type: str) -> tuple[Update | None, str]:
    """The previous generation's index updated to ``vectors``, or (None, why a full build is needed).

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
    old_images = _old_images(previous)
    n_old = len(old_images)
    if n_old == 0:
        return None, "previous generation is empty"
    index = store.read_faiss(previous)
    if index_type == "ivf":
        import faiss

        ivf = faiss.extract_index_ivf(index)
        if not isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.ArrayInvertedLists):
            return None, "previous IVF lists are not in memory (on-disk lists are rebuilt)"
    old_vids = np.fromiter(old_images.values(), dtype=np.int64, count=n_old)
    old_vectors = _stored_vectors(index, old_vids)
    new_encoded = _as_stored(index, vectors)

    keys = [(im.product_id, im.source) for im in images]
    pos = {k: i for i, k in enumerate(old_images)}
    kept_new, kept_old = [], []
    for i, k in enumerate(keys):
        j = pos.get(k)
        if j is not None:
            kept_new.append(i), kept_old.append(j)
    kept_new_a, kept_old_a = np.asarray(kept_new, dtype=np.int64), np.asarray(kept_old, dtype=np.int64)
    if len(kept_new_a):
        same = np.abs(new_encoded[kept_new_a] - old_vectors[kept_old_a]).max(axis=1) <= _SAME_VECTOR_TOL
        kept_new_a, kept_old_a = kept_new_a[same], kept_old_a[same]
    added = np.setdiff1d(np.arange(len(images)), kept_new_a)
    removed_old = np.setdiff1d(np.arange(n_old), kept_old_a)
    change = len(added) + len(removed_old)
    since = int((old.get("incremental") or {}).get("changed_since_full", 0)) + change
    if change > MAX_CHANGE_FRACTION * n_old:
        return None, f"{change} of {n_old} images changed (more than {MAX_CHANGE_FRACTION:.0%})"
    if since > MAX_CHANGE_FRACTION * max(len(images), 1):
        return None, f"{since} images changed since the last full build (more than {MAX_CHANGE_FRACTION:.0%})"

    removed_vids = old_vids[removed_old]
    vids = np.empty(len(images), dtype=np.int64)
    if index_type == "hnsw":
        hidden = index.ntotal - n_old + len(removed_vids)
        if hidden > MAX_HIDDEN_FRACTION * (index.ntotal + len(added)):
            return None, (f"{hidden} of {index.ntotal + len(added)} HNSW vectors would be hidden "
                          f"(more than {MAX_HIDDEN_FRACTION:.0%})")
        vids[kept_new_a] = old_vids[kept_old_a]
        vids[added] = index.ntotal + np.arange(len(added))
    else:
        hidden = 0
        _remove_and_renumber(index, removed_vids, index_type)
        shift = np.searchsorted(np.sort(removed_vids), old_vids[kept_old_a])  # removed ids below each kept id
        vids[kept_new_a] = old_vids[kept_old_a] - shift
        vids[added] = index.ntotal + np.arange(len(added))
    if len(added):
        index.add(np.ascontiguousarray(vectors[added], dtype=np.float32))
    record = {"base": previous.name, "added": int(len(added)), "removed": int(len(removed_vids)),
              "kept": int(len(kept_new_a)), "hidden": int(hidden), "changed_since_full": since}
    return Update(index, old["faiss_factory"], vids, record), ""


def _incompatible(old: dict[str, Any], new: dict[str, Any], index_type: str, previous_name: str) -> str:
    """Why the previous index cannot be updated into the new one ('' when it can)."""
    if index_type not in INCREMENTAL_TYPES:
        return f"index type {index_type} is always rebuilt"
    if old.get("index_type") != index_type:
        return f"index type changed ({old.get('index_type')} -> {index_type})"
    if old["model"].get("fingerprint") != new["model"]["fingerprint"] or old.get("dim") != new["dim"]:
        return "model changed"
    post_old, post_new = old.get("postprocess") or {}, new.get("postprocess") or {}
    if post_old.get("whitening") or post_new.get("whitening") or post_old.get("dba") or post_new.get("dba"):
        return "whitening/DBA are refitted on the whole catalog"
    ad_old, ad_new = old.get("adaptation") or {}, new.get("adaptation") or {}
    if ad_new.get("files"):  # a projection: only the previous one, reused, keeps the vector space
        if ad_new.get("state") != "reused" or ad_new.get("reused_from") != previous_name:
            return "the learned projection was refitted"
    elif ad_old.get("files"):
        return "the learned projection was dropped"
    return ""


def _old_images(previous: Path) -> dict[tuple[str, str], int]:
    """(product id, image source) -> FAISS id of the previous generation's images."""
    db = store.open_products_db(previous)
    try:
        rows = db.execute("SELECT p.product_id, i.source, i.vid FROM images i JOIN products p ON p.pid = i.pid").fetchall()
    finally:
        db.close()
    return {(r[0], r[1]): int(r[2]) for r in rows}


def _stored_vectors(index, vids: np.ndarray) -> np.ndarray:
    """The stored (decoded) vectors of these FAISS ids."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
        out = index.reconstruct_batch(vids)
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)
        return out
    flat = faiss.downcast_index(index.storage) if isinstance(index, faiss.IndexHNSW) else index
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)[vids]


def _as_stored(index, vectors: np.ndarray) -> np.ndarray:
    """New vectors as the index would store them (IVF: through its codes), for comparison."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return vectors
    return ivf.sa_decode(ivf.sa_encode(vectors))


def _remove_and_renumber(index, removed: np.ndarray, index_type: str) -> None:
    """Remove ids; keep the rest numbered 0..n-1 in their old order (flat compacts by itself)."""
    import faiss

    if not len(removed):
        return
    before = index.ntotal
    index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(removed, dtype=np.int64)))
    if index.ntotal != before - len(removed):
        raise VsearchError(f"FAISS removed {before - index.ntotal} of {len(removed)} vectors; rebuild with a full build")
    if index_type != "ivf":
        return
    keep = np.ones(before, dtype=bool)
    keep[removed] = False
    remap = np.cumsum(keep) - 1  # old id -> new id for every kept id
    ivf = faiss.extract_index_ivf(index)
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size:
            ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
            ids[:] = remap[ids]
