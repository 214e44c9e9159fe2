"""Evaluation: metrics on known rankings, labelled evaluation, self-test hold-out, close-match
threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FakeEmbedder, draw_product, write_catalog

from vsearch.build import build_index
from vsearch.cli import main
from vsearch.errors import CatalogError
from vsearch.evaluate.quality import (
    QueryResult,
    confidence_report,
    evaluate,
    first_correct_rank,
    mean_reciprocal_rank,
    read_queries,
    recall_at,
    self_test,
    summarize,
)
from vsearch.learn.calibration import VerdictCalibration, calibrate_verdict, wilson_lower
from vsearch.search import ProductIndex


def _result(rank, category="a", expected=("P1",), score=0.5, confident=True):
    ranked = tuple(f"X{i}" for i in range(10))
    if rank is not None:
        ranked = ranked[: rank - 1] + expected[:1] + ranked[rank:]
    return QueryResult(
        image=f"q{rank}.jpg",
        expected=expected,
        category=category,
        ranked=ranked,
        scores=(score,) * 10,
        rank=rank,
        latency_ms=float(rank or 20),
        confident=confident,
    )


def test_recall_and_mrr_on_known_ranks():
    ranks = [1, 3, None, 2, 7]
    assert recall_at(ranks, 1) == pytest.approx(1 / 5)
    assert recall_at(ranks, 5) == pytest.approx(3 / 5)
    assert recall_at(ranks, 10) == pytest.approx(4 / 5)
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 3 + 0 + 1 / 2 + 1 / 7) / 5)
    assert recall_at([], 1) == 0.0 and mean_reciprocal_rank([]) == 0.0


def test_first_correct_rank_accepts_any_listed_product():
    assert first_correct_rank(["A", "B", "C"], ("C", "B")) == 2
    assert first_correct_rank(["A", "B"], ("Z",)) is None


def test_summarize_reports_categories_latency_and_worst_first():
    results = [_result(1, "a"), _result(1, "a"), _result(None, "b", score=0.9), _result(4, "b")]
    report = summarize(results, k=10)
    assert report.recall == {1: 0.5, 5: 0.75, 10: 0.75}
    assert report.per_category_r1 == {"a": 1.0, "b": 0.0}
    assert report.per_category_n == {"a": 2, "b": 2}
    assert [w.rank for w in report.worst] == [None, 4]  # misses first, correct-at-1 never listed
    assert report.latency_p50_ms == pytest.approx(2.5)
    assert json.loads(json.dumps(report.to_dict()))["recall"]["1"] == 0.5


def test_read_queries_pipes_relative_paths_and_errors(tmp_path):
    (tmp_path / "q.csv").write_text(
        "image,product_id\nphotos/a.jpg, P1 | P2 \n/abs/b.jpg,P3\n", encoding="utf-8"
    )
    qs = read_queries(tmp_path / "q.csv")
    assert qs[0].expected == ("P1", "P2") and qs[0].image == str(tmp_path / "photos" / "a.jpg")
    assert qs[1].image == "/abs/b.jpg" and qs[1].row == 3
    (tmp_path / "bad.csv").write_text("photo,product_id\nx.jpg,P1\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="missing column.*image"):
        read_queries(tmp_path / "bad.csv")


@pytest.fixture
def shop(tmp_path):
    csv_path = write_catalog(tmp_path / "shop", n_products=12, views=2)
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder(), allow_outside_paths=True)
    return tmp_path, ProductIndex.load(tmp_path / "idx", FakeEmbedder())


def test_evaluate_finds_products_from_new_photos_and_flags_wrong_labels(shop):
    tmp_path, index = shop
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = ["image,product_id"]
    for i in (0, 1, 2, 3):
        draw_product(i, view=1, size=120).save(photos / f"p{i}.jpg")
        rows.append(f"photos/p{i}.jpg,P{i:03d}")
    draw_product(5, view=1).save(photos / "mislabelled.jpg")
    rows.append("photos/mislabelled.jpg,P004")
    (tmp_path / "q.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = evaluate(index, tmp_path / "q.csv", k=5)
    assert report.n_queries == 5
    assert report.recall[1] == pytest.approx(4 / 5)
    assert [w.image.endswith("mislabelled.jpg") for w in report.worst] == [True]
    assert report.worst[0].top == "P005"
    # categories taken from the index
    assert set(report.per_category_r1) == {"mug", "shirt", "lamp"}


def test_self_test_never_finds_the_held_out_image_itself(shop):
    _, index = shop
    report = self_test(index, k=5, augment_single=False)
    assert report.n_queries == 6  # the six products with two views
    held_out = {vids[-1][1] for vids in index.images_by_product().values() if len(vids) == 2}
    for r in report.results:
        assert r.image in held_out
        assert r.scores[0] < 0.999  # a query matching itself would score 1.0
    assert report.recall[1] == 1.0  # ...and is still found through the product's other view


def test_exclude_images_removes_the_image_but_not_the_product(shop):
    _, index = shop
    (vid0, src0), (vid1, src1) = index.images_by_product()["P000"]
    hits = index.search(image=src1, k=3, exclude_images=(vid1,))
    assert hits[0].product_id == "P000" and hits[0].image == src0
    assert src1 not in [m for h in hits for m in h.matched_images]


def test_self_test_with_augmented_single_image_products(shop):
    _, index = shop
    report = self_test(index, k=5, max_queries=12)
    assert report.per_category_n == {"augmented copy": 6, "held-out view": 6}
    assert report.recall[5] >= 0.8


def test_verdict_threshold_reaches_the_target_precision_and_keeps_unsold_photos_out():
    rng = np.random.default_rng(0)
    right = rng.normal(0.75, 0.08, 400)  # right first results score high...
    wrong = rng.normal(0.55, 0.08, 400)  # ...wrong ones lower, with overlap
    scores = np.r_[right, wrong]
    correct = np.r_[np.ones(400, bool), np.zeros(400, bool)]
    unsold = rng.normal(0.5, 0.08, 400)
    v = calibrate_verdict(scores, correct, unsold, sources={"simulated": 800})
    assert v.threshold is not None
    above = scores >= v.threshold
    assert correct[above].mean() >= 0.9 and v.precision == pytest.approx(correct[above].mean())
    assert v.recall == pytest.approx(correct[above].sum() / 400) and v.recall > 0.3
    assert np.mean(unsold >= v.threshold) <= 0.1
    lower = v.threshold - 0.03  # the lowest qualifying threshold: a lower one would be less precise
    assert correct[scores >= lower].mean() < correct[above].mean()
    assert v.decide(v.threshold) is True and v.decide(v.threshold - 1e-6) is False


def test_verdict_gives_none_when_scores_cannot_tell_right_from_wrong():
    rng = np.random.default_rng(1)
    scores = rng.normal(0.6, 0.1, 600)
    # right and wrong answers score alike: precision ~0.5 everywhere
    correct = rng.random(600) < 0.5
    v = calibrate_verdict(scores, correct, rng.normal(0.6, 0.1, 300))
    assert v.threshold is None and v.decide(0.99) is None and "no verdict" in v.reason


def test_verdict_threshold_rises_above_photos_of_unsold_products():
    rng = np.random.default_rng(2)
    scores = np.r_[rng.normal(0.8, 0.05, 300), rng.normal(0.5, 0.05, 100)]
    correct = np.r_[np.ones(300, bool), np.zeros(100, bool)]
    plain = calibrate_verdict(scores, correct, rng.normal(0.5, 0.05, 300))
    unsold_high = rng.normal(0.75, 0.05, 300)  # unsold look-alikes score like right answers
    strict = calibrate_verdict(scores, correct, unsold_high)
    assert strict.threshold is not None and strict.threshold > plain.threshold
    assert np.mean(unsold_high >= strict.threshold) <= 0.1


def test_verdict_judges_by_the_lead_over_the_runner_up_when_scores_alone_cannot_tell():
    # Every photo scores alike (the studio look), but a right answer stands out from the runner-up.
    rng = np.random.default_rng(3)
    scores = rng.normal(0.7, 0.05, 800)
    correct = np.r_[np.ones(400, bool), np.zeros(400, bool)]
    margins = np.r_[rng.gamma(2.0, 0.04, 400), rng.gamma(1.0, 0.01, 400)]
    unsold, unsold_margins = rng.normal(0.7, 0.05, 400), rng.gamma(1.0, 0.01, 400)
    # the score alone gives no verdict
    assert calibrate_verdict(scores, correct, unsold).threshold is None
    v = calibrate_verdict(scores, correct, unsold, margins=margins, unsold_margins=unsold_margins)
    assert v.signal == "margin" and v.threshold is not None and "runner-up" in v.reason
    above = margins >= v.threshold
    assert (
        correct[above].mean() >= 0.9
        and v.recall == pytest.approx(correct[above].sum() / 400)
        and v.recall > 0.3
    )
    assert np.mean(unsold_margins >= v.threshold) <= 0.1
    assert (
        v.decide(0.5, 0.5 - v.threshold - 1e-6) is True
        and v.decide(0.9, 0.9 - v.threshold + 1e-6) is False
    )
    # no second product: the runner-up counts as unrelated (0)
    assert v.decide(v.threshold, None) is True
    back = VerdictCalibration.from_dict(v.to_dict())
    assert back.signal == "margin" and back.threshold == pytest.approx(v.threshold, abs=1e-6)


def test_verdict_keeps_the_score_when_it_serves_as_well_as_the_margin():
    rng = np.random.default_rng(4)
    scores = np.r_[rng.normal(0.8, 0.05, 300), rng.normal(0.5, 0.05, 100)]
    correct = np.r_[np.ones(300, bool), np.zeros(100, bool)]
    noise = rng.random(400) * 0.1  # the margin says nothing here
    v = calibrate_verdict(
        scores,
        correct,
        rng.normal(0.5, 0.05, 300),
        margins=noise,
        unsold_margins=rng.random(300) * 0.1,
    )
    assert v.signal == "score" and v.threshold is not None


def test_calibration_queries_report_the_lead_over_the_runner_up_and_the_unsold_side():
    from vsearch.learn.query_scores import verdict_from_queries

    catalog = np.eye(4, dtype=np.float32)  # products A, A, B, C
    pids = ["A", "A", "B", "C"]
    q = np.array([[0.9, 0.1, 0.3, 0.0]], dtype=np.float32)
    got = verdict_from_queries(catalog, pids, q, ["A"], exclude=[[0]])
    # image 0 is held out: A still wins through image 1 (0.1)? no - B scores 0.3, so B is first
    assert got.top.tolist() == pytest.approx([0.3]) and got.right.tolist() == [False]
    assert got.margin.tolist() == pytest.approx([0.2])  # B 0.3 over A 0.1
    assert got.unsold_top.tolist() == pytest.approx(
        [0.3]
    ) and got.unsold_margin.tolist() == pytest.approx([0.3])
    got = verdict_from_queries(catalog, pids, q, ["A"])
    # A 0.9 over B 0.3
    assert got.right.tolist() == [True] and got.margin.tolist() == pytest.approx([0.6])


def test_wilson_lower_bound_is_below_the_share_and_tightens_with_more_data():
    assert wilson_lower(9, 10) < 0.9 < 1.0
    assert wilson_lower(9, 10) < wilson_lower(900, 1000) < 0.9


def test_verdict_is_stored_in_the_manifest_and_drives_hit_confident(tmp_path):
    csv_path = write_catalog(tmp_path / "shop", n_products=40, views=2)
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    verdict = index.manifest["verdict"]
    assert verdict["sources"].get("simulated", 0) > 0  # calibrated on shopper-like photos
    src = index.product("P002")["images"][0]
    hits = index.search(image=src, k=5)
    if verdict["threshold"] is None:
        assert all(h.confident is None for h in hits) and verdict["reason"].startswith("no verdict")
    elif verdict["signal"] == "score":
        assert index.score_threshold == verdict["threshold"]
        assert [h.confident for h in hits] == [h.score >= verdict["threshold"] for h in hits]
    else:  # judged by the lead over the runner-up: only the first result can be a close match
        assert index.score_threshold is None
        assert hits[0].confident is (hits[0].score - hits[1].score >= verdict["threshold"])
        assert not any(h.confident for h in hits[1:])
    build_index(csv_path, tmp_path / "idx2", embedder=FakeEmbedder(), calibrate_threshold=False)
    off = ProductIndex.load(tmp_path / "idx2", FakeEmbedder())
    assert off.score_threshold is None
    assert [h.confident for h in off.search(image=src, k=3)] == [None, None, None]


def test_confidence_report_precision_recall():
    inside = [
        _result(1, confident=True),
        _result(2, confident=True),
        _result(None, confident=False),
    ]
    outside = [
        _result(None, expected=(), confident=True),
        _result(None, expected=(), confident=False),
    ]
    rep = confidence_report(inside, outside, 0.5)
    assert rep.precision == pytest.approx(2 / 3) and rep.recall == pytest.approx(2 / 3)
    assert rep.ooc_rejected == pytest.approx(0.5) and rep.confident_correct == pytest.approx(1 / 3)


def test_cli_eval_queries_and_self_test(tmp_path, capsys):
    csv_path = write_catalog(tmp_path / "shop", n_products=6, views=2)
    assert (
        main(
            [
                "build",
                str(csv_path),
                "--index",
                str(tmp_path / "idx"),
                "--model",
                "test-tiny",
                "--quiet",
            ]
        )
        == 0
    )
    (tmp_path / "q.csv").write_text(
        f"image,product_id\n{tmp_path / 'shop/images/p000-1.jpg'},P000|P001\n", encoding="utf-8"
    )
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--index",
                str(tmp_path / "idx"),
                "--queries",
                str(tmp_path / "q.csv"),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["n_queries"] == 1 and set(out["recall"]) == {"1", "5", "10"}
    assert (
        main(["eval", "--index", str(tmp_path / "idx"), "--self-test", "-k", "3", "--tta", "flip"])
        == 0
    )
    text = capsys.readouterr().out
    assert "self-test" in text and "R@1=" in text and "latency:" in text and "tta=flip" in text
    assert main(["eval", "--index", str(tmp_path / "idx")]) == 1
    assert "either --queries" in capsys.readouterr().err


def test_self_test_with_locate_decodes_photos_at_the_locate_size(catalog_csv, tmp_path):
    """The close-up needs pixels: self-test with locate decodes each held-out photo at
    ProductIndex.query_side(locate=True), not at the model's input size (96 px JPEGs: decoded for
    the fake's 32 px input they would come out at 48 px, below the 50 px the close-up needs)."""
    from conftest import LocatingFake

    build_index(catalog_csv, tmp_path / "idx", embedder=FakeEmbedder())
    fake, sides = LocatingFake(), []
    mapped = fake.embed_images_mapped

    def recording(images):
        sides.extend(min(im.size) for im in images)
        return mapped(images)

    fake.embed_images_mapped = recording
    index = ProductIndex.load(tmp_path / "idx", fake)
    want = index.query_side(locate=True)
    assert want == 50 and index.query_side() == fake.input_size == 32
    report = self_test(index, k=5, augment_single=False, locate=True)
    assert report.n_queries == 6 and len(sides) == 6
    assert min(sides) >= want, sides
