"""Hostile images, paths, URLs and uploads through real builds and searches.

The zoo of inputs comes from benchmarks/hostile_inputs.py (which prints the same cases as a
table), so the published table and these tests cannot drift apart. Decoder-level details are in
test_images.py, URL-fetch details in test_fetch.py and CSV parsing in test_catalog.py (including
the 100k-row bounded-time check); here every input goes through ``build_index`` or
``ProductIndex.search`` as a shop or a shopper would send it.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FakeEmbedder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vsearch import cli
from vsearch.build import build_index
from vsearch.catalog.images import MAX_BYTES
from vsearch.errors import CatalogError, ImageError
from vsearch.search import ProductIndex

_spec = importlib.util.spec_from_file_location(
    "hostile_inputs", Path(__file__).resolve().parents[1] / "benchmarks" / "hostile_inputs.py"
)
zoo = importlib.util.module_from_spec(_spec)
sys.modules["hostile_inputs"] = zoo  # dataclasses need the module registered
_spec.loader.exec_module(zoo)


# ---------------------------------------------------------------- the image zoo through a build


@pytest.fixture(scope="module")
def image_zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    cases = zoo.write_image_zoo(folder)
    csv_path = zoo.write_catalog(folder, cases)
    started = time.perf_counter()
    report = build_index(csv_path, folder / "idx", embedder=FakeEmbedder(), batch_size=8)
    seconds = time.perf_counter() - started
    return folder, cases, report, seconds


def test_every_hostile_image_is_indexed_or_skipped_with_a_reason_naming_it(image_zoo):
    folder, cases, report, seconds = image_zoo
    assert len(cases) >= 55
    outcomes = zoo.outcomes_of(cases, report, folder / "idx", FakeEmbedder())
    broken = [(o.case.name, o.outcome, o.detail) for o in outcomes if not o.ok]
    assert not broken, broken
    for o in outcomes:
        if o.outcome == zoo.SKIPPED:  # the reason names the file (or the catalog cell) at fault
            cell = o.case.image
            assert Path(cell).name in o.detail or cell in o.detail, (o.case.name, o.detail)
    # nothing hangs, bombs cost nothing
    assert seconds < 20, f"the zoo took {seconds:.1f} s to build"


def test_zoo_covers_the_formats_the_issue_names(image_zoo):
    _, cases, _, _ = image_zoo
    names = {c.name for c in cases}
    wanted = {
        "truncated-jpeg",
        "truncated-png",
        "corrupt-png-crc",
        "zero-byte",
        "text-as-jpg",
        "png-bomb-100k-x-100k",
        "1x10000-strip",
        "animated-gif",
        "animated-webp",
        "cmyk-jpeg",
        "16-bit-grey-png",
        "palette-transparency-png",
        *(f"exif-orientation-{o}" for o in range(1, 9)),
    }
    assert wanted <= names
    pytest.importorskip("pillow_heif")
    assert "heic" in names


def _score_of(index: ProductIndex, query, product_id: str) -> float:
    hits = index.search(image=query, k=1, filters={"product_id": product_id})
    assert hits and hits[0].product_id == product_id
    return hits[0].score


def test_rotated_phone_photos_are_indexed_upright(image_zoo):
    folder, _, _, _ = image_zoo
    index = ProductIndex.load(folder / "idx", FakeEmbedder())
    upright = zoo.encode(zoo.card(), "PNG")
    scores = {o: _score_of(index, upright, f"exif-orientation-{o}") for o in range(1, 9)}
    assert min(scores.values()) > 0.97, scores
    # A photo rotated a quarter turn really does look different to the model: the check has teeth.
    assert (
        _score_of(
            index,
            zoo.encode(zoo.card().transpose(Image.Transpose.ROTATE_90).resize((80, 60)), "PNG"),
            "exif-orientation-1",
        )
        < 0.9
    )


def test_animations_are_indexed_by_their_first_frame(image_zoo):
    folder, _, _, _ = image_zoo
    index = ProductIndex.load(folder / "idx", FakeEmbedder())
    first, second = zoo._frames(2)
    for name in ("animated-gif", "animated-webp", "animated-png", "multipage-tiff"):
        assert _score_of(index, zoo.encode(first, "PNG"), name) > 0.99
        assert _score_of(index, zoo.encode(second, "PNG"), name) < 0.5


def test_same_bytes_under_two_names_are_embedded_once(image_zoo):
    _, cases, report, _ = image_zoo
    indexed = sum(1 for c in cases if c.expect != zoo.SKIPPED)
    assert report.embedded < indexed  # good.jpg and good-copy.jpg share one embedding


# ---------------------------------------------------------------- random bytes as catalog images

_MAGICS = [
    b"",
    b"\xff\xd8\xff\xe0",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"II*\x00",
    b"BM",
    b"\x00\x00\x00\x18ftypheic",
]
_GOOD = zoo.encode(zoo.card(), "JPEG")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(
        st.tuples(st.sampled_from(_MAGICS), st.binary(max_size=600)), min_size=1, max_size=4
    )
)
def test_random_bytes_as_catalog_images_never_break_a_build(files):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "images").mkdir()
        (folder / "images" / "good.jpg").write_bytes(_GOOD)
        rows = [("GOOD", "images/good.jpg")]
        for i, (magic, body) in enumerate(files):
            (folder / "images" / f"r{i}.jpg").write_bytes(magic + body)
            rows.append((f"R{i}", f"images/r{i}.jpg"))
        with open(folder / "catalog.csv", "w", newline="") as f:
            csv.writer(f).writerows([("product_id", "image"), *rows])
        report = build_index(
            folder / "catalog.csv", folder / "idx", embedder=FakeEmbedder(), workers=2
        )
        index = ProductIndex.load(folder / "idx", FakeEmbedder())
        problems = {p.row: p.reason for p in report.problems if p.fatal}
        for row, (pid, image) in enumerate(rows, start=2):  # the header is row 1
            try:
                index.product(pid)
            except KeyError:
                assert Path(image).name in problems[row], (pid, problems)
        assert index.search(image=_GOOD, k=1)[0].product_id == "GOOD"


# ---------------------------------------------------------------- paths that leave the catalog
# folder


@pytest.fixture
def escaping_catalog(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(_GOOD)
    shop = tmp_path / "shop"
    (shop / "images").mkdir(parents=True)
    (shop / "images" / "ok.jpg").write_bytes(
        zoo.encode(Image.new("RGB", (40, 40), (0, 90, 200)), "JPEG")
    )
    rows = [
        ("OK", "images/ok.jpg"),
        ("DOTDOT", "../outside/secret.jpg"),
        ("ABS", str(outside / "secret.jpg")),
        ("PASSWD", "../../../../../../etc/passwd"),
    ]
    with open(shop / "catalog.csv", "w", newline="") as f:
        csv.writer(f).writerows([("product_id", "image"), *rows])
    return shop / "catalog.csv"


def test_paths_leaving_the_catalog_folder_are_refused_by_default(escaping_catalog, tmp_path):
    report = build_index(escaping_catalog, tmp_path / "idx", embedder=FakeEmbedder())
    assert report.products == 1
    reasons = {p.row: p.reason for p in report.skipped}
    assert "leaves the catalog folder" in reasons[3] and "../outside/secret.jpg" in reasons[3]
    assert "outside the catalog folder" in reasons[4] and "--allow-outside-paths" in reasons[4]
    assert "etc/passwd" in reasons[5]
    (source,) = ProductIndex.load(tmp_path / "idx", FakeEmbedder()).image_sources()
    assert source.endswith("ok.jpg")


def test_allow_outside_paths_lets_them_in_but_etc_passwd_is_still_not_an_image(
    escaping_catalog, tmp_path
):
    report = build_index(
        escaping_catalog, tmp_path / "idx", embedder=FakeEmbedder(), allow_outside_paths=True
    )
    assert report.products == 3
    (only,) = report.skipped
    assert only.row == 5 and "passwd" in only.reason and "not a recognised image" in only.reason


def test_cli_allow_outside_paths_flag(escaping_catalog, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("vsearch.embedders.load_embedder", lambda *a, **k: FakeEmbedder())
    assert (
        cli.main(["build", str(escaping_catalog), "--index", str(tmp_path / "a"), "--quiet"]) == 0
    )
    out = capsys.readouterr()
    assert ": 1 products" in out.out and out.err.count("leaves the catalog folder") == 2
    assert (
        cli.main(
            [
                "build",
                str(escaping_catalog),
                "--index",
                str(tmp_path / "b"),
                "--quiet",
                "--allow-outside-paths",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert ": 3 products" in out.out and "leaves the catalog folder" not in out.err


# ---------------------------------------------------------------- image URLs through a real build


def test_url_images_through_a_build_against_a_local_server(tmp_path):
    with zoo.HostileServer() as server:
        cases = zoo.url_cases(server.base)
        csv_path = zoo.write_catalog(tmp_path / "shop", cases)
        started = time.perf_counter()
        report = build_index(
            csv_path, tmp_path / "idx", embedder=FakeEmbedder(), fetch_policy=zoo.url_policy()
        )
        assert time.perf_counter() - started < 15  # slow and endless answers are cut off
        outcomes = zoo.outcomes_of(cases, report, tmp_path / "idx", FakeEmbedder())
        assert not [(o.case.name, o.detail) for o in outcomes if not o.ok]
        assert {o.case.name for o in outcomes if o.outcome == zoo.INDEXED} == {
            "url-good",
            "url-redirect-to-good",
        }
        detail = {o.case.name: o.detail for o in outcomes}
        assert "deadline" in detail["url-slow-drip"]
        assert "limit" in detail["url-huge-declared"] and "limit" in detail["url-huge-stream"]
        assert "text/html" in detail["url-html-page"] and "HTML" in detail["url-html-labelled-jpeg"]
        assert "file:" in detail["url-redirect-to-file-scheme"]

        fetched = server.counts["/good.jpg"], server.counts["/good-again.jpg"]
        again = build_index(
            csv_path, tmp_path / "idx", embedder=FakeEmbedder(), fetch_policy=zoo.url_policy()
        )
        # no refetch
        assert (server.counts["/good.jpg"], server.counts["/good-again.jpg"]) == fetched == (1, 1)
        assert again.embedded == 0 and again.products == 2

        # The default policy refuses loopback without a flag (intranet catalogs opt in).
        default = zoo.write_catalog(
            tmp_path / "default", [zoo.Case("x", f"{server.base}/good.jpg", zoo.SKIPPED)]
        )
        before = server.total_requests()
        with pytest.raises(CatalogError, match="127.0.0.1"):
            build_index(default, tmp_path / "idx-default", embedder=FakeEmbedder())
        assert server.total_requests() == before


# ---------------------------------------------------------------- hostile uploads to search
# (library side)


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    (folder / "images").mkdir()
    rows = [("product_id", "image")]
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        Image.new("RGB", (40, 40), colour).save(folder / "images" / f"{i}.png")
        rows.append((f"P{i}", f"images/{i}.png"))
    with open(folder / "catalog.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    build_index(folder / "catalog.csv", folder / "idx", embedder=FakeEmbedder())
    return ProductIndex.load(folder / "idx", FakeEmbedder())


_HUGE_DECLARED = zoo.raw_png(100_000, 100_000, 8, 2, b"")


@pytest.mark.parametrize(
    "upload, reason",
    [
        (_HUGE_DECLARED, "decompression bomb"),
        # 81 MP of real pixels, 80 KB on the wire
        (zoo.encode(Image.new("L", (9000, 9000)), "PNG"), "megapixels"),
        (b"<?php system($_GET['c']); ?>", "not a recognised image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\nshowpage\n", "not a recognised image"),
        (b"", "no data"),
        (_GOOD[: len(_GOOD) // 3], "truncated or corrupt"),
        (zoo.encode(Image.new("RGB", (1, 10000)), "PNG"), "aspect ratio"),
    ],
    ids=["bomb-header", "81-megapixel-png", "php", "eps", "empty", "truncated", "strip"],
)
def test_hostile_uploads_raise_image_error_quickly(small_index, upload, reason):
    for form in (upload, io.BytesIO(upload)):
        started = time.perf_counter()
        with pytest.raises(ImageError, match=reason):
            small_index.search(image=form, k=3)
        assert time.perf_counter() - started < 1.0


def test_oversized_upload_is_refused_before_decoding(small_index):
    huge = _GOOD + b"\x00" * (MAX_BYTES + 1 - len(_GOOD))
    for form in (huge, io.BytesIO(huge), bytearray(huge)):
        started = time.perf_counter()
        with pytest.raises(ImageError, match="limit"):
            small_index.search(image=form, k=3)
        assert time.perf_counter() - started < 1.0


def test_the_index_keeps_answering_after_hostile_uploads(small_index):
    for upload in (_HUGE_DECLARED, b"junk", b""):
        with pytest.raises(ImageError):
            small_index.search(image=upload)
    hits = small_index.search(image=zoo.encode(Image.new("RGB", (40, 40), (0, 200, 0)), "PNG"), k=3)
    assert hits[0].product_id == "P1" and np.isclose(hits[0].score, 1.0, atol=1e-3)
