"""Shoppers' confirmed matches ("This is it"), kept for the shop to review, never trained on
silently.

The loop is opt-in at both ends:

1. ``vsearch serve --feedback`` shows a "This is it" button (and accepts POST /api/v1/feedback).
   A click records the query photo and the chosen product here, in ``<index>/feedback/``:
   ``photos/<sha256>.jpg`` (content-addressed: the same photo is stored once, re-encoded without
   EXIF, at most PHOTO_MAX_SIDE px) and one JSON line per confirmation in ``confirmations.jsonl``.
   The folder is bounded in confirmations and bytes; the server rate-limits each client.
2. ``vsearch feedback export`` writes the confirmations as a pairs CSV (``image,product_id``) that
   a person reviews (deletes wrong rows).
3. Only ``vsearch build CATALOG --train-pairs PAIRS.csv`` feeds the reviewed pairs into a build.

Anyone can click a public page, so nothing recorded here reaches an index without step 2 and 3.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vsearch.errors import FeedbackError, VsearchError

if TYPE_CHECKING:
    from vsearch.catalog.images import ImageSource

FEEDBACK_DIR = "feedback"
PHOTOS_DIR = "photos"
LOG_FILE = "confirmations.jsonl"
PAIRS_FILE = "pairs.csv"
MAX_CONFIRMATIONS = 10_000
MAX_BYTES = 512 * 2**20
PHOTO_MAX_SIDE = 1024
MAX_PRODUCT_ID = 200


@dataclass(frozen=True)
class Confirmation:
    """One shopper's "this is it": a stored photo and the product it shows."""

    photo: str  # file name under photos/
    product_id: str
    generation: str  # the index generation whose result was confirmed
    recorded_at: float  # Unix time


@dataclass(frozen=True)
class ExportReport:
    path: Path
    pairs: int


class FeedbackStore:
    """The feedback folder beside an index. Thread-safe; one server process writes it."""

    def __init__(
        self,
        index_dir: str | os.PathLike,
        *,
        max_confirmations: int = MAX_CONFIRMATIONS,
        max_bytes: int = MAX_BYTES,
    ):
        self.root = Path(index_dir) / FEEDBACK_DIR
        self.max_confirmations = int(max_confirmations)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        # (pairs, count, photo bytes)
        self._state: tuple[set[tuple[str, str]], int, int] | None = None

    @property
    def photos(self) -> Path:
        return self.root / PHOTOS_DIR

    def confirmations(self) -> list[Confirmation]:
        """Everything recorded so far, oldest first (lines that cannot be read are skipped)."""
        path = self.root / LOG_FILE
        if not path.is_file():
            return []
        out = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    d = json.loads(line)
                    out.append(
                        Confirmation(
                            photo=str(d["photo"]),
                            product_id=str(d["product_id"]),
                            generation=str(d.get("generation", "")),
                            recorded_at=float(d.get("recorded_at", 0)),
                        )
                    )
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash
        return out

    def record(
        self, photo: ImageSource, product_id: str, *, generation: str = ""
    ) -> tuple[Confirmation, bool]:
        """Store one confirmation; returns it and whether it was new (the same photo and product
        twice is kept once). Raises FeedbackError when the input is unusable or the folder is
        full."""
        from vsearch.catalog.images import load_image

        product_id = (product_id or "").strip()
        if not product_id or len(product_id) > MAX_PRODUCT_ID:
            raise FeedbackError(
                f"product id must be 1 to {MAX_PRODUCT_ID} characters, got {product_id[:40]!r}"
            )
        try:
            image = load_image(photo, name="feedback photo")
        except VsearchError as e:
            raise FeedbackError(str(e)) from None
        image.thumbnail((PHOTO_MAX_SIDE, PHOTO_MAX_SIDE))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)  # a new file: no EXIF (location, device) is kept
        data = buf.getvalue()
        name = hashlib.sha256(data).hexdigest() + ".jpg"
        with self._lock:
            pairs, count, used = self._load_state()
            if (name, product_id) in pairs:
                existing = next(
                    c
                    for c in reversed(self.confirmations())
                    if (c.photo, c.product_id) == (name, product_id)
                )
                return existing, False
            target = self.photos / name
            new_bytes = 0 if target.exists() else len(data)
            if count >= self.max_confirmations:
                raise FeedbackError(
                    f"the feedback folder {self.root} is full ({count} confirmations); "
                    "export and review them (vsearch feedback export), then clear the folder"
                )
            if used + new_bytes > self.max_bytes:
                raise FeedbackError(
                    f"the feedback folder {self.root} is full ({used / 2**20:.1f} MiB of photos, "
                    f"limit {self.max_bytes / 2**20:.1f} MiB); "
                    "export and review them (vsearch feedback export), then clear the folder"
                )
            self.photos.mkdir(parents=True, exist_ok=True)
            if new_bytes:
                tmp = target.with_suffix(f".tmp{os.getpid()}")
                tmp.write_bytes(data)
                os.replace(tmp, target)
            conf = Confirmation(
                photo=name,
                product_id=product_id,
                generation=generation,
                recorded_at=round(time.time(), 3),
            )
            with open(self.root / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(conf), ensure_ascii=False) + "\n")
            pairs.add((name, product_id))
            self._state = (pairs, count + 1, used + new_bytes)
        return conf, True

    def _load_state(self) -> tuple[set[tuple[str, str]], int, int]:
        if self._state is None:
            confs = self.confirmations()
            used = (
                sum(p.stat().st_size for p in self.photos.glob("*.jpg"))
                if self.photos.is_dir()
                else 0
            )
            self._state = ({(c.photo, c.product_id) for c in confs}, len(confs), used)
        return self._state

    def export_pairs(self, out: str | os.PathLike | None = None) -> ExportReport:
        """Write the confirmations as a pairs CSV (image,product_id) for review, one row per
        distinct photo and product. Image paths are relative to the CSV when the photos lie below
        its folder, absolute otherwise. Default: pairs.csv in the feedback folder."""
        confs = self.confirmations()
        if not confs:
            raise FeedbackError(
                f"no confirmed matches in {self.root}; start the server with --feedback "
                'and let shoppers press "This is it"'
            )
        out = Path(out) if out is not None else self.root / PAIRS_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        base = out.resolve().parent
        seen: set[tuple[str, str]] = set()
        rows = []
        for c in confs:
            if (c.photo, c.product_id) in seen or not (self.photos / c.photo).is_file():
                continue
            seen.add((c.photo, c.product_id))
            path = (self.photos / c.photo).resolve()
            image = path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)
            rows.append((image, c.product_id))
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image", "product_id"])
            w.writerows(rows)
        os.replace(tmp, out)
        return ExportReport(path=out, pairs=len(rows))
