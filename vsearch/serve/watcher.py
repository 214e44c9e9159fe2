"""Background reload: a thread that picks up newly published index generations off the request path.

`ProductIndex.reload_if_changed` loads and checks a new generation while the old one keeps
answering, then swaps it in with one assignment. The watcher calls it every few seconds, so no
shopper's request ever waits for a multi-GB load, and a broken generation is skipped once (the
index logs it) instead of failing every request. Listeners run after each swap (the web app
refreshes its filter choices there).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vsearch.search import ProductIndex

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 2.0  # seconds between checks of CURRENT (one small file read)


class IndexWatcher:
    """Keeps a ProductIndex on the newest good generation. Start once; stop on shutdown.

    >>> watcher = IndexWatcher(index, interval=2.0).start()
    >>> watcher.stop()
    """

    def __init__(self, index: ProductIndex, *, interval: float = DEFAULT_INTERVAL):
        if interval <= 0:
            raise ValueError(f"interval must be positive seconds, got {interval!r}")
        self.index = index
        self.interval = float(interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[str], None]] = []
        self.swaps = 0

    def on_swap(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(generation_name)`` after every swap (in the watcher thread)."""
        self._listeners.append(listener)

    def check_now(self) -> bool:
        """One check (what the thread does every `interval`); True when a new generation went
        live."""
        try:
            swapped = self.index.reload_if_changed()
        except Exception:  # noqa: BLE001 - the watcher must survive anything; the old index keeps serving
            log.exception("checking %s for a new generation failed", self.index.index_dir)
            return False
        if swapped:
            self.swaps += 1
            log.info("now serving index generation %s", self.index.generation)
            for listener in list(self._listeners):
                try:
                    listener(self.index.generation)
                except Exception:  # noqa: BLE001
                    log.exception("a reload listener failed")
        return swapped

    def start(self) -> IndexWatcher:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="vsearch-index-watcher", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check_now()
