"""The `vsearch` argument parser: every subcommand, its options and their help, with the defaults
that come from VSEARCH_* environment variables.

Apart from the commands because it is the command line's documentation (README's CLI reference
follows `--help`) and is built on every run, before any command's library code is imported.
"""

from __future__ import annotations

import argparse
import os

from vsearch import __version__
from vsearch.cli.index_commands import cmd_build, cmd_check, cmd_gc, cmd_tune
from vsearch.cli.info import cmd_info
from vsearch.cli.options import add_quality_build, add_quality_query
from vsearch.cli.query_commands import cmd_eval, cmd_feedback, cmd_search, cmd_serve

DEFAULT_INDEX = "index/default"
TINY_SIDE_HELP = 64  # vsearch.catalog.hygiene.TINY_SIDE, repeated so --help needs no numpy import
ENV_HELP = """environment variables:
  VSEARCH_INDEX       default for --index (now: {index})
  VSEARCH_MODEL       default for --model (now: {model})
  VSEARCH_PRETRAINED  default for --pretrained (now: {pretrained})
  VSEARCH_PRECISION   default for --precision (now: {precision})
  VSEARCH_HOST        default for serve --host (now: {host})
  VSEARCH_PORT        default for serve --port (now: {port})
  VSEARCH_API_KEY     default for serve --api-key (now: {api_key})
  VSEARCH_TRUSTED_PROXIES  default for serve --trusted-proxies (now: {proxies})
VSEARCH_MODEL and VSEARCH_PRETRAINED are also serve's query model when set (python app.py, the
demo, hands over to serve with these same variables)."""


def _env(name: str, default: str | None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def build_parser() -> argparse.ArgumentParser:
    index_default = _env("VSEARCH_INDEX", DEFAULT_INDEX)
    model_default = _env("VSEARCH_MODEL", "clip")
    pretrained_default = _env("VSEARCH_PRETRAINED", None)
    precision_default = _env("VSEARCH_PRECISION", "auto")
    host_default = _env("VSEARCH_HOST", "127.0.0.1")
    port_default = _env("VSEARCH_PORT", "7860")
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="vsearch",
        description="Visual product search: index a catalog's product photos, then find products "
        "from a shopper's photo.",
        epilog=ENV_HELP.format(
            index=index_default,
            model=model_default,
            pretrained=pretrained_default,
            precision=precision_default,
            host=host_default,
            port=port_default,
            api_key="set" if _env("VSEARCH_API_KEY", None) else None,
            proxies=_env("VSEARCH_TRUSTED_PROXIES", None),
        ),
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"vsearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_index(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--index",
            default=index_default,
            metavar="DIR",
            help=f"index folder (default: {index_default})",
        )

    def add_model(p: argparse.ArgumentParser, for_build: bool) -> None:
        what = (
            "model to embed with"
            if for_build
            else "query model (default: the model the index was built with)"
        )
        p.add_argument(
            "--model",
            default=model_default if for_build else None,
            metavar="NAME",
            help=f"{what}: 'clip' (ViT-B-32 laion2b_s34b_b79k), any open_clip architecture (e.g. "
            "ViT-B-16), "
            "'hf-hub:ORG/REPO', 'efficientnet-lite0' (offline, image-only), or a model a plugin "
            "registers" + (f" (default: {model_default})" if for_build else ""),
        )
        p.add_argument(
            "--pretrained",
            default=pretrained_default if for_build else None,
            metavar="TAG_OR_PATH",
            help="open_clip pretrained tag or a local checkpoint file (default: the model's "
            "standard weights)",
        )
        p.add_argument(
            "--precision",
            default=precision_default,
            choices=["auto", "fp32", "bf16"],
            help="model precision; auto = bf16 where the CPU supports it (default: "
            f"{precision_default})",
        )

    b = sub.add_parser(
        "build",
        help="build or update an index from a catalog CSV or an image folder",
        formatter_class=fmt,
        description="Build or incrementally update an index. Only new or changed images are "
        "embedded; "
        "products that left the catalog are removed. Bad rows are reported and skipped.",
    )
    b.add_argument(
        "catalog",
        metavar="CATALOG",
        help="catalog CSV (product_id,image[,title,category,price,url,brand,...]) or a folder of "
        "images",
    )
    add_index(b)
    add_model(b, for_build=True)
    b.add_argument(
        "--index-type",
        default="auto",
        choices=["auto", "flat", "ivf", "hnsw", "ivfpq", "ivfpq-fs"],
        help="FAISS index: auto = exact (flat) up to 20,000 images, hnsw beyond (high recall, "
        "slowest to build); "
        "ivf = IVF with fp16 codes (half the memory, builds ~10x faster, lower recall on hard "
        "data); "
        "ivfpq = 16x smaller, re-ranked exactly from float16 vectors kept on disk; ivfpq-fs = the "
        "same with "
        "4-bit fast-scan codes; the ivf types are built in shards, merged on disk and served "
        "memory-mapped (default: auto)",
    )
    b.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="images per model batch (default: 32)",
    )
    b.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="image decoding threads (default: min(4, CPUs))",
    )
    b.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="where images are embedded: local = this process; ray = a Ray cluster (pip install "
        "'vsearch[ray]'): "
        "images and --pretrained weights must be at the same path on every node (default: local)",
    )
    b.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS, else a "
        "Ray started on this machine)",
    )
    b.add_argument(
        "--ray-actors",
        type=int,
        default=None,
        metavar="N",
        help="model actors on the cluster, each with its CPUs / N (default: one per 4 CPUs, or one "
        "for the whole cluster if it has fewer)",
    )
    b.add_argument(
        "--embeddings",
        default=None,
        metavar="FILE",
        help="precomputed vectors (.npy float [rows, dim] in catalog order, or .parquet with an "
        "'embedding' "
        "or 'vector' list column, matched by 'image'/'product_id' columns when present; or a "
        "folder of such .parquet "
        "files, read in name order as one): no image is read and "
        "no model runs; --model/--pretrained name the model they came from, used later for queries",
    )
    b.add_argument(
        "--strict", action="store_true", help="fail on the first bad row instead of skipping it"
    )
    b.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="allow image paths outside the catalog's folder (absolute paths, '..')",
    )
    b.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="allow image URLs on private, loopback or link-local addresses (intranet catalogs)",
    )
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument(
        "--tuned",
        default="auto",
        choices=["auto", "off"],
        help="auto = embed with the model vsearch tune fitted to this index, when there is one; "
        "off = the base model (default: auto)",
    )
    add_quality_build(b)
    b.set_defaults(func=cmd_build)

    s = sub.add_parser(
        "search", help="find products matching a photo and/or a text", formatter_class=fmt
    )
    s.add_argument(
        "photo", nargs="?", metavar="PHOTO", help="query photo (JPEG, PNG, WebP, HEIC, ...)"
    )
    s.add_argument(
        "--text",
        default=None,
        help="words, alone (the products' own text, every model) or with PHOTO to "
        "re-rank its matches; see README 'Words'",
    )
    add_index(s)
    s.add_argument("-k", type=int, default=10, help="number of products to return (default: 10)")
    s.add_argument(
        "--category", action="append", default=None, help="only this category (repeatable)"
    )
    s.add_argument("--min-price", type=float, default=None, help="lowest price")
    s.add_argument("--max-price", type=float, default=None, help="highest price")
    s.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="filter on any metadata column (repeatable)",
    )
    s.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_model(s, for_build=False)
    add_quality_query(s)
    s.add_argument(
        "--zero-shot",
        type=int,
        default=0,
        metavar="N",
        help="CLIP only: search only the N catalog categories whose names best match the photo "
        "(default: 0 = off)",
    )
    s.set_defaults(func=cmd_search)

    e = sub.add_parser(
        "eval",
        help="measure retrieval quality (Recall@k, MRR, latency) on labelled photos or by "
        "self-test",
        formatter_class=fmt,
        description="Product-level Recall@1/5/10, MRR, per-category Recall@1, latency p50/p95 and "
        "the worst "
        "queries. --queries takes a CSV of image,product_id (several acceptable ids separated by "
        "'|', optional "
        "category); --self-test needs no labels: one image of each multi-image product is held out "
        "(removed "
        "from the candidates) and searched for, single-image products are searched with an "
        "augmented copy.",
    )
    add_index(e)
    e.add_argument(
        "--queries",
        default=None,
        metavar="QUERIES.csv",
        help="labelled query photos (image,product_id[,category])",
    )
    e.add_argument(
        "--self-test",
        action="store_true",
        help="evaluate the index on its own images (no labels needed)",
    )
    e.add_argument(
        "--max-queries",
        type=int,
        default=300,
        metavar="N",
        help="self-test: products sampled (default: 300)",
    )
    e.add_argument(
        "--unsold",
        default=None,
        metavar="DIR_OR_CSV",
        help="photos of products the shop does not sell (a folder, or a CSV with an image column): "
        "reports how many are wrongly called a close match",
    )
    e.add_argument("-k", type=int, default=10, help="ranking depth (default: 10)")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="also write a self-contained HTML report (DIR/index.html: charts, the worst queries "
        "as pictures, "
        "the catalog check)",
    )
    e.add_argument(
        "--duplicate-credit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count a query as right when the first result lists a near-identical photo of it "
        "(default: on)",
    )
    add_quality_query(e)
    add_model(e, for_build=False)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser(
        "check",
        help="find catalog problems: one photo under several products, views that disagree, "
        "unusable photos",
        formatter_class=fmt,
        description="Checks a catalog CSV, an image folder or an index folder without any model: "
        "near-identical "
        "photos listed under different product ids (perceptual hash, so resized or re-encoded "
        "copies count), "
        "unreadable photos and photos under --min-side pixels on their short side. On an index it "
        "also lists views far from "
        "their product's other views (from the stored vectors). Every finding names the product "
        "ids, catalog "
        "rows and files.",
    )
    c.add_argument(
        "target", metavar="CATALOG_OR_INDEX", help="catalog CSV, image folder, or index folder"
    )
    c.add_argument("--json", action="store_true", help="print every finding as JSON")
    c.add_argument(
        "--limit",
        type=int,
        default=20,
        metavar="N",
        help="findings of each kind printed (default: 20; --json prints all)",
    )
    c.add_argument(
        "--min-side",
        type=int,
        default=TINY_SIDE_HELP,
        metavar="PX",
        help="photos whose shorter side is under PX pixels are reported as tiny (default: "
        f"{TINY_SIDE_HELP})",
    )
    c.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="allow catalog image paths outside the catalog's folder",
    )
    c.set_defaults(func=cmd_check)

    i = sub.add_parser("info", help="describe an index (model, counts, format, build time)")
    add_index(i)
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=cmd_info)

    v = sub.add_parser(
        "serve",
        help="start the web app and the REST API (/api/v1) on an index",
        formatter_class=fmt,
        description="The page at /, the REST API at /api/v1 (docs at /api/v1/docs). A rebuilt "
        "index is "
        "picked up in the background; a broken one is skipped and the old one keeps serving.",
    )
    add_index(v)
    v.add_argument(
        "--host",
        default=host_default,
        help=f"address to listen on (default: {host_default}; 0.0.0.0 for all - set --api-key "
        "first)",
    )
    v.add_argument("--port", type=int, default=port_default, help=f"port (default: {port_default})")
    v.add_argument(
        "--examples",
        default=None,
        metavar="DIR",
        help="offer the photos in this folder as clickable examples",
    )
    v.add_argument(
        "--notice", default=None, metavar="TEXT", help="a line shown at the top of the page"
    )
    v.add_argument(
        "--api-key",
        default=_env("VSEARCH_API_KEY", None),
        metavar="KEY",
        help="require this key: on the REST API as header X-API-Key or Authorization: Bearer; the "
        "page and "
        "its gradio API ask for a login with any user name and the key as password "
        "(default: $VSEARCH_API_KEY, else none)",
    )
    v.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        metavar="N",
        help="requests per minute per client address, REST and page together (default: 120; 0 = no "
        "limit)",
    )
    v.add_argument(
        "--trusted-proxies",
        default=_env("VSEARCH_TRUSTED_PROXIES", None),
        metavar="ADDRS",
        help="comma-separated addresses or networks of your reverse proxies (e.g. "
        "127.0.0.1,10.0.0.0/8): "
        "for requests from them the rate limit keys on the client in X-Forwarded-For "
        "(default: $VSEARCH_TRUSTED_PROXIES, else none: the direct peer)",
    )
    v.add_argument(
        "--body-timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds a request body (an upload) may take to arrive before the server answers 408 "
        "(default: 60; 0 = no limit)",
    )
    v.add_argument(
        "--feedback",
        action="store_true",
        help="add a 'This is it' button (and POST /api/v1/feedback) that records the shopper's "
        "photo and "
        "chosen product in DIR/feedback for review; nothing is trained until you export, review "
        "and "
        "build with --train-pairs",
    )
    add_model(v, for_build=False)
    v.set_defaults(
        func=cmd_serve,
        model=_env("VSEARCH_MODEL", None),
        pretrained=_env("VSEARCH_PRETRAINED", None),
    )

    f = sub.add_parser(
        "feedback",
        help="export shoppers' confirmed matches as a pairs CSV to review",
        formatter_class=fmt,
        description="Confirmed matches recorded by `vsearch serve --feedback` become a CSV "
        "(image,product_id) for a person to review; build with `--train-pairs` to use them.",
    )
    f.add_argument("action", choices=["export"], help="export: write the pairs CSV")
    add_index(f)
    f.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="PAIRS.csv",
        help="where to write the CSV (default: DIR/feedback/pairs.csv); image paths are relative "
        "to the CSV when the photos lie below its folder, absolute otherwise",
    )
    f.set_defaults(func=cmd_feedback)

    g = sub.add_parser(
        "gc",
        help="delete cached embeddings and downloaded images no generation of the index uses",
        formatter_class=fmt,
        description="Keeps what the live and the previous generation use; "
        "safe while a server runs, waits for no build (refuses to run during one).",
    )
    add_index(g)
    g.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    g.set_defaults(func=cmd_gc)

    t = sub.add_parser(
        "tune",
        help="fine-tune the index's model to its catalog (a long job: minutes to hours)",
        formatter_class=fmt,
        description="Trains the model's last stages on the index's catalog photos and augmented "
        "copies of them, "
        "checks the result on held-out photos and keeps it only if it beats the base model; the "
        "next build "
        "embeds every image again with it. Resumes after a kill; serving goes on meanwhile.",
    )
    add_index(t)
    t.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        metavar="M",
        help="time budget for the whole job (default: none)",
    )
    t.add_argument(
        "--stages",
        type=int,
        default=None,
        metavar="N",
        help="last stages to train: EfficientNet block stages or CLIP image blocks (default: 2, "
        "chosen by measurement)",
    )
    t.add_argument(
        "--views",
        type=int,
        default=4,
        metavar="N",
        help="augmented copies of each photo (default: 4)",
    )
    t.add_argument(
        "--max-steps", type=int, default=300, metavar="N", help="most training steps (default: 300)"
    )
    t.add_argument(
        "--validate-every",
        type=int,
        default=20,
        metavar="N",
        help="steps between validations/checkpoints (default: 20)",
    )
    t.add_argument(
        "--train-pairs",
        default=None,
        metavar="PAIRS.csv",
        help="CSV of image,product_id: confirmed shopper photos to also train on",
    )
    t.add_argument(
        "--restart", action="store_true", help="start over instead of resuming an interrupted tune"
    )
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_tune)
    return parser
