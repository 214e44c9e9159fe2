"""The commands that use an index: search, eval, serve and feedback (export what shoppers
confirmed while serving).

Apart from the commands that make an index (`index_commands`) because these load an index to
answer queries, and share how a query's options and verdict are given and printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vsearch.cli.options import query_options
from vsearch.errors import VsearchError

VERDICT_LINES = {
    True: "close match:",
    False: "not sure (no result clears the close-match bar); the nearest products are:",
    None: "best guesses (this index cannot tell a close match reliably):",
}


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
        **query_options(args),
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


def cmd_eval(args: argparse.Namespace) -> int:
    from vsearch.evaluate.quality import evaluate, self_test
    from vsearch.search import ProductIndex

    if bool(args.queries) == bool(args.self_test):
        raise VsearchError("give either --queries QUERIES.csv or --self-test")
    index = ProductIndex.load(
        args.index, model=args.model, pretrained=args.pretrained, precision=args.precision
    )
    opts = query_options(args)
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
