"""The build's learning step, between the embedding cache and the store: what a new generation
learns from the shop, and what it may keep from the live one.

1. Catalog adaptation (``vsearch.learn.adaptation``): learned from the catalog's multi-image
   products and from confirmed shopper photos (``--train-pairs``), on cached vectors. It is refit
   only when the images it would learn from changed by more than ``REFIT_FRACTION`` since the
   projection in use was fitted (or on request); otherwise the previous generation's projection is
   reused, so a small catalog change keeps the vector space and later index updates can stay
   incremental. A freshly fitted catalog-only projection must not make simulated shopper photos
   worse (``shopper_check``), or it is dropped (``reject``).
2. The "close match" verdict's bookkeeping: the query-side settings it is calibrated with
   (``query_settings``), why it cannot be calibrated with them (``settings_withheld``), and the
   previous generation's verdict when this build cannot have moved it (``reuse_verdict``).
   Calibrating a new one is ``vsearch.learn.verdict``.

Pure functions of vectors, labels and generation folders.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsearch.learn.adaptation import TooFewPairsError, fit_adaptation, training_pairs
from vsearch.learn.query_scores import DEFAULT_QE_ALPHA, through, verdict_from_queries
from vsearch.learn.transforms import Projection
from vsearch.query_options import QUERY_DEFAULTS
from vsearch.store.generations import content_key

ADAPT_MODES = ("auto", "off", "refit")
REFIT_FRACTION = 0.10  # refit when > 10 % of the images/pairs the projection learned from changed
MEMBERS_FILE = "adaptation_members.json"
# a catalog-only projection that significantly breaks simulated shopper photos is dropped
SHOPPER_CHECK_ALPHA = 0.05


# ---------------------------------------------------------------- adaptation: fit or reuse


def member_keys(
    product_ids: Sequence[str], image_keys: Sequence[str], *, multi_only: bool = True
) -> list[str]:
    """Short digests of (product, image) for the images adaptation learns from: images of
    products with >= 2 images (catalog), or every given pair (``multi_only=False``, train pairs)."""
    pids = np.asarray(product_ids).astype(str)
    if multi_only and len(pids):
        _, inverse, counts = np.unique(pids, return_inverse=True, return_counts=True)
        keep = counts[inverse] >= 2
    else:
        keep = np.ones(len(pids), dtype=bool)
    return sorted(
        {
            hashlib.sha1(f"{p}\t{k}".encode()).hexdigest()[:16]
            for p, k, ok in zip(pids.tolist(), image_keys, keep.tolist())
            if ok
        }
    )


def changed_fraction(before: Sequence[str], after: Sequence[str]) -> float:
    """Share of the training members that were added or removed, relative to the earlier set."""
    a, b = set(before), set(after)
    return len(a ^ b) / max(len(a), 1)


@dataclass(frozen=True)
class Adaptation:
    """What the build decided: the projection to apply (None = none) and the manifest record."""

    projection: Projection | None
    record: dict[str, Any]


def adapt(
    tmp: Path,
    vectors: np.ndarray,
    product_ids: Sequence[str],
    image_keys: Sequence[str],
    *,
    mode: str,
    model_fingerprint: str,
    previous: Path | None,
    shopper_vectors: np.ndarray | None = None,
    shopper_labels: Sequence[str] = (),
    shopper_keys: Sequence[str] = (),
) -> Adaptation:
    """Fit, reuse or skip the catalog adaptation; write its files into the new generation ``tmp``.

    previous: the live generation folder (its projection is reused when the training members
    changed by at most REFIT_FRACTION and the model is the same). Raises ValueError for a bad mode.
    """
    if mode not in ADAPT_MODES:
        raise ValueError(f"adapt must be one of {', '.join(ADAPT_MODES)}, got {mode!r}")
    if mode == "off":
        return Adaptation(None, {"state": "off"})
    members = member_keys(product_ids, image_keys) + member_keys(
        shopper_labels, shopper_keys, multi_only=False
    )
    if mode == "auto" and previous is not None:
        reused = _reuse(previous, tmp, members, model_fingerprint)
        if reused is not None:
            return reused
    pairs = training_pairs(
        vectors,
        np.asarray(product_ids),
        shopper_vectors=shopper_vectors,
        shopper_labels=np.asarray(shopper_labels),
    )
    try:
        projection = fit_adaptation(vectors, pairs)
    except TooFewPairsError as e:
        return Adaptation(None, {"state": "skipped", "reason": str(e), "products": pairs.products})
    record = {
        "state": "fitted",
        "model_fingerprint": model_fingerprint,
        **projection.save(tmp),
        "refit_fraction": REFIT_FRACTION,
        "members": len(members),
    }
    (tmp / MEMBERS_FILE).write_text(json.dumps(members), encoding="utf-8")
    return Adaptation(projection, record)


def _reuse(
    previous: Path, tmp: Path, members: list[str], model_fingerprint: str
) -> Adaptation | None:
    """The previous generation's projection, if its training members barely changed."""
    from vsearch.errors import VsearchError
    from vsearch.store.generations import read_manifest

    try:
        entry = read_manifest(previous).get("adaptation") or {}
        rejected = entry.get("state") == "rejected"
        if (
            not (entry.get("files") or rejected)
            or entry.get("model_fingerprint") != model_fingerprint
        ):
            return None
        before = json.loads((previous / MEMBERS_FILE).read_text(encoding="utf-8"))
        projection = None if rejected else Projection.load(previous, entry)
    except (OSError, ValueError, KeyError, TypeError, VsearchError):  # unreadable: refit instead
        return None
    change = changed_fraction(before, members)
    if change > REFIT_FRACTION:
        return None
    for name in [*(entry.get("files") or {}).values(), MEMBERS_FILE]:
        _link_or_copy(previous / name, tmp / name)
    if rejected:  # the same decision, without refitting and re-checking (which runs the model)
        return Adaptation(
            None, {**entry, "reused_from": previous.name, "changed_fraction": round(change, 4)}
        )
    record = {
        **entry,
        "state": "reused",
        "reused_from": previous.name,
        "changed_fraction": round(change, 4),
    }
    return Adaptation(projection, record)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Generations are immutable, so sharing a file by hard link is safe; copy where links fail."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def shopper_check(
    raw_vectors: np.ndarray,
    product_ids: Sequence[str],
    projection: Projection,
    simulated: tuple[np.ndarray, Sequence[str], Sequence[int]],
    *,
    alpha: float = SHOPPER_CHECK_ALPHA,
) -> dict[str, Any]:
    """Does a projection learned from the catalog's own views make shopper-like photos worse?

    The build's simulated photos of products with another image (source image held out) are
    searched with and without the projection; of the photos it changes, ``fixed`` it turns
    right and ``broken`` it turns wrong. ``rejected`` when it breaks significantly more than it
    fixes (one-sided sign test, p < ``alpha``): studio views of a small catalog can teach a map
    that pulls its products' views together and shopper photos apart. Measured (RESULTS.md):
    jumia 12 broken / 13 fixed of 240 (p 0.66), the sample demo 11 / 4 of 64 (p 0.059): both
    kept."""
    pids = np.asarray(product_ids).astype(str)
    _, inverse, counts = np.unique(pids, return_inverse=True, return_counts=True)
    rows = np.asarray(simulated[2], dtype=np.int64)
    sel = np.flatnonzero(counts[inverse][rows] >= 2)
    queries, labels, exclude = (
        np.asarray(simulated[0])[sel],
        np.asarray(simulated[1]).astype(str)[sel],
        [[r] for r in rows[sel]],
    )
    before, after = (
        verdict_from_queries(raw_vectors, pids, tr(queries), labels, exclude=exclude, transform=tr)
        for tr in (through(None), through(projection))
    )
    fixed = int((~before.right & after.right).sum())
    broken = int((before.right & ~after.right).sum())
    n = fixed + broken
    p = sum(math.comb(n, k) for k in range(broken, n + 1)) / 2**n if n else 1.0
    return {
        "photos": int(len(sel)),
        "right_without": int(before.right.sum()),
        "right_with": int(after.right.sum()),
        "fixed": fixed,
        "broken": broken,
        "p_value": round(p, 4),
        "rejected": bool(broken > fixed and p < alpha),
    }


def reject(tmp: Path, adaptation: Adaptation, check: Mapping[str, Any]) -> Adaptation:
    """Drop a fitted projection that ``shopper_check`` rejected: its files leave the new generation
    and the manifest says why (``vsearch info`` shows it). The training members stay, so a rebuild
    whose catalog barely changed reuses the decision (``_reuse``) instead of refitting and making
    simulated photos again, and the vector space - hence incremental updates - stays put."""
    for name in (adaptation.record.get("files") or {}).values():
        (tmp / name).unlink(missing_ok=True)
    record = adaptation.record
    return Adaptation(
        None,
        {
            "state": "rejected",
            "shopper_check": dict(check),
            "model_fingerprint": record.get("model_fingerprint"),
            "refit_fraction": REFIT_FRACTION,
            "members": record.get("members"),
            "reason": f"it made {check['broken']} simulated shopper photos wrong and "
            f"{check['fixed']} "
            f"right (of {check['photos']}; sign test p = {check['p_value']})",
        },
    )


# ---------------------------------------------------------------- the verdict


def query_settings(query_defaults: Mapping[str, Any] | None) -> dict[str, Any]:
    """The query-side settings a verdict is calibrated with and applies to, spelt out in full
    (the manifest's ``verdict["query_settings"]``; searches whose settings differ get no
    verdict)."""
    opts = {**QUERY_DEFAULTS, **dict(query_defaults or {})}
    qe = dict(opts.get("query_expansion") or {})
    return {
        "tta": str(opts["tta"]),
        "product_scoring": str(opts["product_scoring"]),
        "query_expansion": {
            "k": int(qe.get("k", 0) or 0),
            "alpha": float(qe.get("alpha", DEFAULT_QE_ALPHA)),
        },
    }


def settings_withheld(settings: Mapping[str, Any], *, simulated: bool, train_pairs: bool) -> str:
    """Why no verdict can be calibrated with these settings ('' when one can): test-time
    augmentation changes the query photo itself, and only simulated shopper photos (made at build)
    can be embedded again with it; confirmed shopper photos and held-out catalog views come from
    the embedding cache."""
    if settings.get("tta", "none") == "none":
        return ""
    if train_pairs:
        queries = (
            "the confirmed shopper photos (--train-pairs), whose vectors come from the "
            "embedding cache"
        )
    elif not simulated:
        queries = (
            "held-out catalog images (no simulated shopper photos: no model loaded, or no "
            "product with two images)"
        )
    else:
        return ""
    return (
        f"no verdict: searches use tta {settings['tta']!r} by default (--default-tta) and the "
        "verdict would be "
        f"calibrated on {queries} without it; build with --default-tta none for a verdict"
    )


def reuse_verdict(
    previous: Path | None,
    manifest: Mapping[str, Any],
    image_keys: Sequence[tuple[str, str]],
    *,
    train_pairs: bool,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The previous generation's verdict, when this build cannot have moved it much: same model,
    the same vector space (its projection reused, or none either way; no whitening/DBA), the same
    query-side ``settings`` (``query_settings``) and at most REFIT_FRACTION of the catalog's images
    (``content_key``s) added, removed or replaced since the build that calibrated it. Calibrating
    costs simulated photos through the model and two projection fits - far more than a small catalog
    change. Builds with train pairs always recalibrate (their photos are not tracked here)."""
    from vsearch.errors import VsearchError
    from vsearch.store.generations import read_image_records, read_manifest

    if previous is None or train_pairs:
        return None
    try:
        old = read_manifest(previous)
        verdict = old.get("verdict") or {}
        # turned off, or learnt from pairs
        if "sources" not in verdict or verdict["sources"].get("train_pairs"):
            return None
        if (verdict.get("query_settings") or query_settings(None)) != (
            settings or query_settings(None)
        ):
            return None  # calibrated for other query-side settings
        if old["model"].get("fingerprint") != manifest["model"]["fingerprint"]:
            return None
        post_old, post_new = old.get("postprocess") or {}, manifest.get("postprocess") or {}
        if any(p.get("whitening") or p.get("dba") for p in (post_old, post_new)):
            return None
        ad_old, ad_new = old.get("adaptation") or {}, manifest.get("adaptation") or {}
        same_space = (
            ad_new.get("state") == "reused" and ad_new.get("reused_from") == previous.name
        ) or (not ad_new.get("files") and not ad_old.get("files"))
        if not same_space:
            return None
        before = read_image_records(previous)
    except (OSError, KeyError, TypeError, ValueError, VsearchError):
        return None
    before_set = {content_key(pid, source, digest) for _, pid, source, _, digest in before}
    after_set = set(map(tuple, image_keys))
    since = float(verdict.get("changed_since_calibration", 0)) + len(before_set ^ after_set) / max(
        len(before_set), 1
    )
    # counted since the build that calibrated it, so small changes cannot add up
    if since > REFIT_FRACTION:
        return None
    return {
        **verdict,
        "calibrated_in": verdict.get("calibrated_in", previous.name),
        "changed_since_calibration": round(since, 4),
    }
