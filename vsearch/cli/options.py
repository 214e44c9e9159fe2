"""The retrieval-quality switches that build, search and eval share: how they are declared and
how they become the library's options.

Apart from the parser because the same switches are read back by several commands (build's
defaults for searches, search's and eval's overrides), and the two sides must agree.
"""

from __future__ import annotations

import argparse


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


def query_options(args: argparse.Namespace) -> dict:
    opts = _query_settings(args.tta, args.qe, args.product_scoring)
    if getattr(args, "locate", False):
        opts["locate"] = True
    return opts


def quality_build_options(args: argparse.Namespace) -> dict:
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
