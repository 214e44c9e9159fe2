"""Words with photos on jumia (offline model, 2,000 ABO distractors): product-level R@1 of each
held-out view as the photo alone, the photo plus one word of its own title, and the word alone;
the fusion rule and its weight side by side.

The word (a shopper could know it by looking): the title's first colour word (COLOURS); when the
title names no colour, its first word that is not a number, a size or a generic shop word
(GENERIC) - in these titles usually the brand or model printed on the item or its box. Results are
also given for the colour-word queries alone.

    python benchmarks/eval_sets.py            # once: /tmp/vsearch-eval/jumia-d2000
    python benchmarks/bench_words.py [--eval /tmp/vsearch-eval/jumia-d2000] \\
        [--index /tmp/vsearch-words/jumia]

Speed (``--speed N``): a catalog of N products whose titles are 4-9 words drawn (Zipf-like) from
the jumia titles' vocabulary plus a colour and a brand, built with ``--embeddings`` semantics
(random unit vectors, the offline model's identity, so words alone are BM25 alone): the build's
wall time and the words index's share of it (the manifest's ``words.seconds``), then
``ProductIndex.search(text=..., k=10)`` p50/p95 over 300 queries of one or two words taken from
random products' titles. The vector index is ``flat`` by default (``--index-type``): the cheapest
build, so the words index's share of it is the largest. Beside it, in the same run, the BM25 query
alone as the library runs it (products holding every word first) and as one query over every
product holding any of the words, so the two are compared on the same load. ``--reuse`` keeps an
index built by an earlier run (same N) and times only the queries.

    python benchmarks/bench_words.py --speed 100000 [--reuse]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from collections import defaultdict
from pathlib import Path

COLOURS = (
    "black white red blue green yellow pink purple grey gray silver gold brown orange navy beige "
    "rose maroon burgundy khaki cream ivory violet turquoise teal wine"
).split()
GENERIC = set(
    (
        "new original high quality best smart fashion fashionable casual classic luxury men mens "
        "women "
        "womens ladies unisex kids for with and the of in to a an set pcs pc pack portable "
        "wireless "
        "bluetooth usb type in 1 plus pro mini max super ultra premium universal"
    ).split()
)


def shopper_word(title: str) -> tuple[str | None, str]:
    """(the word, "colour" | "other") by the rule in this module's docstring."""
    tokens = re.findall(r"[a-z][a-z0-9'-]*", title.lower())
    for t in tokens:
        if t in COLOURS:
            return t, "colour"
    for t in tokens:
        if t not in GENERIC and not any(c.isdigit() for c in t) and len(t) > 2:
            return t, "other"
    return None, "none"


def speed(n: int, work: Path, jumia_manifest: Path, index_type: str, reuse: bool) -> None:
    """Build wall time, the words index's share of it, and text search p50 on n products."""
    import random
    import statistics

    import numpy as np

    from vsearch.build import build_index
    from vsearch.embeddings.imported import model_identity
    from vsearch.search import ProductIndex
    from vsearch.store import words

    identity = model_identity("efficientnet-lite0")
    with open(jumia_manifest, encoding="utf-8") as f:
        vocab = sorted(
            {
                t
                for r in csv.DictReader(f)
                for t in re.findall(r"[a-z][a-z0-9'-]+", r["title"].lower())
            }
        )
    rng = random.Random(0)
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    rng.shuffle(weights)
    brands = [f"{rng.choice(vocab)}{rng.choice(['ex', 'ia', 'on', 'ar'])}" for _ in range(500)]
    work.mkdir(parents=True, exist_ok=True)
    catalog = work / f"catalog-{n}.csv"
    titles = []
    with open(catalog, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title", "brand", "category", "colour", "price"])
        for i in range(n):
            title = " ".join(rng.choices(vocab, weights, k=rng.randint(4, 9))).title()
            titles.append(title)
            w.writerow(
                [
                    f"p{i:07d}",
                    f"img/{i:07d}.jpg",
                    title,
                    rng.choice(brands),
                    f"cat{i % 40}",
                    rng.choice(COLOURS),
                    f"{(i % 997) / 10:.2f}",
                ]
            )
    index_dir = work / f"index-{n}"
    if not (reuse and (index_dir / "CURRENT").is_file()):
        vectors = np.random.default_rng(n).standard_normal((n, identity.dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        np.save(work / f"vectors-{n}.npy", vectors)
        del vectors
        t = time.perf_counter()
        build_index(
            catalog,
            index_dir,
            model="efficientnet-lite0",
            embeddings=work / f"vectors-{n}.npy",
            index_type=index_type,
        )
        build_s = time.perf_counter() - t
        words_s = ProductIndex(index_dir, identity).manifest["words"]["seconds"]
        print(
            f"{n} products: build {build_s:.1f} s, words index {words_s:.2f} s = "
            f"{100 * words_s / build_s:.1f} % of it"
        )
    index = ProductIndex(index_dir, identity)
    queries = []
    for _ in range(300):
        tokens = rng.choice(titles).lower().split()
        queries.append(" ".join(rng.sample(tokens, rng.choice([1, 2]))))
    for q in queries[:20]:  # warm the page cache
        index.search(text=q, k=10)
    took = []
    for q in queries:
        t = time.perf_counter()
        index.search(text=q, k=10)
        took.append((time.perf_counter() - t) * 1000)
    gen = index._gen

    def any_word(q: str) -> None:
        words._bm25(gen.query, words.match_expression(q), "", (), None, 10)

    def every_word_first(q: str) -> None:
        words.word_scores(gen.query, q, limit=10)

    timings = {"text search, k=10": took}
    for name, fn in (("BM25, every word first", every_word_first), ("BM25, any word", any_word)):
        timings[name] = []
        for q in queries:
            t = time.perf_counter()
            fn(q)
            timings[name].append((time.perf_counter() - t) * 1000)
    for name, times in timings.items():
        times.sort()
        print(
            f"{name}, {len(times)} queries: p50 {statistics.median(times):.1f} ms, "
            f"p95 {times[int(0.95 * (len(times) - 1))]:.1f} ms"
        )
    print(f"(load {open('/proc/loadavg').read().split()[0]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", type=Path, default=Path("/tmp/vsearch-eval/jumia-d2000"))
    ap.add_argument("--index", type=Path, default=Path("/tmp/vsearch-words/jumia"))
    ap.add_argument("--weights", default="0,0.1,0.2,0.3,0.5,0.75,1,2")
    ap.add_argument("--depths", default="10,20,50", help="photo shortlist depths the words re-rank")
    ap.add_argument(
        "--speed",
        type=int,
        metavar="N",
        help="instead: build + text search speed on N synthetic products",
    )
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/vsearch-words/speed"), help="--speed's folder"
    )
    ap.add_argument(
        "--reuse", action="store_true", help="--speed: keep an index an earlier run built"
    )
    ap.add_argument(
        "--index-type",
        default="flat",
        help="--speed's vector index (default flat: the cheapest build, "
        "so the words index's share is the largest; text search does not use it)",
    )
    args = ap.parse_args()
    if args.speed:
        speed(
            args.speed,
            args.work,
            Path(__file__).resolve().parents[2] / "shared" / "data" / "jumia" / "manifest.csv",
            args.index_type,
            args.reuse,
        )
        return
    from vsearch.build import build_index
    from vsearch.embedders import load_embedder
    from vsearch.search import ProductIndex
    from vsearch.store import words as words

    embedder = load_embedder("efficientnet-lite0")
    if not (args.index / "CURRENT").is_file():
        t = time.perf_counter()
        build_index(
            args.eval / "catalog.csv", args.index, embedder=embedder, allow_outside_paths=True
        )
        print(f"built in {time.perf_counter() - t:.1f} s")
    index = ProductIndex.load(args.index, embedder)
    print("words entry:", json.dumps(index.manifest.get("words")))
    titles = {}
    with open(args.eval / "catalog.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            titles.setdefault(r["product_id"], r["title"])
    with open(args.eval / "queries.csv", encoding="utf-8") as f:
        queries = list(csv.DictReader(f))
    gen = index._gen
    weights = [float(w) for w in args.weights.split(",")]
    depths = [int(d) for d in args.depths.split(",")]
    hits1 = defaultdict(int)
    counts = defaultdict(int)
    took = []
    for n, q in enumerate(queries):
        word, kind = shopper_word(titles.get(q["product_id"], ""))
        want = q["product_id"]
        shortlist = index.search(image=q["image"], k=words.SHORTLIST)
        ids = [h.product_id for h in shortlist]
        groups = ["all", kind] if word else ["all", "none"]
        for g in groups:
            counts[g] += 1
            hits1[(g, "photo")] += bool(ids and ids[0] == want)
        pids = [int(gen.vid_to_pid[h.image_id]) for h in shortlist]
        # no word: the photo alone
        found = dict(words.word_scores(gen.query, word, pids=pids)) if word else {}
        rel = [found.get(p, 0.0) for p in pids]
        for depth in depths:
            for w in weights:
                order = words.fuse_photo(
                    [h.score for h in shortlist[:depth]], rel[:depth], weight=w
                )
                dropped = (
                    want in ids
                    and ids.index(want) < depth
                    and order.index(ids.index(want)) > ids.index(want)
                )
                for g in groups:
                    hits1[(g, f"fused shortlist {depth} w={w:g}")] += (
                        bool(order) and ids[order[0]] == want
                    )
                    hits1[(g, f"dropped: shortlist {depth} w={w:g}")] += dropped
        rrf = words.reciprocal_rank_fusion(
            pids, [p for p, _ in sorted(found.items(), key=lambda x: -x[1])]
        )
        for g in groups:
            hits1[(g, "rrf")] += pids[ids.index(want)] == rrf[0][0] if want in ids else 0
        t = time.perf_counter()
        # the shipped path, default weight
        product = index.search(image=q["image"], text=word, k=10)
        took.append(time.perf_counter() - t)
        try:
            alone = index.search(text=word, k=10) if word else []
        except Exception:  # noqa: BLE001 - NoWordMatchError: counts as a miss
            alone = []
        for g in groups:
            hits1[(g, f"product path (w={words.WORD_WEIGHT:g})")] += bool(
                product and product[0].product_id == want
            )
            hits1[(g, "word alone")] += bool(alone and alone[0].product_id == want)
        if n % 100 == 0:
            print(f"{n}/{len(queries)}", flush=True)
    print(f"\nphoto + word search p50 {sorted(took)[len(took) // 2] * 1000:.1f} ms")
    print(f"queries: {dict(counts)}  (load {open('/proc/loadavg').read().split()[0]})")
    methods = sorted({m for _, m in hits1}, key=lambda m: (m != "photo", m))
    print(
        "| method | "
        + " | ".join(f"R@1 {g} ({counts[g]})" for g in ("all", "colour", "other"))
        + " |"
    )
    print("|---|---|---|---|")
    for m in methods:
        cells = [
            f"{hits1[(g, m)] / counts[g]:.3f}" if counts[g] else "-"
            for g in ("all", "colour", "other")
        ]
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
