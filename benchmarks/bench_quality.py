"""Retrieval-quality experiments on the real evaluation sets (see benchmarks/eval_sets.py).

Step 1 (slow, cached): benchmarks/quality_features.py embeds every photo once per read-out
(avg / GeM pooling, scale 1 and 1/sqrt 2, flipped and padded query views) into npy files.
Step 2 (this script, seconds): every technique is evaluated on those vectors with the same
functions the product uses (vsearch.learn.transforms, vsearch.evaluate.metrics), one switch at a
time and then in combination, on jumia (held-out views) and grocery val. Grocery test is
only evaluated with --final, once, with the chosen defaults.
Step 3 (--end-to-end): builds real indexes with the chosen defaults and runs vsearch's own
evaluate() (real model on the query photos) to confirm the simulated numbers and measure
latency.

    python benchmarks/bench_quality.py [--sets /tmp/vsearch-eval] [--final] [--end-to-end] [--out
    FILE.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vsearch.evaluate.metrics import mean_reciprocal_rank, recall_at
from vsearch.learn import transforms as post

SETS = Path("/tmp/vsearch-eval")


# ---------------------------------------------------------------- cached features


class Features:
    def __init__(self, folder: Path):
        self.folder = folder
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self.paths = {p.stem: json.loads(p.read_text())["paths"] for p in folder.glob("*.json")}

    def raw(self, group: str, variant: str) -> np.ndarray:
        key = (group, variant)
        if key not in self._cache:
            self._cache[key] = np.load(self.folder / f"{group}__{variant}.npy")
        return self._cache[key]

    def vectors(self, group: str, pooling: str, multiscale: bool, tta: str = "none") -> np.ndarray:
        """Exactly what vsearch computes: multi-scale = normalised sum of per-scale unit vectors;
        TTA = normalised mean of the per-view unit vectors."""

        def one(prefix: str) -> np.ndarray:
            v = self.raw(group, f"{prefix}s100_{pooling}")
            if multiscale:
                v = post.l2_normalise(v + self.raw(group, f"{prefix}s071_{pooling}"))
            return v

        views = [one("")]
        if "flip" in tta:
            views.append(one("flip_"))
        if "pad" in tta:
            if multiscale:
                raise ValueError("pad TTA was only cached at scale 1")
            views.append(self.raw(group, f"pad_s100_{pooling}"))
        return post.l2_normalise(np.mean(views, axis=0))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@dataclass
class EvalSet:
    name: str
    # (feature group, rows) making up the catalog, in catalog order
    catalog_groups: list[tuple[str, slice]]
    catalog_pids: np.ndarray
    query_group: str
    query_rows: np.ndarray
    expected: list[str]
    categories: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def eval_sets(sets: Path, feats: Features, distractors: int = 2000) -> dict[str, EvalSet]:
    out = {}
    for name, cat_dir, img_group, qfile, qgroup in (
        ("jumia", f"jumia-d{distractors}", "jumia_catalog", "queries.csv", "jumia_queries"),
        (
            "grocery-val",
            f"grocery-d{distractors}",
            "grocery_iconic",
            "queries_val.csv",
            "grocery_val",
        ),
        (
            "grocery-test",
            f"grocery-d{distractors}",
            "grocery_iconic",
            "queries_test.csv",
            "grocery_test",
        ),
    ):
        if qgroup not in feats.paths:
            continue
        cat = read_csv(sets / cat_dir / "catalog.csv")
        n_own = sum("/abo/" not in r["image"] for r in cat)
        n_abo = len(cat) - n_own
        assert feats.paths[img_group] == [r["image"] for r in cat[:n_own]], (
            f"{img_group} features out of date"
        )
        if n_abo:
            assert feats.paths["abo"][:n_abo] == [r["image"] for r in cat[n_own:]], (
                "abo features out of date"
            )
        qs = read_csv(sets / cat_dir / qfile)
        pos = {p: i for i, p in enumerate(feats.paths[qgroup])}
        out[name] = EvalSet(
            name=name,
            catalog_groups=[(img_group, slice(0, n_own))]
            + ([("abo", slice(0, n_abo))] if n_abo else []),
            catalog_pids=np.asarray([r["product_id"] for r in cat]),
            query_group=qgroup,
            query_rows=np.asarray([pos[q["image"]] for q in qs]),
            expected=[q["product_id"] for q in qs],
            categories=[q["category"] for q in qs],
        )
    return out


# ---------------------------------------------------------------- the simulated pipeline


@dataclass(frozen=True)
class Config:
    pooling: str = "avg"
    multiscale: bool = False
    whitening: tuple | None = None  # (power, shrinkage, components)
    dba: tuple = (0, 3.0)  # (k, alpha)
    tta: str = "none"
    qe: tuple = (0, 3.0)  # (k, alpha)
    scoring: str = "max"

    def label(self) -> str:
        parts = [self.pooling + ("+ms" if self.multiscale else "")]
        if self.whitening:
            p, s, c = self.whitening
            parts.append(f"whiten(p={p},s={s}" + (f",d={c}" if c else "") + ")")
        if self.dba[0]:
            parts.append(f"DBA(k={self.dba[0]},a={self.dba[1]:g})")
        if self.tta != "none":
            parts.append(f"TTA={self.tta}")
        if self.qe[0]:
            parts.append(f"aQE(k={self.qe[0]},a={self.qe[1]:g})")
        if self.scoring != "max":
            parts.append(f"score={self.scoring}")
        return " + ".join(parts)


def product_scores(sims: np.ndarray, pids: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """[q, images] similarities -> ([q, products] scores, product ids) for max / mean / top2."""
    uniq, inv = np.unique(pids, return_inverse=True)
    counts = np.bincount(inv)
    width = counts.max()
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(pids)) - starts[inv[order]]
    table = np.full((len(uniq), width), -1, dtype=np.int64)
    table[inv[order], slot] = order
    s = np.where(table[None] >= 0, sims[:, np.maximum(table, 0)], -np.inf)  # [q, P, W]
    s = -np.sort(-s, axis=2)
    if mode == "max":
        out = s[:, :, 0]
    elif mode == "top2":
        second = (
            np.where(np.isfinite(s[:, :, 1]), s[:, :, 1], s[:, :, 0]) if width > 1 else s[:, :, 0]
        )
        out = (s[:, :, 0] + second) / 2
    else:
        finite = np.isfinite(s)
        out = np.where(finite, s, 0).sum(axis=2) / finite.sum(axis=2)
    return out, uniq


def run(es: EvalSet, feats: Features, cfg: Config) -> dict[str, Any]:
    cat = np.concatenate(
        [feats.vectors(g, cfg.pooling, cfg.multiscale)[rows] for g, rows in es.catalog_groups]
    )
    q = feats.vectors(es.query_group, cfg.pooling, cfg.multiscale, cfg.tta)[es.query_rows]
    if cfg.whitening:
        p, s, c = cfg.whitening
        w = post.fit_whitening(cat, power=p, shrinkage=s, components=c)
        cat, q = w.apply(cat), w.apply(q)
    if cfg.dba[0]:
        cat = post.database_augment(cat, k=cfg.dba[0], alpha=cfg.dba[1])
    if cfg.qe[0]:
        s, i = post.nearest(q, cat, cfg.qe[0])
        q = post.weighted_expansion(q, cat[i], s, cfg.qe[1])
    scores, uniq = product_scores(q @ cat.T, es.catalog_pids, cfg.scoring)
    col = {p: i for i, p in enumerate(uniq)}
    exp_idx = np.asarray([col[e] for e in es.expected])
    own = scores[np.arange(len(q)), exp_idx]
    ranks = 1 + (scores > own[:, None]).sum(axis=1)
    top1 = uniq[np.argmax(scores, axis=1)]
    r = [int(x) if x <= 10 else None for x in ranks]
    per_cat = {}
    for c in sorted(set(es.categories)):
        sel = [rk for rk, cc in zip(r, es.categories) if cc == c]
        per_cat[c] = recall_at(sel, 1)
    return {
        "R@1": recall_at(r, 1),
        "R@5": recall_at(r, 5),
        "R@10": recall_at(r, 10),
        "MRR": mean_reciprocal_rank(r),
        "per_category_r1": per_cat,
        "top1": top1,
        "top_score": scores.max(axis=1),
        "ranks": ranks,
    }


# Relative query cost of each option, measured on this machine (model forward dominates; see
# --end-to-end).
def model_passes(cfg: Config) -> float:
    per_view = 1.0 + (0.5 if cfg.multiscale else 0.0)  # the 158 px pass costs ~half a 224 px pass
    views = 1 + ("flip" in cfg.tta) + ("pad" in cfg.tta)
    return per_view * views


def experiments() -> list[tuple[str, Config]]:
    """One switch at a time from the plain pipeline, then the combinations worth trying."""
    base = Config()
    W = (0.5, 0.1, None)
    exps = [
        ("baseline (plain pipeline)", base),
        ("pooling", Config(pooling="gem")),
        ("pooling", Config(multiscale=True)),
        ("pooling", Config(pooling="gem", multiscale=True)),
        ("whitening", Config(whitening=(0.0, 0.0, None))),
        ("whitening", Config(whitening=(0.25, 0.1, None))),
        ("whitening", Config(whitening=(0.5, 0.01, None))),
        ("whitening", Config(whitening=(0.5, 0.1, None))),
        ("whitening", Config(whitening=(0.5, 1.0, None))),
        ("whitening", Config(whitening=(0.5, 0.1, 256))),
        ("whitening", Config(whitening=(0.5, 0.1, 512))),
        ("TTA", Config(tta="flip")),
        ("TTA", Config(tta="pad")),
        ("TTA", Config(tta="flip+pad")),
        ("aQE", Config(qe=(1, 3.0))),
        ("aQE", Config(qe=(2, 3.0))),
        ("aQE", Config(qe=(5, 3.0))),
        ("DBA", Config(dba=(1, 3.0))),
        ("DBA", Config(dba=(2, 3.0))),
        ("DBA", Config(dba=(5, 3.0))),
        ("scoring", Config(scoring="mean")),
        ("scoring", Config(scoring="top2")),
        ("whitening", Config(whitening=(0.5, 0.3, None))),
        ("whitening", Config(whitening=(0.4, 0.1, None))),
        ("whitening", Config(whitening=(0.6, 0.1, None))),
        ("combined", Config(whitening=W, scoring="top2")),
        ("combined", Config(whitening=W, dba=(1, 3.0))),
        ("combined", Config(whitening=W, tta="flip")),
        ("combined", Config(whitening=W, qe=(1, 3.0))),
        ("combined", Config(pooling="gem", whitening=W)),
        ("combined", Config(pooling="gem", multiscale=True, whitening=W)),
        ("combined", Config(pooling="gem", whitening=W, tta="flip")),
        ("combined", Config(pooling="gem", multiscale=True, whitening=W, tta="flip")),
        ("combined", Config(pooling="gem", whitening=W, tta="flip", qe=(1, 3.0))),
        ("combined", Config(pooling="gem", whitening=W, tta="flip", dba=(1, 3.0))),
        ("combined", Config(pooling="gem", whitening=W, tta="flip", scoring="top2")),
    ]
    return exps


def table(results: list[tuple[str, Config, dict[str, dict]]], set_names: list[str]) -> str:
    head = (
        "| group | configuration | "
        + " | ".join(f"{n} R@1 | {n} R@5" for n in set_names)
        + " | model passes / query |"
    )
    sep = "|" + "---|" * (3 + 2 * len(set_names))
    lines = [head, sep]
    for group, cfg, res in results:
        cells = " | ".join(
            f"{res[n]['R@1']:.3f} | {res[n]['R@5']:.3f}" if n in res else "- | -" for n in set_names
        )
        lines.append(f"| {group} | {cfg.label()} | {cells} | {model_passes(cfg):.1f} |")
    return "\n".join(lines)


def end_to_end(
    sets: Path,
    feats: Features,
    cfg: Config,
    names: list[str],
    distractors: int = 2000,
    limit: int | None = None,
) -> dict[str, Any]:
    """Build real indexes with ``cfg`` (catalog vectors imported from the feature cache, i.e.
    exactly what the model gives) and run vsearch.evaluate.quality with the real model on the query
    photos; plus the "no close match" decision on out-of-catalog ABO photos. Returns the reports."""
    from vsearch.build import build_index
    from vsearch.embedders.efficientnet import EfficientNetEmbedder
    from vsearch.evaluate.quality import confidence_report, evaluate, read_queries, run_queries
    from vsearch.search import ProductIndex

    embedder = EfficientNetEmbedder(
        pooling=cfg.pooling, multiscale=cfg.multiscale, precision="fp32"
    )
    es_all = eval_sets(sets, feats, distractors)
    whitening = (
        {"power": cfg.whitening[0], "shrinkage": cfg.whitening[1], "components": cfg.whitening[2]}
        if cfg.whitening
        else False
    )
    query = {
        "tta": cfg.tta,
        "query_expansion": {"k": cfg.qe[0], "alpha": cfg.qe[1]},
        "product_scoring": cfg.scoring,
    }
    out: dict[str, Any] = {}
    ooc = read_queries(sets / "ooc" / "queries.csv")[: limit or None]
    for name in names:
        es = es_all[name]
        cat_dir = sets / (f"jumia-d{distractors}" if name == "jumia" else f"grocery-d{distractors}")
        qfile = {
            "jumia": "queries.csv",
            "grocery-val": "queries_val.csv",
            "grocery-test": "queries_test.csv",
        }[name]
        vecs = np.concatenate(
            [feats.vectors(g, cfg.pooling, cfg.multiscale)[rows] for g, rows in es.catalog_groups]
        )
        idx = sets / "indexes" / f"{cat_dir.name}-{abs(hash(cfg.label())) % 10**8}"
        t = time.perf_counter()
        build_index(
            cat_dir / "catalog.csv",
            idx,
            embedder=embedder,
            embeddings=vecs,
            allow_outside_paths=True,
            whitening=whitening,
            dba={"k": cfg.dba[0], "alpha": cfg.dba[1]},
            query_defaults=query,
        )
        build_s = time.perf_counter() - t
        index = ProductIndex.load(idx, embedder)
        queries = read_queries(cat_dir / qfile)[: limit or None]
        index.search(image=queries[0].image, k=10)  # warm-up
        report = evaluate(index, queries, k=10)
        conf = None
        if name != "grocery-test":
            in_results = list(report.results)
            conf = confidence_report(
                in_results, run_queries(index, ooc, k=10), index.score_threshold
            )
        out[name] = {
            "report": report,
            "confidence": conf,
            "build_s": build_s,
            "calibration": index.manifest.get("threshold_calibration"),
        }
        print(
            f"[e2e] {name}: R@1 {report.recall[1]:.3f} R@5 {report.recall[5]:.3f} R@10 "
            f"{report.recall[10]:.3f} "
            f"MRR {report.mrr:.3f} p50 {report.latency_p50_ms:.1f} ms p95 "
            f"{report.latency_p95_ms:.1f} ms"
            + (
                f" | threshold {conf.threshold:.3f} precision {conf.precision:.3f} recall "
                f"{conf.recall:.3f} "
                f"ooc rejected {conf.ooc_rejected:.3f}"
                if conf and conf.threshold is not None
                else ""
            ),
            flush=True,
        )
    return out


def latency(
    sets: Path, feats: Features, n: int = 60, distractors: int = 2000
) -> list[tuple[str, float, float]]:
    """Real per-query latency (load + model + search) of each query-side option on the jumia
    index, plain and whitened+DBA; p50/p95 ms over the first n queries."""
    from vsearch.build import build_index
    from vsearch.embedders.efficientnet import EfficientNetEmbedder
    from vsearch.evaluate.quality import evaluate, read_queries
    from vsearch.search import ProductIndex

    es = eval_sets(sets, feats, distractors)["jumia"]
    cat_dir = sets / f"jumia-d{distractors}"
    queries = read_queries(cat_dir / "queries.csv")[:n]
    rows = []
    for emb_opts, label in (({}, "avg"), ({"multiscale": True}, "avg+ms")):
        embedder = EfficientNetEmbedder(precision="fp32", **emb_opts)
        vecs = np.concatenate(
            [feats.vectors(g, "avg", bool(emb_opts))[r] for g, r in es.catalog_groups]
        )
        builds = (
            [("", {})]
            if emb_opts
            else [("", {}), (" + whiten + DBA(k=1)", {"whitening": True, "dba": {"k": 1}})]
        )
        for suffix, build_opts in builds:
            idx = sets / "indexes" / f"latency-{label}{'-w' if build_opts else ''}"
            build_index(
                cat_dir / "catalog.csv",
                idx,
                embedder=embedder,
                embeddings=vecs,
                allow_outside_paths=True,
                calibrate_threshold=False,
                **build_opts,
            )
            index = ProductIndex.load(idx, embedder)
            index.search(image=queries[0].image, k=10)
            options = (
                [("plain", {})]
                if emb_opts or build_opts
                else [
                    ("plain", {}),
                    ("tta=flip", {"tta": "flip"}),
                    ("tta=pad", {"tta": "pad"}),
                    ("tta=flip+pad", {"tta": "flip+pad"}),
                    ("aQE k=2", {"query_expansion": {"k": 2}}),
                    ("score=top2", {"product_scoring": "top2"}),
                ]
            )
            for name, opts in options:
                r = evaluate(index, queries, k=10, **opts)
                rows.append((f"{label}{suffix}, {name}", r.latency_p50_ms, r.latency_p95_ms))
                print(
                    f"[latency] {rows[-1][0]:40s} p50 {r.latency_p50_ms:6.1f} ms  p95 "
                    f"{r.latency_p95_ms:6.1f} ms",
                    flush=True,
                )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=Path, default=SETS)
    ap.add_argument("--distractors", type=int, default=2000)
    ap.add_argument("--only", default="", help="comma-separated set names (jumia, grocery-val)")
    ap.add_argument("--config", default="", help="JSON of one Config to run instead of the grid")
    ap.add_argument(
        "--final", action="store_true", help="also run grocery-test (once, with --config)"
    )
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument(
        "--end-to-end",
        action="store_true",
        help="real indexes + real model on the queries, with --config",
    )
    ap.add_argument(
        "--latency", action="store_true", help="real per-query latency of each query option"
    )
    ap.add_argument("--limit", type=int, default=None, help="end-to-end: first N queries per set")
    args = ap.parse_args()
    feats = Features(args.sets / "features")
    sets = eval_sets(args.sets, feats, args.distractors)
    names = [
        n for n in (args.only.split(",") if args.only else ["jumia", "grocery-val"]) if n in sets
    ]
    if args.final:
        names.append("grocery-test")
    if args.latency:
        latency(args.sets, feats, args.limit or 60, args.distractors)
        return
    if args.end_to_end:
        cfg = Config(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in json.loads(args.config or "{}").items()
            }
        )
        end_to_end(args.sets, feats, cfg, names, args.distractors, args.limit)
        return
    exps = (
        [
            (
                "chosen",
                Config(
                    **{
                        k: tuple(v) if isinstance(v, list) else v
                        for k, v in json.loads(args.config).items()
                    }
                ),
            )
        ]
        if args.config
        else experiments()
    )
    results = []
    for group, cfg in exps:
        t = time.perf_counter()
        res = {n: run(sets[n], feats, cfg) for n in names}
        results.append((group, cfg, res))
        print(
            f"{cfg.label():70s} "
            + "  ".join(f"{n}: R@1 {res[n]['R@1']:.3f} R@5 {res[n]['R@5']:.3f}" for n in names)
            + f"  ({time.perf_counter() - t:.1f} s)",
            flush=True,
        )
    md = table(results, names)
    if args.out:
        args.out.write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
