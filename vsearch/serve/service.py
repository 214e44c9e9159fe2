"""What the page and the REST API share for one loaded index: the `Service` (one search gate,
one per-client rate limit, the optional API key, the feedback folder, the index watcher) and the
`ServeSettings` it is started with. `vsearch.serve.ui` builds one; `vsearch.serve.api` and the page
both take it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vsearch.errors import FeedbackError, ServerBusyError
from vsearch.serve.guard import (
    BODY_TIMEOUT,
    MAX_WAITING,
    QUERY_FETCHES,
    BodyLimits,
    Gate,
    RateLimiter,
    TrustedProxies,
    client_address,
)

if TYPE_CHECKING:
    from vsearch.search import ProductIndex
    from vsearch.serve.feedback import FeedbackStore
    from vsearch.serve.guard import QueryDownloads
    from vsearch.serve.watcher import IndexWatcher

DEFAULT_RATE = 120.0  # requests per minute per client
DEFAULT_BURST = 30
FEEDBACK_RATE = 6.0  # confirmations per minute per client
FEEDBACK_BURST = 3


def default_concurrency() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServeSettings:
    """How the server protects itself. rate_limit: requests per minute per client (0 = off)."""

    api_key: str | None = None
    rate_limit: float = DEFAULT_RATE
    rate_burst: int = DEFAULT_BURST
    concurrency: int = 0  # 0 = min(4, CPUs)
    max_waiting: int = MAX_WAITING
    feedback: bool = False
    # peers whose X-Forwarded-For names the client (rate limit key)
    trusted_proxies: tuple[str, ...] = ()
    body_timeout: float = BODY_TIMEOUT  # seconds for a whole request body to arrive (0 = no limit)


class Service:
    """What the page and the REST API share for one loaded index."""

    def __init__(self, index: ProductIndex, settings: ServeSettings | None = None):
        self.index = index
        self.settings = settings or ServeSettings()
        self.gate = Gate(
            self.settings.concurrency or default_concurrency(), self.settings.max_waiting
        )
        # image_url downloads (network, not CPU)
        self.fetch_gate = Gate(QUERY_FETCHES, self.settings.max_waiting)
        self.limiter = RateLimiter(self.settings.rate_limit, self.settings.rate_burst)
        self.feedback_limiter = RateLimiter(FEEDBACK_RATE, FEEDBACK_BURST)
        self.feedback: FeedbackStore | None = None
        if self.settings.feedback:
            from vsearch.serve import feedback

            self.feedback = feedback.FeedbackStore(index.index_dir)
        self.watcher: IndexWatcher | None = None
        self.proxies = TrustedProxies(self.settings.trusted_proxies)
        self.body_limits = BodyLimits(timeout=self.settings.body_timeout)
        self._downloads: QueryDownloads | None = None
        self._downloads_lock = threading.Lock()

    def start_watcher(self, interval: float | None = None) -> IndexWatcher:
        from vsearch.serve.watcher import DEFAULT_INTERVAL, IndexWatcher

        if self.watcher is None:
            self.watcher = IndexWatcher(self.index, interval=interval or DEFAULT_INTERVAL).start()
        return self.watcher

    def downloads(self) -> QueryDownloads:
        """The bounded cache of query photos fetched by image_url (removed when the server
        stops)."""
        with self._downloads_lock:
            if self._downloads is None:
                from vsearch.serve.guard import QueryDownloads

                self._downloads = QueryDownloads()
            return self._downloads

    def client_key(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """Who a request counts as for the rate limit (X-Forwarded-For only from trusted
        proxies)."""
        return client_address(peer, headers, self.proxies)

    def admit(self, peer: str | None, headers: Mapping[str, str]) -> None:
        """Take one request from this client's rate limit; ServerBusyError saying when to retry."""
        wait = self.limiter.check(self.client_key(peer, headers))
        if wait is not None:
            raise ServerBusyError(
                f"too many requests from you; try again in {max(1, round(wait))} s"
            )

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        with self._downloads_lock:
            if self._downloads is not None:
                self._downloads.close()
                self._downloads = None

    def record_feedback(
        self, photo: Any, product_id: str, client: str, generation: str = ""
    ) -> bool:
        """Record a confirmed match for ``client``; True when new. FeedbackError when off, unknown
        product, too many from this client, or the folder is full."""
        if self.feedback is None:
            raise FeedbackError(
                "feedback is off on this server (start it with vsearch serve --feedback)"
            )
        if self.feedback_limiter.check(client) is not None:
            raise FeedbackError(
                "too many confirmations from you in a short time; try again in a minute"
            )
        try:
            self.index.product(product_id)
        except KeyError:
            raise FeedbackError(f"product {product_id!r} is not in this catalog") from None
        _, new = self.feedback.record(
            photo, product_id, generation=generation or self.index.generation
        )
        return new
