"""What the page says about results: the verdict headings, captions and the details panel.

Kept apart from the page's layout and handlers (`ui.py`) so the wording a shopper reads - one
heading per verdict state, similarity in words, escaped catalog text - lives in one place that
tests can read without building a page.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vsearch.search import Hit, ProductIndex

#: What the page says for each state of ``Hit.confident`` of the top result. False says "not sure",
#: not "no match": the calibrated rule only vouches for answers above its bar; below it the first
#: result is often still the right product (5 of the 8 sample shopper photos), just not a sure one.
VERDICT_TITLES: dict[bool | None, str] = {
    True: "Close match",
    False: "Not sure - these are the nearest products",
    None: "Best guesses (this index cannot tell a close match)",
}
GALLERY_LABELS: dict[bool | None, str] = {
    True: "Matching products",
    False: "Nearest products (not sure)",
    None: "Best guesses",
}
HIT_VERDICTS: dict[bool | None, str] = {True: "close match", False: "not sure", None: "no verdict"}


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


# ---------------------------------------------------------------- presentation helpers


def _money(price: float | None) -> str:
    return "price n/a" if price is None else f"{price:,.2f}"


def _md(text: Any) -> str:
    """Escape catalog text for Markdown (titles may contain *, _, [ or HTML)."""
    s = html.escape(str(text), quote=False)
    for ch in "\\`*_[]#|":
        s = s.replace(ch, "\\" + ch)
    return s


#: How alike a result looks, in words a shopper reads (the number is in the details panel): the
#: index's "close match" verdict, else the score against the first result's.
SIMILARITY_WORDS = ("very similar", "similar", "loosely similar", "matches your words")


def similarity_words(hit: Hit, top: float, *, words_only: bool = False) -> str:
    """SIMILARITY_WORDS for one result: a words-alone search has no photo to be similar to."""
    if words_only:
        return SIMILARITY_WORDS[3]
    if hit.confident is True:
        return SIMILARITY_WORDS[0]
    return SIMILARITY_WORDS[1] if hit.score >= 0.85 * top else SIMILARITY_WORDS[2]


def _caption(hit: Hit, top: float | None = None, *, words_only: bool = False) -> str:
    said = similarity_words(hit, hit.score if top is None else top, words_only=words_only)
    return f"{hit.title or hit.product_id}\n{_money(hit.price)} · {said}"


WORDS_TITLE = "Products with your words"


def _status(hits: list[Hit], seconds: float, *, words_only: bool = False) -> str:
    """The status heading is exactly one of VERDICT_TITLES (from the top hit), WORDS_TITLE (a
    search by words alone), or "No products found"."""
    if not hits:
        return (
            "### No products found\nNothing in the catalog passes these filters. Widen the "
            "category or price range."
        )
    took = f"{len(hits)} product{'s' if len(hits) != 1 else ''} in {seconds * 1000:.0f} ms"
    if words_only:
        return (
            f"### {WORDS_TITLE}\nProducts whose title, brand, category or details hold your words, "
            "best "
            f"first. Add a photo to find the very product. <sub>{took}</sub>"
        )
    state = hits[0].confident
    if state is True:
        n_conf = sum(h.confident is True for h in hits)
        more = (
            f"{n_conf} of these look like your product."
            if n_conf > 1
            else "The first result looks like your product."
        )
        return f"### {VERDICT_TITLES[True]}\n{more} <sub>{took}</sub>"
    if state is False:
        # below the bar is not "not sold": the first result is often the product, just not surely
        return (
            f"### {VERDICT_TITLES[False]}\nNo result is a sure match for your photo (best "
            "similarity "
            f"{hits[0].score:.2f}); the first ones are the most likely, so check them. Cropping to "
            "the item "
            f"or a clearer photo can help. <sub>{took}</sub>"
        )
    return (
        f"### {VERDICT_TITLES[None]}\nThe most similar products come first, but this catalog's "
        "index cannot "
        f"say whether any of them is the same product. <sub>{took}</sub>"
    )


def _details(index: ProductIndex, hit: Hit) -> str:
    try:
        product = index.product(hit.product_id)
    except KeyError:  # removed by a rebuild since the search ran
        product = {"images": list(hit.matched_images)}
    lines = [f"### {_md(hit.title or hit.product_id)}"]
    facts = [f"**{_money(hit.price)}**"]
    if hit.brand:
        facts.append(_md(hit.brand))
    if hit.category:
        facts.append(_md(hit.category))
    lines.append(" · ".join(facts))
    if hit.url:
        url = hit.url.replace(")", "%29").replace(" ", "%20")
        lines.append(
            f"[View product page ↗]({url})"
            if _is_url(hit.url)
            else f"Product page: `{_md(hit.url)}`"
        )
    verdict = HIT_VERDICTS.get(hit.confident, HIT_VERDICTS[None])
    lines.append(
        f"\n| Detail | Value |\n|---|---|\n| Product ID | `{_md(hit.product_id)}` |\n| Similarity "
        f"| {hit.score:.3f} ({verdict}) |"
    )
    for key, value in sorted(hit.metadata.items()):
        lines.append(f"| {_md(key)} | {_md(value)} |")
    images = product.get("images", [])
    matched = set(hit.matched_images)
    lines.append(
        f"\n**Catalog images:** {len(images)}; matched your photo: {len(matched)} "
        "(best match first in the strip below)"
    )
    return "\n".join(lines)
