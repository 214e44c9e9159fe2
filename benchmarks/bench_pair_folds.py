"""How confirmed shopper photos (--train-pairs) should be cross-fitted to calibrate the "close
match" verdict - designed on grocery val only, from cached features (no model runs).

Nested protocol inside val, repeated over seeds: an *outer* split stands in for the shop's future
queries - a quarter of the val products (--unpaired) get no pairs at all (products nobody confirmed
yet), and of each other product one near-duplicate cluster (raw cosine >= --outer-cosine, connected
components) is held out (a new session of a confirmed product); the rest are the pairs. The index is
built from them as `vsearch build --train-pairs` does (vsearch.learn.fit: projection from catalog +
pairs), the verdict is calibrated on the pairs only with each fold rule, and the chosen threshold is
then judged on the held-out photos (precision / recall of "close match") and on the 300 unsold ooc
photos (share called close).

    python benchmarks/bench_pair_folds.py [--seeds 4] [--outer-cosine 0.75] [--unpaired 0.25]
    [--inner product,0.8,photo]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from bench_quality import SETS, Features, eval_sets

from vsearch.learn import verdict as learn
from vsearch.learn.adaptation import fit_adaptation, training_pairs
from vsearch.learn.query_scores import verdict_from_queries
from vsearch.learn.transforms import nearest


def outer_split(
    q: np.ndarray, labels: np.ndarray, cosine: float, seed: int, unpaired_share: float = 0.25
):
    """(pair rows, held-out rows of confirmed products, rows of products with no pairs)."""
    rng = np.random.default_rng(1000 + seed)
    products = np.unique(labels)
    unpaired = set(
        rng.choice(products, size=int(len(products) * unpaired_share), replace=False).tolist()
    )
    cluster = learn.session_clusters(q, labels, cosine=cosine)
    pairs, new_session, new_product = [], [], []
    for p in products:
        rows = np.flatnonzero(labels == p)
        if p in unpaired:
            new_product += rows.tolist()
            continue
        ids = np.unique(cluster[rows])
        if len(ids) < 2:
            pairs += rows.tolist()
            continue
        out = rng.choice(ids)
        new_session += rows[cluster[rows] == out].tolist()
        pairs += rows[cluster[rows] != out].tolist()
    return (
        np.asarray(pairs, dtype=np.int64),
        np.asarray(new_session, dtype=np.int64),
        np.asarray(new_product, dtype=np.int64),
    )


def judged(index_vecs, pids, proj, q, labels, threshold, signal):
    """(n, right answers above, called close, right answers in all) for real queries."""
    if len(q) == 0:
        return np.zeros(4, dtype=int)
    s = verdict_from_queries(index_vecs, pids, proj.apply(q), labels)
    value = s.top if signal == "score" else s.margin
    close = value >= threshold if threshold is not None else np.zeros(len(value), bool)
    return np.asarray(
        [len(value), int((close & s.right).sum()), int(close.sum()), int(s.right.sum())]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--outer-cosine", type=float, default=0.75)
    ap.add_argument(
        "--unpaired", type=float, default=0.25, help="share of val products given no pairs"
    )
    ap.add_argument("--inner", default="product,0.6,0.7,0.75,0.8,0.85,0.9,photo")
    args = ap.parse_args()
    feats = Features(SETS / "features")
    es = eval_sets(SETS, feats)["grocery-val"]
    raw = np.concatenate([feats.vectors(g, "avg", False)[rows] for g, rows in es.catalog_groups])
    pids = es.catalog_pids.astype(str)
    q_all = feats.vectors(es.query_group, "avg", False)[es.query_rows]
    lab_all = np.asarray(es.expected).astype(str)
    ooc = feats.vectors("ooc", "avg", False)
    print(
        f"load average {os.getloadavg()[0]:.2f}; outer cosine {args.outer_cosine}; unpaired "
        f"{args.unpaired}; "
        f"{args.seeds} seeds",
        flush=True,
    )
    totals: dict[str, dict[str, np.ndarray]] = {}
    for seed in range(args.seeds):
        pr, ns, npd = outer_split(q_all, lab_all, args.outer_cosine, seed, args.unpaired)
        proj = fit_adaptation(
            raw, training_pairs(raw, pids, shopper_vectors=q_all[pr], shopper_labels=lab_all[pr])
        )
        index_vecs = proj.apply(raw)
        for rule in args.inner.split(","):
            t = time.perf_counter()
            if rule == "product":
                v = learn.calibrate(
                    raw,
                    pids,
                    adapted=True,
                    index_vectors=index_vecs,
                    shopper=(q_all[pr], lab_all[pr]),
                    pair_folds="product",
                    seed=seed,
                )
            else:
                cos = 1.01 if rule == "photo" else float(rule)  # photo: every photo its own cluster
                v = learn.calibrate(
                    raw,
                    pids,
                    adapted=True,
                    index_vectors=index_vecs,
                    shopper=(q_all[pr], lab_all[pr]),
                    seed=seed,
                    session_cosine=cos,
                )
            ooc_s = verdict_from_queries(
                index_vecs, pids, proj.apply(ooc), np.full(len(ooc), "__none__")
            )
            ooc_v = ooc_s.top if v.signal == "score" else ooc_s.margin
            # as search decides: a first result outside the products the verdict covers gets no
            # verdict
            ooc_top = pids[nearest(proj.apply(ooc), index_vecs, 1)[1][:, 0]]
            covered = (
                np.ones(len(ooc), bool) if v.covers is None else np.isin(ooc_top, sorted(v.covers))
            )
            row = {
                "new session": judged(
                    index_vecs, pids, proj, q_all[ns], lab_all[ns], v.threshold, v.signal
                ),
                "new product": judged(
                    index_vecs, pids, proj, q_all[npd], lab_all[npd], v.threshold, v.signal
                ),
                "ooc": np.asarray(
                    [
                        len(ooc_v) if v.threshold is not None else 0,
                        0,
                        int((ooc_v >= v.threshold).sum()) if v.threshold is not None else 0,
                        int(((ooc_v >= v.threshold) & covered).sum())
                        if v.threshold is not None
                        else 0,
                    ]
                ),
                "verdicts": np.asarray([1, int(v.threshold is not None), 0, 0]),
            }
            agg = totals.setdefault(rule, {k: np.zeros(4, int) for k in row})
            for k, x in row.items():
                agg[k] += x
            th = (
                "none"
                if v.threshold is None
                else f"{v.signal} >= {v.threshold:.3f} (cal P {v.precision:.2f} R {v.recall:.2f})"
            )
            print(
                f"seed {seed} {rule:>7}: pairs {len(pr)}, held-out {len(ns)} + {len(npd)}; verdict "
                f"{th}; "
                f"{time.perf_counter() - t:.1f} s",
                flush=True,
            )
    print(
        "\n| inner fold rule | builds with a verdict | new sessions: P / R | new products: P / R | "
        "all held out: P / R "
        "| ooc over the threshold (builds with a verdict) | ooc called close (top-1 covered) |"
    )
    print("|---|---|---|---|---|---|---|")
    for rule, agg in totals.items():

        def pr(x):
            return (
                f"{x[1] / x[2]:.2f} / {x[1] / max(x[3], 1):.2f}"
                if x[2]
                else f"- / 0 ({x[0]} photos)"
            )

        both = agg["new session"] + agg["new product"]
        print(
            f"| {rule} | {agg['verdicts'][1]}/{agg['verdicts'][0]} | {pr(agg['new session'])} | "
            f"{pr(agg['new product'])} | "
            f"{pr(both)} | {agg['ooc'][2] / max(agg['ooc'][0], 1):.1%} | "
            f"{agg['ooc'][3] / max(agg['ooc'][0], 1):.1%} |"
        )


if __name__ == "__main__":
    main()
