"""Shared fixtures: a deterministic fake embedder, generated catalogs, and isolated user paths."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_sessionstart(session):
    """Tests name the model test-tiny, which only the test suite's own plugin registers."""
    from importlib.metadata import entry_points

    if not any(
        ep.value.split(":")[0] == "vsearch_test_models"
        for ep in entry_points(group="vsearch.models")
    ):
        raise pytest.UsageError(
            "the test model plugin (test-tiny) is not installed: run `make test`, or "
            "pip install -c constraints.txt -e tests/plugins/vsearch_test_models"
        )


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """No test reads the user's settings or reaches a model hub."""
    for name in list(os.environ):
        if name.startswith("VSEARCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")


class FakeEmbedder:
    """Deterministic, fast stand-in for a model: a normalised 8x8 colour thumbnail (192-d).

    Real enough that a resized or re-encoded copy of an image lands next to the original,
    cheap enough for logic tests. Not a user-facing model.
    """

    name = "fake-thumbnail"
    spec = "fake-thumbnail"
    pretrained = None
    dim = 192
    supports_text = False
    input_size = 32
    precision = "fp32"

    def __init__(self, salt: str = ""):
        self.fingerprint = hashlib.sha256(f"fake-thumbnail{salt}".encode()).hexdigest()
        self.batches: list[int] = []

    def preprocess(self, image):
        import torch

        small = image.convert("RGB").resize((8, 8), Image.Resampling.BOX)
        arr = np.asarray(small, dtype=np.float32) / 255.0
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())

    def embed_batch(self, batch):
        self.batches.append(int(batch.shape[0]))
        x = batch.reshape(batch.shape[0], -1).numpy().astype(np.float32)
        x = x - 0.5
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(x)

    def embed_images(self, images):
        import torch

        return self.embed_batch(torch.stack([self.preprocess(i) for i in images]))

    def embed_texts(self, texts):
        from vsearch.errors import ModelError

        raise ModelError("fake-thumbnail is image-only")


class LocatingFake(FakeEmbedder):
    """FakeEmbedder with a 7 x 7 "feature map": each cell is the thumbnail vector of its part of the
    photo (for square photos, where the model's centre crop is the whole photo). Remembers what it
    was asked to embed. For locate (``search(..., locate=True)``) logic tests."""

    can_locate = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def embed_images(self, images):
        self.seen.append(images)
        return super().embed_images(images)

    def embed_images_mapped(self, images):
        def cell(im, r, c):
            side = im.width / 7
            return super(LocatingFake, self).embed_images(
                [
                    im.crop(
                        (
                            round(c * side),
                            round(r * side),
                            round((c + 1) * side),
                            round((r + 1) * side),
                        )
                    )
                ]
            )[0]

        maps = [
            np.stack(
                [np.stack([cell(im, r, c) for c in range(7)], axis=-1) for r in range(7)], axis=-2
            )
            for im in images
        ]
        return super().embed_images(images), np.stack(maps)


@pytest.fixture
def fake_embedder():
    return FakeEmbedder()


PALETTE = [
    (220, 40, 40),
    (40, 160, 60),
    (40, 70, 200),
    (230, 200, 30),
    (150, 60, 180),
    (20, 180, 190),
    (240, 130, 20),
    (90, 90, 90),
    (250, 120, 170),
    (120, 80, 30),
]


def draw_product(index: int, view: int = 0, size: int = 96) -> Image.Image:
    """A distinctive synthetic product: two colours and a shape that depend on index."""
    a = PALETTE[index % len(PALETTE)]
    b = PALETTE[(index * 3 + 1) % len(PALETTE)]
    img = Image.new("RGB", (size, size), (250, 250, 250) if view == 0 else (235, 238, 240))
    d = ImageDraw.Draw(img)
    off = 4 * view
    shape = (index // len(PALETTE)) % 3
    box = (16 + off, 16, size - 16 + off, size - 16)
    if shape == 0:
        d.rectangle(box, fill=a)
    elif shape == 1:
        d.ellipse(box, fill=a)
    else:
        d.polygon(
            [(size // 2 + off, 10), (size - 10 + off, size - 10), (10 + off, size - 10)], fill=a
        )
    d.rectangle((size // 2 - 12 + off, size // 2 - 6, size // 2 + 12 + off, size // 2 + 6), fill=b)
    return img


CATALOG_COLUMNS = ["product_id", "image", "title", "category", "price"]


def write_catalog_rows(folder: Path, rows, header=CATALOG_COLUMNS) -> Path:
    """folder/catalog.csv with these rows (lists in ``header`` order); image files are the
    caller's."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "catalog.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_catalog(
    folder: Path, n_products: int = 12, views: int = 2, extra_rows: list[dict] | None = None
) -> Path:
    """A CSV catalog of synthetic products (some with several views) plus its images."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    categories = ["mug", "shirt", "lamp"]
    for i in range(n_products):
        n_views = views if i % 2 == 0 else 1
        for v in range(n_views):
            name = f"p{i:03d}-{v}.jpg"
            draw_product(i, v).save(images / name, quality=92)
            rows.append(
                {
                    "product_id": f"P{i:03d}",
                    "image": f"images/{name}",
                    "title": f"Product {i}",
                    "category": categories[i % 3],
                    "price": f"{5 + i * 2.5:.2f}",
                    "url": f"https://shop.example/p/{i}",
                    "brand": "Acme" if i % 2 else "Zenith",
                    "color": f"c{i % 4}",
                }
            )
    rows.extend(extra_rows or [])
    path = folder / "catalog.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(
            f,
            fieldnames=[
                "product_id",
                "image",
                "title",
                "category",
                "price",
                "url",
                "brand",
                "color",
            ],
        )
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def catalog_csv(tmp_path) -> Path:
    return write_catalog(tmp_path / "shop")
