"""The `vsearch` command line: a thin layer over the library that talks to people.

Every subcommand maps to one library function; errors from the library become one clean line
on stderr and exit code 1 (2 for usage errors), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vsearch import __version__
from vsearch.cli_info import cmd_info
from vsearch.errors import VsearchError

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


def add_quality_build(p: argparse.ArgumentParser) -> None:
    """Build-time retrieval-quality switches (defaults: the measured ones, see
    benchmarks/RESULTS.md)."""
    g = p.add_argument_group("retrieval quality (defaults chosen by measurement)")
    g.add_argument(
        "--whiten",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="PCA-whitening fitted on this catalog's vectors, stored in the index (default: off; "
        "it lowered "
        "phone-photo recall and blurred the close-match threshold in benchmarks/RESULTS.md)",
    )
    g.add_argument(
        "--dba",
        type=int,
        default=None,
        metavar="K",
        help="database-side augmentation with each image's K nearest catalog images (0 = off)",
    )
    g.add_argument(
        "--default-tta",
        default=None,
        choices=["none", "flip", "pad", "flip+pad"],
        help="query test-time augmentation searches use unless told otherwise",
    )
    g.add_argument(
        "--default-qe",
        type=int,
        default=None,
        metavar="K",
        help="alpha query expansion with the top K images, used by searches unless told otherwise "
        "(0 = off)",
    )
    g.add_argument(
        "--default-product-scoring",
        default=None,
        choices=["max", "mean", "top2"],
        help="how a product's image scores combine, used by searches unless told otherwise",
    )
    g.add_argument(
        "--no-threshold",
        action="store_true",
        help="do not calibrate the 'close match' verdict (results then carry no verdict)",
    )
    g.add_argument(
        "--adapt",
        default="auto",
        choices=["auto", "off", "refit"],
        help="catalog adaptation: learn a projection of the vectors from products with several "
        "photos "
        "(and --train-pairs); 'auto' refits only when what it learns from changed by more than "
        "10%%, "
        "'refit' always, 'off' never (default: auto)",
    )
    g.add_argument(
        "--train-pairs",
        default=None,
        metavar="PAIRS.csv",
        help="CSV of image,product_id: confirmed shopper photos of catalog products to learn from "
        "(embedded with the index's model, so its weights are needed even with --embeddings; "
        "never added to the catalog)",
    )


def add_quality_query(p: argparse.ArgumentParser) -> None:
    """Query-time switches; unset = what the index was built with (vsearch info shows it)."""
    g = p.add_argument_group("retrieval quality (default: the index's own settings)")
    g.add_argument(
        "--tta",
        default=None,
        choices=["none", "flip", "pad", "flip+pad"],
        help="test-time augmentation: also embed the mirrored and/or padded-square photo and "
        "average",
    )
    g.add_argument(
        "--qe",
        type=int,
        default=None,
        metavar="K",
        help="alpha query expansion with the top K catalog images (0 = off)",
    )
    g.add_argument(
        "--product-scoring",
        default=None,
        choices=["max", "mean", "top2"],
        help="product score from its images: best one, mean of all, or mean of the best two",
    )
    g.add_argument(
        "--locate",
        action="store_true",
        help="find the item in the photo and look again at a close-up of it: +0.02 R@1 on every "
        "evaluation set, about twice the query time on phone photos (efficientnet-lite0; off by "
        "default; see benchmarks/RESULTS.md)",
    )


def _query_settings(tta: str | None, qe: int | None, product_scoring: str | None) -> dict:
    """Query-side retrieval options that were given (None = leave to the index's defaults)."""
    opts: dict = {}
    if tta is not None:
        opts["tta"] = tta
    if qe is not None:
        opts["query_expansion"] = {"k": qe}
    if product_scoring is not None:
        opts["product_scoring"] = product_scoring
    return opts


def _query_options(args: argparse.Namespace) -> dict:
    opts = _query_settings(args.tta, args.qe, args.product_scoring)
    if getattr(args, "locate", False):
        opts["locate"] = True
    return opts


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VsearchError as e:
        print(f"vsearch: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vsearch: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------- commands


def cmd_build(args: argparse.Namespace) -> int:
    from vsearch.build import build_index

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="img", desc="embedding", dynamic_ncols=True)
        bar.update(done - bar.n)

    if args.engine == "ray":
        _quiet_ray()
    fetch_policy = None
    if args.allow_private_urls:
        from vsearch.catalog.fetch import FetchPolicy

        fetch_policy = FetchPolicy(allow_private=True)
    try:
        report = build_index(
            args.catalog,
            args.index,
            model=args.model,
            pretrained=args.pretrained,
            precision=args.precision,
            index_type=args.index_type,
            batch_size=args.batch_size,
            workers=args.workers,
            strict=args.strict,
            allow_outside_paths=args.allow_outside_paths,
            fetch_policy=fetch_policy,
            progress=progress,
            embeddings=args.embeddings,
            engine=args.engine,
            ray_address=args.ray_address,
            ray_actors=args.ray_actors,
            tuned=args.tuned,
            **_quality_build_options(args),
        )
    finally:
        if bar is not None:
            bar.close()
    for p in report.skipped:
        where = f"row {p.row}" if p.row else "catalog"
        print(f"skipped {where}: {p.reason}", file=sys.stderr)
    for p in report.warnings:
        where = f"row {p.row}" if p.row else "catalog"
        print(f"warning {where}: {p.reason}", file=sys.stderr)
    if report.engine.get("actors"):
        e = report.engine
        print(
            f"embedded on Ray at {e['address']}: {e['actors']} actor(s) x {e['cpus_per_actor']} "
            f"CPU(s) on {', '.join(e['hosts'])}; "
            f"vectors also in {e['shards']}"
        )
    print(
        f"built {report.index_dir} ({report.generation}) with {report.model}: {report.products} "
        "products, "
        f"{report.images} images ({report.embedded} embedded, {report.reused} reused from cache), "
        f"{len(report.skipped)} rows skipped, {report.removed_products} products removed, "
        f"index {report.index_type}, {report.seconds:.1f} s ({report.images_per_second:.1f} "
        "images/s)"
    )
    if getattr(report.embedder, "tuned", None):
        print(
            f"embedded with the model tuned to this index ({report.embedder.tuned['weights']}); "
            "--tuned off for the base model"
        )
    inc = report.incremental
    if inc.get("base"):
        print(
            f"index updated from {inc['base']}: {inc['added']} vectors added, {inc['removed']} "
            "removed"
            + (f" ({inc['hidden']} hidden vectors in the HNSW graph)" if inc.get("hidden") else "")
        )
    elif inc.get("quantizer_from"):
        print(
            f"IVF lists rebuilt on the trained quantizer of {inc['quantizer_from']} "
            f"({inc['added']} images added, {inc['removed']} removed since the last build)"
        )
    return 0


def _quiet_ray() -> None:
    """Ray Data logs each dataset's start and end at INFO; the build prints its own summary."""
    try:
        import logging

        import ray.data  # noqa: F401  (it sets up its loggers on import; change them after)
    except ImportError:
        return  # build_index says how to install Ray
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _quality_build_options(args: argparse.Namespace) -> dict:
    opts: dict = {
        "whitening": args.whiten,
        "calibrate_threshold": not args.no_threshold,
        "adapt": args.adapt,
        "train_pairs": args.train_pairs,
    }
    if args.dba is not None:
        opts["dba"] = {"k": args.dba}
    query = _query_settings(args.default_tta, args.default_qe, args.default_product_scoring)
    if query:
        opts["query_defaults"] = query
    return opts


def _filters(args: argparse.Namespace) -> dict:
    filters: dict = {}
    if args.category:
        filters["category"] = args.category
    if args.min_price is not None or args.max_price is not None:
        filters["price"] = (args.min_price, args.max_price)
    for item in args.filter:
        if "=" not in item:
            raise VsearchError(f"--filter takes COLUMN=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        filters.setdefault(key.strip(), []).append(value.strip())
    return filters


def cmd_search(args: argparse.Namespace) -> int:
    from vsearch.search import ProductIndex

    if args.photo is None and not args.text:
        raise VsearchError("give a PHOTO, --text, or both")
    if args.photo is not None and not Path(args.photo).is_file():
        raise VsearchError(f"photo {args.photo!r} does not exist or is not a file")
    index = ProductIndex.load(
        args.index, model=args.model, pretrained=args.pretrained, precision=args.precision
    )
    hits = index.search(
        image=args.photo,
        text=args.text,
        k=args.k,
        filters=_filters(args),
        zero_shot_categories=args.zero_shot,
        **_query_options(args),
    )
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no products match")
        return 0
    print(
        VERDICT_LINES[hits[0].confident]
        if args.photo is not None
        else "Products whose text holds your words, best first (no verdict: words are not a photo "
        "match)"
    )
    for h in hits:
        price = f"{h.price:.2f}" if h.price is not None else "-"
        print(
            f"{h.rank:>3}. {h.score:.3f}  {h.product_id}  {h.title or '(no title)'}  "
            f"[{h.category or '-'}]  {price}  {h.image}"
        )
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from vsearch.store.gc import collect_garbage

    r = collect_garbage(args.index, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{args.index}: kept what {', '.join(r.generations) or 'no generation'} use(s); {verb} "
        f"{r.cache_rows} cached "
        f"embedding(s), {r.shard_rows} Parquet shard row(s), {r.file_rows} file record(s), "
        f"{r.downloads} downloaded image(s) ({r.bytes_freed / 2**20:.1f} MiB), {r.tuned_files} "
        "tuned model file(s)"
    )
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from vsearch.learn.tune import tune_index

    bars: dict = {}
    names = {
        "check": ("checking photos", "photo"),
        "cache": ("caching views", "view"),
        "train": ("training", "step"),
    }

    def progress(phase: str, done: int, total: int) -> None:
        if args.quiet:
            return
        if phase not in bars:
            from tqdm import tqdm

            for bar in bars.values():
                bar.close()
            bars[phase] = tqdm(
                total=total,
                initial=done,
                desc=names[phase][0],
                unit=names[phase][1],
                dynamic_ncols=True,
            )
        bars[phase].update(done - bars[phase].n)

    def on_plan(p) -> None:
        print(
            f"tuning {p.model} ({p.stages} last stages) on {p.products} products: {p.photos} "
            "catalog photos, "
            f"{p.pair_photos} shopper photos, {p.validation_photos} held out; {p.views} augmented "
            "copies each; cached "
            f"activations {p.cache_bytes / 2**30:.2f} GiB on disk ({p.free_bytes / 2**30:.1f} GiB "
            "free)" + ("; resuming the interrupted tune" if p.resumed else ""),
            file=sys.stderr,
        )

    try:
        r = tune_index(
            args.index,
            stages=args.stages,
            views=args.views,
            train_pairs=args.train_pairs,
            max_minutes=args.max_minutes,
            max_steps=args.max_steps,
            validate_every=args.validate_every,
            restart=args.restart,
            progress=progress,
            on_plan=on_plan,
        )
    finally:
        for bar in bars.values():
            bar.close()
    print(
        f"{args.index}: {r.reason}"
        + (
            f" ({r.steps} steps, stopped: {r.stopped}, {r.seconds / 60:.1f} min)"
            if r.finished
            else ""
        )
    )
    if r.kept:
        print(
            "the next vsearch build embeds every image again with the tuned model (about "
            f"{r.reembed_seconds / 60:.1f} min "
            "of model time here); search keeps the current index until then"
        )
    return 0


VERDICT_LINES = {
    True: "close match:",
    False: "not sure (no result clears the close-match bar); the nearest products are:",
    None: "best guesses (this index cannot tell a close match reliably):",
}


def cmd_eval(args: argparse.Namespace) -> int:
    from vsearch.evaluate.quality import evaluate, self_test
    from vsearch.search import ProductIndex

    if bool(args.queries) == bool(args.self_test):
        raise VsearchError("give either --queries QUERIES.csv or --self-test")
    index = ProductIndex.load(
        args.index, model=args.model, pretrained=args.pretrained, precision=args.precision
    )
    opts = _query_options(args)
    if args.self_test:
        report = self_test(
            index,
            k=args.k,
            max_queries=args.max_queries,
            credit_duplicates=args.duplicate_credit,
            **opts,
        )
    else:
        report = evaluate(
            index,
            args.queries,
            k=args.k,
            unsold=args.unsold,
            credit_duplicates=args.duplicate_credit,
            **opts,
        )
    what = "self-test" if args.self_test else args.queries
    written = _write_report(args, report, index, what, opts) if args.report else None
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        if written:
            print(f"report: {written[0]} (written in {written[1]:.1f} s)", file=sys.stderr)
        return 0
    print(
        f"{what} on {args.index}: {report.n_queries} queries, k={report.k}"
        + (f", {len(report.skipped)} skipped" if report.skipped else "")
    )
    settings = {**index.query_defaults(), **opts}
    print("settings:     " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print(
        "recall:       "
        + "  ".join(f"R@{k}={v:.3f}" for k, v in report.recall.items())
        + f"  MRR={report.mrr:.3f}"
    )
    print(
        f"latency:      p50 {report.latency_p50_ms:.1f} ms, p95 {report.latency_p95_ms:.1f} ms per "
        "query"
    )
    print("close match:  " + _close_match_line(report.close_match))
    print("per category (R@1):")
    for cat, r1 in report.per_category_r1.items():
        print(f"  {cat:24s} {r1:.3f}  (n={report.per_category_n[cat]})")
    if report.worst:
        print("worst queries (photo -> expected | ranked first):")
        for r in report.worst:
            rank = f"rank {r.rank}" if r.rank else f"not in top {report.k}"
            first = f"{r.top} ({r.scores[0]:.3f})" if r.ranked else "nothing"
            print(f"  {r.image} -> {'|'.join(r.expected)} | {first}; {rank}")
    if report.credited_duplicates:
        n = report.credited_duplicates
        print(
            f"counted right: {n} quer{'y' if n == 1 else 'ies'} whose first result lists a "
            "near-identical photo of "
            "the query (vsearch check lists such photos; --no-duplicate-credit to count them wrong)"
        )
    for line in report.skipped[:10]:
        print(f"skipped {line}", file=sys.stderr)
    if written:
        print(f"report:       {written[0]} (written in {written[1]:.1f} s)")
    return 0


def _write_report(
    args: argparse.Namespace, report, index, what: str, opts: dict
) -> tuple[Path, float]:
    import time

    from vsearch.evaluate.report import write_eval_report

    started = time.perf_counter()
    path = write_eval_report(
        args.report,
        report,
        index,
        title=f"vsearch eval: {what}",
        search_options={**index.query_defaults(), **opts},
    )
    return path, time.perf_counter() - started


def cmd_check(args: argparse.Namespace) -> int:
    from vsearch.catalog.hygiene import check

    if not Path(args.target).exists():
        raise VsearchError(
            f"{args.target!r} does not exist; give a catalog CSV, an image folder or an index "
            "folder"
        )
    report = check(
        args.target, allow_outside_paths=args.allow_outside_paths, min_side=args.min_side
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return 0
    limit = max(0, args.limit)
    print(
        f"checked {report.source} ({report.kind}: {report.n_images} photos of {report.n_products} "
        "products) "
        f"in {report.seconds:.1f} s"
    )
    print(f"near-identical photos under different product ids: {len(report.duplicates)} group(s)")
    for g in report.duplicates[:limit]:
        print(f"  {len(g.photos)} photos, products {', '.join(g.product_ids)}:")
        for p in g.photos:
            print(f"    {p.describe()}")
    if report.kind == "index":
        print(f"views that disagree with their product's other views: {len(report.odd_views)}")
        for v in report.odd_views[:limit]:
            print(
                f"  {v.photo.describe()}: best similarity to its other {v.n_views - 1} view(s) "
                f"{v.agreement:.2f} "
                f"(typical {v.typical:.2f}, unrelated photos {v.unrelated:.2f}); closest: "
                f"{v.closest.image}"
            )
    print(f"unreadable or tiny photos: {len(report.bad_photos)}")
    for b in report.bad_photos[:limit]:
        where = f"row {b.photo.row}" if b.photo.row else "catalog"
        print(
            f"  {where} {b.photo.product_id + ' ' if b.photo.product_id else ''}{b.photo.image}: "
            f"{b.problem}"
        )
    shown = max(len(report.duplicates), len(report.odd_views), len(report.bad_photos))
    if shown > limit:
        print(f"(at most {limit} of each kind shown; --limit N or --json for all)")
    for line in report.not_checked:
        print(f"not checked: {line}")
    return 0


def _close_match_line(cm) -> str:
    if cm is None or not cm.verdicts:
        return "this index gives no verdict (every answer is a best guess)"
    precision = "-" if cm.precision is None else f"{cm.precision:.3f}"
    line = (
        f"said for {cm.said} queries, precision {precision} (first result right), recall "
        f"{cm.recall:.3f} of right answers"
    )
    if cm.unsold_called_close is not None:
        line += f"; {cm.unsold_called_close:.1%} of {cm.unsold} unsold photos called a close match"
    return line


def cmd_serve(args: argparse.Namespace) -> int:
    from vsearch.serve.ui import serve

    if args.rate_limit is not None and args.rate_limit < 0:
        raise VsearchError(
            "--rate-limit must be 0 (no limit) or more requests per minute, got "
            f"{args.rate_limit:g}"
        )
    if args.body_timeout is not None and args.body_timeout < 0:
        raise VsearchError(
            f"--body-timeout must be 0 (no limit) or more seconds, got {args.body_timeout:g}"
        )
    extra = {}  # only what was given, so serve's own defaults apply otherwise
    if args.trusted_proxies:
        from vsearch.serve.guard import TrustedProxies

        proxies = tuple(p.strip() for p in args.trusted_proxies.split(",") if p.strip())
        TrustedProxies(proxies)  # a bad entry is refused before the index loads
        extra["trusted_proxies"] = proxies
    if args.body_timeout is not None:
        extra["body_timeout"] = args.body_timeout
    serve(
        args.index,
        host=args.host,
        port=args.port,
        model=args.model,
        pretrained=args.pretrained,
        precision=args.precision,
        notice=args.notice,
        examples=_example_photos(args.examples),
        api_key=args.api_key,
        feedback=args.feedback,
        rate_limit=args.rate_limit,
        **extra,
    )
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from vsearch.serve.feedback import FeedbackStore

    report = FeedbackStore(args.index).export_pairs(args.output)
    print(
        f"wrote {report.pairs} confirmed pair(s) to {report.path}; review them (delete wrong "
        "rows), then: "
        f"vsearch build CATALOG --index {args.index} --train-pairs {report.path}"
    )
    return 0


def _example_photos(folder: str | None) -> list[Path]:
    if not folder:
        return []
    from vsearch.catalog.images import IMAGE_EXTENSIONS

    path = Path(folder)
    if not path.is_dir():
        raise VsearchError(f"--examples {folder!r} is not a folder of photos")
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


if __name__ == "__main__":
    sys.exit(main())
