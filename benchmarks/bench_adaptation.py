"""Catalog adaptation (vsearch.learn.adaptation) on the real evaluation sets, from cached features.

Protocols (product-level R@1/R@5; see benchmarks/eval_sets.py for the sets):
- jumia: last view of each product group held out; the projection is learned from the catalog
  (the other views + 2,000 ABO distractors), exactly as `vsearch build` does.
- jumia-disjoint: the projection learns only from half of the products (a fixed split), and is
  evaluated on the queries of the other half: what a shop gets for products added after the build.
- grocery-val (cv): the catalog has one packshot per product, so there is nothing to learn from it
  alone; with --train-pairs the val phone photos are the pairs. Measured by 5-fold cross-validation
  inside val (learn from 4/5 of the photos, query with the other 1/5).
- grocery-test (--final): learned from all 296 val photos, queried with the 2,485 test photos. Once.

    python benchmarks/quality_features.py --plain      # cached features (minutes, once)
    python benchmarks/bench_adaptation.py [--grid] [--final] [--phone]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bench_quality import SETS, EvalSet, Features, eval_sets, product_scores

from vsearch.evaluate.metrics import recall_at
from vsearch.learn.adaptation import TooFewPairsError, fit_adaptation, training_pairs


def catalog_of(es: EvalSet, feats: Features) -> np.ndarray:
    return np.concatenate([feats.vectors(g, "avg", False)[rows] for g, rows in es.catalog_groups])


def ranks_for(cat: np.ndarray, pids: np.ndarray, q: np.ndarray, expected: list[str]) -> np.ndarray:
    scores, uniq = product_scores(q @ cat.T, pids, "max")
    col = {p: i for i, p in enumerate(uniq)}
    own = scores[np.arange(len(q)), np.asarray([col[e] for e in expected])]
    return 1 + (scores > own[:, None]).sum(axis=1)


def recall(ranks: np.ndarray) -> tuple[float, float]:
    r = [int(x) for x in ranks]
    return recall_at(r, 1), recall_at(r, 5)


def adapt(cat, pids, *, shopper=None, shopper_labels=None, learn_from=None, **opts):
    labels = pids if learn_from is None else np.where(np.isin(pids, list(learn_from)), pids, "")
    # images of products outside learn_from get unique labels: they add no pairs
    if learn_from is not None:
        labels = np.asarray([p if p else f"__single{i}" for i, p in enumerate(labels)])
    pairs = training_pairs(cat, labels, shopper_vectors=shopper, shopper_labels=shopper_labels)
    return fit_adaptation(cat, pairs, **opts)


def jumia(es: EvalSet, feats: Features, opts: dict) -> dict[str, tuple[float, float]]:
    cat, pids = catalog_of(es, feats), es.catalog_pids
    q = feats.vectors(es.query_group, "avg", False)[es.query_rows]
    out = {"plain": recall(ranks_for(cat, pids, q, es.expected))}
    p = adapt(cat, pids, **opts)
    out["adapted"] = recall(ranks_for(p.apply(cat), pids, p.apply(q), es.expected))
    # product-disjoint: learn from half the jumia products, evaluate on the other half's queries
    products = sorted({e for e in es.expected})
    rng = np.random.default_rng(0)
    half = set(rng.choice(products, len(products) // 2, replace=False).tolist())
    other = np.asarray([e not in half for e in es.expected])
    exp_other = [e for e, o in zip(es.expected, other) if o]
    out["disjoint plain"] = recall(ranks_for(cat, pids, q[other], exp_other))
    p = adapt(cat, pids, learn_from=half, **opts)
    out["disjoint adapted"] = recall(ranks_for(p.apply(cat), pids, p.apply(q[other]), exp_other))
    return out


def grocery_cv(
    es: EvalSet, feats: Features, opts: dict, folds: int = 5
) -> dict[str, tuple[float, float]]:
    cat, pids = catalog_of(es, feats), es.catalog_pids
    q = feats.vectors(es.query_group, "avg", False)[es.query_rows]
    labels = np.asarray(es.expected)
    fold = np.random.default_rng(0).permutation(len(q)) % folds
    plain, adapted = np.empty(len(q)), np.empty(len(q))
    plain[:] = ranks_for(cat, pids, q, es.expected)
    for f in range(folds):
        train, test = fold != f, fold == f
        p = adapt(cat, pids, shopper=q[train], shopper_labels=labels[train], **opts)
        adapted[test] = ranks_for(p.apply(cat), pids, p.apply(q[test]), list(labels[test]))
    return {"plain": recall(plain), "adapted (5-fold cv)": recall(adapted)}


def phone_like(
    es: EvalSet, feats: Features, opts: dict, n: int | None = None
) -> dict[str, tuple[float, float]]:
    """Simulated phone photos (vsearch.learn.shopper_photos: cut out, on clutter, tilted, re-lit,
    blurred, noised, JPEG) of the jumia held-out views - images that are not in the catalog -
    searched against the catalog, raw vs adapted."""
    import io
    import random

    from PIL import Image

    from vsearch.embedders.efficientnet import EfficientNetEmbedder
    from vsearch.learn.shopper_photos import cutout, scenes, shopper_photo

    paths = [feats.paths[es.query_group][i] for i in es.query_rows][:n]
    expected = es.expected[: len(paths)]
    rng = random.Random("bench-phone")
    backgrounds = scenes(12, rng, size=(800, 600))
    photos = []
    for i, p in enumerate(paths):
        photo = shopper_photo(
            cutout(Path(p)), random.Random(f"phone:{i}"), size=(800, 600), scene=backgrounds[i % 12]
        )
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=75)  # phones compress
        photos.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    q = EfficientNetEmbedder(precision="fp32").embed_images(photos)
    cat, pids = catalog_of(es, feats), es.catalog_pids
    p = adapt(cat, pids, **opts)
    return {
        "plain": recall(ranks_for(cat, pids, q, expected)),
        "adapted": recall(ranks_for(p.apply(cat), pids, p.apply(q), expected)),
    }


def scale(n_images: int, d: int = 1280, views: int = 5) -> None:
    """What adaptation adds to a build of n_images (synthetic clustered vectors, d dims): fitting,
    projecting the catalog, and the cross-fitted verdict calibration on held-out views."""
    import os

    from vsearch.learn.verdict import calibrate

    rng = np.random.default_rng(0)
    n_products = n_images // views
    centres = rng.normal(size=(n_products, d)).astype(np.float32)
    x = np.repeat(centres, views, axis=0) + 0.8 * rng.normal(size=(n_products * views, d)).astype(
        np.float32
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_products).astype(str), views)
    print(f"load average {os.getloadavg()[0]:.2f}; {len(x)} vectors x {d}")
    t = time.perf_counter()
    pairs = training_pairs(x, labels)
    t1 = time.perf_counter()
    p = fit_adaptation(x, pairs)
    t2 = time.perf_counter()
    projected = p.apply(x)
    t3 = time.perf_counter()
    calibrate(x, labels, adapted=True, index_vectors=projected)
    t4 = time.perf_counter()
    print(
        f"pair scatter {t1 - t:.1f} s, fit {t2 - t1:.1f} s, project {t3 - t2:.1f} s, "
        f"verdict (2 cross-fitted projections + 1,000 held-out views) {t4 - t3:.1f} s; total "
        f"{t4 - t:.1f} s"
    )


def grocery_final(
    sets: dict[str, EvalSet], feats: Features, opts: dict
) -> dict[str, tuple[float, float]]:
    val, test = sets["grocery-val"], sets["grocery-test"]
    cat, pids = catalog_of(test, feats), test.catalog_pids
    qv = feats.vectors(val.query_group, "avg", False)[val.query_rows]
    qt = feats.vectors(test.query_group, "avg", False)[test.query_rows]
    p = adapt(cat, pids, shopper=qv, shopper_labels=np.asarray(val.expected), **opts)
    return {
        "plain": recall(ranks_for(cat, pids, qt, test.expected)),
        "adapted (val pairs)": recall(ranks_for(p.apply(cat), pids, p.apply(qt), test.expected)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=Path, default=SETS)
    ap.add_argument(
        "--grid", action="store_true", help="shrinkage x keep grid (jumia + grocery cv)"
    )
    ap.add_argument("--final", action="store_true", help="grocery test, once, with the defaults")
    ap.add_argument(
        "--phone",
        action="store_true",
        help="only: simulated phone photos of the jumia held-out views",
    )
    ap.add_argument(
        "--scale",
        type=int,
        default=0,
        metavar="N",
        help="only: time adaptation on N synthetic 1280-d vectors",
    )
    args = ap.parse_args()
    feats = Features(args.sets / "features")
    sets = eval_sets(args.sets, feats)
    if args.scale:
        scale(args.scale)
        return
    if args.phone:
        for k, (r1, r5) in phone_like(sets["jumia"], feats, {}).items():
            print(f"jumia phone-like {k:24s} R@1 {r1:.3f}  R@5 {r5:.3f}")
        return
    grid = [{}]
    if args.grid:
        grid = [{"shrinkage": s, "keep": k} for s in (0.1, 0.3, 1.0) for k in (0.25, 0.5, 1.0)]
    for opts in grid:
        t = time.perf_counter()
        res = {}
        if "jumia" in sets:
            res.update({f"jumia {k}": v for k, v in jumia(sets["jumia"], feats, opts).items()})
        if "grocery-val" in sets:
            try:
                res.update(
                    {
                        f"grocery-val {k}": v
                        for k, v in grocery_cv(sets["grocery-val"], feats, opts).items()
                    }
                )
            except TooFewPairsError as e:
                res["grocery-val"] = (float("nan"), float("nan"))
                print(e)
        print(f"{opts or 'defaults'}  ({time.perf_counter() - t:.1f} s)")
        for k, (r1, r5) in res.items():
            print(f"    {k:36s} R@1 {r1:.3f}  R@5 {r5:.3f}")
    if args.final:
        for k, (r1, r5) in grocery_final(sets, feats, {}).items():
            print(f"grocery-test {k:28s} R@1 {r1:.3f}  R@5 {r5:.3f}")


if __name__ == "__main__":
    main()
