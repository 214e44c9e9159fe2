"""Words: every index can be searched by its products' own text (title, brand, category, other
columns) through the CLI, Python and REST, in any script; a word re-ranks a photo's matches without
replacing the photo; incremental builds keep the words in step with the products."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FakeEmbedder, draw_product, write_catalog_rows

from vsearch.build import build_index
from vsearch.errors import NoWordMatchError
from vsearch.product import Product
from vsearch.search import ProductIndex
from vsearch.store import words

# titles that differ by one word; the word sits in a different column each time
ONE_WORD = [
    ("A1", "Ceramic mug charcoal", "Harbor", "mug", "plain"),
    ("A2", "Ceramic mug saffron", "Harbor", "mug", "plain"),
    ("A3", "Ceramic mug", "Lindqvist", "mug", "plain"),
    ("A4", "Ceramic mug", "Harbor", "teapot", "plain"),
    ("A5", "Ceramic mug", "Harbor", "mug", "speckled"),
]
ONE_WORD_QUERIES = {
    "charcoal": "A1",
    "saffron": "A2",
    "Lindqvist": "A3",
    "teapot": "A4",
    "speckled": "A5",
}

# >= 6 languages, 4 scripts (Latin with accents, Cyrillic, Arabic, Han/kana), plus Greek
MULTILINGUAL = [
    ("de", "Wanderschuhe aus grünem Leder", "grünem"),
    ("es", "Camión de juguete rojo", "camión"),
    ("ru", "Красная керамическая кружка", "кружка"),
    ("ar", "حقيبة ظهر جلدية سوداء", "حقيبة"),
    ("zh", "红色连衣裙女夏季", "裙"),  # one-character word inside an unsegmented title
    (
        "zh2",
        "不锈钢保温杯大容量",
        "水杯保温",
    ),  # two-character word (保温) among others the title lacks
    ("ja", "赤いスニーカーメンズ", "スニーカー"),
    ("el", "Κόκκινη κούπα καφέ", "κουπα"),  # accent-less Greek
]
# also case and full width
ACCENTLESS = {"grunem": "de", "camion": "es", "GRÜNEM": "de", "ｃａｍｉｏｎ": "es"}


def _catalog(folder: Path, rows: list[tuple], header: list[str]) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for i, row in enumerate(rows):
        draw_product(i).save(folder / "images" / f"{row[0]}.jpg", quality=92)
        out.append([row[0], f"images/{row[0]}.jpg", *row[1:]])
    return write_catalog_rows(folder, out, header)


@pytest.fixture(scope="module")
def one_word(tmp_path_factory):
    root = tmp_path_factory.mktemp("words")
    csv = _catalog(
        root / "shop", ONE_WORD, ["product_id", "image", "title", "brand", "category", "finish"]
    )
    build_index(csv, root / "index", embedder=FakeEmbedder())
    return root / "index", ProductIndex.load(root / "index", embedder=FakeEmbedder())


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory):
    root = tmp_path_factory.mktemp("langs")
    csv = _catalog(
        root / "shop",
        [(lang, title) for lang, title, _ in MULTILINGUAL],
        ["product_id", "image", "title"],
    )
    build_index(csv, root / "index", embedder=FakeEmbedder())
    return ProductIndex.load(root / "index", embedder=FakeEmbedder())


def _rest(index):
    from fastapi.testclient import TestClient

    from vsearch.serve.api import create_rest_app
    from vsearch.serve.service import ServeSettings, Service

    return TestClient(create_rest_app(Service(index, ServeSettings(rate_limit=0))))


def test_each_word_finds_its_product_first_in_python(one_word):
    _, index = one_word
    assert index.manifest["words"]["columns"] == ["title", "brand", "category", "other"]
    for word, pid in ONE_WORD_QUERIES.items():
        hits = index.search(text=word, k=3)
        assert hits[0].product_id == pid, (word, [h.product_id for h in hits])
        # no verdict on words; relative relevance
        assert hits[0].confident is None and hits[0].score == 1.0
    # filters behave as for photos; k is k
    assert [
        h.product_id for h in index.search(text="ceramic", k=2, filters={"category": "teapot"})
    ] == ["A4"]
    assert len(index.search(text="ceramic mug", k=4)) == 4


@pytest.mark.parametrize(
    "model", [pytest.param("efficientnet-lite0", marks=pytest.mark.slow), "test-tiny"]
)
def test_each_word_finds_its_product_first_in_the_cli(tmp_path, capsys, model):
    """The offline model (no text tower: BM25 alone) and a CLIP model (BM25 fused with
    text->image)."""
    from vsearch.cli import main

    csv = _catalog(
        tmp_path / "shop", ONE_WORD, ["product_id", "image", "title", "brand", "category", "finish"]
    )
    assert (
        main(["build", str(csv), "--index", str(tmp_path / "index"), "--model", model, "--quiet"])
        == 0
    )
    capsys.readouterr()
    for word, pid in ONE_WORD_QUERIES.items():
        assert (
            main(
                ["search", "--text", word, "--index", str(tmp_path / "index"), "-k", "3", "--json"]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out)[0]["product_id"] == pid, word
    assert main(["search", "--text", "saffron", "--index", str(tmp_path / "index"), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "text holds your words" in out and out.splitlines()[1].split()[2] == "A2"
    if model == "efficientnet-lite0":
        assert main(["search", "--text", "zebra", "--index", str(tmp_path / "index")]) == 1
        assert (
            "no product's title, brand, category or other text holds any of the words 'zebra'"
            in capsys.readouterr().err
        )


def test_each_word_finds_its_product_first_through_rest(one_word):
    _, index = one_word
    client = _rest(index)
    for word, pid in ONE_WORD_QUERIES.items():
        r = client.post("/search", json={"text": word, "k": 3})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["product_id"] == pid
    r = client.post("/search", json={"text": "zebra xylophone"})
    assert r.status_code == 404 and "zebra xylophone" in r.json()["detail"]


def test_a_query_with_no_matching_word_says_so(one_word):
    _, index = one_word
    with pytest.raises(NoWordMatchError, match="'zebra'"):
        index.search(text="zebra")
    with pytest.raises(NoWordMatchError, match="filters"):
        index.search(text="saffron", filters={"category": "teapot"})


def test_languages_and_scripts_find_their_product_first(multilingual):
    for lang, _, word in MULTILINGUAL:
        assert multilingual.search(text=word, k=3)[0].product_id == lang, word
    for word, lang in ACCENTLESS.items():
        assert multilingual.search(text=word, k=3)[0].product_id == lang, word
    client = _rest(multilingual)
    for lang, _, word in MULTILINGUAL:
        assert (
            client.post("/search", json={"text": word}).json()["results"][0]["product_id"] == lang
        ), word
    assert (
        client.post("/search", json={"text": "camion"}).json()["results"][0]["product_id"] == "es"
    )


def test_tokenising_cjk_keeps_one_and_two_character_words():
    assert words.query_terms("连衣裙") == ["连衣", "衣裙"]
    assert words.query_terms("裙") == ["裙"]
    assert set(words.index_text("红色连衣裙").split()) >= {"裙", "连衣", "衣裙"}
    assert words.normalise("Ｃａｆé STRASSE") == "cafe strasse" == words.normalise("café straße")
    assert words.match_expression(" -- ") is None
    assert words.match_expression('say "hi" OR NOT') == '"say" OR """hi""" OR "or" OR "not"'


def test_incremental_build_keeps_words_in_step(tmp_path):
    rows = [
        (f"B{i}", f"Vase {name}", "Acme", "vase", "")
        for i, name in enumerate(["amber", "cobalt", "ivory", "jade", "onyx", "pearl"])
    ]
    header = ["product_id", "image", "title", "brand", "category", "finish"]
    csv = _catalog(tmp_path / "shop", rows, header)
    build_index(csv, tmp_path / "index", embedder=FakeEmbedder())
    index = ProductIndex.load(tmp_path / "index", embedder=FakeEmbedder())
    assert index.search(text="cobalt")[0].product_id == "B1"
    # remove B1, add B6 ("saffron"): one small change, so the build updates the previous index
    kept = [r for r in rows if r[0] != "B1"] + [("B6", "Vase saffron", "Acme", "vase", "")]
    shutil.rmtree(tmp_path / "shop")
    csv = _catalog(tmp_path / "shop", kept, header)
    build_index(csv, tmp_path / "index", embedder=FakeEmbedder())
    assert index.reload_if_changed()
    assert index.manifest.get("incremental"), "the second build should have been incremental"
    with pytest.raises(NoWordMatchError):
        index.search(text="cobalt")
    assert index.search(text="saffron")[0].product_id == "B6"
    assert index.search(text="jade")[0].product_id == "B3"


def test_words_alone_list_products_holding_every_word_first_best_first():
    """A short title with only the rarer word outscores a long one holding both words on BM25
    (OR); for words alone the product holding both comes first, the list stays best first, and
    products holding some of the words fill it up to the limit."""
    import sqlite3

    db = sqlite3.connect(":memory:")
    titles = {1: "zebra", 2: "zebra lamp with a long pleated linen shade and a brass stand"}
    titles.update({pid: f"lamp number {pid}" for pid in range(3, 40)})
    words.write_words(db, [(pid, Product(str(pid), title=t)) for pid, t in titles.items()])

    def query(sql, args):
        return db.execute(sql, args).fetchall()

    either = words.word_scores(query, "zebra lamp", pids=list(titles))
    assert either[0][0] == 1  # OR + BM25: the short one-word title wins
    found = words.word_scores(query, "zebra lamp", limit=5)
    assert found[0][0] == 2 and len(found) == 5 and found[1][0] == 1
    scores = [s for _, s in found]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    assert words.word_scores(query, "zebra", limit=5)[0][0] == 1
