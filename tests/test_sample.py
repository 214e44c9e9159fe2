"""The generated demo catalog: complete, openable, deterministic, and visibly distinct products."""

import csv
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from vsearch.demo import SAMPLE_COLUMNS, write_sample_catalog, write_sample_queries
from vsearch.errors import CatalogError


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == SAMPLE_COLUMNS
        return list(reader)


def _images_by_product(csv_path: Path) -> dict[str, list[Path]]:
    out = defaultdict(list)
    for row in _rows(csv_path):
        out[row["product_id"]].append(csv_path.parent / row["image"])
    return out


@pytest.fixture(scope="module")
def default_sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    catalog = write_sample_catalog(root / "catalog")
    queries = write_sample_queries(root / "queries", catalog)
    return catalog, queries


def test_catalog_csv_has_columns_products_and_multi_image_products(default_sample):
    catalog, _ = default_sample
    assert catalog.name == "catalog.csv"
    rows = _rows(catalog)
    by_product = _images_by_product(catalog)
    assert len(by_product) == 60
    counts = [len(v) for v in by_product.values()]
    assert min(counts) >= 1 and max(counts) <= 3
    assert sum(c > 1 for c in counts) >= 10, "several products should have more than one view"
    assert len({r["category"] for r in rows}) >= 8
    for r in rows:
        assert not Path(r["image"]).is_absolute() and r["image"].startswith("images/")
        assert re.fullmatch(r"\d+\.\d\d", r["price"]), r["price"]
        assert r["url"] == f"https://shop.example/p/{r['product_id']}"
        assert r["title"] and r["brand"] and r["color"]
        assert r["title"].startswith(r["color"])
    # one product keeps one title/price across its rows
    per_product = defaultdict(set)
    for r in rows:
        per_product[r["product_id"]].add((r["title"], r["price"], r["category"]))
    assert all(len(v) == 1 for v in per_product.values())


def test_every_catalog_image_opens_as_a_packshot(default_sample):
    catalog, _ = default_sample
    for paths in _images_by_product(catalog).values():
        for p in paths:
            with Image.open(p) as im:
                im.load()
                assert im.format == "JPEG" and im.mode == "RGB"
                assert 256 <= min(im.size) and max(im.size) <= 400
                # packshot: light border, something darker in the middle
                a = np.asarray(im, dtype=np.float32)
                assert a[:4].mean() > 200 and a[:, :4].mean() > 200
                h, w = a.shape[0] // 4, a.shape[1] // 4
                assert a[h:-h, w:-w].mean() < a[:4].mean() - 15


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = write_sample_catalog(tmp_path / "a", n_products=12, seed=3)
    b = write_sample_catalog(tmp_path / "b", n_products=12, seed=3)
    c = write_sample_catalog(tmp_path / "c", n_products=12, seed=4)
    files_a = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b.parent) for p in b.parent.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes(), rel
    assert a.read_bytes() != c.read_bytes()
    # regenerating in place changes nothing
    before = {rel: (a.parent / rel).read_bytes() for rel in files_a}
    write_sample_catalog(tmp_path / "a", n_products=12, seed=3)
    assert before == {rel: (a.parent / rel).read_bytes() for rel in files_a}

    qa = write_sample_queries(tmp_path / "qa", a, n_queries=3)
    qb = write_sample_queries(tmp_path / "qb", b, n_queries=3)
    assert [pid for _, pid in qa] == [pid for _, pid in qb]
    assert all(pa.read_bytes() == pb.read_bytes() for (pa, _), (pb, _) in zip(qa, qb))


def test_queries_are_phone_photos_of_existing_products(default_sample):
    catalog, queries = default_sample
    ids = set(_images_by_product(catalog))
    assert len(queries) == 8
    assert len({pid for _, pid in queries}) == 8
    orientations = []
    for path, pid in queries:
        assert pid in ids
        with Image.open(path) as im:
            orientations.append(im.getexif().get(0x0112, 1))
            upright = ImageOps.exif_transpose(im)
            assert upright.size == (800, 600), (path, im.size)
            # a scene, not a packshot: almost nothing is studio white
            assert _white_fraction(upright) < 0.05, path
    # at least one photo is stored sideways and only reads upright through its EXIF tag
    assert any(o in (6, 8) for o in orientations)
    listed = list(csv.DictReader(open(queries[0][0].parent / "queries.csv", encoding="utf-8")))
    assert [(r["image"], r["product_id"]) for r in listed] == [(p.name, pid) for p, pid in queries]


def test_default_queries_match_default_catalog_ids(default_sample, tmp_path):
    catalog, _ = default_sample
    pairs = write_sample_queries(tmp_path, n_queries=3)
    assert {pid for _, pid in pairs} <= set(_images_by_product(catalog))


def test_queries_from_a_catalog_not_drawn_here_cut_products_out(default_sample, tmp_path):
    catalog, _ = default_sample
    # same images, but no generator sidecar: products must come from the packshots themselves
    own = tmp_path / "own"
    shutil.copytree(catalog.parent / "images", own / "images")
    shutil.copy(catalog, own / "products.csv")
    pairs = write_sample_queries(tmp_path / "q", own / "products.csv", n_queries=2, seed=5)
    assert len(pairs) == 2
    for path, pid in pairs:
        assert pid in _images_by_product(catalog)
        with Image.open(path) as im:
            upright = ImageOps.exif_transpose(im)
            assert upright.size == (800, 600)
            # the packshot's white backdrop was removed, not pasted in as a white card
            assert _white_fraction(upright) < 0.05, path


def test_queries_from_a_csv_without_image_column_fail_clearly(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("product_id,title\nx,Thing\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="image"):
        write_sample_queries(tmp_path / "q", bad)


def _white_fraction(photo: Image.Image) -> float:
    a = np.asarray(photo.convert("RGB"), dtype=np.int16)
    return float((a.min(axis=2) > 215).mean())


def _colour_descriptor(path: Path) -> np.ndarray:
    """Cheap, non-learned: a colour histogram of the non-background pixels, unit length."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        a = np.asarray(im.resize((64, 64), Image.Resampling.BILINEAR)).reshape(-1, 3).astype(int)
        bg = np.asarray(im.getpixel((0, 0)), dtype=int)
    a = a[np.abs(a - bg).max(axis=1) > 30]
    idx = (a[:, 0] // 32) * 64 + (a[:, 1] // 32) * 8 + a[:, 2] // 32
    h = np.sqrt(np.bincount(idx, minlength=512).astype(float))
    return h / np.linalg.norm(h)


def test_second_view_finds_its_own_product_with_a_colour_histogram(default_sample):
    """Products must differ visibly: another view of a product is nearer to it than to most
    others."""
    catalog, _ = default_sample
    by_product = _images_by_product(catalog)
    ids = sorted(by_product)
    gallery = np.stack([_colour_descriptor(by_product[p][0]) for p in ids])
    multi = [i for i, p in enumerate(ids) if len(by_product[p]) > 1]
    assert len(multi) >= 10
    in_top5 = 0
    for i in multi:
        scores = gallery @ _colour_descriptor(by_product[ids[i]][1])
        in_top5 += int((scores > scores[i]).sum() < 5)
    assert in_top5 >= 0.8 * len(multi), (
        f"only {in_top5}/{len(multi)} second views ranked their product in the top 5"
    )


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_products"):
        write_sample_catalog(tmp_path, n_products=0)
    with pytest.raises(ValueError, match="images_per_product"):
        write_sample_catalog(tmp_path, images_per_product=(3, 1))
