"""The `vsearch` CLI, run in-process with the tiny open_clip model (real model code, random
weights)."""

from __future__ import annotations

import json

import pytest
from conftest import draw_product, write_catalog

from vsearch.cli import main
from vsearch.cli.query_commands import VERDICT_LINES
from vsearch.store.generations import FORMAT_VERSION


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    csv_path = write_catalog(root / "shop", n_products=9)
    index_dir = root / "idx"
    assert (
        main(["build", str(csv_path), "--index", str(index_dir), "--model", "test-tiny", "--quiet"])
        == 0
    )
    return csv_path, index_dir


def test_build_prints_a_summary(tmp_path, capsys):
    csv_path = write_catalog(
        tmp_path / "shop",
        n_products=4,
        extra_rows=[{"product_id": "X", "image": "images/nope.jpg"}],
    )
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
    out, err = capsys.readouterr()
    assert "4 products, 6 images (6 embedded, 0 reused from cache), 1 rows skipped" in out
    assert "skipped row 8:" in err and "nope.jpg" in err
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
    assert "(0 embedded, 6 reused from cache)" in capsys.readouterr().out


def test_search_prints_ranked_products(built, capsys):
    csv_path, index_dir = built
    photo = csv_path.parent / "images" / "p004-0.jpg"
    assert main(["search", str(photo), "--index", str(index_dir), "-k", "3"]) == 0
    verdict, *lines = capsys.readouterr().out.strip().splitlines()
    from vsearch.search import ProductIndex

    top = ProductIndex.load(index_dir).search(image=photo, k=1)[0]
    assert verdict == VERDICT_LINES[top.confident]  # the same three states as the API
    assert len(lines) == 3
    assert lines[0].split()[2] == "P004" and "Product 4" in lines[0] and "p004-0.jpg" in lines[0]


def test_search_says_each_verdict_in_its_own_words():
    assert VERDICT_LINES[True] == "close match:"
    assert VERDICT_LINES[False].startswith("not sure") and VERDICT_LINES[None].startswith(
        "best guesses"
    )


def test_search_json_and_filters(built, capsys):
    csv_path, index_dir = built
    photo = csv_path.parent / "images" / "p004-0.jpg"
    assert (
        main(
            [
                "search",
                str(photo),
                "--index",
                str(index_dir),
                "--json",
                "--category",
                "shirt",
                "--max-price",
                "20",
            ]
        )
        == 0
    )
    hits = json.loads(capsys.readouterr().out)
    assert hits and all(h["category"] == "shirt" and h["price"] <= 20 for h in hits)
    assert {
        "rank",
        "product_id",
        "score",
        "title",
        "price",
        "image",
        "metadata",
        "confident",
    } <= set(hits[0])


def test_text_search_with_a_clip_model(built, capsys):
    _, index_dir = built
    assert (
        main(["search", "--text", "a red mug", "--index", str(index_dir), "-k", "2", "--json"]) == 0
    )
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_info(built, capsys):
    _, index_dir = built
    assert main(["info", "--index", str(index_dir)]) == 0
    out = capsys.readouterr().out
    assert (
        "products:     9" in out
        and "images:       14" in out
        and "test-tiny" in out
        and f"v{FORMAT_VERSION}" in out
    )
    # 9 products, 5 of them with two photos: too few to learn from, and info says so
    assert "adaptation:   none: catalog adaptation needs at least 20 products" in out
    assert "close match:  " in out


@pytest.mark.parametrize("content", [b"", b"this is not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_bad_photo_is_one_clear_line(built, tmp_path, capsys, content):
    _, index_dir = built
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(content)
    assert main(["search", str(bad), "--index", str(index_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vsearch: error:") and "photo.jpg" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_missing_photo_and_missing_index(built, tmp_path, capsys):
    _, index_dir = built
    assert main(["search", str(tmp_path / "nope.jpg"), "--index", str(index_dir)]) == 1
    assert "does not exist" in capsys.readouterr().err
    draw_product(1).save(tmp_path / "q.png")
    assert main(["search", str(tmp_path / "q.png"), "--index", str(tmp_path / "no-index")]) == 1
    assert "vsearch build" in capsys.readouterr().err


def test_wrong_model_for_index_is_refused(built, tmp_path, capsys):
    csv_path, index_dir = built
    photo = csv_path.parent / "images" / "p004-0.jpg"
    assert (
        main(["search", str(photo), "--index", str(index_dir), "--model", "efficientnet-lite0"])
        == 1
    )
    err = capsys.readouterr().err
    assert "built with model" in err and "test-tiny" in err


def test_missing_columns_fail_before_model_load(tmp_path, capsys):
    bad = tmp_path / "c.csv"
    bad.write_text("id,picture\n1,a.jpg\n", encoding="utf-8")
    # the 'clip' model would fail offline; a column error must come first
    assert main(["build", str(bad), "--index", str(tmp_path / "idx")]) == 1
    err = capsys.readouterr().err
    assert "product_id" in err and "image" in err


def test_clip_without_weights_fails_fast_with_advice(catalog_csv, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["build", str(catalog_csv), "--index", str(tmp_path / "idx"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "efficientnet-lite0" in err and "--pretrained" in err


def test_help_lists_commands_and_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("build", "search", "serve", "info", "VSEARCH_INDEX"):
        assert word in out


def test_readme_cli_reference_matches_help():
    """Every subcommand in --help is in the CLI reference table (docs/cli.md, which the README links
    to), and every option the table names exists."""
    import re
    from pathlib import Path

    from vsearch.cli.parser import build_parser

    root = Path(__file__).resolve().parents[1]
    assert "(docs/cli.md)" in (root / "README.md").read_text(encoding="utf-8")
    reference = (root / "docs" / "cli.md").read_text(encoding="utf-8")
    table = reference.split("## Commands", 1)[1].split("\n## ", 1)[0]
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(re.findall(r"`vsearch ([a-z]+)", table)) == set(sub.choices)
    for name, cmd in sub.choices.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `vsearch {name}"))
        options = {o for a in cmd._actions for o in a.option_strings}
        for opt in re.findall(r"(--[a-z-]+|-k)\b", row):
            assert opt in options, (
                f"docs/cli.md names {opt} for 'vsearch {name}', which --help does not have"
            )
