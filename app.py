"""Start the vsearch demo web app: `python app.py` (what `make demo` runs).

Serves the index in index/default (or $VSEARCH_INDEX). When there is none yet, it first writes
the bundled sample catalog and shopper photos to index/sample-catalog/ and builds the index —
with CLIP when its weights are available, otherwise with the offline EfficientNet-Lite0 model
(image search only), saying so on the console and in the page. Then it runs `vsearch serve`
on that index, with the sample's shopper photos as examples.
Environment (the same as `vsearch serve`): VSEARCH_INDEX, VSEARCH_MODEL, VSEARCH_PRETRAINED,
VSEARCH_PRECISION, VSEARCH_HOST, VSEARCH_PORT.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parent
SAMPLE_DIR = ROOT / "index" / "sample-catalog"
OFFLINE_NOTICE = (
    "CLIP weights are not available offline; using the offline EfficientNet-Lite0 model "
    "— image search only"
)


def build_sample(index_dir: Path, model: str | None, pretrained: str | None) -> str | None:
    """Write the sample catalog and build it; return a notice when we had to fall back to the
    offline model."""
    from vsearch.build import build_index
    from vsearch.demo import write_sample_catalog, write_sample_queries
    from vsearch.embedders import load_embedder
    from vsearch.errors import ModelUnavailableError

    print(
        f"vsearch: no index in {index_dir}; writing the sample catalog to {SAMPLE_DIR} ...",
        flush=True,
    )
    csv = write_sample_catalog(SAMPLE_DIR)
    write_sample_queries(SAMPLE_DIR / "queries", csv)
    notice = None
    if model:
        embedder = load_embedder(model, pretrained)
    else:
        try:
            embedder = load_embedder("clip", pretrained)
        except ModelUnavailableError:
            notice = OFFLINE_NOTICE
            print(f"vsearch: {notice}", flush=True)
            embedder = load_embedder("efficientnet-lite0")

    def progress(done: int, total: int) -> None:
        if done == total or done % 20 == 0:
            print(f"vsearch: embedded {done}/{total} catalog images", flush=True)

    report = build_index(csv, index_dir, embedder=embedder, progress=progress)
    print(
        f"vsearch: built {report.products} products / {report.images} images in "
        f"{report.seconds:.1f} s",
        flush=True,
    )
    return notice


def main(argv: list[str] | None = None) -> int:
    """Build the sample when there is no index yet, then hand over to `vsearch serve` (same code,
    same environment variables); extra arguments go to `vsearch serve` as well."""
    from vsearch.cli import main as vsearch
    from vsearch.errors import VsearchError
    from vsearch.store import generations as store

    index_dir = Path(os.environ.get("VSEARCH_INDEX") or ROOT / "index" / "default")
    model = os.environ.get("VSEARCH_MODEL") or None
    pretrained = os.environ.get("VSEARCH_PRETRAINED") or None
    try:
        notice = None
        if store.read_current(index_dir, missing_ok=True) is None:
            notice = build_sample(index_dir, model, pretrained)
        elif not model and _model_name(index_dir) == "efficientnet-lite0":
            notice = "This index uses the offline EfficientNet-Lite0 model — image search only."
        demo = ["--examples", str(SAMPLE_DIR / "queries")] if _is_sample(index_dir) else []
    except VsearchError as e:
        print(f"vsearch: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return vsearch(
        [
            "serve",
            "--index",
            str(index_dir),
            *demo,
            *(["--notice", notice] if notice else []),
            *(sys.argv[1:] if argv is None else argv),
        ]
    )


def _model_name(index_dir: Path) -> str:
    from vsearch.store import generations as store

    manifest = store.read_manifest(index_dir / store.read_current(index_dir))
    return manifest.get("model", {}).get("name", "")


def _is_sample(index_dir: Path) -> bool:
    """True when the served index was built from the bundled sample catalog (so its photos make
    sense)."""
    from vsearch.store import generations as store

    manifest = store.read_manifest(index_dir / store.read_current(index_dir))
    catalog = str(manifest.get("catalog", ""))
    return (SAMPLE_DIR / "queries").is_dir() and str(SAMPLE_DIR.resolve()) in catalog


if __name__ == "__main__":
    sys.exit(main())
