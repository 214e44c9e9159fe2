"""The feedback loop: "This is it" records a photo and product (opt-in, bounded, rate-limited), and
`vsearch feedback export` turns the records into a pairs CSV for a person to review."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
from conftest import draw_product
from PIL import Image

from vsearch.cli import main
from vsearch.errors import FeedbackError
from vsearch.serve.feedback import FeedbackStore


def phone_photo(tmp_path: Path, product: int, name: str = "photo.jpg") -> Path:
    path = tmp_path / name
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # camera make: must not be kept
    draw_product(product, size=96).resize((1600, 1600)).save(path, quality=85, exif=exif)
    return path


def read_pairs(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_a_confirmation_is_stored_once_content_addressed_small_and_without_exif(tmp_path):
    store = FeedbackStore(tmp_path / "idx")
    conf, new = store.record(phone_photo(tmp_path, 3), "P003", generation="gen-1")
    assert new and conf.product_id == "P003" and conf.generation == "gen-1"
    stored = store.photos / conf.photo
    assert conf.photo == hashlib.sha256(stored.read_bytes()).hexdigest() + ".jpg"
    with Image.open(stored) as im:
        assert max(im.size) == 1024 and not im.getexif()
    again, new = store.record(phone_photo(tmp_path, 3, "copy.jpg"), "P003")
    assert not new and again == conf
    # same photo, another product: a second record
    other, new = store.record(phone_photo(tmp_path, 3), "P004")
    assert new and other.photo == conf.photo
    assert len(list(store.photos.iterdir())) == 1 and len(store.confirmations()) == 2


def test_the_folder_is_bounded_in_count_and_bytes(tmp_path):
    store = FeedbackStore(tmp_path / "idx", max_confirmations=2)
    store.record(phone_photo(tmp_path, 1), "P001")
    store.record(phone_photo(tmp_path, 2), "P002")
    with pytest.raises(
        FeedbackError, match=r"is full \(2 confirmations\).*vsearch feedback export"
    ):
        store.record(phone_photo(tmp_path, 3), "P003")
    one = FeedbackStore(tmp_path / "probe").record(phone_photo(tmp_path, 1), "P001")[0]
    size = (tmp_path / "probe" / "feedback" / "photos" / one.photo).stat().st_size
    small = FeedbackStore(tmp_path / "idx2", max_bytes=size + 100)
    small.record(phone_photo(tmp_path, 1), "P001")
    with pytest.raises(FeedbackError, match="MiB of photos"):
        small.record(phone_photo(tmp_path, 2), "P002")
    assert len(small.confirmations()) == 1
    # a fresh store object (a restarted server) counts what is already there
    with pytest.raises(FeedbackError, match="is full"):
        FeedbackStore(tmp_path / "idx", max_confirmations=2).record(
            phone_photo(tmp_path, 4), "P004"
        )


def test_bad_input_is_refused_readably(tmp_path):
    store = FeedbackStore(tmp_path / "idx")
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a photo")
    with pytest.raises(FeedbackError, match="not a recognised image"):
        store.record(bogus, "P001")
    with pytest.raises(FeedbackError, match="product id must be 1 to 200 characters"):
        store.record(phone_photo(tmp_path, 1), "  ")
    assert store.confirmations() == []


def test_export_writes_a_reviewable_pairs_csv(tmp_path, capsys):
    idx = tmp_path / "idx"
    assert main(["feedback", "export", "--index", str(idx)]) == 1
    assert "no confirmed matches" in capsys.readouterr().err
    store = FeedbackStore(idx)
    store.record(phone_photo(tmp_path, 1), "P001")
    store.record(phone_photo(tmp_path, 2), "P002")
    store.record(phone_photo(tmp_path, 1), "P001")  # a duplicate click

    assert main(["feedback", "export", "--index", str(idx)]) == 0
    out = capsys.readouterr().out
    default = idx / "feedback" / "pairs.csv"
    assert f"wrote 2 confirmed pair(s) to {default}" in out and "--train-pairs" in out
    rows = read_pairs(default)
    assert [r["product_id"] for r in rows] == ["P001", "P002"] and list(rows[0]) == [
        "image",
        "product_id",
    ]
    assert all(
        r["image"].startswith("photos/") and (default.parent / r["image"]).is_file() for r in rows
    )

    elsewhere = tmp_path / "review" / "pairs.csv"
    assert main(["feedback", "export", "--index", str(idx), "-o", str(elsewhere)]) == 0
    rows = read_pairs(elsewhere)
    assert all(Path(r["image"]).is_absolute() and Path(r["image"]).is_file() for r in rows)


# ---------------------------------------------------------------- the button, through gradio_client


def test_this_is_it_button_records_the_photo_as_cropped(tmp_path):
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file
    from test_ui import shopper_photo, start_server, two_product_photo

    from vsearch.serve.guard import RateLimiter

    srv = start_server(tmp_path / "srv", feedback=True)
    srv.service.feedback_limiter = RateLimiter(per_minute=600, burst=100)
    try:
        client = Client(srv.url, verbose=False)
        photo = handle_file(shopper_photo(tmp_path, 5))
        assert (
            client.predict(photo, 0, 0, 0, 0, "P005", api_name="/this_is_it")
            == "✅ Thank you - recorded for the shop to review."
        )
        assert (
            client.predict(photo, 0, 0, 0, 0, "P005", api_name="/this_is_it")
            == "✅ Already recorded - thank you."
        )
        shelf = handle_file(two_product_photo(tmp_path))
        assert client.predict(shelf, 0, 0, 50, 0, "P003", api_name="/this_is_it").startswith(
            "✅ Thank you"
        )
        assert (
            client.predict(photo, 0, 0, 0, 0, "NOPE", api_name="/this_is_it")
            == "⚠️ Not recorded: product 'NOPE' is not in this catalog"
        )
        assert (
            client.predict(photo, 0, 0, 0, 0, "", api_name="/this_is_it")
            == "Search with a photo and open a result first."
        )
        store = FeedbackStore(srv.root / "index")
        confs = store.confirmations()
        assert [c.product_id for c in confs] == ["P005", "P003"]
        assert {c.generation for c in confs} == {srv.index.generation}
        with Image.open(store.photos / confs[1].photo) as im:
            # the left half of the 384x192 shelf photo: what was searched
            assert im.size == (192, 192)
        # every click counts against the client's limit: the default allows a few a minute
        srv.service.feedback_limiter = RateLimiter(per_minute=6, burst=1)
        assert client.predict(photo, 0, 0, 0, 0, "P005", api_name="/this_is_it").startswith("✅")
        assert "too many" in client.predict(photo, 0, 0, 0, 0, "P005", api_name="/this_is_it")
    finally:
        srv.app.close()


def test_without_feedback_there_is_no_button_and_nothing_is_recorded(tmp_path):
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file
    from test_ui import shopper_photo, start_server

    srv = start_server(tmp_path / "srv")
    try:
        client = Client(srv.url, verbose=False)
        with pytest.raises(Exception, match="this_is_it"):
            client.predict(
                handle_file(shopper_photo(tmp_path, 5)), 0, 0, 0, 0, "P005", api_name="/this_is_it"
            )
        assert "This is it" not in str(srv.app.config)
        assert not (srv.root / "index" / "feedback").exists()
    finally:
        srv.app.close()
