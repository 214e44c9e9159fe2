"""Search results as shoppers get them: the `Hit` record (one product, how it matched, the index's
verdict) and how ranked products become hits, each judged "close match" or not as the whole
catalog would judge it. `vsearch.search.ProductIndex` returns these; `from vsearch.search import
Hit` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from vsearch.product import Product, ReadsProduct
from vsearch.query_options import product_score
from vsearch.store import generations as store

if TYPE_CHECKING:
    from vsearch.learn.calibration import VerdictCalibration
    from vsearch.store.loaded import Generation


@dataclass(frozen=True)
class Hit(ReadsProduct):
    """One product in a result list: the product's catalog record (its fields read through:
    hit.product_id, hit.title, ..., hit.metadata), and how it matched."""

    rank: int
    product: Product  # the record the catalog gave and the index stored
    score: float  # cosine similarity of the best-matching catalog image (higher is closer)
    image: str  # the catalog image of this product that matched best (path or URL)
    matched_images: tuple[str, ...] = ()  # this product's images among the hits, best first
    # The index's verdict on this result: True = a close match, False = not sure (below the bar),
    # None = this index gives no verdict (it cannot tell at the precision it promises).
    confident: bool | None = None
    # id of `image` in its generation (the web app serves images by generation + id)
    image_id: int = -1
    matched_image_ids: tuple[int, ...] = ()  # ids of `matched_images`, same order
    generation: str = ""  # the index generation that answered

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (used by the CLI's --json and the web API)."""
        d = {
            k: getattr(self, k)
            for k in (
                "rank",
                "product_id",
                "score",
                "title",
                "category",
                "price",
                "url",
                "brand",
                "image",
                "confident",
            )
        }
        d["score"] = round(float(self.score), 6)
        d["metadata"] = dict(self.metadata)
        d["matched_images"] = list(self.matched_images)
        d["image_id"], d["matched_image_ids"], d["generation"] = (
            self.image_id,
            list(self.matched_image_ids),
            self.generation,
        )
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Hit:
        """The Hit a ``to_dict()`` came from (keys it does not know, e.g. the API's image_url, are
        ignored)."""
        product = Product(
            d["product_id"],
            d.get("title", ""),
            d.get("category", ""),
            d.get("price"),
            d.get("url", ""),
            d.get("brand", ""),
            tuple(dict(d.get("metadata") or {}).items()),
        )
        # every other field comes back as it was given
        own = {f.name for f in fields(cls)} - {"product"}
        return cls(
            product=product,
            **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in own},
        )


def make_hits(
    gen: Generation,
    best: list[tuple[int, float, list[int]]],
    k: int,
    verdict: VerdictCalibration | None = None,
    reference=None,
    scoring: str = "max",
    excluded: np.ndarray | None = None,
) -> list[Hit]:
    """The first k products as Hits; best may hold more, so the verdict can see the runner-up.

    verdict: the rule to judge by (None: no verdict). reference: for a filtered query, the same
    query's best two products in the whole catalog, and its query vector there if QE made that
    differ (else None); each shown product is judged as the unfiltered query would judge it."""
    if not best:
        return []
    shown = best[:k]
    pids = [b[0] for b in shown]
    marks = ",".join("?" * len(pids))
    products = {
        r["pid"]: store.product_from_row(r)
        for r in gen.query(f"SELECT * FROM products WHERE pid IN ({marks})", tuple(pids))
    }
    all_vids = [v for b in shown for v in b[2]]
    marks = ",".join("?" * len(all_vids))
    sources = dict(
        gen.query(f"SELECT vid, source FROM images WHERE vid IN ({marks})", tuple(all_vids))
    )
    whole, whole_query = reference if reference is not None else (best, None)

    def whole_catalog_score(pid: int, score: float) -> float:
        """This product's score for the unfiltered query (differs only when QE expanded it
        otherwise)."""
        for p, s, _ in whole:
            if p == pid:
                return s
        if whole_query is None:  # the same query: the same score
            return score
        own = gen.vids_of(pid)
        own = own[~np.isin(own, excluded)] if excluded is not None and len(excluded) else own
        return product_score(gen.vectors_of(own) @ whole_query[0], scoring) if len(own) else score

    hits = []
    for rank, (pid, score, vids) in enumerate(shown, start=1):
        product_id = products[pid].product_id
        if verdict is None:
            confident = None
        elif verdict.signal == "margin":  # only the catalog's first product can lead the others
            confident = None if verdict.threshold is None else False
            if rank == 1:
                mine = whole_catalog_score(pid, score)
                if pid == whole[0][0] or mine >= whole[0][1]:
                    confident = verdict.decide(
                        mine,
                        max((s for p, s, _ in whole if p != pid), default=None),
                        product_id,
                    )
        else:
            confident = verdict.decide(whole_catalog_score(pid, score), product_id=product_id)
        hits.append(
            Hit(
                rank=rank,
                product=products[pid],
                score=float(score),
                image=sources[vids[0]],
                matched_images=tuple(sources[v] for v in vids),
                image_id=int(vids[0]),
                matched_image_ids=tuple(int(v) for v in vids),
                generation=gen.name,
                confident=confident,
            )
        )
    return hits
