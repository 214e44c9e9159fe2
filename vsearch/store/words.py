"""Words: each product's text in an SQLite FTS5 table beside its rows, so every model can search by
words.

A generation's ``products.sqlite`` holds a contentless FTS5 table ``words`` (rowid = the product's
pid) over four columns: ``title``, ``brand``, ``category`` and ``other`` = every further catalog
column's text (colour, material, description, ...; values that are URLs or bare numbers are left
out). No new service, nothing to download, rebuilt with the products table in every generation (so
an incremental build keeps it in step: a removed product's words go with it).

Text is made comparable before SQLite sees it, the same way for a product and for a query:

* NFKC (full-width ``ＡＢＣ`` and half-width katakana become ``ABC`` and katakana), then case
  folding (``Straße`` = ``strasse``);
* accents and other combining marks dropped (``café`` = ``cafe``, ``grün`` = ``grun``, Greek tonos,
  Arabic harakat and hamza seats: ``أ`` = ``ا``), except the kana voicing marks, which change the
  word;
* runs of Chinese/Japanese characters (no spaces between words) become their characters and
  their two-character sequences (``连衣裙`` -> ``连 衣 裙 连衣 衣裙``), so a one- or two-character
  word matches inside a longer title (a ``trigram`` table cannot); a query run of two or more
  characters looks for its bigrams, a one-character query for the character.

SQLite then splits on spaces and punctuation (``unicode61``) and reduces English word endings
(``porter``: ``sneakers`` = ``sneaker``), and ranks with BM25. A query's words are OR-ed: a product
holding more of them (and rarer ones) ranks higher. Words alone (a search for the first ``limit``
products) list the products holding every word first: SQLite then scores the few products that
hold them all instead of every product holding any (a common word can be in a tenth of a catalog).
"""

from __future__ import annotations

import re
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any

from vsearch.errors import VsearchError
from vsearch.product import Product

TABLE = "words"
FORMAT = 1
COLUMNS = ("title", "brand", "category", "other")
TOKENIZER = "porter unicode61 remove_diacritics 2"
# Photo + words (measured in benchmarks/bench_words.py, RESULTS.md "Words"): the photo's best
# SHORTLIST products are re-scored as photo score + WORD_WEIGHT x (the shortlist's photo-score
# spread) x (the product's BM25 / the best BM25 in the shortlist). A word can thus lift a product
# past others whose photo scores are within WORD_WEIGHT of the shortlist's spread, never past
# clearly better photo matches: words refine the photo, they do not replace it.
SHORTLIST = 50
WORD_WEIGHT = 0.5
RRF_K = 60  # words alone with a text model: reciprocal-rank fusion of BM25 and text->image ranks

_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]+")
_KEEP_MARKS = {"\u3099", "\u309a"}  # kana voicing marks: か and が are different sounds


@lru_cache(maxsize=1)
def _marks() -> re.Pattern[str]:
    """Every combining mark (Unicode category Mn) but the kana voicing marks, as one character
    class."""
    ranges: list[str] = []
    start = prev = None
    # no marks in the CJK extension planes
    for cp in (*range(0x300, 0x20000), *range(0xE0000, 0xE0200)):
        ch = chr(cp)
        mark = unicodedata.category(ch) == "Mn" and ch not in _KEEP_MARKS
        if mark and prev is not None and cp == prev + 1:
            prev = cp
        elif mark:
            if start is not None:
                ranges.append(_range(start, prev))
            start = prev = cp
    if start is not None:
        ranges.append(_range(start, prev))
    return re.compile("[" + "".join(ranges) + "]+")


def _range(a: int, b: int) -> str:
    return re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"


def normalise(text: str) -> str:
    """Case-, width- and accent-insensitive form of a text (see the module docstring)."""
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    if text.isascii():
        return text
    return unicodedata.normalize("NFC", _marks().sub("", unicodedata.normalize("NFD", text)))


def _grams(run: str, *, query: bool) -> list[str]:
    bigrams = [run[i : i + 2] for i in range(len(run) - 1)]
    if query:
        return bigrams or [run]
    return [*run, *bigrams]


def index_text(text: str) -> str:
    """What the FTS table stores for a product's text: normalised, CJK runs as characters +
    bigrams."""
    text = normalise(text)
    if text.isascii():
        return text
    return _CJK.sub(lambda m: " " + " ".join(_grams(m.group(), query=False)) + " ", text)


def query_terms(text: str) -> list[str]:
    """The terms a query looks for (normalised words; CJK runs as bigrams), in order, without
    repeats."""
    out: list[str] = []
    for chunk in _CJK.sub(
        lambda m: " " + " ".join(_grams(m.group(), query=True)) + " ", normalise(text)
    ).split():
        if any(c.isalnum() for c in chunk) and chunk not in out:
            out.append(chunk)
    return out


def match_expression(text: str) -> str | None:
    """An FTS5 MATCH expression: each term quoted (so no word is read as query syntax), OR-ed.
    None when the text holds no word (only spaces or punctuation)."""
    terms = query_terms(text)
    if not terms:
        return None
    return " OR ".join(_quoted(terms))


def _quoted(terms: Sequence[str]) -> list[str]:
    """Each term as an FTS5 string, so no word is read as query syntax (AND, OR, NOT, quotes)."""
    return ['"' + t.replace('"', '""') + '"' for t in terms]


def product_columns(product: Product) -> tuple[str, str, str, str]:
    """The four indexed texts of a product (title, brand, category, other columns), as stored."""
    other = [str(v) for _, v in product.extra if _is_words(str(v))]
    return (
        index_text(product.title),
        index_text(product.brand),
        index_text(product.category),
        index_text(" ".join(other)),
    )


def _is_words(value: str) -> bool:
    value = value.strip()
    if not value or value.startswith(("http://", "https://", "/", "file:")):
        return False
    return any(c.isalpha() for c in value)


def write_words(db: sqlite3.Connection, products: Iterable[tuple[int, Product]]) -> dict[str, Any]:
    """Create and fill the words table in a generation's products database being written; returns
    the manifest's ``words`` entry. products: (pid, product) pairs."""
    started = time.perf_counter()
    cols = ", ".join(COLUMNS)
    db.execute(
        f"CREATE VIRTUAL TABLE {TABLE} USING fts5({cols}, content='', tokenize='{TOKENIZER}')"
    )
    db.executemany(
        f"INSERT INTO {TABLE} (rowid, {cols}) VALUES (?,?,?,?,?)",
        ((pid, *product_columns(p)) for pid, p in products),
    )
    # one b-tree segment: faster queries
    db.execute(f"INSERT INTO {TABLE} ({TABLE}) VALUES ('optimize')")
    return {
        "table": TABLE,
        "format": FORMAT,
        "columns": list(COLUMNS),
        "tokenizer": TOKENIZER,
        "seconds": round(time.perf_counter() - started, 3),
    }


Query = Callable[[str, tuple], list]  # gen.query: (sql, params) -> rows


def has_words_table(query: Query) -> bool:
    return bool(query("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (TABLE,)))


def word_scores(
    query: Query,
    text: str,
    *,
    where: str = "",
    params: Sequence[Any] = (),
    pids: Sequence[int] | None = None,
    limit: int | None = None,
) -> list[tuple[int, float]]:
    """(pid, relevance > 0) of the products whose text holds the query's words, best first (BM25).

    where/params: a filter on the products table (``candidates.filter_sql``); pids: only these
    products (a photo's shortlist); limit: at most this many. With a limit and several words, the
    products holding every word come first (their BM25 order), then those holding some of them;
    a later product's relevance is capped at the one before it, so the list stays best first.
    """
    terms = query_terms(text)
    if not terms:
        return []
    quoted = _quoted(terms)
    if limit is None or pids is not None or len(terms) == 1:
        return _bm25(query, " OR ".join(quoted), where, params, pids, limit)
    every = _bm25(query, " AND ".join(quoted), where, params, None, limit)
    if len(every) >= limit:
        return every
    seen, floor = {pid for pid, _ in every}, every[-1][1] if every else float("inf")
    some = _bm25(query, " OR ".join(quoted), where, params, None, limit + len(every))
    rest = [(pid, min(s, floor)) for pid, s in some if pid not in seen]
    return every + rest[: limit - len(every)]


def _bm25(
    query: Query,
    expr: str,
    where: str,
    params: Sequence[Any],
    pids: Sequence[int] | None,
    limit: int | None,
) -> list[tuple[int, float]]:
    sql = f"SELECT rowid, bm25({TABLE}) AS s FROM {TABLE} WHERE {TABLE} MATCH ?"
    args: list[Any] = [expr]
    if where:
        sql += f" AND rowid IN (SELECT pid FROM products WHERE {where})"
        args.extend(params)
    if pids is not None:
        sql += f" AND rowid IN ({','.join('?' * len(pids))})"
        args.extend(int(p) for p in pids)
    sql += " ORDER BY s, rowid"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    try:
        rows = query(sql, tuple(args))
    except sqlite3.OperationalError as e:  # e.g. an index built before words were indexed
        raise VsearchError(
            f"this index cannot search by words ({e}); rebuild it with this vsearch"
        ) from None
    return [(int(pid), -float(s)) for pid, s in rows]  # FTS5's bm25 is lower = better


def fuse_photo(
    photo: Sequence[float], relevance: Sequence[float], weight: float = WORD_WEIGHT
) -> list[int]:
    """The order (indices, best first) of a photo's shortlist re-ranked with words.

    photo: the shortlist's photo scores, best first; relevance: each product's word relevance (0 =
    none of the words). Fused score = photo + weight x spread x relevance / best relevance, where
    spread = first minus last photo score: the words can only overtake products whose photo score is
    within ``weight`` of the shortlist's spread. Ties keep the photo's order.
    """
    top = max(relevance, default=0.0)
    if not len(photo) or top <= 0:
        return list(range(len(photo)))
    spread = max(float(photo[0]) - float(photo[-1]), 1e-6)
    fused = [float(s) + weight * spread * float(r) / top for s, r in zip(photo, relevance)]
    return sorted(range(len(photo)), key=lambda i: (-fused[i], i))


def reciprocal_rank_fusion(*rankings: Sequence[int], k: int = RRF_K) -> list[tuple[int, float]]:
    """(pid, fused score) over several best-first lists of pids: sum of 1 / (k + rank)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, pid in enumerate(ranking, start=1):
            scores[pid] = scores.get(pid, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda s: -s[1])
