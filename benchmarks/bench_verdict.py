"""Catalog adaptation and the "close match" verdict end to end: real indexes, the real model on the
query photos, vsearch's own evaluate().

Each index is built the way `vsearch build` builds it (catalog vectors imported from the feature
cache of benchmarks/quality_features.py - exactly what the model gives - with the model loaded, so
the build simulates shopper photos for the verdict as it does for a user). For each set it prints
R@1/R@5, close-match precision / recall, the share of unsold photos (ABO items in no catalog)
called a close match, the calibrated threshold, build seconds, and the precision-recall curve of
the top-1 score (so the chosen operating point can be judged against every other).

    python benchmarks/bench_verdict.py [--sets /tmp/vsearch-eval] \\
        [--only jumia,grocery-val] [--adapt auto,off]
    # grocery test, built with the 296 val photos as --train-pairs
    python benchmarks/bench_verdict.py --final

add --cached-queries to take the query photos' vectors from the feature cache (same vectors, no
model runs)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from bench_quality import SETS, Features, eval_sets


def pr_curve(results, points=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8), *, margin: bool = False) -> str:
    """Precision / recall of "top-1 score >= t means right" at a few thresholds (margin: the top-1
    score minus the runner-up's instead)."""

    def value(r) -> float:
        if margin:
            return r.scores[0] - r.scores[1] if len(r.scores) > 1 else -1.0
        return r.scores[0] if r.scores else -1.0

    s = np.asarray([value(r) for r in results])
    right = np.asarray([r.rank == 1 for r in results])
    cells = []
    for t in points:
        above = s >= t
        p = right[above].mean() if above.any() else float("nan")
        rec = (right & above).sum() / max(right.sum(), 1)
        cells.append(
            f"m={t:.2f}: P {p:.2f} R {rec:.2f}" if margin else f"t={t:.1f}: P {p:.2f} R {rec:.2f}"
        )
    return "; ".join(cells)


def cached_search(index, feats: Features):
    """index.search for the evaluation photos from the feature cache: the very vectors the model
    gives them (quality_features.py), so a query costs a FAISS search instead of a forward pass."""
    where = {p: (g, i) for g, paths in feats.paths.items() for i, p in enumerate(paths)}

    def search(image=None, k: int = 10, **options):
        g, i = where[str(image)]
        return index.search_vector(feats.vectors(g, "avg", False)[i], k=k, **options)

    return search


def run(
    name: str,
    sets: Path,
    feats: Features,
    adapt: str,
    train_pairs: Path | None = None,
    queries_file: str | None = None,
    cached: bool = False,
) -> dict:
    from vsearch.build import build_index
    from vsearch.embedders.efficientnet import EfficientNetEmbedder
    from vsearch.evaluate.quality import evaluate, read_queries
    from vsearch.search import ProductIndex

    es = eval_sets(sets, feats)[name]
    cat_dir = sets / ("jumia-d2000" if name == "jumia" else "grocery-d2000")
    qfile = (
        queries_file
        or {
            "jumia": "queries.csv",
            "grocery-val": "queries_val.csv",
            "grocery-test": "queries_test.csv",
        }[name]
    )
    vecs = np.concatenate([feats.vectors(g, "avg", False)[rows] for g, rows in es.catalog_groups])
    embedder = EfficientNetEmbedder(precision="fp32")
    idx = sets / "indexes" / f"verdict-{name}-{adapt}{'-pairs' if train_pairs else ''}"
    t = time.perf_counter()
    build_index(
        cat_dir / "catalog.csv",
        idx,
        embedder=embedder,
        embeddings=vecs,
        allow_outside_paths=True,
        adapt=adapt,
        train_pairs=train_pairs,
    )
    build_s = time.perf_counter() - t
    index = ProductIndex.load(idx, embedder)
    if cached:
        index.search = cached_search(index, feats)
    report = evaluate(
        index, read_queries(cat_dir / qfile), k=10, unsold=sets / "ooc" / "queries.csv"
    )
    cm = report.close_match
    v = index.verdict
    out = {
        "set": name,
        "adapt": adapt,
        "pairs": bool(train_pairs),
        "R@1": report.recall[1],
        "R@5": report.recall[5],
        "close_precision": cm.precision,
        "close_recall": cm.recall,
        "unsold_called_close": cm.unsold_called_close,
        "signal": v.get("signal"),
        "threshold": v.get("threshold"),
        "verdict_precision": v.get("precision"),
        "verdict_recall": v.get("recall"),
        "verdict_reason": v.get("reason"),
        "build_s": round(build_s, 1),
        "p50_ms": round(report.latency_p50_ms, 1),
        "adaptation": index.manifest.get("adaptation", {}).get("state"),
        "simulation": index.manifest.get("verdict_simulation"),
        "pr": pr_curve(report.results),
        "pr_margin": pr_curve(report.results, (0.02, 0.05, 0.1, 0.15, 0.2, 0.3), margin=True),
    }
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=Path, default=SETS)
    ap.add_argument("--only", default="jumia,grocery-val")
    ap.add_argument("--adapt", default="auto,off")
    ap.add_argument(
        "--final",
        action="store_true",
        help="grocery test, built with the val photos as train pairs (once)",
    )
    ap.add_argument(
        "--cached-queries",
        action="store_true",
        help="query and unsold photos' vectors from the feature cache instead of running the model "
        "on them",
    )
    args = ap.parse_args()
    feats = Features(args.sets / "features")
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.final:
        pairs = args.sets / "grocery-d2000" / "queries_val.csv"  # image,product_id: the val photos
        for adapt in args.adapt.split(","):
            run(
                "grocery-test",
                args.sets,
                feats,
                adapt,
                train_pairs=pairs if adapt != "off" else None,
                cached=args.cached_queries,
            )
        return
    for name in args.only.split(","):
        for adapt in args.adapt.split(","):
            run(name, args.sets, feats, adapt, cached=args.cached_queries)


if __name__ == "__main__":
    main()
