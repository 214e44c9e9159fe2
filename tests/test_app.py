"""`python app.py` (the demo) is `vsearch serve` after building the sample: one code path, one set
of environment variables. The server itself is replaced by a recorder; tests/test_ui.py serves for
real."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import FakeEmbedder

from vsearch.build import build_index
from vsearch.cli import main as vsearch
from vsearch.serve import ui as ui
from vsearch.store import generations as store

APP = Path(__file__).resolve().parents[1] / "app.py"


@pytest.fixture
def app(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("vsearch_demo_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "SAMPLE_DIR", tmp_path / "sample-catalog")
    return module


@pytest.fixture
def served(monkeypatch):
    """What ui.serve was asked to do, instead of serving."""
    calls = []
    monkeypatch.setattr(
        ui, "serve", lambda index_dir, **kw: calls.append({"index_dir": str(index_dir), **kw})
    )
    return calls


def test_app_and_vsearch_serve_read_the_same_environment(
    app, served, catalog_csv, tmp_path, monkeypatch
):
    index_dir = tmp_path / "idx"
    build_index(catalog_csv, index_dir, embedder=FakeEmbedder())
    monkeypatch.setenv("VSEARCH_INDEX", str(index_dir))
    monkeypatch.setenv("VSEARCH_HOST", "0.0.0.0")
    monkeypatch.setenv("VSEARCH_PORT", "8123")
    monkeypatch.setenv("VSEARCH_MODEL", "fake-thumbnail")
    monkeypatch.setenv("VSEARCH_PRETRAINED", "weights.bin")
    monkeypatch.setenv("VSEARCH_PRECISION", "fp32")
    monkeypatch.setenv("VSEARCH_API_KEY", "k-123")

    assert app.main([]) == 0
    assert vsearch(["serve"]) == 0
    expected = {
        "index_dir": str(index_dir),
        "host": "0.0.0.0",
        "port": 8123,
        "model": "fake-thumbnail",
        "pretrained": "weights.bin",
        "precision": "fp32",
        "notice": None,
        "examples": [],
        "api_key": "k-123",
        "feedback": False,
        "rate_limit": None,
    }
    assert served == [expected, expected]


def test_serve_defaults_without_environment(served):
    assert vsearch(["serve"]) == 0
    assert served[0] == {
        "index_dir": "index/default",
        "host": "127.0.0.1",
        "port": 7860,
        "model": None,
        "pretrained": None,
        "precision": "auto",
        "notice": None,
        "examples": [],
        "api_key": None,
        "feedback": False,
        "rate_limit": None,
    }


def test_app_builds_the_sample_when_there_is_no_index_then_serves_it_with_its_photos(
    app, served, tmp_path, monkeypatch
):
    index_dir = tmp_path / "fresh"
    monkeypatch.setenv("VSEARCH_INDEX", str(index_dir))
    monkeypatch.setenv("VSEARCH_MODEL", "test-tiny")
    monkeypatch.setenv("VSEARCH_PORT", "8124")

    assert app.main(["--notice", "Made-up prices."]) == 0  # extra arguments go to `vsearch serve`
    assert store.read_current(index_dir, missing_ok=True) is not None
    manifest = store.read_manifest(index_dir / store.read_current(index_dir))
    assert manifest["model"]["name"] == "test-tiny" and manifest["counts"]["products"] == 60
    (call,) = served
    assert (call["index_dir"], call["port"], call["model"], call["notice"]) == (
        str(index_dir),
        8124,
        "test-tiny",
        "Made-up prices.",
    )
    photos = call["examples"]
    assert len(photos) >= 8 and all(
        p.suffix == ".jpg" and p.parent == tmp_path / "sample-catalog" / "queries" for p in photos
    )


def test_serve_refuses_an_examples_path_that_is_not_a_folder(served, tmp_path, capsys):
    assert vsearch(["serve", "--examples", str(tmp_path / "nope")]) == 1
    assert "--examples" in capsys.readouterr().err and not served
