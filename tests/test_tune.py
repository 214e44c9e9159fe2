"""`vsearch tune`: the tuned model is stored (safetensors, fingerprinted), used by the next build
and loaded by search and the REST API; it resumes after SIGKILL; validation photos keep their
near-duplicates out of training; a tune that does not help is not kept; CLIP keeps its text tower.

The model is test-tiny (a random open_clip model), so these test plumbing and safety, not quality;
tests/test_quality_shared.py checks that tuning helps the real offline model on real photos.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_product
from PIL import Image

from vsearch.errors import VsearchError
from vsearch.store import generations as store

REPO = Path(__file__).resolve().parents[1]


def write_shop(folder: Path, n: int = 16) -> Path:
    """Products with two clearly different photos (not near-duplicates), a quarter single-photo."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        draw_product(i, 0, 128).save(images / f"p{i}-0.jpg", quality=92)
        rows.append([f"P{i:03d}", f"images/p{i}-0.jpg", f"Product {i}"])
        if i % 4 != 3:
            draw_product(i, 1, 128).rotate(90).crop((20, 0, 128, 110)).save(
                images / f"p{i}-1.jpg", quality=92
            )
            rows.append([f"P{i:03d}", f"images/p{i}-1.jpg", f"Product {i}"])
    path = folder / "catalog.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title"])
        w.writerows(rows)
    return path


def build(catalog: Path, index: Path, **kw):
    from vsearch.build import build_index

    return build_index(
        catalog, index, model="test-tiny", adapt="off", calibrate_threshold=False, **kw
    )


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A test-tiny index of a small shop, tuned (last image block only) and built again with it."""
    from vsearch.learn.tune import tune_index

    root = tmp_path_factory.mktemp("tune")
    catalog = write_shop(root / "shop")
    index = root / "index"
    base = build(catalog, index)
    report = tune_index(index, stages=1, views=2, max_steps=8, validate_every=4, patience=100)
    return {"root": root, "catalog": catalog, "index": index, "base": base, "report": report}


def test_tuned_weights_are_stored_fingerprinted_and_used_by_build_search_and_rest(tuned):
    from safetensors.torch import load_file

    from vsearch.embeddings.tuned_model import read_record, weights_digest
    from vsearch.search import ProductIndex
    from vsearch.serve.api import create_rest_app
    from vsearch.serve.service import ServeSettings, Service

    index, report, base = tuned["index"], tuned["report"], tuned["base"]
    assert report.finished and report.kept, report.reason
    record = read_record(index)
    path = index / "tuned" / record["weights"]
    raw = path.read_bytes()
    assert raw[8:9] == b"{" and b"PK\x03\x04" not in raw[:4]  # safetensors header, not a zip/pickle
    digest = weights_digest(load_file(str(path)))
    assert record["digest"] == digest and path.name == f"{digest[:16]}.safetensors"
    base_fp = base.embedder.fingerprint
    assert record["fingerprint"] == f"{base_fp}:tuned={digest[:16]}" == report.fingerprint
    assert not (index / ".tune-work").exists()  # work files go when done

    again = build(tuned["catalog"], index)
    assert again.embedded == again.images and again.reused == 0  # every image embedded once more
    manifest = store.read_manifest(index / store.read_current(index))
    assert manifest["model"]["fingerprint"] == record["fingerprint"]
    assert manifest["model"]["tuned"]["weights"] == record["weights"]

    live = ProductIndex.load(index)  # what search, serve and the REST API load
    assert live.embedder.fingerprint == record["fingerprint"]
    photo = Image.open(tuned["catalog"].parent / "images" / "p2-0.jpg").convert("RGB")
    v_tuned = live.embedder.embed_images([photo])
    v_base = base.embedder.embed_images([photo])
    assert float(v_tuned[0] @ v_base[0]) < 0.9999
    hits = live.search(image=photo, k=3)
    from fastapi.testclient import TestClient

    client = TestClient(create_rest_app(Service(live, ServeSettings())))
    body = client.post(
        "/search?k=3",
        files={
            "image": (
                "q.jpg",
                (tuned["catalog"].parent / "images" / "p2-0.jpg").read_bytes(),
                "image/jpeg",
            )
        },
    ).json()
    assert [h["product_id"] for h in body["results"]] == [h.product_id for h in hits]

    # a small catalog change later: the tuned model stays, only the new photo is embedded
    grown = tuned["catalog"].parent / "grown.csv"
    # unlike any shop photo
    draw_product(17, 0, 128).rotate(45).save(
        tuned["catalog"].parent / "images" / "new.jpg", quality=92
    )
    grown.write_text(tuned["catalog"].read_text() + "P900,images/new.jpg,New product\n")
    later = build(grown, index)
    assert later.embedded == 1 and later.embedder.fingerprint == record["fingerprint"]

    off = build(tuned["catalog"], index, tuned="off")
    assert off.reused == off.images  # the base vectors were still in the cache
    assert off.embedder.fingerprint == base_fp
    live = ProductIndex.load(index)
    assert live.embedder.fingerprint == base_fp
    assert np.allclose(live.embedder.embed_images([photo]), v_base, atol=1e-6)


def test_clip_tune_changes_only_the_chosen_image_blocks_and_keeps_text_vectors(tuned):
    from vsearch.embedders import load_embedder
    from vsearch.embeddings.tuned_model import apply_tuned, read_record

    base = load_embedder("test-tiny", precision="fp32")
    tuned_model = apply_tuned(
        load_embedder("test-tiny", precision="fp32"), tuned["index"], read_record(tuned["index"])
    )
    a, b = base.model.state_dict(), tuned_model.model.state_dict()
    changed = {k for k in a if not np.array_equal(a[k].numpy(), b[k].numpy())}
    assert changed, "the tune changed nothing"
    # stages=1 of 2 blocks
    allowed = ("visual.transformer.resblocks.1.", "visual.ln_post.", "visual.proj")
    assert all(k.startswith(allowed) for k in changed), sorted(changed)
    assert any(k.startswith("visual.transformer.resblocks.1.") for k in changed)
    texts = ["a red mug", "blue lamp"]
    assert np.array_equal(base.embed_texts(texts), tuned_model.embed_texts(texts))


def test_gc_deletes_tuned_weights_nothing_uses(tuned):
    from vsearch.embeddings.tuned_model import read_record
    from vsearch.store.gc import collect_garbage

    folder = tuned["index"] / "tuned"
    current = read_record(tuned["index"])["weights"]
    stray = folder / "0123456789abcdef.safetensors"
    stray.write_bytes((folder / current).read_bytes())
    report = collect_garbage(tuned["index"])
    assert report.tuned_files == 1 and not stray.exists() and (folder / current).exists()


def test_killed_tune_resumes_from_its_checkpoint_while_the_index_keeps_serving(tmp_path):
    from vsearch.learn.tune import WORK_DIR, tune_index
    from vsearch.search import ProductIndex

    catalog = write_shop(tmp_path / "shop")
    index = tmp_path / "index"
    build(catalog, index)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vsearch",
            "tune",
            "--index",
            str(index),
            "--quiet",
            "--stages",
            "1",
            "--views",
            "2",
            "--max-steps",
            "400",
            "--validate-every",
            "1",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    ckpt = index / WORK_DIR / "checkpoint.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.exists() and json.loads(ckpt.read_text() or "{}").get("step", 0) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = json.loads(ckpt.read_text())["step"]
    assert killed_at >= 2
    photo = catalog.parent / "images" / "p1-0.jpg"
    assert ProductIndex.load(index).search(image=photo, k=1)  # serving never stopped

    seen: list[tuple[str, int, int]] = []
    report = tune_index(
        index,
        stages=1,
        views=2,
        max_steps=killed_at + 2,
        validate_every=1,
        patience=100,
        progress=lambda phase, done, total: seen.append((phase, done, total)),
    )
    assert report.resumed and report.finished
    assert report.steps == killed_at + 2
    cache = [s for s in seen if s[0] == "cache"]
    assert cache[0][1] == cache[0][2]  # every view was still cached: none computed again
    # went on from the checkpoint, not from step 0
    assert [s for s in seen if s[0] == "train"][0][1] == killed_at
    assert not (index / WORK_DIR).exists()
    assert (index / "tuned" / "latest.json").exists()


def test_validation_photos_take_their_near_duplicates_out_of_training(tmp_path):
    from vsearch.catalog.hygiene import fingerprint_file, near_identical_pairs
    from vsearch.learn.tune import split_views

    catalog = write_shop(tmp_path / "shop", n=24)
    items = []
    with open(catalog, newline="") as f:
        for r in csv.DictReader(f):
            items.append([str(catalog.parent / r["image"]), r["product_id"], r["image"], False])
    # every photo re-saved smaller and recompressed, under the same product or under another
    for i, it in enumerate(list(items)):
        copy = Path(it[0]).with_name(Path(it[0]).stem + "-copy.jpg")
        im = Image.open(it[0])
        im.resize((im.width * 9 // 10, im.height * 9 // 10)).save(copy, quality=70)
        items.append(
            [str(copy), it[1] if i % 3 else items[(i + 2) % len(items)][1], f"copy{i}", False]
        )
    plan = split_views(items, seed=3)
    assert len(plan["val"]) >= 3
    prints = [fingerprint_file(it[0]) for it in items]
    near = {(i, j) for i, j, _ in near_identical_pairs(prints)}
    train = set(plan["train"])
    for q in plan["val"]:
        assert q not in train
        dups = {j for i, j in near if i == q} | {i for i, j in near if j == q}
        assert not dups & train, (
            f"near-duplicates {dups & train} of validation photo {q} are trained on"
        )
    # each has copies
    assert all({j for i, j in near if i == q} | {i for i, j in near if j == q} for q in plan["val"])


def test_held_out_shopper_sessions_stay_out_of_training(tmp_path):
    """One packshot per product (grocery-like): validation comes from confirmed shopper photos, a
    whole near-duplicate session at a time, and the product's packshot stays in the gallery."""
    from vsearch.learn.tune import split_views

    catalog = write_shop(tmp_path / "shop", n=12)
    items, sessions = [], {}
    with open(catalog, newline="") as f:
        for r in csv.DictReader(f):
            if r["image"].endswith("-0.jpg"):
                items.append([str(catalog.parent / r["image"]), r["product_id"], r["image"], False])
    for p in range(12):
        for s in range(3):  # three sessions of two photos each
            for k in range(2):
                path = tmp_path / f"pair-{p}-{s}-{k}.jpg"
                draw_product(p, 1, 128).rotate(30 * s + 7 * k + 11).save(path, quality=80)
                sessions[len(items)] = p * 10 + s
                items.append([str(path), f"P{p:03d}", "", True])
    plan = split_views(items, seed=1, sessions=sessions)
    val, train = set(plan["val"]), set(plan["train"])
    # no product has two packshots: only shopper photos validate
    assert val and all(items[i][3] for i in val)
    held_sessions = {sessions[i] for i in val}
    assert len({items[i][1] for i in val}) >= 3
    for i in range(len(items)):
        if i in sessions and sessions[i] in held_sessions:
            assert i in val and i not in train, f"photo {i} of a held-out session is trained on"
    packshots = {items[i][1] for i in train if not items[i][3]}
    assert {items[i][1] for i in val} <= packshots  # each held-out product can still be found


def test_a_tune_that_does_not_help_is_not_kept_and_info_says_why(tmp_path, monkeypatch, capsys):
    import vsearch.learn.tune as tune
    import vsearch.learn.tune_train as tune_train
    from vsearch.cli import main

    catalog = write_shop(tmp_path / "shop")
    index = tmp_path / "index"
    base = build(catalog, index)
    # validation that never improves: the trained weights do no better than the base model
    monkeypatch.setattr(
        tune_train,
        "_validate",
        lambda *a, **k: {"held_out_r1": 0.5, "augmented_r1": 0.25, "score": 0.375},
    )
    report = tune.tune_index(index, stages=1, views=1, max_steps=4, validate_every=2, patience=100)
    assert report.finished and not report.kept and "did not beat the base model" in report.reason
    assert not (index / "tuned" / "CURRENT.json").exists() and not list(
        (index / "tuned").glob("*.safetensors")
    )
    again = build(catalog, index)
    assert again.embedder.fingerprint == base.embedder.fingerprint and again.reused == again.images
    assert main(["info", "--index", str(index)]) == 0
    out = capsys.readouterr().out
    assert (
        "uses the base model" in out
        and "not kept: the tuned model did not beat the base model" in out
    )
    assert "validation MRR (what decides keeping it) 0.375 -> 0.375" in out


def test_time_budget_stops_the_job_and_the_next_run_goes_on_with_progress_and_eta(tmp_path, capsys):
    """--max-minutes spent while caching: nothing kept, work left to resume; the next run finishes.
    Progress goes to stderr as tqdm bars with their remaining-time estimate."""
    from vsearch.cli import main
    from vsearch.learn.tune import WORK_DIR

    catalog = write_shop(tmp_path / "shop")
    index = tmp_path / "index"
    build(catalog, index)
    args = [
        "tune",
        "--index",
        str(index),
        "--stages",
        "1",
        "--views",
        "1",
        "--max-steps",
        "4",
        "--validate-every",
        "2",
    ]
    assert main(args + ["--max-minutes", "0.000001"]) == 0
    out, err = capsys.readouterr()
    assert "time budget ran out while caching" in out and "run vsearch tune again" in out
    assert "cached activations" in err and "GiB on disk" in err  # the size, stated before it starts
    assert (index / WORK_DIR / "plan.json").exists() and not (
        index / "tuned" / "latest.json"
    ).exists()
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "resuming the interrupted tune" in err
    import re

    # elapsed<remaining
    assert re.search(r"caching views: .*\| *\d+/\d+ \[\d\d:\d\d<\d\d:\d\d", err), err
    assert re.search(r"training: .*\| *4/4 \[\d\d:\d\d<\d\d:\d\d", err), err
    assert (index / "tuned" / "latest.json").exists() and not (index / WORK_DIR).exists()


def test_tune_refuses_when_the_disk_cannot_hold_the_cache_or_a_build_runs(tmp_path, monkeypatch):
    import shutil

    import vsearch.learn.tune as tune
    from vsearch.store.lock import exclusive_build

    catalog = write_shop(tmp_path / "shop")
    index = tmp_path / "index"
    build(catalog, index)
    with exclusive_build(index), pytest.raises(VsearchError, match="already running"):
        tune.tune_index(index, stages=1, views=1, max_steps=1)
    monkeypatch.setattr(
        tune.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1 << 20)
    )
    with pytest.raises(VsearchError, match="GiB free"):
        tune.tune_index(index, stages=1, views=1, max_steps=1)
    assert not (index / "tuned").exists()
