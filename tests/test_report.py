"""The evaluation report: a self-contained page whose pictures are all there, the numbers behind its
charts, the picture row the web page shows for one result, and `vsearch eval --report`."""

from __future__ import annotations

import base64
import csv
import io
import re
from dataclasses import replace

import pytest
from conftest import FakeEmbedder, draw_product, write_catalog
from PIL import Image

from vsearch.build import build_index
from vsearch.cli import main
from vsearch.evaluate.quality import QueryResult, evaluate
from vsearch.evaluate.report import (
    PictureCell,
    close_match_point,
    picture_row_html,
    pr_curve,
    write_eval_report,
)
from vsearch.search import ProductIndex


def _qr(rank, score, confident):
    return QueryResult(
        image="q.jpg",
        expected=("A",),
        category="c",
        ranked=("A" if rank == 1 else "B",),
        scores=(score,),
        rank=rank,
        latency_ms=1.0,
        confident=confident,
    )


def test_pr_curve_from_top1_scores_and_correctness():
    ts, ps, rs = pr_curve([0.9, 0.8, 0.7, 0.6, 0.6], [True, False, True, False, True])
    assert ts == [0.9, 0.8, 0.7, 0.6]  # ties share one point
    assert ps == pytest.approx([1.0, 0.5, 2 / 3, 3 / 5])
    assert rs == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1.0])


def test_close_match_point_uses_the_verdicts_and_skips_no_verdict():
    results = [_qr(1, 0.9, True), _qr(2, 0.8, True), _qr(1, 0.5, False), _qr(None, 0.4, None)]
    p, r, n = close_match_point(results)
    assert (p, r, n) == (pytest.approx(0.5), pytest.approx(0.5), 2)
    # the index gives no verdict
    assert close_match_point([_qr(1, 0.9, None), _qr(2, 0.3, None)]) is None


def test_picture_row_escapes_text():
    html = picture_row_html(
        [PictureCell("thumbs/a.jpg", "<script>x</script>", "a\n<b>", alt='"q"')]
    )
    assert "<script>" not in html and "&lt;script&gt;" in html and "a<br>&lt;b&gt;" in html
    assert 'alt="&quot;q&quot;"' in html


@pytest.fixture
def shop_with_queries(tmp_path):
    """8 products, one relisted copy of P001's photo under P050, and three queries: two found,
    one showing product 6 but labelled P005 (the model is right, the label is wrong)."""
    csv_path = write_catalog(tmp_path / "shop", n_products=8, views=2)
    copy = Image.open(tmp_path / "shop" / "images" / "p001-0.jpg").convert("RGB").resize((144, 144))
    copy.save(tmp_path / "shop" / "images" / "relisted.jpg", quality=80)
    with open(csv_path, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(
            ["P050", "images/relisted.jpg", "Relisted", "mug", "1.00", "", "", ""]
        )
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in (2, 4, 6):
        draw_product(i, view=1, size=120).save(photos / f"p{i}.jpg")
    (tmp_path / "q.csv").write_text(
        "image,product_id\nphotos/p2.jpg,P002\nphotos/p4.jpg,P004\nphotos/p6.jpg,P005\n",
        encoding="utf-8",
    )
    return tmp_path


def _img_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)


def test_report_is_self_contained_and_shows_the_worst_query_as_pictures(shop_with_queries):
    tmp = shop_with_queries
    index = ProductIndex.load(tmp / "idx", FakeEmbedder())
    report = evaluate(index, tmp / "q.csv", k=5)
    out = tmp / "report"
    path = write_eval_report(out, report, index, title="test <eval>")
    page = path.read_text(encoding="utf-8")
    assert path == out / "index.html"
    assert "<script" not in page.lower() and "test &lt;eval&gt;" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from the network
    sources = _img_sources(page)
    assert "recall_by_category.png" in sources and "close_match_pr.png" in sources
    for src in sources:  # every picture is a file inside the report folder that opens as an image
        assert not src.startswith("/") and ".." not in src
        with Image.open(out / src) as im:
            assert im.width > 0
    # the wrong query as a picture row: query photo | first result (P006) | expected product P005
    worst = page.split("<h2>Worst queries</h2>", 1)[1].split("<h2>", 1)[0]
    rows = worst.split('<div class="vs-row">')[1:]
    assert len(rows) == 1
    assert "p6.jpg" in rows[0] and "1st: P006" in rows[0] and "expected: P005" in rows[0]
    assert len(_img_sources(rows[0])) == 3
    # the catalog check: P001's photo relisted under P050
    check = page.split("<h2>Catalog check</h2>", 1)[1]
    assert "Near-identical photos under different product ids: 1" in check
    assert "P001" in check and "P050" in check and "relisted.jpg" in check


def test_cli_eval_report(shop_with_queries, capsys):
    tmp = shop_with_queries
    (tmp / "idx2").mkdir()
    csv_path = tmp / "shop" / "catalog.csv"
    assert (
        main(
            [
                "build",
                str(csv_path),
                "--index",
                str(tmp / "idx2"),
                "--model",
                "test-tiny",
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--index",
                str(tmp / "idx2"),
                "--queries",
                str(tmp / "q.csv"),
                "--report",
                str(tmp / "r"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"report: +.*index\.html \(written in [\d.]+ s\)", out)
    page = (tmp / "r" / "index.html").read_text(encoding="utf-8")
    assert "Recall by category" in page and all(
        (tmp / "r" / s).is_file() for s in _img_sources(page)
    )


def test_why_it_matched_shows_the_photo_as_searched_and_the_matched_image(tmp_path):
    from vsearch.serve.page_events import why_it_matched

    draw_product(3, size=300).save(tmp_path / "photo.jpg")
    draw_product(3).save(tmp_path / "catalog.jpg")
    hit = {
        "product_id": "P003",
        "title": "Mug <3",
        "score": 0.81234,
        "confident": True,
        "image": str(tmp_path / "catalog.jpg"),
        "matched_images": [str(tmp_path / "catalog.jpg"), "other.jpg"],
    }
    html = why_it_matched(str(tmp_path / "photo.jpg"), (0, 0, 50, 0), hit)  # the right half cut off
    sources = _img_sources(html)
    assert len(sources) == 2 and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    query, matched = (Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in sources)
    assert query.width * 2 == pytest.approx(query.height, abs=2)  # the crop the search used
    assert matched.size == (96, 96)
    assert (
        "Mug &lt;3" in html
        and "similarity 0.812 (close match)" in html
        and "1 more of its images" in html
    )
    no_photo = why_it_matched(None, None, {**hit, "confident": None})
    assert len(_img_sources(no_photo)) == 1 and "no verdict" in no_photo


@pytest.mark.parametrize("threshold,signal", [(None, "score"), (0.9, "score"), (0.05, "margin")])
def test_report_shows_the_verdict_only_when_the_index_gives_one(
    shop_with_queries, monkeypatch, threshold, signal
):
    tmp = shop_with_queries
    monkeypatch.setattr(
        ProductIndex, "verdict", property(lambda self: {"threshold": threshold, "signal": signal})
    )
    index = ProductIndex.load(tmp / "idx", FakeEmbedder())
    search = index.search  # answer like an index with this verdict rule (None: it gives none)

    def judged(*a, **kw):
        hits = search(*a, **kw)
        if threshold is None:
            return [replace(h, confident=None) for h in hits]
        if signal == "score":
            return [replace(h, confident=h.score >= threshold) for h in hits]
        return [
            replace(h, confident=i == 0 and h.score - hits[1].score >= threshold)
            for i, h in enumerate(hits)
        ]

    index.search = judged
    report = evaluate(index, tmp / "q.csv", k=5)
    page = write_eval_report(tmp / f"r{threshold}", report, index).read_text(encoding="utf-8")
    head = page.split("<h2>", 1)[0]
    assert "unsold photos" not in head  # none were searched
    if threshold is None:
        assert (
            "no verdict (the index gives none)" in head and "no operating point is marked" in page
        )
        assert "(no verdict)" in page.split("<h2>Worst queries</h2>", 1)[1]
    else:
        assert re.search(r"close match</td><td class=num>precision [\d.]+, recall [\d.]+", head)
        assert "The red dot is the index" in page and f"(threshold {threshold:.3f})" in page
        # the chart sweeps the index's own signal
        assert ("minus the runner-up" in page) is (signal == "margin")


def test_report_says_how_many_unsold_photos_were_called_a_close_match(shop_with_queries):
    tmp = shop_with_queries
    index = ProductIndex.load(tmp / "idx", FakeEmbedder())
    search = index.search
    index.search = lambda *a, **kw: [replace(h, confident=h.score >= 0.5) for h in search(*a, **kw)]
    unsold = tmp / "unsold"
    unsold.mkdir()
    Image.new("RGB", (96, 96), (128, 128, 128)).save(unsold / "grey.jpg")
    draw_product(2, size=96).save(unsold / "lookalike.jpg")  # scores high: called a close match
    report = evaluate(index, tmp / "q.csv", k=5, unsold=unsold)
    head = (
        write_eval_report(tmp / "r", report, index).read_text(encoding="utf-8").split("<h2>", 1)[0]
    )
    n = report.close_match.unsold_called_close
    assert f"2 photos of products not in the catalog; {n:.1%} called a close match" in head
