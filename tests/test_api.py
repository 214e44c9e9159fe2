"""The REST API (/api/v1) as an integrator uses it with plain HTTP, and the file routes as an
attacker probes them: only catalog images, by generation + id, are ever downloadable."""

from __future__ import annotations

import csv
import io
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import FakeEmbedder, draw_product, write_catalog

pytest.importorskip("gradio")
from test_ui import free_port, start_server  # noqa: E402

SECRET = "TOP-SECRET-7f3a"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("api"), rate_limit=0)
    yield srv
    srv.app.close()


def api(server, route: str) -> str:
    return server.url.rstrip("/") + "/api/v1" + route


def jpeg_bytes(product: int) -> bytes:
    buf = io.BytesIO()
    draw_product(product, size=96).resize((300, 300)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


# ---------------------------------------------------------------- search


def test_multipart_search_finds_the_product_with_urls_not_paths(server):
    r = httpx.post(api(server, "/search"), files={"image": ("me.jpg", jpeg_bytes(5), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["product_id"] == "P005" and len(body["results"]) == 10
    assert body["generation"] == server.index.generation and body["model"] == "fake-thumbnail"
    assert body["verdict"] in ("close_match", "no_close_match", "no_verdict")
    assert {h["generation"] for h in body["results"]} == {body["generation"]}
    assert str(server.root) not in r.text and "/tmp/" not in r.text
    top = body["results"][0]
    image = httpx.get(server.url.rstrip("/") + top["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == (server.root / "shop" / "images" / "p005-0.jpg").read_bytes()


def test_k_and_filters_as_query_parameters_and_as_form_fields(server):
    photo = {"image": ("me.jpg", jpeg_bytes(5), "image/jpeg")}
    by_query = httpx.post(api(server, "/search?k=3&category=lamp"), files=photo).json()["results"]
    by_form = httpx.post(
        api(server, "/search"), files=photo, data={"k": "3", "category": "lamp"}
    ).json()["results"]
    assert [h["product_id"] for h in by_query] == [h["product_id"] for h in by_form]
    assert len(by_query) == 3 and {h["category"] for h in by_query} == {"lamp"}
    cheap = httpx.post(
        api(server, "/search"), files=photo, data={"k": "20", "min_price": "10", "max_price": "20"}
    ).json()["results"]
    assert cheap and all(10 <= h["price"] <= 20 for h in cheap)
    acme = httpx.post(api(server, "/search?filter=brand=Acme&k=20"), files=photo).json()["results"]
    assert acme and {h["brand"] for h in acme} == {"Acme"}
    two = httpx.post(
        api(server, "/search?k=20"), files=photo, data={"category": ["lamp", "mug"]}
    ).json()["results"]
    assert {h["category"] for h in two} == {"lamp", "mug"}


@pytest.mark.parametrize(
    ("request_kwargs", "route", "status", "message"),
    [
        (
            {"files": {"image": ("notes.txt", b"this is not a photo", "text/plain")}},
            "/search",
            400,
            r"notes\.txt: not a recognised image",
        ),
        (
            {"files": {"image": ("x.jpg", b"\xff\xd8" + b"\x00" * 50, "image/jpeg")}},
            "/search",
            400,
            r"x\.jpg",
        ),
        (
            {"files": {"image": ("p.jpg", "PHOTO", "image/jpeg")}},
            "/search?category=teapot",
            400,
            "unknown category 'teapot'; categories: lamp, mug, shirt",
        ),
        (
            {"files": {"image": ("p.jpg", "PHOTO", "image/jpeg")}},
            "/search?k=0",
            400,
            "k must be from 1 to 100, got 0",
        ),
        (
            {"files": {"image": ("p.jpg", "PHOTO", "image/jpeg")}},
            "/search?k=many",
            400,
            "k must be a whole number",
        ),
        (
            {"files": {"image": ("p.jpg", "PHOTO", "image/jpeg")}},
            "/search?k=101",
            400,
            "k must be from 1 to 100",
        ),
        (
            {"files": {"image": ("p.jpg", "PHOTO", "image/jpeg")}},
            "/search?min_price=9&max_price=2",
            400,
            "min_price 9 is above max_price 2",
        ),
        (
            {"files": {"image": ("p.jpg", "PHOTO", "image/jpeg")}},
            "/search?filter=colour=red",
            400,
            "cannot filter on 'colour'",
        ),
        (
            {"files": {"image": ("p.jpg", "PHOTO", "image/jpeg")}},
            "/search?size=3",
            400,
            "unknown parameter",
        ),
        (
            {"files": {"image": ("p.jpg", "PHOTO", "image/jpeg")}},
            "/search?locate=maybe",
            400,
            "locate must be true or false",
        ),
        (
            {"files": {"image": ("p.jpg", "PHOTO", "image/jpeg")}},
            "/search?locate=true",
            400,
            "cannot locate",
        ),
        (
            {"json": {"text": "zebra xylophone"}},
            "/search",
            404,
            "holds any of the words 'zebra xylophone'",
        ),
        ({"json": {"k": 3}}, "/search", 400, "send a photo"),
        ({"json": ["not", "an", "object"]}, "/search", 400, "must be an object"),
        (
            {"content": b"{broken", "headers": {"content-type": "application/json"}},
            "/search",
            400,
            "not valid JSON",
        ),
        (
            {"content": b"raw", "headers": {"content-type": "image/jpeg"}},
            "/search",
            415,
            "multipart/form-data",
        ),
        ({"json": {"image_url": "http://127.0.0.1:1/x.jpg"}}, "/search", 400, "127.0.0.1"),
        ({"json": {"image_url": "file:///etc/passwd"}}, "/search", 400, "file"),
    ],
)
def test_bad_input_gets_a_json_error_with_status_and_message(
    server, request_kwargs, route, status, message
):
    import re

    files = request_kwargs.get("files")
    if files and files["image"][1] == "PHOTO":
        request_kwargs = {
            **request_kwargs,
            "files": {"image": ("p.jpg", jpeg_bytes(2), "image/jpeg")},
        }
    r = httpx.post(api(server, route), **request_kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert re.search(message, r.json()["detail"]), r.json()
    # and the server keeps answering
    ok = httpx.post(
        api(server, "/search?k=1"), files={"image": ("me.jpg", jpeg_bytes(7), "image/jpeg")}
    )
    assert ok.json()["results"][0]["product_id"] == "P007"


def test_locate_looks_closer_over_rest(server, monkeypatch):
    from conftest import LocatingFake

    fake = LocatingFake()
    monkeypatch.setattr(server.index, "embedder", fake)
    photo = {"image": ("me.jpg", jpeg_bytes(5), "image/jpeg")}
    plain = httpx.post(api(server, "/search?k=3"), files=photo).json()
    looks = len(fake.seen)
    closer = httpx.post(api(server, "/search?k=3&locate=true"), files=photo)
    assert closer.status_code == 200, closer.text
    assert closer.json()["results"][0]["product_id"] == plain["results"][0]["product_id"] == "P005"
    (close_up,) = fake.seen[-1]
    # the second look ran
    assert len(fake.seen) == looks + 1 and close_up.width == close_up.height < 300
    as_json = httpx.post(api(server, "/search"), json={"text": "mug", "locate": True})
    assert as_json.status_code == 400 and "photo alone" in as_json.json()["detail"]


def test_oversize_photo_is_refused_with_413(server):
    from vsearch.catalog.images import MAX_BYTES

    big = jpeg_bytes(2) + b"\x00" * (MAX_BYTES + 10)
    r = httpx.post(
        api(server, "/search"), files={"image": ("huge.jpg", big, "image/jpeg")}, timeout=60
    )
    assert r.status_code == 413 and "at most 50 MiB" in r.json()["detail"]


def test_products_health_docs_and_unknown_routes(server):
    p = httpx.get(api(server, "/products/P004")).json()
    assert (
        p["title"] == "Product 4"
        and p["category"] == "shirt"
        and p["generation"] == server.index.generation
    )
    assert p["image_urls"] and all(
        u.startswith(f"/api/v1/images/{server.index.generation}/") for u in p["image_urls"]
    )
    assert all(httpx.get(server.url.rstrip("/") + u).status_code == 200 for u in p["image_urls"])
    missing = httpx.get(api(server, "/products/NOPE"))
    assert missing.status_code == 404 and missing.json() == {
        "detail": "product 'NOPE' is not in this catalog"
    }
    health = httpx.get(api(server, "/health")).json()
    assert health == {
        "status": "ok",
        "generation": server.index.generation,
        "model": "fake-thumbnail",
        "products": 14,
        "images": 20,
        "index_type": "flat",
        "text_search": False,  # no text tower, but its titles are searchable by words:
        "words_search": True,
        "skipped_generations": [],
        "feedback": False,
    }
    docs = httpx.get(api(server, "/docs"))
    assert (
        docs.status_code == 200
        and "swagger" in docs.text.lower()
        and "/api/v1/openapi.json" in docs.text
    )
    spec = httpx.get(api(server, "/openapi.json")).json()
    assert {"/search", "/products/{product_id}", "/health"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert httpx.get(api(server, "/nothing-here")).status_code == 404


def test_rest_and_page_share_one_concurrency_limit(server):
    """With every search slot taken (by the page or anyone), a REST search waits for one."""
    gate = server.service.gate
    held = [gate._slots.acquire(timeout=5) for _ in range(gate.limit)]
    assert all(held)
    done: list[float] = []

    def search():
        httpx.post(
            api(server, "/search?k=1"),
            files={"image": ("me.jpg", jpeg_bytes(3), "image/jpeg")},
            timeout=30,
        )
        done.append(time.monotonic())

    t = threading.Thread(target=search)
    t.start()
    time.sleep(0.8)
    assert not done, "a REST search ran although every slot was taken"
    released = time.monotonic()
    for _ in range(gate.limit):
        gate._slots.release()
    t.join(30)
    assert done and done[0] >= released


# ---------------------------------------------------------------- protection


def test_api_key_guards_the_rest_routes(tmp_path):
    srv = start_server(tmp_path, api_key="s3cret-key", rate_limit=0)
    try:
        photo = {"image": ("me.jpg", jpeg_bytes(5), "image/jpeg")}
        for method, route, kwargs in [
            ("post", "/search", {"files": photo}),
            ("get", "/products/P001", {}),
            ("get", "/health", {}),
        ]:
            r = getattr(httpx, method)(api(srv, route), **kwargs)
            assert r.status_code == 401 and "API key" in r.json()["detail"]
            wrong = getattr(httpx, method)(
                api(srv, route), headers={"X-API-Key": "s3cret-kez"}, **kwargs
            )
            assert wrong.status_code == 401
        ok = httpx.post(api(srv, "/search"), files=photo, headers={"X-API-Key": "s3cret-key"})
        assert ok.status_code == 200 and ok.json()["results"][0]["product_id"] == "P005"
        bearer = httpx.get(api(srv, "/health"), headers={"Authorization": "Bearer s3cret-key"})
        assert bearer.status_code == 200
    finally:
        srv.app.close()


def test_rate_limit_per_client_answers_429_with_retry_after(tmp_path):
    srv = start_server(tmp_path, rate_limit=60, rate_burst=3)
    try:
        codes = [httpx.get(api(srv, "/health")).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        r = httpx.get(api(srv, "/health"))
        assert (
            r.status_code == 429
            and int(r.headers["retry-after"]) >= 1
            and "too many requests" in r.json()["detail"]
        )
    finally:
        srv.app.close()


def test_rate_limiter_refills_and_keeps_clients_apart():
    from vsearch.serve.guard import RateLimiter

    limiter = RateLimiter(per_minute=600, burst=2)  # 10 a second
    assert limiter.check("a") is None and limiter.check("a") is None
    wait = limiter.check("a")
    assert wait is not None and 0 < wait <= 0.1
    assert limiter.check("b") is None  # another client is not affected
    time.sleep(0.12)
    assert limiter.check("a") is None
    assert RateLimiter(per_minute=0, burst=1).check("a") is None  # 0 = off


# ---------------------------------------------------------------- nothing but catalog images


def _probe_urls(base: str, generation: str, secret: Path, image: Path) -> list[str]:
    folder = image.parent
    raw = [str(secret), f"{folder}/../{folder.name}/{secret.name}", f"{image}/../{secret.name}"]
    encoded = [
        quote(str(secret), safe=""),
        f"{folder}/%2e%2e/{folder.name}/{secret.name}",
        quote(f"{image}/../{secret.name}", safe="/"),
        f"{folder}%2F..%2F{folder.name}%2F{secret.name}",
    ]
    urls = []
    for path in raw + encoded:
        urls += [
            f"{base}gradio_api/file={path}",
            f"{base}gradio_api/file/{path}",
            f"{base}file={path}",
        ]
    for tail in [
        f"{generation}/..%2F..%2F{secret.name}",
        f"{generation}/-1",
        f"..%2F{folder.name}/0",
        f"{generation}/0/..%2F..%2F{secret.name}",
        quote(str(secret), safe="") + "/0",
        f"{generation}/{quote(str(secret), safe='')}",
    ]:
        urls.append(f"{base}api/v1/images/{tail}")
    return urls


def _assert_secret_never_served(srv, secret: Path, image: Path) -> None:
    base = srv.url if srv.url.endswith("/") else srv.url + "/"
    for url in _probe_urls(base, srv.index.generation, secret, image):
        r = httpx.get(url)
        assert SECRET not in r.text, f"{url} served the secret"
        assert r.status_code in (400, 403, 404, 422), f"{url} -> {r.status_code}"


def test_secret_next_to_catalog_images_is_not_downloadable(server):
    images = server.root / "shop" / "images"
    secret = images / "secret.txt"
    secret.write_text(SECRET)
    link = images / "link.jpg"
    link.symlink_to(secret)
    try:
        _assert_secret_never_served(server, secret, images / "p003-0.jpg")
        _assert_secret_never_served(server, link, images / "p003-0.jpg")
        _assert_secret_never_served(
            server, server.root / "shop" / "catalog.csv", images / "p003-0.jpg"
        )
    finally:
        link.unlink()
        secret.unlink()


def test_secret_in_a_folder_catalog_and_outside_paths_is_not_downloadable(tmp_path):
    from vsearch.build import build_index
    from vsearch.search import ProductIndex
    from vsearch.serve.ui import create_app, launch_app

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        draw_product(i).save(folder / f"item{i}.jpg")
    (folder / "secret.txt").write_text(SECRET)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    draw_product(7).save(elsewhere / "outside.jpg")
    (elsewhere / "secret.txt").write_text(SECRET)
    shop = tmp_path / "shop"
    shop.mkdir()
    with open(shop / "catalog.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image"])
        w.writerow(["OUT", str(elsewhere / "outside.jpg")])
        w.writerow(["IN", str(folder / "item1.jpg")])
    for catalog, kwargs in [(folder, {}), (shop / "catalog.csv", {"allow_outside_paths": True})]:
        idx = tmp_path / f"index-{catalog.name}"
        build_index(catalog, idx, embedder=FakeEmbedder(), **kwargs)
        index = ProductIndex.load(idx, FakeEmbedder())
        app = create_app(index)
        url = launch_app(app, index, port=free_port())
        try:

            class Srv:
                pass

            srv = Srv()
            srv.url, srv.index = url, index
            image = elsewhere / "outside.jpg" if kwargs else folder / "item1.jpg"
            hit = httpx.post(
                url.rstrip("/") + "/api/v1/search?k=1",
                files={"image": ("q.jpg", image.read_bytes(), "image/jpeg")},
            ).json()["results"][0]
            assert httpx.get(url.rstrip("/") + hit["image_url"]).content == image.read_bytes()
            _assert_secret_never_served(srv, image.parent / "secret.txt", image)
        finally:
            app.close()


# ---------------------------------------------------------------- feedback


def test_feedback_over_rest_is_off_by_default(server):
    r = httpx.post(
        api(server, "/feedback"),
        files={"image": ("me.jpg", jpeg_bytes(5), "image/jpeg")},
        data={"product_id": "P005"},
    )
    assert r.status_code == 404 and "--feedback" in r.json()["detail"]
    assert not (server.root / "index" / "feedback").exists()


def test_feedback_over_rest_records_behind_the_key_and_rate_limited(tmp_path):
    srv = start_server(tmp_path, feedback=True, api_key="k", rate_limit=0)
    try:
        photo = {"image": ("me.jpg", jpeg_bytes(5), "image/jpeg")}
        assert (
            httpx.post(api(srv, "/feedback"), files=photo, data={"product_id": "P005"}).status_code
            == 401
        )
        key = {"X-API-Key": "k"}
        r = httpx.post(api(srv, "/feedback"), files=photo, data={"product_id": "P005"}, headers=key)
        assert r.status_code == 200 and r.json() == {"recorded": True, "product_id": "P005"}
        again = httpx.post(
            api(srv, "/feedback"), files=photo, data={"product_id": "P005"}, headers=key
        )
        assert again.json() == {"recorded": False, "product_id": "P005"}
        unknown = httpx.post(
            api(srv, "/feedback"), files=photo, data={"product_id": "NOPE"}, headers=key
        )
        assert unknown.status_code == 400 and "not in this catalog" in unknown.json()["detail"]
        limited = httpx.post(
            api(srv, "/feedback"),
            files={"image": ("o.jpg", jpeg_bytes(6), "image/jpeg")},
            data={"product_id": "P006"},
            headers=key,
        )
        assert limited.status_code == 429 and "too many" in limited.json()["detail"]
        photos = list((tmp_path / "index" / "feedback" / "photos").glob("*.jpg"))
        assert len(photos) == 1
    finally:
        srv.app.close()


# ---------------------------------------------------------------- catalog changes while serving


def test_rebuilds_go_live_in_the_background_and_broken_ones_are_skipped(tmp_path):
    from test_watcher import corrupt_vectors, publish_copy, wait_for

    from vsearch.build import build_index

    srv = start_server(tmp_path, rate_limit=0)
    try:
        first = srv.index.generation
        photo = {"image": ("me.jpg", jpeg_bytes(5), "image/jpeg")}
        old_hit = httpx.post(api(srv, "/search?k=1"), files=photo).json()["results"][0]
        fns = {f.fn.__name__: f.fn for f in srv.app.fns.values()}
        assert "teapot" not in fns["refresh_catalog"]()[1]["choices"]

        broken = publish_copy(tmp_path / "index", corrupt_vectors)
        assert wait_for(
            lambda: httpx.get(api(srv, "/health")).json()["skipped_generations"] == [broken]
        )
        assert httpx.get(api(srv, "/health")).json()["generation"] == first
        assert (
            httpx.post(api(srv, "/search?k=1"), files=photo).json()["results"][0]["product_id"]
            == "P005"
        )

        shop = tmp_path / "shop"
        extra = [
            {
                "product_id": "T1",
                "image": "images/t1.jpg",
                "title": "Teapot",
                "category": "teapot",
                "price": "150.00",
                "url": "",
                "brand": "",
                "color": "",
            }
        ]
        draw_product(33).save(shop / "images" / "t1.jpg")
        csv_path = write_catalog(shop, extra_rows=extra)
        report = build_index(csv_path, tmp_path / "index", embedder=FakeEmbedder())
        assert wait_for(
            lambda: httpx.get(api(srv, "/health")).json()["generation"] == report.generation
        )
        teapots = httpx.post(api(srv, "/search?category=teapot"), files=photo).json()
        assert [h["product_id"] for h in teapots["results"]] == ["T1"] and teapots[
            "generation"
        ] == report.generation
        header, categories, price = fns["refresh_catalog"]()
        assert "teapot" in categories["choices"] and "13 products, 4 categories" in header
        assert "to 150" in price["info"]
        # an image URL handed out just before the swap still works
        assert httpx.get(srv.url.rstrip("/") + old_hit["image_url"]).status_code == 200
    finally:
        srv.app.close()
