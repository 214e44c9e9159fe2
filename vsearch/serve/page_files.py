"""The page's copies of catalog images (Gradio serves files only from its own cache).

Each catalog image the page shows is copied into Gradio's upload cache, found by generation +
image id in the index's own database; no catalog folder is ever made servable. Gradio's
``delete_cache`` sweeps that cache by file age, so a copy is touched each time it is handed out
again and copied afresh when the sweep has removed it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vsearch.search import ProductIndex

log = logging.getLogger(__name__)


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


class PageFiles:
    """Exact catalog image files handed to the page: each is copied into Gradio's upload cache
    (the only place its file route serves from besides exact example files), found by generation
    + image id in the index's own database. No catalog folder is ever made servable."""

    MAX_REMEMBERED = 4096

    def __init__(self, index: ProductIndex):
        self.index = index
        self.cache_dir: str | None = None  # set to the gallery's Gradio cache once the page exists
        self._known: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, generation: str, image_id: int) -> str | None:
        """The page's copy of a catalog image. Gradio's cache sweep (``delete_cache``) removes
        copies by age, so a copy handed out again is touched (its age starts over) and one that
        was swept already is copied again: page images keep working after any number of sweeps."""
        key = (generation, int(image_id))
        with self._lock:
            known = self._known.get(key)
            if known is not None:
                self._known.move_to_end(key)
        if known is not None:
            if _is_url(known):
                return known
            try:
                os.utime(known)  # the sweep ages files by ctime; this resets it
                return known
            except OSError:  # swept: copy it again below
                with self._lock:
                    self._known.pop(key, None)
        source = self.index.image_source(generation, image_id)
        if source is None:
            return None
        if not _is_url(source):
            from gradio import processing_utils

            try:
                source = processing_utils.save_file_to_cache(source, cache_dir=self.cache_dir)
            except OSError:
                log.warning(
                    "catalog image %s (generation %s, id %s) cannot be read",
                    source,
                    generation,
                    image_id,
                )
                return None
        with self._lock:
            self._known[key] = source
            while len(self._known) > self.MAX_REMEMBERED:
                self._known.popitem(last=False)
        return source
