"""Catalog hygiene: the perceptual hash finds copies and leaves different products alone; `vsearch
check` names the rows, products and files; evaluation credits answers that list the query's own
photo."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, FakeEmbedder, draw_product, write_catalog
from PIL import Image, ImageDraw

from vsearch.build import build_index
from vsearch.catalog.hygiene import (
    TINY_SIDE,
    check,
    check_catalog,
    check_index,
    fingerprint,
    fingerprint_file,
)
from vsearch.cli import main
from vsearch.cli.parser import TINY_SIDE_HELP
from vsearch.evaluate.quality import evaluate
from vsearch.search import ProductIndex

JUMIA = SHARED_DATA / "jumia"
needs_jumia = pytest.mark.skipif(
    not (JUMIA / "manifest.csv").is_file(), reason=f"{JUMIA} not available"
)


def packshot(colour=(200, 40, 40), shape="chair", size=320, seed=0) -> Image.Image:
    """A product on a white background, drawn with some detail (what catalogs look like)."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    s = size / 320
    if shape == "chair":
        d.rectangle((110 * s, 40 * s, 210 * s, 170 * s), fill=colour)  # back
        d.rectangle((95 * s, 170 * s, 225 * s, 200 * s), fill=(30, 30, 30))  # seat
        d.rectangle((155 * s, 200 * s, 165 * s, 260 * s), fill=(60, 60, 60))  # post
        for x in (100, 160, 220):
            d.ellipse(((x - 8) * s, 262 * s, (x + 8) * s, 278 * s), fill=(20, 20, 20))
        # one armrest: real photos are not symmetric
        d.rectangle((70 * s, 120 * s, 110 * s, 135 * s), fill=(50, 50, 50))
        # a highlight
        d.polygon([(125 * s, 60 * s), (150 * s, 60 * s), (125 * s, 110 * s)], fill=(240, 240, 240))
    else:  # a mouse: a rounded blob with a wheel
        d.ellipse((90 * s, 110 * s, 240 * s, 215 * s), fill=colour)
        d.line((165 * s, 115 * s, 165 * s, 160 * s), fill=(90, 90, 90), width=max(1, int(3 * s)))
        d.ellipse((159 * s, 128 * s, 171 * s, 146 * s), fill=(120, 120, 120))
        # the cable
        d.line((120 * s, 190 * s, 60 * s, 240 * s), fill=(60, 60, 60), width=max(1, int(4 * s)))
    rng = np.random.default_rng(seed)  # a little sensor noise, as in a real photo
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-3, 4, size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def reencode(img: Image.Image, scale: float, quality: int) -> Image.Image:
    small = img.resize(
        (round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC
    )
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


# ---------------------------------------------------------------- the hash, generated images


@pytest.mark.parametrize("scale, quality", [(1.0, 60), (0.55, 85), (0.4, 40)])
def test_a_resized_reencoded_copy_is_near_identical(scale, quality):
    original = packshot()
    assert fingerprint(original).near_identical(fingerprint(reencode(original, scale, quality)))


def test_a_copy_with_a_wider_white_margin_is_near_identical():
    """Shops re-post a packshot zoomed out (more white around it): the trimmed hashes match."""
    from PIL import ImageOps

    original = packshot()
    zoomed_out = reencode(ImageOps.expand(original, border=50, fill=(255, 255, 255)), 320 / 420, 85)
    a, b = fingerprint(original), fingerprint(zoomed_out)
    assert not a.whole.matches(b.whole) and a.trimmed.matches(b.trimmed) and a.near_identical(b)


def test_different_products_on_white_are_not_near_identical():
    chair, mouse = packshot(shape="chair"), packshot(shape="mouse", colour=(30, 30, 30))
    assert not fingerprint(chair).near_identical(fingerprint(mouse))
    # the same drawing in another colour is another product (a colour variant), not a copy
    assert not fingerprint(packshot(colour=(200, 40, 40))).near_identical(
        fingerprint(packshot(colour=(40, 60, 200)))
    )
    # ...and the test data's own products: all pairs of 30 drawn products on white
    prints = [fingerprint(draw_product(i, size=160)) for i in range(30)]
    flagged = [
        (i, j) for i in range(30) for j in range(i + 1, 30) if prints[i].near_identical(prints[j])
    ]
    assert flagged == []


def test_fingerprint_keeps_the_files_own_size(tmp_path):
    packshot(size=320).save(tmp_path / "big.jpg", quality=90)
    # decoded at a reduced JPEG scale, size is the file's
    fp = fingerprint_file(tmp_path / "big.jpg")
    assert (fp.width, fp.height) == (320, 320)


# ---------------------------------------------------------------- the hash, real photos


@needs_jumia
def test_real_photos_a_copy_matches_and_different_white_background_products_do_not():
    def fp(name):
        return fingerprint_file(JUMIA / "images" / f"product_{name}.jpg")

    photo = Image.open(JUMIA / "images" / "product_mouse_244_0.jpg").convert("RGB")
    assert fingerprint(photo).near_identical(fingerprint(reencode(photo, 0.5, 50)))
    # the same marketing photo, two products
    assert fp("ear_pods_417_5").near_identical(fp("ear_pods_418_5"))
    # the same packshot with a wider margin
    assert fp("backpack_825_0").near_identical(fp("backpack_861_0"))
    # pairs whose grey-level hashes are close but which are different products on white (or colour
    # variants)
    for a, b in [
        ("mouse_244_0", "mouse_251_3"),
        ("office_chairs_1219_0", "office_chairs_1244_0"),
        ("ear_pods_472_0", "ear_pods_483_0"),
    ]:
        assert not fp(a).near_identical(fp(b)), (a, b)


@needs_jumia
def test_check_lists_jumia_cross_listed_photos_with_both_product_ids(tmp_path, capsys):
    with open(JUMIA / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] == "ear_pods"]
    sub = tmp_path / "ear_pods.csv"
    with open(sub, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(
            f, fieldnames=["product_id", "image", "title", "category"], extrasaction="ignore"
        )
        w.writeheader()
        w.writerows({**r, "image": str(JUMIA / r["image"])} for r in rows)
    assert main(["check", str(sub), "--allow-outside-paths", "--limit", "1000"]) == 0
    out = capsys.readouterr().out
    block = next(
        b for b in re.split(r"\n  (?=\d+ photos)", out) if "product_ear_pods_418_5.jpg" in b
    )
    header, *photos = block.splitlines()
    assert "product_ear_pods_417" in header and "product_ear_pods_418" in header
    assert any(line.strip().startswith("product_ear_pods_417 (row ") for line in photos)
    report = check_catalog(sub, allow_outside_paths=True)
    group = next(
        g
        for g in report.duplicates
        if any(p.image.endswith("product_ear_pods_418_5.jpg") for p in g.photos)
    )
    assert {"product_ear_pods_417", "product_ear_pods_418"} <= set(group.product_ids)


# ---------------------------------------------------------------- vsearch check


def _messy_catalog(folder: Path) -> Path:
    """Twelve drawn products plus: P000's photo re-listed (resized, re-encoded) under P099, a tiny
    photo, a file that is not an image."""
    csv_path = write_catalog(folder, n_products=12, views=2)
    images = folder / "images"
    reencode(Image.open(images / "p000-0.jpg").convert("RGB"), 1.5, 70).save(
        images / "copy.jpg", quality=70
    )
    draw_product(3, size=40).save(images / "tiny.jpg")
    (images / "broken.jpg").write_bytes(b"this is not a jpeg")
    with open(csv_path, "a", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["P099", "images/copy.jpg", "Copycat", "mug", "9.99", "", "", ""])
        w.writerow(["P100", "images/tiny.jpg", "Tiny", "mug", "1.00", "", "", ""])
        w.writerow(["P101", "images/broken.jpg", "Broken", "mug", "1.00", "", "", ""])
    return csv_path


def test_check_catalog_names_rows_products_and_files(tmp_path):
    report = check(_messy_catalog(tmp_path / "shop"))
    assert report.kind == "catalog"
    # only the copy: the 12 drawn products and their views are distinct
    assert len(report.duplicates) == 1
    group = report.duplicates[0]
    assert set(group.product_ids) == {"P000", "P099"}
    # (P000's second view is its first drawn 4 px to the side on a greyer white: the same photo once
    # trimmed)
    assert (
        {"p000-0.jpg", "copy.jpg"}
        <= {Path(p.image).name for p in group.photos}
        <= {"p000-0.jpg", "p000-1.jpg", "copy.jpg"}
    )
    assert all(p.row >= 2 for p in group.photos)
    bad = {Path(b.photo.image).name: b for b in report.bad_photos}
    assert set(bad) == {"tiny.jpg", "broken.jpg"}
    assert (
        bad["tiny.jpg"].problem.startswith("tiny: 40x40")
        and bad["tiny.jpg"].photo.product_id == "P100"
    )
    assert bad["broken.jpg"].problem.startswith("unreadable") and bad["broken.jpg"].photo.row > 2
    assert report.odd_views == () and any("index" in n for n in report.not_checked)


def test_check_index_finds_a_view_that_disagrees_with_its_product(tmp_path):
    csv_path = write_catalog(tmp_path / "shop", n_products=24, views=3)
    Image.new("RGB", (120, 120), (5, 5, 5)).save(tmp_path / "shop" / "images" / "odd.jpg")
    with open(csv_path, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(["P000", "images/odd.jpg", "Product 0", "mug", "5.00", "", "", ""])
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    report = check_index(tmp_path / "idx")
    assert report.kind == "index" and report.n_images == 12 * 3 + 12 + 1
    assert [Path(v.photo.image).name for v in report.odd_views] == ["odd.jpg"]
    odd = report.odd_views[0]
    assert odd.photo.product_id == "P000" and odd.n_views == 4 and odd.agreement < odd.typical
    assert report.duplicates == ()


def test_cli_check_text_and_json(tmp_path, capsys):
    csv_path = _messy_catalog(tmp_path / "shop")
    assert main(["check", str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert "near-identical photos under different product ids: 1 group" in out
    assert "products P000, P099" in out and "copy.jpg" in out and "p000-0.jpg" in out
    assert "tiny.jpg" in out and "broken.jpg" in out and "unreadable or tiny photos: 2" in out
    assert main(["check", str(csv_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["duplicates"][0]["product_ids"] == ["P000", "P099"]
    assert {b["image"].rsplit("/", 1)[-1] for b in data["bad_photos"]} == {"tiny.jpg", "broken.jpg"}
    assert main(["check", str(tmp_path / "nope.csv")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_help_names_the_tiny_limit_the_check_uses():
    assert TINY_SIDE_HELP == TINY_SIDE


# ---------------------------------------------------------------- evaluation credit


def test_eval_counts_a_first_result_listing_the_query_photo_as_right(tmp_path):
    """The shop lists the query photo (a re-encoded copy) under another product too: answering that
    product is right, and the report says how many answers were counted that way."""
    csv_path = write_catalog(tmp_path / "shop", n_products=8, views=1)
    photos = tmp_path / "photos"
    photos.mkdir()
    query = draw_product(2, view=1, size=120)
    query.save(photos / "q.jpg", quality=92)
    reencode(query, 0.8, 75).save(tmp_path / "shop" / "images" / "relisted.jpg", quality=75)
    with open(csv_path, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(
            ["P050", "images/relisted.jpg", "Relisted", "mug", "1.00", "", "", ""]
        )
    build_index(csv_path, tmp_path / "idx", embedder=FakeEmbedder())
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    (tmp_path / "q.csv").write_text("image,product_id\nphotos/q.jpg,P002\n", encoding="utf-8")
    strict = evaluate(index, tmp_path / "q.csv", k=5, credit_duplicates=False)
    assert strict.results[0].top == "P050" and strict.recall[1] == 0.0
    credited = evaluate(index, tmp_path / "q.csv", k=5)
    assert credited.recall[1] == 1.0 and credited.credited_duplicates == 1
    assert credited.to_dict()["credited_duplicates"] == 1
