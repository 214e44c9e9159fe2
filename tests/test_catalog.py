"""Catalog stage: every bad row is reported by its spreadsheet row number and the rest is kept."""

from __future__ import annotations

import csv
import io
import os
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsearch.catalog.rows import (
    KNOWN_COLUMNS,
    REQUIRED_COLUMNS,
    Catalog,
    CatalogRow,
    Product,
    ProductInfo,
    RowProblem,
    iter_catalog_rows,
    read_catalog,
)
from vsearch.errors import CatalogError

HEADER = "product_id,image,title,category,price,url,brand\n"


def write(folder: Path, content: str | bytes, name: str = "catalog.csv") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def fatal(cat: Catalog) -> dict[int, str]:
    return {p.row: p.reason for p in cat.problems if p.fatal}


def warnings(cat: Catalog) -> list[RowProblem]:
    return [p for p in cat.problems if not p.fatal]


# --------------------------------------------------------------------------- basics


def test_public_constants():
    assert REQUIRED_COLUMNS == ("product_id", "image")
    assert KNOWN_COLUMNS == ("product_id", "image", "title", "category", "price", "url", "brand")


def test_good_csv_gives_rows_with_spreadsheet_row_numbers_and_resolved_paths(tmp_path):
    path = write(
        tmp_path,
        "product_id,image,title,category,price,url,brand,color,size\n"
        "P1,images/a.jpg,Red Mug,mug,12.50,https://shop.example/p1,Acme,red,L\n"
        "P2,b.png,Blue Shirt,shirt,,,Zenith,blue,\n",
    )
    cat = read_catalog(path)
    assert cat.problems == []
    assert cat.source == path.resolve()
    assert cat.root == tmp_path.resolve()
    assert cat.rows == [
        CatalogRow(
            row=2,
            image=str(tmp_path.resolve() / "images" / "a.jpg"),
            product=Product(
                product_id="P1",
                title="Red Mug",
                category="mug",
                price=12.5,
                url="https://shop.example/p1",
                brand="Acme",
                extra=(("color", "red"), ("size", "L")),
            ),
        ),
        CatalogRow(
            row=3,
            image=str(tmp_path.resolve() / "b.png"),
            product=Product(
                product_id="P2",
                title="Blue Shirt",
                category="shirt",
                price=None,
                brand="Zenith",
                extra=(("color", "blue"), ("size", "")),
            ),
        ),
    ]
    assert list(cat.products) == ["P1", "P2"]
    assert cat.products["P1"] == ProductInfo(
        "P1",
        "Red Mug",
        "mug",
        12.5,
        "https://shop.example/p1",
        "Acme",
        (("color", "red"), ("size", "L")),
    )


def test_results_are_frozen_and_hashable(tmp_path):
    cat = read_catalog(write(tmp_path, "product_id,image,x\nP1,a.jpg,1\n"))
    row = cat.rows[0]
    with pytest.raises(AttributeError):
        row.title = "changed"  # type: ignore[misc]
    assert len({row, row}) == 1


def test_header_names_are_stripped_and_lowercased(tmp_path):
    cat = read_catalog(write(tmp_path, " Product_ID , IMAGE ,Title\nP1,a.jpg,Mug\n"))
    assert [(r.product_id, r.title) for r in cat.rows] == [("P1", "Mug")]


def test_utf8_bom_is_ignored(tmp_path):
    cat = read_catalog(write(tmp_path, "\ufeffproduct_id,image,title\nP1,a.jpg,Crème brûlée\n"))
    assert cat.problems == []
    assert cat.rows[0].product_id == "P1"
    assert cat.rows[0].title == "Crème brûlée"


@pytest.mark.parametrize("sep", [";", "\t"])
def test_semicolon_and_tab_separated_files_are_sniffed(tmp_path, sep):
    text = (
        sep.join(["product_id", "image", "price"]) + "\n" + sep.join(["P1", "a.jpg", "3,50"]) + "\n"
    )
    cat = read_catalog(write(tmp_path, text))
    assert cat.problems == []
    assert (cat.rows[0].product_id, cat.rows[0].price) == ("P1", 3.5)


def test_quoted_fields_with_commas_and_newlines_keep_the_starting_row_number(tmp_path):
    text = (
        HEADER
        + 'P1,a.jpg,"Mug, large",mug,1,,\n'
        + 'P2,b.jpg,"Line one\nline two\nline three",mug,2,,\n'
        + "P3,c.jpg,Plain,mug,3,,\n"
        + "P4,,missing image,mug,4,,\n"
    )
    cat = read_catalog(write(tmp_path, text))
    assert [(r.row, r.product_id) for r in cat.rows] == [(2, "P1"), (3, "P2"), (6, "P3")]
    assert cat.rows[0].title == "Mug, large"
    assert cat.rows[1].title == "Line one\nline two\nline three"
    assert fatal(cat) == {7: "missing image value"}


def test_crlf_line_endings_count_rows_correctly(tmp_path):
    text = HEADER.replace("\n", "\r\n") + "P1,a.jpg,,,,,\r\n,b.jpg,,,,,\r\nP3,c.jpg,,,,,\r\n"
    cat = read_catalog(write(tmp_path, text))
    assert [r.row for r in cat.rows] == [2, 4]
    assert fatal(cat) == {3: "missing product_id value"}


def test_blank_lines_are_skipped_but_still_counted(tmp_path):
    text = "\n" + HEADER + "P1,a.jpg,,,,,\n\n,,,,,,\nP2,b.jpg,,,,,\n"
    cat = read_catalog(write(tmp_path, text))
    assert cat.problems == []
    assert [(r.row, r.product_id) for r in cat.rows] == [(3, "P1"), (6, "P2")]


# --------------------------------------------------------------------------- unusable files


def test_missing_file_is_a_catalog_error(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(tmp_path / "nope.csv")


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"\n\n  \n"])
def test_empty_file_is_a_catalog_error(tmp_path, content):
    with pytest.raises(CatalogError, match="is empty"):
        read_catalog(write(tmp_path, content))


@pytest.mark.parametrize(
    "content", ["product_id,image\n", "product_id,image", "product_id,image\n\n,\n"]
)
def test_header_only_file_is_a_catalog_error(tmp_path, content):
    with pytest.raises(CatalogError, match="header but no data rows"):
        read_catalog(write(tmp_path, content))


def test_missing_required_columns_are_named_with_the_columns_found(tmp_path):
    with pytest.raises(CatalogError) as err:
        read_catalog(write(tmp_path, "sku,picture,title\n1,a.jpg,x\n"))
    msg = str(err.value)
    assert "'product_id'" in msg and "'image'" in msg
    assert "found columns: 'sku', 'picture', 'title'" in msg


def test_missing_column_message_suggests_a_near_miss(tmp_path):
    with pytest.raises(CatalogError, match="rename 'product id' to 'product_id'"):
        read_catalog(write(tmp_path, "Product ID,image\n1,a.jpg\n"))


def test_duplicate_column_names_are_a_catalog_error(tmp_path):
    with pytest.raises(CatalogError, match="duplicate column.*'title'"):
        read_catalog(write(tmp_path, "product_id,image,Title,title \nP1,a.jpg,x,y\n"))


def test_spreadsheet_file_gets_a_save_as_csv_hint(tmp_path):
    with pytest.raises(CatalogError, match="CSV UTF-8"):
        read_catalog(write(tmp_path, b"PK\x03\x04 junk", name="catalog.xlsx"))


def test_binary_file_is_a_catalog_error_not_a_crash(tmp_path):
    with pytest.raises(CatalogError):
        read_catalog(write(tmp_path, bytes(range(256)) * 20))


# --------------------------------------------------------------------------- per-row problems


def test_empty_product_id_and_image_skip_only_their_rows(tmp_path):
    text = HEADER + ",a.jpg,,,,,\nP2,  ,,,,,\nP3,c.jpg,,,,,\n  ,  ,,,1,,\n"
    cat = read_catalog(write(tmp_path, text))
    assert [r.product_id for r in cat.rows] == ["P3"]
    reasons = [(p.row, p.reason) for p in cat.problems]
    assert (2, "missing product_id value") in reasons
    assert (3, "missing image value") in reasons
    assert (5, "missing product_id value") in reasons and (5, "missing image value") in reasons


def test_one_invalid_utf8_byte_costs_only_its_row(tmp_path):
    data = (
        (HEADER + "P1,a.jpg,ok,,,,\n").encode()
        + b"P2,b.jpg,caf\xe9,,,,\n"
        + "P3,c.jpg,Caf\u00e9,,,,\n".encode()
    )
    cat = read_catalog(write(tmp_path, data))
    assert [r.product_id for r in cat.rows] == ["P1", "P3"]
    assert cat.rows[1].title == "Café"
    assert list(fatal(cat)) == [3]
    assert "not valid UTF-8 (column 'title')" in fatal(cat)[3]


@pytest.mark.parametrize(
    "line, cells", [("P1,a.jpg,t,c,1,,,EXTRA", 8), ("P1,a.jpg,t", 3)], ids=["extra", "missing"]
)
def test_wrong_number_of_cells_is_a_row_problem(tmp_path, line, cells):
    cat = read_catalog(write(tmp_path, HEADER + line + "\nP2,b.jpg,,,,,\n"))
    assert [r.product_id for r in cat.rows] == ["P2"]
    assert f"row has {cells} cells but the header has 7 columns" in fatal(cat)[2]


@pytest.mark.parametrize(
    "text, value",
    [
        ("12.50", 12.5),
        (" 12,50 ", 12.5),
        ("$12.50", 12.5),
        ("12.50 EUR", 12.5),
        ("EUR 12.50", 12.5),
        ("€ 9", 9.0),
        ("9£", 9.0),
        ("0", 0.0),
        ("7.", 7.0),
        (".5", 0.5),
        ("+3", 3.0),
        ("", None),
    ],
)
def test_accepted_prices(tmp_path, text, value):
    cat = read_catalog(write(tmp_path, f'product_id,image,price\nP1,a.jpg,"{text}"\n'))
    assert cat.problems == []
    assert cat.rows[0].price == value
    assert cat.products["P1"].price == value


@pytest.mark.parametrize(
    "text, why",
    [
        ("abc", "is not a number"),
        ("NaN", "is not a number"),
        ("inf", "is not a number"),
        ("-infinity", "is not a number"),
        ("1e5", "is not a number"),
        ("1,234.50", "is not a number"),
        ("1.2.3", "is not a number"),
        ("12 50", "is not a number"),
        ("-5", "is negative"),
        ("$-5", "is negative"),
        ("9" * 400, "not a finite number"),
    ],
)
def test_rejected_prices_name_the_value(tmp_path, text, why):
    cat = read_catalog(write(tmp_path, f'product_id,image,price\nP1,a.jpg,"{text}"\nP2,b.jpg,1\n'))
    assert [r.product_id for r in cat.rows] == ["P2"]
    reason = fatal(cat)[2]
    assert why in reason
    assert reason.startswith("price '" + text[:20])


def test_overlong_field_is_a_row_problem(tmp_path):
    long_title = "x" * 10_001
    text = HEADER + f"P1,a.jpg,{long_title},,,,\nP2,b.jpg,{'y' * 10_000},,,,\n"
    cat = read_catalog(write(tmp_path, text))
    assert [r.product_id for r in cat.rows] == ["P2"]
    assert "column 'title' is 10,001 characters long (limit 10,000" in fatal(cat)[2]


def test_unclosed_quote_swallowing_the_file_is_reported_not_fatal(tmp_path):
    rows = "".join(f"P{i},img{i}.jpg,,,,,\n" for i in range(3, 2000))
    text = HEADER + 'P1,a.jpg,"oops,,,,\n' + rows
    cat = read_catalog(write(tmp_path, text))
    assert cat.rows == []
    assert 2 in fatal(cat)


def test_physical_line_over_a_million_chars_is_skipped_without_stopping(tmp_path):
    text = HEADER + "P1,a.jpg," + "z" * 1_200_000 + ",,,,\nP2,b.jpg,,,,,\n"
    cat = read_catalog(write(tmp_path, text))
    assert [(r.row, r.product_id) for r in cat.rows] == [(3, "P2")]
    assert "longer than 1,000,000 characters" in fatal(cat)[2]


def test_nul_character_is_a_row_problem(tmp_path):
    cat = read_catalog(write(tmp_path, HEADER + "P1,a\x00.jpg,,,,,\nP2,b.jpg,,,,,\n"))
    assert [r.product_id for r in cat.rows] == ["P2"]
    assert "NUL" in fatal(cat)[2]


def test_exact_duplicate_rows_warn_and_keep_the_first(tmp_path):
    text = HEADER + "P1,a.jpg,Mug,,,,\nP1,./a.jpg,Mug,,,,\nP1,b.jpg,Mug,,,,\n"
    cat = read_catalog(write(tmp_path, text))
    assert [(r.row, Path(r.image).name) for r in cat.rows] == [(2, "a.jpg"), (4, "b.jpg")]
    (dup,) = warnings(cat)
    assert dup.row == 3 and "duplicate of row 2" in dup.reason
    assert fatal(cat) == {}


# --------------------------------------------------------------------------- several images,
# conflicts


def test_several_images_per_product_from_repeated_rows_and_pipes(tmp_path):
    text = HEADER + "P1,a.jpg|b.jpg | c.jpg,Mug,,,,\nP1,d.jpg,,,,,\nP2,e.jpg|,,,,,\n"
    cat = read_catalog(write(tmp_path, text))
    assert [(r.row, r.product_id, Path(r.image).name) for r in cat.rows] == [
        (2, "P1", "a.jpg"),
        (2, "P1", "b.jpg"),
        (2, "P1", "c.jpg"),
        (3, "P1", "d.jpg"),
        (4, "P2", "e.jpg"),
    ]
    assert cat.problems == []
    assert list(cat.products) == ["P1", "P2"]
    assert cat.products["P1"].title == "Mug"


def test_pipe_only_image_cell_is_missing_image(tmp_path):
    cat = read_catalog(write(tmp_path, HEADER + "P1, | ,,,,,\nP2,b.jpg,,,,,\n"))
    assert fatal(cat) == {2: "missing image value"}


def test_one_bad_image_in_a_pipe_list_keeps_the_others(tmp_path):
    cat = read_catalog(write(tmp_path, HEADER + "P1,a.jpg|ftp://x/y.jpg|b.jpg,,,,,\n"))
    assert [Path(r.image).name for r in cat.rows] == ["a.jpg", "b.jpg"]
    (problem,) = cat.problems
    assert problem.row == 2 and problem.fatal and problem.image == "ftp://x/y.jpg"


def test_conflicting_metadata_first_non_empty_value_wins_with_warnings(tmp_path):
    text = (
        "product_id,image,title,price,brand,color\n"
        "P1,a.jpg,A,10,,red\n"
        "P1,b.jpg,B,10.00,Acme,\n"  # title conflicts; same price; brand fills the gap
        "P1,c.jpg,,12,Other,red\n"  # empty title never conflicts; price and brand do
    )
    cat = read_catalog(write(tmp_path, text))
    assert len(cat.rows) == 3 and fatal(cat) == {}
    assert cat.products["P1"] == ProductInfo("P1", "A", "", 10.0, "", "Acme", (("color", "red"),))
    assert [(w.row, w.reason) for w in warnings(cat)] == [
        (3, "product 'P1': title 'B' conflicts with 'A' from row 2; keeping the first"),
        (4, "product 'P1': price 12 conflicts with 10 from row 2; keeping the first"),
        (4, "product 'P1': brand 'Other' conflicts with 'Acme' from row 3; keeping the first"),
    ]
    # Each row still carries what was written on it.
    assert [r.title for r in cat.rows] == ["A", "B", ""]


def test_conflict_in_an_extra_column_is_reported(tmp_path):
    cat = read_catalog(write(tmp_path, "product_id,image,color\nP1,a.jpg,red\nP1,b.jpg,blue\n"))
    assert [w.reason for w in warnings(cat)] == [
        "product 'P1': color 'blue' conflicts with 'red' from row 2; keeping the first"
    ]
    assert cat.products["P1"].extra == (("color", "red"),)


def test_skipped_rows_do_not_contribute_metadata(tmp_path):
    cat = read_catalog(
        write(tmp_path, "product_id,image,title,price\nP1,a.jpg,Bad,abc\nP1,b.jpg,Good,1\n")
    )
    assert cat.products["P1"].title == "Good"
    assert warnings(cat) == []


def test_product_page_url_with_a_script_scheme_is_dropped_with_a_warning(tmp_path):
    cat = read_catalog(write(tmp_path, "product_id,image,url\nP1,a.jpg,javascript:alert(1)\n"))
    assert cat.rows[0].url == "" and cat.products["P1"].url == ""
    (w,) = cat.problems
    assert not w.fatal and "not an http(s) link" in w.reason


def test_unnamed_trailing_columns_are_ignored_when_empty(tmp_path):
    cat = read_catalog(write(tmp_path, "product_id,image,,\nP1,a.jpg,,\nP2,b.jpg,,note\n"))
    assert cat.problems == []
    assert cat.rows[0].extra == ()
    assert cat.rows[1].extra == (("column_4", "note"),)


# --------------------------------------------------------------------------- image references


def test_http_urls_are_kept_as_written(tmp_path):
    text = "product_id,image\nP1,https://cdn.example/a.jpg?x=1\nP2,HTTP://cdn.example/b.jpg\n"
    cat = read_catalog(write(tmp_path, text))
    assert [r.image for r in cat.rows] == [
        "https://cdn.example/a.jpg?x=1",
        "HTTP://cdn.example/b.jpg",
    ]


@pytest.mark.parametrize(
    "ref",
    ["file:///etc/passwd", "ftp://host/a.jpg", "javascript:alert(1)", "data:image/png;base64,AAAA"],
)
def test_other_url_schemes_are_row_problems(tmp_path, ref):
    cat = read_catalog(write(tmp_path, f'product_id,image\nP1,"{ref}"\nP2,b.jpg\n'))
    assert [r.product_id for r in cat.rows] == ["P2"]
    assert "only http(s) URLs and local file paths are accepted" in fatal(cat)[2]
    assert cat.problems[0].image == ref


def test_http_url_without_host_is_a_row_problem(tmp_path):
    cat = read_catalog(write(tmp_path, "product_id,image\nP1,https:///a.jpg\n"))
    assert "has no host" in fatal(cat)[2]


def test_colon_in_a_local_file_name_works_with_dot_slash(tmp_path):
    cat = read_catalog(write(tmp_path, "product_id,image\nP1,./shot:1.jpg\n"))
    assert cat.rows[0].image == str(tmp_path.resolve() / "shot:1.jpg")


def test_paths_leaving_the_catalog_folder_are_refused(tmp_path):
    shop = tmp_path / "shop"
    text = (
        "product_id,image\n"
        "P1,../../etc/passwd\n"
        f"P2,{tmp_path / 'elsewhere.jpg'}\n"
        "P3,images/../../x.jpg\n"
        "P4,images/../ok.jpg\n"
    )
    cat = read_catalog(write(shop, text))
    assert [(r.product_id, r.image) for r in cat.rows] == [("P4", str(shop.resolve() / "ok.jpg"))]
    problems = fatal(cat)
    assert problems[2] == (
        "image path '../../etc/passwd' leaves the catalog folder (use --allow-outside-paths to "
        "permit)"
    )
    assert "is absolute" in problems[3] and "--allow-outside-paths" in problems[3]
    assert "leaves the catalog folder" in problems[4]


def test_allow_outside_paths_accepts_them_resolved(tmp_path):
    shop = tmp_path / "shop"
    text = f"product_id,image\nP1,../pics/a.jpg\nP2,{tmp_path}/pics/./b.jpg\n"
    cat = read_catalog(write(shop, text), allow_outside_paths=True)
    assert cat.problems == []
    assert [r.image for r in cat.rows] == [
        str(tmp_path.resolve() / "pics" / "a.jpg"),
        str(tmp_path.resolve() / "pics" / "b.jpg"),
    ]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinks_that_leave_the_catalog_folder_are_refused(tmp_path):
    shop, outside = tmp_path / "shop", tmp_path / "outside"
    (shop / "images").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x")
    (shop / "images" / "link.jpg").symlink_to(outside / "secret.jpg")
    (shop / "linkdir").symlink_to(outside, target_is_directory=True)
    (shop / "images" / "real.jpg").write_bytes(b"x")
    (shop / "images" / "inner.jpg").symlink_to(shop / "images" / "real.jpg")
    text = (
        "product_id,image\nP1,images/link.jpg\nP2,linkdir/secret.jpg\nP3,linkdir/../outside/secret.jpg\n"
        "P4,images/inner.jpg\n"
    )
    cat = read_catalog(write(shop, text))
    # P3 is inside shop/ if '..' were applied lexically; resolving the symlink first puts it
    # outside.
    assert sorted(fatal(cat)) == [2, 3, 4]
    assert [(r.product_id, r.image) for r in cat.rows] == [
        ("P4", str(shop.resolve() / "images" / "real.jpg"))
    ]
    allowed = read_catalog(shop / "catalog.csv", allow_outside_paths=True)
    assert [r.image for r in allowed.rows][:2] == [str(outside.resolve() / "secret.jpg")] * 2


def test_missing_image_files_are_not_checked_here(tmp_path):
    cat = read_catalog(write(tmp_path, "product_id,image\nP1,images/not-there-yet.jpg\n"))
    assert cat.problems == []
    assert cat.rows[0].image == str(tmp_path.resolve() / "images" / "not-there-yet.jpg")


def test_relative_paths_resolve_against_the_csv_folder_not_the_cwd(tmp_path, monkeypatch):
    shop = tmp_path / "shop"
    write(shop, "product_id,image\nP1,a.jpg\n")
    monkeypatch.chdir(tmp_path)
    cat = read_catalog("shop/catalog.csv")
    assert cat.rows[0].image == str(shop.resolve() / "a.jpg")


# --------------------------------------------------------------------------- folder catalogs


def test_folder_of_images_is_a_catalog(tmp_path):
    root = tmp_path / "photos"
    for rel in [
        "red_mug.jpg",
        "b-shirt.PNG",
        "lamps/desk-lamp_2.webp",
        "lamps/a.heic",
        ".hidden.jpg",
        ".cache/x.jpg",
        "notes.txt",
        "lamps/readme.md",
    ]:
        write(root, b"not decoded here", name=rel)
    cat = read_catalog(root)
    assert cat.problems == []
    assert cat.root == root.resolve()
    assert [(r.product_id, r.title) for r in cat.rows] == [
        ("b-shirt", "b shirt"),
        ("red_mug", "red mug"),
        ("lamps/a", "a"),
        ("lamps/desk-lamp_2", "desk lamp 2"),
    ]
    assert [r.row for r in cat.rows] == [1, 2, 3, 4]
    assert cat.rows[0].image == str(root.resolve() / "b-shirt.PNG")
    assert list(cat.products) == ["b-shirt", "red_mug", "lamps/a", "lamps/desk-lamp_2"]
    assert cat.products["red_mug"].title == "red mug"


def test_folder_without_images_is_a_catalog_error(tmp_path):
    write(tmp_path / "empty", b"hello", name="notes.txt")
    with pytest.raises(CatalogError, match="no image files"):
        read_catalog(tmp_path / "empty")


# --------------------------------------------------------------------------- streaming


def test_iter_catalog_rows_streams_the_same_items_in_file_order(tmp_path):
    text = HEADER + "P1,a.jpg,A,,,,\n,b.jpg,,,,,\nP1,c.jpg,B,,,,\nP3,d.jpg,,,x,,\n"
    path = write(tmp_path, text)
    items = list(iter_catalog_rows(path))
    assert [(type(i).__name__, i.row) for i in items] == [
        ("CatalogRow", 2),
        ("RowProblem", 3),
        ("RowProblem", 4),
        ("CatalogRow", 4),
        ("RowProblem", 5),
    ]
    cat = read_catalog(path)
    assert [i for i in items if isinstance(i, CatalogRow)] == cat.rows
    assert [i for i in items if isinstance(i, RowProblem)] == cat.problems


def test_iter_catalog_rows_is_lazy(tmp_path):
    it = iter_catalog_rows(tmp_path / "missing.csv")  # nothing is read yet
    with pytest.raises(CatalogError):
        next(it)
    path = write(tmp_path, HEADER + "P1,a.jpg,,,,,\n" + "P2,b.jpg,,,,,\n" * 10)
    it = iter_catalog_rows(path)
    assert next(it).product_id == "P1"


def test_100k_row_csv_is_read_in_bounded_time(tmp_path):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["product_id", "image", "title", "category", "price", "color"])
    for i in range(100_000):
        w.writerow(
            [
                f"P{i // 2}",
                f"images/d{i % 97}/img{i}.jpg",
                f"Product {i // 2}",
                "mug",
                "12.50",
                "red",
            ]
        )
    path = write(tmp_path, buf.getvalue())
    start = time.perf_counter()
    cat = read_catalog(path)
    elapsed = time.perf_counter() - start
    assert len(cat.rows) == 100_000 and len(cat.products) == 50_000 and cat.problems == []
    assert cat.rows[-1].row == 100_001
    assert elapsed < 20, f"reading 100k rows took {elapsed:.1f} s"


# --------------------------------------------------------------------------- properties

_CELL = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=12
) | st.sampled_from(
    [
        "",
        "a.jpg",
        "x|y.png",
        "../up.jpg",
        "/abs.jpg",
        "https://h/a.jpg",
        "ftp://h",
        "12,5",
        "-1",
        "nan",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(st.lists(_CELL, max_size=6), max_size=12))
def test_every_data_row_becomes_a_row_or_a_problem(records):
    """Random CSV: only CatalogError escapes, and no non-blank record is silently lost."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["product_id", "image", "title", "price"])
    expected: set[int] = set()
    line = 2
    for rec in records:
        start = len(buf.getvalue())
        w.writerow(rec)
        written = buf.getvalue()[start:]
        if any(cell.strip() for cell in rec):
            expected.add(line)
        line += written.count("\n")
    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d), buf.getvalue())
        try:
            cat = read_catalog(path)
        except CatalogError as e:
            assert not expected, f"CatalogError with data rows present: {e}"
            return
    seen = {r.row for r in cat.rows} | {p.row for p in cat.problems}
    assert seen == expected
    for r in cat.rows:
        assert r.product_id and r.image
        assert r.product_id in cat.products


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400), header=st.booleans())
def test_random_bytes_raise_nothing_but_catalog_error(data, header):
    if header:
        data = b"product_id,image,price\n" + data
    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d), data)
        try:
            cat = read_catalog(path)
        except CatalogError:
            return
    for r in cat.rows:
        assert r.row >= 2 and r.product_id and r.image
    for p in cat.problems:
        assert p.row >= 2 and p.reason
