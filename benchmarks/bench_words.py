"""Words with photos on jumia (offline model, 2,000 ABO distractors): product-level R@1 of each
held-out view as the photo alone, the photo plus one word of its own title, and the word alone;
the fusion rule and its weight side by side.

The word (a shopper could know it by looking): the title's first colour word (COLOURS); when the
title names no colour, its first word that is not a number, a size or a generic shop word
(GENERIC) - in these titles usually the brand or model printed on the item or its box. Results are
also given for the colour-word queries alone.

    python benchmarks/eval_sets.py            # once: /tmp/vsearch-eval/jumia-d2000
    python benchmarks/bench_words.py [--eval /tmp/vsearch-eval/jumia-d2000] [--index /tmp/vsearch-words/jumia]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from collections import defaultdict
from pathlib import Path

COLOURS = ("black white red blue green yellow pink purple grey gray silver gold brown orange navy beige "
           "rose maroon burgundy khaki cream ivory violet turquoise teal wine").split()
GENERIC = set(("new original high quality best smart fashion fashionable casual classic luxury men mens women "
               "womens ladies unisex kids for with and the of in to a an set pcs pc pack portable wireless "
               "bluetooth usb type in 1 plus pro mini max super ultra premium universal").split())


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", type=Path, default=Path("/tmp/vsearch-eval/jumia-d2000"))
    ap.add_argument("--index", type=Path, default=Path("/tmp/vsearch-words/jumia"))
    ap.add_argument("--weights", default="0,0.1,0.2,0.3,0.5,0.75,1,2")
    ap.add_argument("--depths", default="10,20,50", help="photo shortlist depths the words re-rank")
    args = ap.parse_args()
    from vsearch import words
    from vsearch.build import build_index
    from vsearch.embedders import load_embedder
    from vsearch.search import ProductIndex

    embedder = load_embedder("efficientnet-lite0")
    if not (args.index / "CURRENT").is_file():
        t = time.perf_counter()
        build_index(args.eval / "catalog.csv", args.index, embedder=embedder, allow_outside_paths=True)
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
        found = dict(words.word_scores(gen.query, word, pids=pids)) if word else {}  # no word: the photo alone
        rel = [found.get(p, 0.0) for p in pids]
        for depth in depths:
            for w in weights:
                order = words.fuse_photo([h.score for h in shortlist[:depth]], rel[:depth], weight=w)
                dropped = want in ids and ids.index(want) < depth and order.index(ids.index(want)) > ids.index(want)
                for g in groups:
                    hits1[(g, f"fused shortlist {depth} w={w:g}")] += bool(order) and ids[order[0]] == want
                    hits1[(g, f"dropped: shortlist {depth} w={w:g}")] += dropped
        rrf = words.reciprocal_rank_fusion(pids, [p for p, _ in sorted(found.items(), key=lambda x: -x[1])])
        for g in groups:
            hits1[(g, "rrf")] += pids[ids.index(want)] == rrf[0][0] if want in ids else 0
        t = time.perf_counter()
        product = index.search(image=q["image"], text=word, k=10)  # the shipped path, default weight
        took.append(time.perf_counter() - t)
        try:
            alone = index.search(text=word, k=10) if word else []
        except Exception:  # noqa: BLE001 - NoWordMatchError: counts as a miss
            alone = []
        for g in groups:
            hits1[(g, f"product path (w={words.WORD_WEIGHT:g})")] += bool(product and product[0].product_id == want)
            hits1[(g, "word alone")] += bool(alone and alone[0].product_id == want)
        if n % 100 == 0:
            print(f"{n}/{len(queries)}", flush=True)
    print(f"\nphoto + word search p50 {sorted(took)[len(took) // 2] * 1000:.1f} ms")
    print(f"queries: {dict(counts)}  (load {open('/proc/loadavg').read().split()[0]})")
    methods = sorted({m for _, m in hits1}, key=lambda m: (m != "photo", m))
    print("| method | " + " | ".join(f"R@1 {g} ({counts[g]})" for g in ("all", "colour", "other")) + " |")
    print("|---|---|---|---|")
    for m in methods:
        cells = [f"{hits1[(g, m)] / counts[g]:.3f}" if counts[g] else "-" for g in ("all", "colour", "other")]
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
