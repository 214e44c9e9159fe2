"""Embedders: images (and texts) become unit-length float32 vectors, from the weights the user
named.

The bundled EfficientNet-Lite0 is checked against a real photo (matplotlib's Grace Hopper
sample): a model whose weights silently failed to load would still produce vectors of
the right shape, so only a known classification proves the offline model is real.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vsearch.embedders import (
    DEFAULT_CLIP_ARCH,
    DEFAULT_CLIP_PRETRAINED,
    Embedder,
    bf16_supported,
    load_embedder,
)
from vsearch.errors import ModelError, ModelUnavailableError

MILITARY_UNIFORM = 652  # ImageNet-1k class index


# -- images -----------------------------------------------------------------------------------


def drawn(seed: int, size=(120, 90), mode="RGB") -> Image.Image:
    """A synthetic 'product': coloured shapes on a plain background, different per seed."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(200, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(3):
        w, h = max(size[0] // 2, 16), max(size[1] // 2, 16)
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, w)), y0 + int(rng.integers(10, h))
        fill = tuple(int(c) for c in rng.integers(0, 200, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x1, y1), fill=fill)
    return img.convert(mode)


@pytest.fixture(scope="module")
def grace() -> Image.Image:
    cbook = pytest.importorskip(
        "matplotlib.cbook", reason="matplotlib (test dependency) ships the sample photo"
    )
    try:
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except Exception as e:  # pragma: no cover - stripped matplotlib installs
        pytest.skip(f"matplotlib sample data missing: {e}")
    with Image.open(path) as im:
        return im.convert("RGB")


# -- models (loaded once per module) ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return load_embedder("test-tiny", precision="fp32")


@pytest.fixture(scope="module")
def effnet():
    return load_embedder("efficientnet-lite0", precision="fp32")


def assert_unit_vectors(v: np.ndarray, n: int, dim: int):
    assert v.shape == (n, dim)
    assert v.dtype == np.float32
    assert v.flags.c_contiguous
    assert np.all(np.isfinite(v))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


# -- shapes, dtype, normalisation ---------------------------------------------------------------


def test_tiny_embeds_images_and_texts_as_unit_float32(tiny):
    assert isinstance(tiny, Embedder)
    assert (tiny.name, tiny.dim, tiny.input_size, tiny.supports_text) == ("test-tiny", 32, 64, True)
    images = [drawn(1), drawn(2, size=(40, 300)), drawn(3, mode="L"), drawn(4, mode="RGBA")]
    assert_unit_vectors(tiny.embed_images(images), 4, 32)
    assert_unit_vectors(tiny.embed_texts(["red mug", "blue shirt with stripes"]), 2, 32)
    assert tiny.embed_images([]).shape == (0, 32)


def test_effnet_embeds_images_as_unit_float32(effnet):
    assert (effnet.name, effnet.dim, effnet.input_size) == ("efficientnet-lite0", 1280, 224)
    assert effnet.supports_text is False
    assert_unit_vectors(effnet.embed_images([drawn(1), drawn(2, size=(30, 500))]), 2, 1280)


def test_preprocess_then_embed_batch_equals_embed_images(tiny):
    import torch

    images = [drawn(s) for s in range(4)]
    batch = torch.stack([tiny.preprocess(im) for im in images])
    assert batch.dtype == torch.float32 and tuple(batch.shape) == (4, 3, 64, 64)
    np.testing.assert_allclose(tiny.embed_batch(batch), tiny.embed_images(images), atol=1e-6)


def test_preprocess_in_worker_threads_while_embedding(effnet):
    """The build pipeline decodes/preprocesses in threads while the main thread embeds."""
    import torch

    images = [drawn(s) for s in range(8)]
    expected = effnet.embed_images(images)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            effnet.preprocess(drawn(99))

    with ThreadPoolExecutor(3) as pool:
        background = pool.submit(churn)
        tensors = list(pool.map(effnet.preprocess, images))
        got = effnet.embed_batch(torch.stack(tensors))
        stop.set()
        background.result()
    np.testing.assert_allclose(got, expected, atol=1e-5)


# -- determinism and fingerprints
# -------------------------------------------------------------------


def test_tiny_is_deterministic_and_leaves_global_rng_alone(tiny):
    import torch

    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    again = load_embedder("test-tiny", precision="fp32")
    assert torch.equal(torch.rand(3), expected_next)

    images = [drawn(s) for s in range(3)]
    a, b = tiny.embed_images(images), again.embed_images(images)
    np.testing.assert_array_equal(a, b)
    assert again.fingerprint == tiny.fingerprint
    assert float(a[0] @ a[1]) < 0.9999  # different images give different vectors


def test_fingerprints_are_stable_and_tell_models_apart(tiny, effnet):
    from vsearch.embedders.efficientnet import EfficientNetEmbedder

    assert load_embedder("efficientnet-lite0", precision="fp32").fingerprint == effnet.fingerprint
    gem = EfficientNetEmbedder(pooling="gem", precision="fp32")
    assert gem.fingerprint != effnet.fingerprint
    assert len({tiny.fingerprint, effnet.fingerprint, gem.fingerprint}) == 3
    # precision never changes the fingerprint: bf16 and fp32 vectors share caches
    assert load_embedder("test-tiny", precision="auto").fingerprint == tiny.fingerprint
    # and GeM pooling really produces different vectors
    img = [drawn(5)]
    assert float(gem.embed_images(img)[0] @ effnet.embed_images(img)[0]) < 0.999


def test_unknown_pooling_is_refused():
    from vsearch.embedders.efficientnet import EfficientNetEmbedder

    with pytest.raises(ModelError, match="avg, gem"):
        EfficientNetEmbedder(pooling="max")


# -- text support -------------------------------------------------------------------------------


def test_image_only_model_refuses_text_with_a_clear_error(effnet):
    with pytest.raises(ModelError, match="efficientnet-lite0 is image-only"):
        effnet.embed_texts(["red mug"])


def test_text_and_image_vectors_share_a_space(tiny):
    v = np.vstack([tiny.embed_texts(["a mug"]), tiny.embed_images([drawn(0)])])
    assert v.shape == (2, 32)  # same dim, so text queries can search an image index


# -- the offline model's weights are real
# -----------------------------------------------------------


def test_effnet_weights_classify_grace_hopper_as_military_uniform(effnet, grace):
    import timm
    import torch

    from vsearch.embedders.efficientnet import TIMM_ARCH

    probs = effnet.classify([grace])[0]
    assert probs.shape == (1000,)
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert probs[MILITARY_UNIFORM] > 0.3  # measured 0.42

    # The same check on an untrained network fails: it is the weights that pass it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random_net = timm.create_model(TIMM_ARCH, pretrained=False).eval()
    with torch.inference_mode():
        random_probs = random_net(effnet.preprocess(grace)[None]).softmax(-1)[0].numpy()
    assert int(random_probs.argmax()) != MILITARY_UNIFORM
    assert random_probs[MILITARY_UNIFORM] < 0.05


def test_effnet_finds_the_same_photo_across_crops_and_sizes(effnet, grace):
    w, h = grace.size
    crop = grace.crop((w // 10, h // 12, w - w // 10, h - h // 20))
    small = grace.resize((w // 3, h // 3), Image.Resampling.BILINEAR)
    other = drawn(7, size=(300, 300))
    v = effnet.embed_images([grace, crop, small, other])
    same = [float(v[0] @ v[1]), float(v[0] @ v[2]), float(v[1] @ v[2])]
    different = [float(v[i] @ v[3]) for i in range(3)]
    assert min(same) > 0.8
    assert min(same) > max(different) + 0.3


def test_effnet_multilayer_read_out_adds_the_last_stage_and_still_retrieves(effnet, grace):
    """ ":ml" appends the 320-d last-stage mean at weight 0.5; the head part is the plain vector."""
    from vsearch.embedders.efficientnet import ML_WEIGHT, parse_efficientnet_spec

    assert parse_efficientnet_spec("efficientnet-lite0:ml") == parse_efficientnet_spec(
        "efficientnet-lite0:avg+ml"
    )
    assert parse_efficientnet_spec("efficientnet-lite0:gem-ms+ml")["multilayer"] is True
    with pytest.raises(ModelError, match=r"\+ml"):
        parse_efficientnet_spec("efficientnet-lite0:ml+gem")
    ml = load_embedder("efficientnet-lite0:ml", precision="fp32")
    assert (ml.dim, ml.spec) == (1600, "efficientnet-lite0:avg+ml")
    # index reload round-trips
    assert load_embedder(ml.spec, precision="fp32").fingerprint == ml.fingerprint
    assert ml.fingerprint != effnet.fingerprint and ml.fingerprint.startswith(effnet.fingerprint)

    w, h = grace.size
    crop = grace.crop((w // 10, h // 12, w - w // 10, h - h // 20))
    images = [grace, crop, drawn(7, size=(300, 300))]
    v, plain = ml.embed_images(images), effnet.embed_images(images)
    assert_unit_vectors(v, 3, 1600)
    # the head part is the plain descriptor, scaled by the concatenation's norm
    norm = float(np.sqrt(1 + ML_WEIGHT**2))
    np.testing.assert_allclose(v[:, :1280] * norm, plain, atol=1e-4)
    assert np.linalg.norm(v[:, 1280:], axis=1).min() > 0.4  # the stage part is really there
    assert float(v[0] @ v[1]) > 0.8 and float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


def test_map_windows_and_the_photo_region_each_one_sees():
    from vsearch import locate

    fmap = np.full((8, 7, 7), 0.1, dtype=np.float32)
    fmap[:, 4:7, 1:4] = 1.0  # an object in the lower left
    vectors, boxes = locate.window_vectors(fmap)
    assert len(boxes) == 25 + 16 + 9 and vectors.shape == (50, 8)
    np.testing.assert_allclose(
        vectors[boxes.index((2, 7, 0, 5))], fmap[:, 2:7, 0:5].mean(axis=(1, 2)), rtol=1e-6
    )
    # the window exactly on it is the most active
    assert boxes[int(np.argmax(vectors[:, 0]))] == (4, 7, 1, 4)
    # a map smaller than every window: the whole map
    assert locate.window_vectors(fmap[:, :2, :2])[1] == [(0, 2, 0, 2)]
    # 800 x 600 photo: the model sees its centre 600 x 600 (x from 100), at 224 px, 32 px a cell
    scale = 224 / 600
    left, top, right, bottom = locate.photo_region((800, 600), (2, 5, 2, 5), 7, 224)
    # square, 1.5 x the window
    assert (right - left) == (bottom - top) == round(3 * 32 * 1.5 / scale)
    # centre cell -> photo centre
    assert abs((left + right) / 2 - 400) <= 1 and abs((top + bottom) / 2 - 300) <= 1
    left, top, right, bottom = locate.photo_region((800, 600), (0, 3, 0, 3), 7, 224)
    # shifted down into the photo, not cut
    assert (left, top) == (round(48 / scale + 100 - (right - left) / 2), 0)
    # never larger than the photo
    assert locate.photo_region((300, 300), (0, 7, 0, 7), 7, 224) == (0, 0, 300, 300)
    assert locate.load_side(224) == 349  # the smallest close-up (3 cells + margin) still has 224 px


def _on_a_table(photo: Image.Image, corner: tuple[int, int]) -> Image.Image:
    """photo, small, in one corner of a plain table with a pen lying in the opposite one."""
    scene = Image.new("RGB", (448, 448), (196, 180, 160))
    x, y = corner
    ImageDraw.Draw(scene).line(
        (448 - x - 120, 448 - y - 40, 448 - x - 60, 448 - y - 20), fill=(40, 60, 160), width=6
    )
    scene.paste(photo.resize((176, 208)), corner)
    return scene


def test_effnet_finds_a_small_product_and_its_close_up_is_nearer_the_product(effnet, grace):
    """From one forward pass: the full vector (the plain one) and the feature map. The map window
    that best matches the product alone lies on its side of the table, and the photo cut there
    (vsearch.locate) is far nearer the product than the whole photo is."""
    from vsearch import locate

    target = effnet.embed_images([grace])[0]
    corners = ((256, 16), (16, 224))  # top right, bottom left
    scenes = [_on_a_table(grace, corner) for corner in corners]
    full, maps = effnet.embed_images_mapped(scenes)
    np.testing.assert_allclose(full, effnet.embed_images(scenes), atol=1e-5)
    assert maps.shape == (2, 1280, 7, 7) and maps.dtype == np.float32
    close_ups = []
    for scene, fmap, (x, y) in zip(scenes, maps, corners):
        vectors, boxes = locate.window_vectors(fmap)
        r0, r1, c0, c1 = boxes[int(np.argmax(vectors @ target / np.linalg.norm(vectors, axis=1)))]
        # the window's centre, in scene pixels
        cx, cy = (c0 + c1) / 2 * 448 / 7, (r0 + r1) / 2 * 448 / 7
        # on the product (176 x 208 at x, y)
        assert abs(cx - (x + 88)) < 120 and abs(cy - (y + 104)) < 120
        close_ups.append(
            scene.crop(locate.photo_region(scene.size, (r0, r1, c0, c1), 7, effnet.input_size))
        )
    zoomed = effnet.embed_images(close_ups)
    assert (zoomed @ target > full @ target + 0.05).all()
    ml = load_embedder("efficientnet-lite0:ml", precision="fp32")
    with pytest.raises(ModelError, match="locat"):
        ml.embed_images_mapped(scenes[:1])


def test_bundled_weights_with_wrong_shapes_are_refused(tmp_path):
    import torch

    from vsearch.embedders.efficientnet import EfficientNetEmbedder, weights_path

    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    key = next(iter(state))
    state[key] = torch.zeros(8, 3, 3, 3)
    bad = tmp_path / "lite0.pth"
    torch.save(state, bad)
    with pytest.raises(ModelError, match=r"tensor #0 .*\(8, 3, 3, 3\)"):
        EfficientNetEmbedder(weights=str(bad), precision="fp32")


# -- precision
# ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bf16")
def test_bf16_vectors_match_fp32(tiny, effnet, grace):
    bf_tiny = load_embedder("test-tiny", precision="bf16")
    assert bf_tiny.precision == "bf16"
    synthetic = [drawn(s) for s in range(4)]
    cos = np.sum(bf_tiny.embed_images(synthetic) * tiny.embed_images(synthetic), axis=1)
    assert cos.min() >= 0.999
    texts = ["red mug", "striped shirt"]
    assert np.sum(bf_tiny.embed_texts(texts) * tiny.embed_texts(texts), axis=1).min() >= 0.999

    # EfficientNet: bf16 only on request ("auto" stays fp32); on photos it keeps the promise.
    assert load_embedder("efficientnet-lite0").precision == "fp32"
    bf_eff = load_embedder("efficientnet-lite0", precision="bf16")
    assert bf_eff.precision == "bf16" and bf_eff.fingerprint == effnet.fingerprint
    w, h = grace.size
    photos = [
        grace,
        grace.crop((0, 0, w, h // 2)),
        grace.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    ]
    cos = np.sum(bf_eff.embed_images(photos) * effnet.embed_images(photos), axis=1)
    assert cos.min() >= 0.999


def test_precision_is_validated(monkeypatch):
    import vsearch.embedders.precision as precision

    with pytest.raises(ModelError, match="auto, fp32, bf16"):
        load_embedder("test-tiny", precision="fp16")
    monkeypatch.setattr(precision, "bf16_supported", lambda: False)
    with pytest.raises(ModelError, match="lacks native bf16"):
        load_embedder("test-tiny", precision="bf16")
    assert load_embedder("test-tiny", precision="auto").precision == "fp32"


# -- names and weights
# ----------------------------------------------------------------------------------


def test_unknown_model_name_says_what_is_accepted():
    with pytest.raises(ModelError) as err:
        load_embedder("resnet-9000")
    msg = str(err.value)
    assert (
        "'resnet-9000'" in msg and "efficientnet-lite0" in msg and "open_clip.list_models()" in msg
    )
    with pytest.raises(ModelError, match="Did you mean ViT-B-32"):
        load_embedder("vit-b-32")


def test_unknown_pretrained_tag_lists_the_tags():
    with pytest.raises(ModelError, match=DEFAULT_CLIP_PRETRAINED) as err:
        load_embedder("clip", pretrained="no-such-tag")
    assert "no-such-tag" in str(err.value)
    assert not isinstance(err.value, ModelUnavailableError)


def test_clip_without_weights_fails_fast_with_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        load_embedder("clip")
    assert time.monotonic() - start < 10
    msg = str(err.value)
    for remedy in ("--pretrained /path/to/checkpoint.bin", "HF_HOME", "--model efficientnet-lite0"):
        assert remedy in msg
    assert f"{DEFAULT_CLIP_ARCH}/{DEFAULT_CLIP_PRETRAINED}" in msg


def test_unreachable_hub_fails_fast_without_offline_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="127.0.0.1:9"):
        load_embedder("hf-hub:some-org/some-clip")
    assert time.monotonic() - start < 10


def _save_tiny_checkpoint(tiny, folder: Path) -> Path:
    import torch
    from vsearch_test_models.tiny import build_tiny_model

    path = folder / "tiny_clip.bin"
    torch.save(build_tiny_model().state_dict(), path)
    return path


def test_local_checkpoint_gives_the_same_vectors(tiny, tmp_path):
    import open_clip
    from vsearch_test_models.tiny import TINY_ARCH, TINY_MODEL_CFG

    config = tmp_path / f"{TINY_ARCH}.json"
    config.write_text(json.dumps(TINY_MODEL_CFG))
    open_clip.add_model_config(config)
    ckpt = _save_tiny_checkpoint(tiny, tmp_path)

    loaded = load_embedder(TINY_ARCH, pretrained=str(ckpt), precision="fp32")
    images, texts = [drawn(s) for s in range(3)], ["red mug", "lamp"]
    np.testing.assert_allclose(loaded.embed_images(images), tiny.embed_images(images), atol=1e-6)
    np.testing.assert_allclose(loaded.embed_texts(texts), tiny.embed_texts(texts), atol=1e-6)
    assert str(ckpt) in loaded.name
    again = load_embedder(f"clip:{TINY_ARCH}", pretrained=str(ckpt), precision="fp32")
    assert again.fingerprint == loaded.fingerprint

    other = tmp_path / "other.bin"
    state = open_clip.model.CLIP(**TINY_MODEL_CFG).state_dict()  # fresh random weights
    import torch

    torch.save(state, other)
    assert load_embedder(TINY_ARCH, pretrained=str(other)).fingerprint != loaded.fingerprint

    with pytest.raises(ModelError, match="does-not-exist.bin"):
        load_embedder(TINY_ARCH, pretrained=str(tmp_path / "does-not-exist.bin"))


def _fake_hub_cache(root: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """The layout huggingface_hub leaves behind: blobs, a snapshot of symlinks, refs/main."""
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)


def test_hf_hub_model_loads_from_the_cache_offline(tiny, tmp_path, monkeypatch):
    from vsearch_test_models.tiny import TINY_MODEL_CFG

    ckpt = _save_tiny_checkpoint(tiny, tmp_path)
    config = json.dumps({"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": {}}).encode()
    _fake_hub_cache(
        tmp_path / "hf",
        "shop-org/tiny-clip",
        {"open_clip_config.json": config, "open_clip_pytorch_model.bin": ckpt.read_bytes()},
    )
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    loaded = load_embedder("hf-hub:shop-org/tiny-clip", precision="fp32")
    assert loaded.name == "clip:hf-hub:shop-org/tiny-clip"
    images = [drawn(s) for s in range(2)]
    np.testing.assert_allclose(loaded.embed_images(images), tiny.embed_images(images), atol=1e-6)
    np.testing.assert_allclose(loaded.embed_texts(["mug"]), tiny.embed_texts(["mug"]), atol=1e-6)
    assert load_embedder("clip:hf-hub:shop-org/tiny-clip").fingerprint == loaded.fingerprint
