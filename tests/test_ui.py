"""The web app through its public doors: the /search API (gradio_client) and the file route."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import FakeEmbedder, draw_product, write_catalog

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402


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


def start_server(root: Path, examples: list[str] | None = None, notice: str | None = None) -> Server:
    """Build a small catalog with the fake model and serve it on a free loopback port."""
    from vsearch.build import build_index
    from vsearch.search import ProductIndex
    from vsearch.ui import create_app, launch_app

    csv = write_catalog(root / "shop")
    build_index(csv, root / "index", embedder=FakeEmbedder())
    index = ProductIndex.load(root / "index", embedder=FakeEmbedder())
    app = create_app(index, examples=examples, notice=notice)
    url = launch_app(app, index, port=free_port(), examples=examples)
    return Server(url=url, index=index, app=app, root=root)


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
    assert {"price", "url", "category", "metadata", "matched_images", "confident", "image_url"} <= hits[0].keys()
    assert len({h["product_id"] for h in hits}) == len(hits)  # products appear once
    assert len(hits) == 10  # default k


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


def test_text_on_image_only_model_is_refused_with_reason(client, tmp_path):
    with pytest.raises(AppError, match="image-only"):
        client.predict(handle_file(shopper_photo(tmp_path, 1)), "in red", api_name="/search")


def test_catalog_images_are_served_but_nothing_else(server, client, tmp_path):
    hits = client.predict(handle_file(shopper_photo(tmp_path, 3)), api_name="/search")
    image = httpx.get(server.url.rstrip("/") + hits[0]["image_url"])
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"  # the catalog JPEG
    for path in ["/etc/passwd", server.root / "index" / "CURRENT", server.root / "shop" / "catalog.csv",
                 next((server.root / "index").rglob("products.sqlite"))]:
        r = httpx.get(f"{server.url}gradio_api/file={path}")
        assert r.status_code in (403, 404), f"{path} was served"


def test_no_close_match_flag_uses_fallback_threshold(server, tmp_path, monkeypatch):
    from PIL import Image

    from vsearch import ui

    photo = tmp_path / "unrelated.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(photo)  # flat grey: far from every product
    monkeypatch.setitem(ui.FALLBACK_THRESHOLDS, "fake-thumbnail", 0.9)
    weak = ui.run_search(server.index, str(photo), k=3)
    assert weak and not any(h.confident for h in weak)
    assert "No close match" in ui._status(weak, 0.9, 0.01)
    good = ui.run_search(server.index, shopper_photo(tmp_path, 4), k=3)
    assert good[0].product_id == "P004" and good[0].confident
