"""The web app through its public doors: the /search API (gradio_client) and the file route."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import FakeEmbedder, draw_product, write_catalog

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from vsearch.learn.calibration import VerdictCalibration  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    index: object
    app: object
    root: Path
    service: object = None


def give_verdicts(index, close_at: float | None):
    """Make ``index`` answer like one that gives verdicts: a hit is a close match at score >=
    close_at; None: like an index that gives no verdict (confident=None). The page must show exactly
    what the index says, whatever rule the index uses."""
    from dataclasses import replace

    search = type(index).search.__get__(index)

    def with_verdicts(*args, **kwargs):
        return [
            replace(h, confident=None if close_at is None else h.score >= close_at)
            for h in search(*args, **kwargs)
        ]

    index.search = with_verdicts
    return index


def start_server(
    root: Path,
    examples: list[str] | None = None,
    notice: str | None = None,
    *,
    close_at: float | None = None,
    files_max_age: int | None = None,
    **settings,
) -> Server:
    """Build a small catalog with the fake model and serve it on a free loopback port.
    close_at: give verdicts (close match at this score); files_max_age: create_app's (default if
    None); settings: ServeSettings fields."""
    from vsearch.build import build_index
    from vsearch.search import ProductIndex
    from vsearch.serve.service import ServeSettings, Service
    from vsearch.serve.ui import create_app, launch_app

    csv = write_catalog(root / "shop", extra_rows=_pointed_products(root / "shop" / "images"))
    build_index(csv, root / "index", embedder=FakeEmbedder())
    index = ProductIndex.load(root / "index", embedder=FakeEmbedder())
    if close_at is not None:
        give_verdicts(index, close_at)
    service = Service(index, ServeSettings(**settings))
    app = create_app(
        index,
        examples=examples,
        notice=notice,
        service=service,
        **({} if files_max_age is None else {"files_max_age": files_max_age}),
    )
    url = launch_app(app, index, port=free_port(), examples=examples, watch_interval=0.1)
    return Server(url=url, index=index, app=app, root=root, service=service)


def _pointed_products(images: Path) -> list[dict]:
    """Two extra products that differ only by a quarter turn, so a query decoded without its EXIF
    orientation lands on the wrong one (the other products are symmetric under rotation)."""
    images.mkdir(parents=True, exist_ok=True)
    upright = draw_product(20)  # a triangle pointing up
    upright.save(images / "p900.jpg", quality=92)
    # pointing left
    upright.transpose(Image.Transpose.ROTATE_90).save(images / "p901.jpg", quality=92)
    return [
        {
            "product_id": pid,
            "image": f"images/{pid.lower()}.jpg",
            "title": title,
            "category": "mug",
            "price": "99.00",
            "url": f"https://shop.example/p/{pid}",
            "brand": "Acme",
            "color": "c0",
        }
        for pid, title in [("P900", "Pointer up"), ("P901", "Pointer left")]
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("ui"))
    yield srv
    srv.app.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


def shopper_photo(tmp_path: Path, product: int, name: str = "photo.jpg") -> str:
    """A larger, re-encoded copy of a catalog product, as a shopper would upload it."""
    path = tmp_path / name
    draw_product(product, size=96).resize((400, 400)).save(path, quality=80)
    return str(path)


def test_catalog_photo_finds_its_product_first(client, tmp_path):
    hits = client.predict(handle_file(shopper_photo(tmp_path, 5)), api_name="/search")
    assert hits[0]["product_id"] == "P005"
    assert hits[0]["title"] == "Product 5"
    assert hits[0]["rank"] == 1 and hits[0]["score"] > hits[1]["score"]
    assert {
        "price",
        "url",
        "category",
        "metadata",
        "matched_image_urls",
        "confident",
        "image_url",
        "verdict",
    } <= hits[0].keys()
    assert len({h["product_id"] for h in hits}) == len(hits)  # products appear once
    assert len(hits) == 10  # default k


def test_a_shoppers_uploaded_photo_leaves_the_server_once_it_is_old(tmp_path, monkeypatch):
    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))  # where this server's uploads land
    # long enough for a search on a busy machine
    srv = start_server(tmp_path / "srv", files_max_age=10)
    try:
        photo = shopper_photo(tmp_path, 5, name="a-shoppers-photo.jpg")
        hits = Client(srv.url, verbose=False).predict(handle_file(photo), api_name="/search")
        assert hits[0]["product_id"] == "P005"
        uploaded = list(cache.rglob("a-shoppers-photo.jpg"))
        assert uploaded  # the search went through the server's copy of the upload
        deadline = time.monotonic() + 45  # swept every 10 s once 10 s old
        while any(p.exists() for p in uploaded) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not any(p.exists() for p in uploaded), "the shopper's photo is still on the server"
    finally:
        srv.app.close()


def test_api_answers_carry_image_urls_never_server_paths(server, client, tmp_path):
    import json

    hits = client.predict(handle_file(shopper_photo(tmp_path, 5)), api_name="/search")
    text = json.dumps(hits)
    for secret in (str(server.root), "/tmp", str(Path(server.root).resolve())):
        assert secret not in text, f"a server path is in the /search answer: {secret}"
    assert "image" not in hits[0] and "matched_images" not in hits[0]
    assert hits[0]["image_url"] == f"/api/v1/images/{server.index.generation}/{hits[0]['image_id']}"


def test_filters_and_k_narrow_results(client, tmp_path):
    photo = handle_file(shopper_photo(tmp_path, 5))
    lamps = client.predict(photo, "", 20, ["lamp"], 0, 0, api_name="/search")
    assert lamps and {h["category"] for h in lamps} == {"lamp"}
    assert len(lamps) == 4  # 12 products, every third is a lamp
    cheap = client.predict(photo, "", 20, [], 10, 20, api_name="/search")
    assert cheap and all(10 <= h["price"] <= 20 for h in cheap)
    assert len(client.predict(photo, k=3, api_name="/search")) == 3


def test_non_image_upload_is_a_readable_error_and_server_keeps_answering(client, tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not a photo")
    with pytest.raises(AppError, match=r"notes\.txt: not a recognised image"):
        client.predict(handle_file(str(bogus)), api_name="/search")
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(Path(shopper_photo(tmp_path, 2)).read_bytes()[:300])
    with pytest.raises(AppError, match=r"broken\.jpg"):
        client.predict(handle_file(str(corrupt)), api_name="/search")
    hits = client.predict(handle_file(shopper_photo(tmp_path, 7)), api_name="/search")
    assert hits[0]["product_id"] == "P007"


def test_look_closer_through_the_api_and_run_search(server, client, tmp_path, monkeypatch):
    """locate=True reaches the index from the /search endpoint and the page's search function; an
    index whose model cannot locate says so instead of searching without it."""
    from conftest import LocatingFake

    from vsearch.serve import page_events

    photo = shopper_photo(tmp_path, 5)
    with pytest.raises(AppError, match="cannot locate"):
        client.predict(handle_file(photo), "", 3, [], 0, 0, True, api_name="/search")
    assert (
        client.predict(handle_file(photo), "", 3, [], 0, 0, False, api_name="/search")[0][
            "product_id"
        ]
        == "P005"
    )
    fake = LocatingFake()
    monkeypatch.setattr(server.index, "embedder", fake)
    hits = client.predict(handle_file(photo), "", 3, [], 0, 0, True, api_name="/search")
    assert hits[0]["product_id"] == "P005" and len(hits) == 3
    (close_up,) = fake.seen[-1]  # the second look: a square part of the 400 x 400 upload
    assert close_up.width == close_up.height < 400
    seen = len(fake.seen)
    assert page_events.run_search(server.index, photo, k=2, locate=True)[0].product_id == "P005"
    assert len(fake.seen) == seen + 1  # run_search asked for the second look too


def test_words_search_an_image_only_models_catalog_by_its_text(client, tmp_path):
    """Words alone find the product whose title holds them; a word no product holds says so; with a
    photo, a word no product holds leaves the photo's ranking as it was."""
    hits = client.predict(None, "Product 5", 3, [], 0, 0, False, api_name="/search")
    assert hits[0]["product_id"] == "P005" and hits[0]["confident"] is None
    with pytest.raises(AppError, match="holds any of the words 'zebra'"):
        client.predict(None, "zebra", api_name="/search")
    photo = handle_file(shopper_photo(tmp_path, 1))
    alone = client.predict(photo, "", 5, api_name="/search")
    assert [h["product_id"] for h in client.predict(photo, "zebra", 5, api_name="/search")] == [
        h["product_id"] for h in alone
    ]


def test_catalog_images_are_served_but_nothing_else(server, client, tmp_path):
    hits = client.predict(handle_file(shopper_photo(tmp_path, 3)), api_name="/search")
    image = httpx.get(server.url.rstrip("/") + hits[0]["image_url"])
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"  # the catalog JPEG
    catalog_image = server.root / "shop" / "images" / "p003-0.jpg"
    assert image.content == catalog_image.read_bytes()
    for path in [
        "/etc/passwd",
        server.root / "index" / "CURRENT",
        server.root / "shop" / "catalog.csv",
        next((server.root / "index").rglob("products.sqlite")),
        catalog_image,
    ]:
        r = httpx.get(f"{server.url}gradio_api/file={path}")
        assert r.status_code in (403, 404), f"{path} was served"


def unrelated_photo(tmp_path: Path) -> str:
    photo = tmp_path / "unrelated.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(photo)  # flat grey: far from every product
    return str(photo)


def test_page_shows_exactly_the_index_verdict_in_three_states(server, tmp_path):
    from vsearch.search import Hit
    from vsearch.serve import page_text
    from vsearch.serve import ui as ui

    def hit(confident, score=0.8):
        from vsearch.catalog.rows import Product

        return Hit(
            rank=1,
            product=Product("P1", "T", "", None, "", "", ()),
            score=score,
            image="x.jpg",
            confident=confident,
        )

    headings = {
        state: page_text._status([hit(state), hit(state)], 0.01).splitlines()[0]
        for state in (True, False, None)
    }
    assert headings == {
        True: "### Close match",
        False: "### Not sure - these are the nearest products",
        None: "### Best guesses (this index cannot tell a close match)",
    }
    assert page_text._status([], 0.01).splitlines()[0] == "### No products found"
    # "not sure" never claims the product is not there: below the bar the first result is often it
    assert "not" not in page_text._status([hit(False)], 0.01).splitlines()[1].lower().replace(
        "not sure", ""
    )
    # no fixed fallback threshold: a weak score the index calls a close match (or gives no verdict
    # on)
    # is shown as the index says
    assert not hasattr(ui, "FALLBACK_THRESHOLDS") and not hasattr(ui, "effective_threshold")
    assert page_text._status([hit(True, score=0.2)], 0.01).startswith("### Close match\n")
    assert page_text._status([hit(None, score=0.99)], 0.01).startswith("### Best guesses")
    details = {state: page_text._details(server.index, hit(state)) for state in (True, False, None)}
    assert "(close match)" in details[True] and "(not sure)" in details[False]
    assert "(no verdict)" in details[None] and "close match)" not in details[None]


def test_run_search_passes_the_index_verdict_through_unchanged(server, tmp_path):
    from vsearch.serve import page_events

    give_verdicts(server.index, 0.95)
    try:
        weak = page_events.run_search(server.index, unrelated_photo(tmp_path), k=3)
        assert weak and [h.confident for h in weak] == [False] * 3
        good = page_events.run_search(server.index, shopper_photo(tmp_path, 4), k=3)
        assert good[0].product_id == "P004" and good[0].confident is True
        assert [h.confident for h in good[1:]] == [False, False]
    finally:
        del server.index.search  # back to the class's own method


@pytest.fixture(scope="module")
def phone_photo(tmp_path_factory) -> Path:
    """A 12 MP, several-MB noisy JPEG of product P900 as a phone stores it: pixels on their side
    (landscape 4000x3000) plus EXIF orientation 6 ("rotate 90 degrees clockwise to view")."""
    upright = draw_product(20).resize((3000, 4000), Image.Resampling.BILINEAR)
    rng = np.random.default_rng(0)
    pixels = np.asarray(upright, dtype=np.int16) + rng.integers(
        -24, 25, (4000, 3000, 3), dtype=np.int16
    )
    noisy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    # exif_transpose undoes this for orientation 6
    stored = noisy.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path_factory.mktemp("phone") / "IMG_4032.jpg"
    stored.save(path, quality=92, exif=exif)
    return path


def test_big_exif_rotated_phone_photo_finds_its_product(client, server, phone_photo):
    with Image.open(phone_photo) as im:
        assert im.size == (4000, 3000) and im.getexif()[0x0112] == 6
    assert phone_photo.stat().st_size > 3 * 2**20
    hits = client.predict(handle_file(str(phone_photo)), k=5, api_name="/search")
    # P900 is the photo upright, as the shopper saw it; ignoring EXIF would have found P901 (the raw
    # pixels, pointing left) first with a near-perfect score.
    assert hits[0]["product_id"] == "P900"
    # the index's own verdict, passed through unchanged
    verdict = VerdictCalibration.from_dict(server.index.verdict)
    assert hits[0]["confident"] is verdict.decide(
        hits[0]["score"], hits[1]["score"] if verdict.signal == "margin" else None
    )
    assert (
        hits[0]["score"] > next(h["score"] for h in hits if h["product_id"] == "P901") + 0.05
        if any(h["product_id"] == "P901" for h in hits)
        else True
    )


def test_heic_upload_finds_its_product(client, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    path = tmp_path / "IMG_0001.HEIC"
    draw_product(8, size=96).resize((600, 600)).save(path, format="HEIF")
    with Image.open(path) as im:
        assert im.format == "HEIF"
    hits = client.predict(handle_file(str(path)), api_name="/search")
    assert hits[0]["product_id"] == "P008"


def test_oversize_upload_is_refused_readably_and_server_keeps_answering(server, client, tmp_path):
    from vsearch.catalog.images import MAX_BYTES

    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.write(Path(shopper_photo(tmp_path, 2)).read_bytes())
        f.truncate(MAX_BYTES + 1)
    # gradio_client checks the server's advertised limit before sending anything ...
    with pytest.raises(
        ValueError, match=rf"huge\.jpg exceeds the maximum file size of {MAX_BYTES} bytes"
    ):
        client.predict(handle_file(str(huge)), api_name="/search")
    # ... and a client that sends it anyway is refused by the server with a plain-text reason.
    with open(huge, "rb") as f:
        r = httpx.post(
            f"{server.url}gradio_api/upload",
            files={"files": ("huge.jpg", f, "image/jpeg")},
            timeout=60,
        )
    assert r.status_code == 413
    assert f"maximum allowed size of {MAX_BYTES} bytes" in r.text
    hits = client.predict(handle_file(shopper_photo(tmp_path, 9)), api_name="/search")
    assert hits[0]["product_id"] == "P009"


def two_product_photo(tmp_path: Path, left: int = 3, right: int = 8, name: str = "pair.png") -> str:
    """A shelf photo with one product on the left half and another on the right."""
    path = tmp_path / name
    img = Image.new("RGB", (384, 192), "white")
    img.paste(draw_product(left).resize((192, 192)), (0, 0))
    img.paste(draw_product(right).resize((192, 192)), (192, 0))
    img.save(path)
    return str(path)


def test_crop_photo_keeps_only_the_framed_area():
    from vsearch.errors import VsearchError
    from vsearch.serve.page_events import crop_photo

    img = Image.new("RGB", (200, 100), "red")
    img.paste((0, 0, 255), (100, 0, 200, 100))  # right half blue
    left_half = crop_photo(img, (0, 0, 50, 0))
    assert left_half.size == (100, 100)
    assert left_half.getcolors() == [(100 * 100, (255, 0, 0))]  # only red left
    corner = crop_photo(img, (75, 10, 0, 40))
    assert corner.size == (50, 50) and corner.getcolors() == [(50 * 50, (0, 0, 255))]
    assert crop_photo(img, (0, 0, 0, 0)).size == (200, 100)
    # untouched sliders
    assert crop_photo(img, None) is img and crop_photo(img, (None, 0, None, 0)) is img
    assert img.size == (200, 100)  # the original is not modified
    with pytest.raises(VsearchError, match=r"left \+ right margins are 60% \+ 40%"):
        crop_photo(img, (60, 0, 40, 0))
    with pytest.raises(
        VsearchError, match="bottom crop margin must be from 0 to under 100 percent, got -5"
    ):
        crop_photo(img, (0, 0, 0, -5))
    with pytest.raises(VsearchError, match="4 margins"):
        crop_photo(img, (10, 10))


def test_cropped_search_finds_the_product_inside_the_crop(server, client, tmp_path):
    from vsearch.serve.page_events import run_search

    pair = two_product_photo(tmp_path)
    whole = run_search(server.index, pair)
    assert whole[0].product_id == "P008"  # uncropped, the right-hand product wins
    assert run_search(server.index, pair, crop=(0, 0, 50, 0))[0].product_id == "P003"
    assert run_search(server.index, pair, crop=(50, 0, 0, 0))[0].product_id == "P008"
    assert run_search(server.index, Image.open(pair), crop=(0, 0, 50, 0))[0].product_id == "P003"
    # the /search API takes no crop and still searches the whole photo
    assert client.predict(handle_file(pair), api_name="/search")[0]["product_id"] == "P008"


def test_crop_preview_of_a_phone_photo_decodes_at_screen_size(server, phone_photo, monkeypatch):
    """The preview runs on every upload: a 12 MP JPEG is decoded with draft() at reduced scale."""
    from PIL import JpegImagePlugin

    requested = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size, *args, **kwargs):
        requested.append(size)
        return draft(self, mode, size, *args, **kwargs)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    fns = {f.fn.__name__: f.fn for f in server.app.fns.values()}
    preview = fns["prepare_crop"](str(phone_photo))[0]
    # upright (portrait), screen size
    assert max(preview.size) == 640 and preview.size[1] > preview.size[0]
    assert requested and max(requested[0]) <= 1000  # decoded at 1/4 scale (1000x750), not 4000x3000


def test_requests_never_load_an_index_generation(server, client, tmp_path, monkeypatch):
    """Reloading is the background watcher's job: a search request never pays for it."""
    from vsearch.serve import page_events

    def forbidden():
        raise AssertionError("a request tried to reload the index")

    monkeypatch.setattr(server.index, "reload_if_changed", forbidden)
    assert (
        page_events.run_search(server.index, shopper_photo(tmp_path, 4), k=1)[0].product_id
        == "P004"
    )
    assert (
        client.predict(handle_file(shopper_photo(tmp_path, 6)), k=1, api_name="/search")[0][
            "product_id"
        ]
        == "P006"
    )
    r = httpx.post(
        server.url + "api/v1/search?k=1",
        files={"image": ("q.jpg", open(shopper_photo(tmp_path, 7), "rb"))},
    )
    assert r.json()["results"][0]["product_id"] == "P007"


def test_look_closer_box_is_offered_only_when_the_model_can_locate(server, tmp_path):
    from conftest import LocatingFake

    from vsearch.serve.ui import create_app

    def closer_box(app):
        (box,) = [
            c["props"]
            for c in app.get_config_file()["components"]
            if c["props"].get("elem_id") == "vs-closer"
        ]
        return box

    box = closer_box(server.app)  # the fake model cannot locate: greyed out, and says why
    assert box["interactive"] is False and "cannot locate" in box["info"] and box["value"] is False
    original = server.index.embedder
    try:
        server.index.embedder = LocatingFake()
        box = closer_box(create_app(server.index))
    finally:
        server.index.embedder = original
    assert (
        box["interactive"] is not False and "twice as slow" in box["info"] and box["value"] is False
    )
