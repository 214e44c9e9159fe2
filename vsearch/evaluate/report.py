"""The evaluation report: one self-contained HTML page a person can read in a minute.

`write_eval_report` writes ``index.html`` plus its pictures into a folder: headline metrics,
recall@k by category (chart), the close-match precision-recall curve with the operating point,
the worst queries as picture rows (query photo | first result's matched photo | the expected
product's best-matching photo, with scores), and the catalog check of `vsearch.catalog.hygiene`. No
script, no font, no stylesheet is fetched: the page opens from disk with no network.

`picture_row_html` renders one such row from any image sources; the web page uses it (with
data: URIs) to show why one result matched.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsearch.errors import ImageError, VsearchError

if TYPE_CHECKING:
    from vsearch.catalog.hygiene import HygieneReport, PhotoRef
    from vsearch.evaluate.quality import EvalReport, QueryResult
    from vsearch.search import ProductIndex

THUMB_SIDE = 200  # pixels of the longest side of a picture-row thumbnail
SMALL_SIDE = 110  # catalog-check thumbnails
DUPLICATE_GROUPS_SHOWN = 60  # with pictures; the rest are listed as text
ODD_VIEWS_SHOWN = 30
RECALL_AT = (1, 5, 10)

ROW_CSS = """
.vs-row{display:flex;gap:.8rem;align-items:flex-start;margin:.6rem 0;padding:.6rem;
  border:1px solid #e5e7eb;border-radius:8px;flex-wrap:wrap}
.vs-cell{width:210px;font-size:.85rem}
.vs-cell img{max-width:200px;max-height:200px;display:block;border-radius:4px;background:#f9fafb;
  border:1px solid #eee}
.vs-cell .cap{font-weight:600;margin-top:.25rem;overflow-wrap:anywhere}
  .vs-cell .det{color:#4b5563;overflow-wrap:anywhere}
.vs-cell.good .cap{color:#047857} .vs-cell.bad .cap{color:#b91c1c}
.vs-missing{width:200px;height:120px;display:flex;align-items:center;justify-content:center;
  background:#f3f4f6;color:#6b7280;
 border-radius:4px;text-align:center;font-size:.8rem}
"""
CSS = (
    """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  margin:1.5rem auto;max-width:1150px;
 color:#1f2937;padding:0 1rem;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.25rem;margin-top:2rem;
  border-bottom:1px solid #e5e7eb;padding-bottom:.2rem}
.sub{color:#6b7280;margin-top:0} table{border-collapse:collapse} td,th{padding:.25rem .7rem;
  border-bottom:1px solid #e5e7eb;text-align:left}
.metrics td:first-child{color:#6b7280} .num{font-variant-numeric:tabular-nums}
.chart{max-width:100%;border:1px solid #e5e7eb;border-radius:6px}
.group{display:flex;gap:.5rem;flex-wrap:wrap;padding:.5rem 0;border-bottom:1px solid #f3f4f6}
.group .vs-cell{width:130px} .group .vs-cell img{max-width:110px;max-height:110px}
.note{color:#6b7280;font-size:.9rem}
"""
    + ROW_CSS
)


@dataclass(frozen=True)
class PictureCell:
    """One picture of a row: ``src`` is what goes into <img src> (a relative file or a data: URI;
    empty = no picture), ``caption`` a short bold line, ``detail`` smaller lines, ``tone`` "good",
    "bad" or ""."""

    src: str
    caption: str
    detail: str = ""
    tone: str = ""
    alt: str = ""


def picture_cell_html(c: PictureCell) -> str:
    """One captioned picture (HTML fragment, everything escaped)."""
    tone = f" {c.tone}" if c.tone in ("good", "bad") else ""
    picture = (
        f'<img src="{html.escape(c.src, quote=True)}" '
        f'alt="{html.escape(c.alt or c.caption, quote=True)}">'
        if c.src
        else f'<div class="vs-missing">{html.escape(c.alt or "no picture")}</div>'
    )
    detail = "<br>".join(html.escape(line) for line in c.detail.splitlines())
    return (
        f'<div class="vs-cell{tone}">{picture}<div class="cap">{html.escape(c.caption)}</div>'
        f'<div class="det">{detail}</div></div>'
    )


def picture_row_html(cells: Sequence[PictureCell], *, title: str = "") -> str:
    """A row of captioned pictures (HTML fragment, everything escaped; no script). Style:
    ROW_CSS."""
    head = (
        f'<div class="vs-cell"><div class="cap">{html.escape(title)}</div></div>' if title else ""
    )
    return f'<div class="vs-row">{head}{"".join(picture_cell_html(c) for c in cells)}</div>'


def image_data_uri(image: Any, side: int = THUMB_SIDE) -> str:
    """A small JPEG data: URI of a photo (path, bytes or PIL image); "" when it cannot be read."""
    from vsearch.catalog.images import load_image

    try:
        img = load_image(image, min_side=side)
    except (ImageError, TypeError):
        return ""
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------- the evaluation report


class _Thumbs:
    """Thumbnails written once per source into DIR/thumbs/, named by a hash of the source."""

    def __init__(self, out_dir: Path, resolve: Mapping[str, str] | None = None):
        self.dir = out_dir / "thumbs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.done: dict[tuple[str, int], str] = {}
        self.resolve = dict(resolve or {})

    def __call__(self, source: str, side: int = THUMB_SIDE) -> str:
        key = (source, side)
        if key not in self.done:
            self.done[key] = self._make(source, side)
        return self.done[key]

    def _make(self, source: str, side: int) -> str:
        from vsearch.catalog.images import load_image

        path = self.resolve.get(source, source)
        if not path or path.startswith(("http://", "https://")):
            return ""
        name = hashlib.sha1(f"{source}|{side}".encode()).hexdigest()[:20] + ".jpg"
        try:
            img = load_image(path, min_side=side)
        except ImageError:
            return ""
        img.thumbnail((side, side))
        img.save(self.dir / name, "JPEG", quality=82)
        return f"thumbs/{name}"


def write_eval_report(
    out_dir: str | Path,
    report: EvalReport,
    index: ProductIndex,
    *,
    hygiene: HygieneReport | None = None,
    check_catalog: bool = True,
    title: str = "",
    search_options: Mapping[str, Any] | None = None,
) -> Path:
    """Write DIR/index.html (and its pictures) for one evaluation; returns the page's path.

    hygiene: a catalog check to show; when None and ``check_catalog``, the index is checked here
    (a few seconds per thousand photos). search_options: what the evaluation searched with, so
    the picture rows find the same matched images.
    """
    from vsearch.catalog.hygiene import check_index

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VsearchError(f"cannot create report folder {out}: {e.strerror or e}") from None
    started = time.perf_counter()
    if hygiene is None and check_catalog:
        hygiene = check_index(index.index_dir)
    thumbs = _Thumbs(out)
    sections = [
        _headline(report, index, title),
        _category_section(report, out),
        _pr_section(report, index, out),
        _worst_section(report, index, thumbs, dict(search_options or report.options or {})),
    ]
    if hygiene is not None:
        sections.append(_hygiene_section(hygiene, thumbs))
    seconds = time.perf_counter() - started
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        'content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title or 'vsearch evaluation')}</title>"
        f"<style>{CSS}</style></head><body>"
        + "\n".join(sections)
        + f'<p class="note">Written by vsearch in {seconds:.1f} s, '
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>" + "</body></html>\n"
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _pct(x: float) -> str:
    return f"{x:.3f}"


def _headline(report: EvalReport, index: ProductIndex, title: str) -> str:
    model = (index.manifest.get("model") or {}).get("name", "?")
    rows = [
        (
            "queries",
            f"{report.n_queries} (ranking depth k={report.k})"
            + (f"; {len(report.skipped)} skipped" if report.skipped else ""),
        )
    ]
    rows += [(f"recall@{k}", _pct(v)) for k, v in report.recall.items()]
    rows.append(("MRR", _pct(report.mrr)))
    rows.append(
        (
            "latency",
            f"p50 {report.latency_p50_ms:.1f} ms, p95 {report.latency_p95_ms:.1f} ms per query",
        )
    )
    credited = getattr(report, "credited_duplicates", 0)
    if credited:
        rows.append(
            (
                "counted right as duplicates",
                f"{credited} quer{'y' if credited == 1 else 'ies'} whose first "
                "result lists a near-identical photo of the query (see the catalog "
                "check below)",
            )
        )
    verdict = close_match_point(report.results)
    if verdict is not None:
        p, r, n = verdict
        rows.append(
            ("close match", f"precision {p:.3f}, recall {r:.3f} ({n} queries called a close match)")
        )
    else:
        rows.append(("close match", "no verdict (the index gives none)"))
    cm = getattr(report, "close_match", None)
    if cm is not None and getattr(cm, "unsold", 0) and cm.unsold_called_close is not None:
        rows.append(
            (
                "unsold photos",
                f"{cm.unsold} photos of products not in the catalog; "
                f"{cm.unsold_called_close:.1%} called a close match",
            )
        )
    if report.options:
        rows.append(("settings", ", ".join(f"{k}={v}" for k, v in report.options.items())))
    body = "".join(
        f"<tr><td>{html.escape(a)}</td><td class=num>{html.escape(b)}</td></tr>" for a, b in rows
    )
    skipped = ""
    if report.skipped:
        skipped = (
            "<details><summary>skipped queries</summary><ul>"
            + "".join(f"<li>{html.escape(s)}</li>" for s in report.skipped[:100])
            + "</ul></details>"
        )
    return (
        f"<h1>{html.escape(title or 'Retrieval evaluation')}</h1>"
        f'<p class="sub">index {html.escape(str(index.index_dir))} '
        f"({html.escape(index.generation)}), model "
        f"{html.escape(str(model))}, {len(index)} products</p><table "
        f"class=metrics>{body}</table>{skipped}"
    )


# ---------------------------------------------------------------- charts


def category_recall(results: Sequence[QueryResult], k: int) -> dict[str, dict[int, float]]:
    """{category: {1: R@1, 5: R@5, 10: R@10}} (only depths <= k) plus {"n": count} per category."""
    from vsearch.evaluate.metrics import recall_at

    by: dict[str, list] = {}
    for r in results:
        by.setdefault(r.category or "-", []).append(r.rank)
    return {
        c: {**{d: recall_at(v, d) for d in RECALL_AT if d <= k}, "n": len(v)}
        for c, v in sorted(by.items())
    }


def pr_curve(
    scores: Sequence[float], correct: Sequence[bool]
) -> tuple[list[float], list[float], list[float]]:
    """(thresholds, precision, recall) of "call the top result a close match when its score >= t".

    Precision: share of called queries whose first result is right; recall: share of the queries
    with a right first result that are called. One point per distinct score, highest first.
    """
    pairs = sorted(zip(scores, correct), key=lambda p: -p[0])
    total = sum(1 for _, c in pairs if c)
    ts, ps, rs = [], [], []
    called = right = 0
    for i, (s, c) in enumerate(pairs):
        called += 1
        right += bool(c)
        if i + 1 < len(pairs) and pairs[i + 1][0] == s:
            continue
        ts.append(float(s))
        ps.append(right / called)
        rs.append(right / total if total else 0.0)
    return ts, ps, rs


def close_match_point(results: Sequence[QueryResult]) -> tuple[float, float, int] | None:
    """(precision, recall, n called) of the index's own close-match verdicts; None = no verdicts.

    ``confident is None`` means the index gives no verdict for that query; those are left out.
    """
    judged = [r for r in results if r.scores and r.confident is not None]
    if not judged:
        return None
    called = [r for r in judged if r.confident]
    right = [r for r in judged if r.rank == 1]
    tp = sum(1 for r in called if r.rank == 1)
    return (tp / len(called) if called else 0.0, tp / len(right) if right else 0.0, len(called))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)


def _category_section(report: EvalReport, out: Path) -> str:
    data = category_recall(report.results, report.k)
    if not data:
        return "<h2>Recall by category</h2><p>No answered queries.</p>"
    plt = _pyplot()
    cats = list(data)
    depths = [d for d in RECALL_AT if d <= report.k]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(cats) * len(depths) / 2 + 1.4))
    height = 0.8 / len(depths)
    colours = ["#4f46e5", "#0ea5e9", "#a3e635"]
    for n, d in enumerate(depths):
        ys = [i + n * height for i in range(len(cats))]
        ax.barh(
            ys, [data[c][d] for c in cats], height=height, label=f"recall@{d}", color=colours[n % 3]
        )
    ax.set_yticks([i + height * (len(depths) - 1) / 2 for i in range(len(cats))])
    ax.set_yticklabels([f"{c} (n={data[c]['n']})" for c in cats])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of queries whose product is in the top k")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, out / "recall_by_category.png")
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td class=num>{data[c]['n']}</td>"
        + "".join(f"<td class=num>{_pct(data[c][d])}</td>" for d in depths)
        + "</tr>"
        for c in cats
    )
    head = "".join(f"<th>R@{d}</th>" for d in depths)
    return (
        '<h2>Recall by category</h2><img class="chart" src="recall_by_category.png" alt="recall@k '
        'by category">'
        "<details><summary>as a "
        f"table</summary><table><tr><th>category</th><th>n</th>{head}</tr>{rows}</table></details>"
    )


def _pr_section(report: EvalReport, index: ProductIndex, out: Path) -> str:
    answered = [r for r in report.results if r.scores]
    if not answered:
        return "<h2>Close match: precision and recall</h2><p>No answered queries.</p>"
    verdict = index.verdict
    # the index judges the top-1's lead over the runner-up
    by_margin = verdict.get("signal") == "margin"
    signal = [
        r.scores[0] - (r.scores[1] if len(r.scores) > 1 else 0.0) if by_margin else r.scores[0]
        for r in answered
    ]
    ts, ps, rs = pr_curve(signal, [r.rank == 1 for r in answered])
    point = close_match_point(answered)
    threshold = verdict.get("threshold")
    what = "top-1 score minus the runner-up's" if by_margin else "top-1 score"
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(rs, ps, color="#4f46e5", lw=2, label=f"threshold on the {what} swept")
    if point is not None:
        a1.plot(
            [point[1]],
            [point[0]],
            "o",
            ms=10,
            color="#dc2626",
            label="the index's close-match verdict",
        )
        a1.annotate(
            f"P={point[0]:.2f} R={point[1]:.2f}",
            (point[1], point[0]),
            textcoords="offset points",
            xytext=(-80 if point[1] > 0.7 else 8, -16),
            color="#dc2626",
        )
    a1.set_xlabel("recall (right first results that are called)")
    a1.set_ylabel("precision (called ones right at rank 1)")
    a1.set_xlim(0, 1.02)
    a1.set_ylim(0, 1.02)
    a1.grid(alpha=0.3)
    a1.legend(loc="lower left", fontsize=8)
    a2.plot(ts, ps, color="#4f46e5", label="precision")
    a2.plot(ts, rs, color="#0ea5e9", label="recall")
    if threshold is not None:
        a2.axvline(threshold, color="#dc2626", ls="--", label=f"index threshold {threshold:.3f}")
    a2.set_xlabel(f"threshold on the {what}")
    a2.set_ylim(0, 1.02)
    a2.grid(alpha=0.3)
    a2.legend(loc="lower left", fontsize=8)
    _save(fig, out / "close_match_pr.png")
    if point is None:
        chosen = "The index gives no close-match verdict, so no operating point is marked."
    else:
        chosen = (
            f"The red dot is the index's own verdict: precision {point[0]:.3f}, recall "
            f"{point[1]:.3f}" + (f" (threshold {threshold:.3f})." if threshold is not None else ".")
        )
    return (
        "<h2>Close match: precision and recall</h2>"
        '<img class="chart" src="close_match_pr.png" alt="close-match precision-recall curve">'
        f'<p class="note">Each query\'s {what} and whether its first result is right; a query is '
        "called a "
        f"close match when it reaches the threshold. {html.escape(chosen)}</p>"
    )


# ---------------------------------------------------------------- worst queries


def _worst_section(
    report: EvalReport, index: ProductIndex, thumbs: _Thumbs, options: Mapping[str, Any]
) -> str:
    if not report.worst:
        return "<h2>Worst queries</h2><p>Every query's first result is right.</p>"
    search_opts = {k: v for k, v in options.items() if k in ("query_expansion", "product_scoring")}
    tta = options.get("tta")
    sources = _sources_by_product(index)
    vectors = _query_vectors(index, [r.image for r in report.worst], tta)
    rows = [
        _worst_row(r, index, thumbs, search_opts, vec, sources, report.k)
        for r, vec in zip(report.worst, vectors)
    ]
    return (
        "<h2>Worst queries</h2><p class=note>The query photo, the first result with the photo of "
        "it that matched, "
        "and the expected product with its best-matching photo. Is it the model, the photo, or the "
        "catalog?</p>" + "\n".join(rows)
    )


def _query_vectors(index: ProductIndex, images: Sequence[str], tta: Any) -> list:
    """The query vectors again (None where a photo cannot be read), in one model batch when there
    is no test-time augmentation: several times faster than one forward per photo on a CPU."""
    from vsearch.catalog.images import load_image

    tta = index.query_defaults()["tta"] if tta is None else tta
    if tta not in (None, "none"):
        out = []
        for image in images:
            try:
                out.append(index.embed_query(image=image, tta=tta))
            except (VsearchError, TypeError):
                out.append(None)
        return out
    loaded = []
    for image in images:
        try:
            loaded.append(load_image(image, min_side=getattr(index.embedder, "input_size", None)))
        except (ImageError, TypeError):
            loaded.append(None)
    good = [img for img in loaded if img is not None]
    vecs = iter(index.embedder.embed_images(good) if good else [])
    return [None if img is None else next(vecs) for img in loaded]


def _sources_by_product(index: ProductIndex) -> dict[str, list[tuple[int, str]]]:
    try:
        return index.images_by_product()
    except Exception:  # noqa: BLE001 - pictures are a nicety; the numbers stand without them
        return {}


def _best_image(
    index: ProductIndex,
    vec,
    product_ids: Sequence[str],
    exclude: Sequence[int],
    opts: Mapping[str, Any],
) -> tuple[str, str, float] | None:
    """(product id, matched image, score) of the best of these products for a query vector."""
    try:
        hits = index.search_vector(
            vec, k=1, filters={"product_id": list(product_ids)}, exclude_images=exclude, **opts
        )
    except VsearchError:
        return None
    return (hits[0].product_id, hits[0].image, hits[0].score) if hits else None


def _worst_row(
    r: QueryResult,
    index: ProductIndex,
    thumbs: _Thumbs,
    opts: Mapping[str, Any],
    vec: Any,
    sources: Mapping[str, list[tuple[int, str]]],
    k: int,
) -> str:
    exclude = [vid for pid in r.expected for vid, src in sources.get(pid, ()) if src == r.image]
    cells = [
        PictureCell(thumbs(r.image), "query", f"{r.category or ''}\n{r.image}", alt="query photo")
    ]
    if r.ranked:
        top = _best_image(index, vec, [r.top], exclude, opts) if vec is not None else None
        verdict = {True: "close match", False: "not sure", None: "no verdict"}.get(r.confident, "")
        cells.append(
            PictureCell(
                thumbs(top[1]) if top else "",
                f"1st: {r.top}",
                f"score {r.scores[0]:.3f} ({verdict})\n{top[1] if top else ''}",
                tone="good" if r.rank == 1 else "bad",
                alt="first result",
            )
        )
    else:
        cells.append(PictureCell("", "no result", alt="no result"))
    want = _best_image(index, vec, r.expected, exclude, opts) if vec is not None else None
    rank = f"rank {r.rank}" if r.rank else f"not in the top {k}"
    if want is not None:
        cells.append(
            PictureCell(
                thumbs(want[1]),
                f"expected: {want[0]}",
                f"{rank}, score {want[2]:.3f}\n{want[1]}",
                tone="good",
                alt="expected product",
            )
        )
    else:
        cells.append(
            PictureCell(
                "",
                f"expected: {'|'.join(r.expected)}",
                rank,
                alt="expected product not in the index",
            )
        )
    return picture_row_html(cells)


# ---------------------------------------------------------------- catalog check


def _ref_cell(p: PhotoRef, thumbs: _Thumbs, extra: str = "") -> PictureCell:
    return PictureCell(
        thumbs(p.image, SMALL_SIDE),
        p.product_id,
        f"row {p.row}" + (f", {extra}" if extra else "") + f"\n{Path(p.image).name}",
        alt=p.image,
    )


def _hygiene_section(h: HygieneReport, thumbs: _Thumbs) -> str:
    parts = [
        f"<h2>Catalog check</h2><p class=note>{h.n_images} photos of {h.n_products} products "
        "checked in "
        f"{h.seconds:.1f} s (<code>vsearch check {html.escape(h.source)}</code> lists the "
        "same).</p>"
    ]
    parts.append(f"<h3>Near-identical photos under different product ids: {len(h.duplicates)}</h3>")
    for g in h.duplicates[:DUPLICATE_GROUPS_SHOWN]:
        cells = "".join(picture_cell_html(_ref_cell(p, thumbs)) for p in g.photos)
        parts.append(f'<div class="group">{cells}</div>')
    if len(h.duplicates) > DUPLICATE_GROUPS_SHOWN:
        rest = h.duplicates[DUPLICATE_GROUPS_SHOWN:]
        parts.append(
            f"<details><summary>{len(rest)} more groups</summary><ul>"
            + "".join(
                f"<li>{html.escape(', '.join(p.describe() for p in g.photos))}</li>" for g in rest
            )
            + "</ul></details>"
        )
    if h.kind == "index":
        parts.append(
            f"<h3>Views that disagree with their product's other views: {len(h.odd_views)}</h3>"
        )
        for v in h.odd_views[:ODD_VIEWS_SHOWN]:
            parts.append(
                picture_row_html(
                    [
                        _ref_cell(v.photo, thumbs, f"similarity {v.agreement:.2f}"),
                        _ref_cell(v.closest, thumbs, "its closest own view"),
                    ],
                    title=f"{v.n_views} views; typical {v.typical:.2f}, unrelated photos "
                    f"{v.unrelated:.2f}",
                )
            )
    parts.append(f"<h3>Unreadable or tiny photos: {len(h.bad_photos)}</h3>")
    if h.bad_photos:
        parts.append(
            "<ul>"
            + "".join(
                f"<li>row {b.photo.row} {html.escape(b.photo.product_id)} "
                f"{html.escape(b.photo.image)}: {html.escape(b.problem)}</li>"
                for b in h.bad_photos[:200]
            )
            + "</ul>"
        )
    for line in h.not_checked:
        parts.append(f"<p class=note>Not checked: {html.escape(line)}</p>")
    return "\n".join(parts)
