"""`vsearch tune` on the jumia catalog + ABO distractors: the shipped adaptation vs the tuned model
(+ the same adaptation on top), side by side in one run.

    nice -n 10 python benchmarks/bench_tune.py [--distractors 2000] [--products N] [--views 4] [--max-steps 300]

Protocol (benchmarks/eval_sets.py): the last view of each jumia product group is held out as a
query (never in the catalog, so never seen by the tune); the catalog is the other views + N ABO
distractors. Queries: those held-out views, and phone-like photos of them (vsearch.shopper_photos:
cut out, on clutter, tilted, re-lit, blurred, noised, JPEG 75; the same simulation as
bench_adaptation.py --phone). Both indexes are real `vsearch build`s (adaptation "auto", the
shipped default) searched with `ProductIndex.search`; the tune runs as `python -m vsearch tune`
in a subprocess whose wall time and peak memory (ru_maxrss) are reported.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, load_average  # noqa: E402
from eval_sets import DEFAULT_DATA, write_sets  # noqa: E402

OUT = Path("/tmp/vsearch-bench-tune")


def phone_photos(queries: list[dict], folder: Path) -> list[Path]:
    """Simulated phone photos of the query views, written once (deterministic)."""
    from vsearch.shopper_photos import cutout, scenes, shopper_photo

    folder.mkdir(parents=True, exist_ok=True)
    backgrounds = None
    out = []
    for i, q in enumerate(queries):
        path = folder / f"phone-{i:04d}.jpg"
        if not path.exists():
            if backgrounds is None:
                backgrounds = scenes(12, random.Random("bench-phone"), size=(800, 600))
            photo = shopper_photo(cutout(Path(q["image"])), random.Random(f"phone:{i}"), size=(800, 600),
                                  scene=backgrounds[i % 12])
            buf = io.BytesIO()
            photo.save(buf, "JPEG", quality=75)
            path.write_bytes(buf.getvalue())
        out.append(path)
    return out


def recall(index_dir: Path, images: list, expected: list[str]) -> dict[str, float]:
    from vsearch import ProductIndex

    index = ProductIndex.load(index_dir)
    r1 = r5 = 0
    for img, want in zip(images, expected):
        ids = [h.product_id for h in index.search(image=str(img), k=5)]
        r1 += bool(ids) and ids[0] == want
        r5 += want in ids
    return {"r1": round(r1 / len(expected), 4), "r5": round(r5 / len(expected), 4), "n": len(expected)}


def build(catalog: Path, index_dir: Path, tuned: str) -> dict[str, float]:
    from vsearch.build import build_index

    t = time.perf_counter()
    rep = build_index(catalog, index_dir, model="efficientnet-lite0", tuned=tuned, allow_outside_paths=True)
    return {"seconds": round(time.perf_counter() - t, 1), "embedded": rep.embedded, "reused": rep.reused,
            "images": rep.images}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distractors", type=int, default=2000)
    ap.add_argument("--products", type=int, default=0, help="a fixed random subset of N jumia product groups (0 = all)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--stages", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--validate-every", type=int, default=20)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    res: dict = {"load_before": load_average(), "args": {k: str(v) for k, v in vars(args).items()}}
    log = args.out / "results.json"
    args.out.mkdir(parents=True, exist_ok=True)

    def save(step: str) -> None:
        log.write_text(json.dumps(res, indent=2))
        print(f"[{time.strftime('%H:%M:%S')}] {step}: {json.dumps(res.get(step))}", flush=True)

    sets = write_sets(DEFAULT_DATA, args.out / "sets", distractors=args.distractors)
    import csv

    with open(sets["jumia_queries"], newline="") as f:
        queries = list(csv.DictReader(f))
    if args.products:  # a fixed random subset of the product groups (and their queries)
        keep = set(random.Random(0).sample(sorted({q["product_id"] for q in queries}), args.products))
        queries = [q for q in queries if q["product_id"] in keep]
        with open(sets["jumia_catalog"], newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, [r for r in reader if r["category"] == "distractor" or r["product_id"] in keep]
        sets["jumia_catalog"] = args.out / f"catalog-p{args.products}-d{args.distractors}.csv"
        with open(sets["jumia_catalog"], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    res["catalog"] = {"csv": str(sets["jumia_catalog"]), "queries": len(queries)}
    expected = [q["product_id"] for q in queries]
    phones = phone_photos(queries, args.out / "phone")
    index_dir = args.out / f"index-p{args.products}-d{args.distractors}"

    res["build_base"] = build(sets["jumia_catalog"], index_dir, "off")
    save("build_base")
    res["base"] = {"held_out": recall(index_dir, [q["image"] for q in queries], expected),
                   "phone_like": recall(index_dir, phones, expected)}
    save("base")

    cmd = [sys.executable, "-m", "vsearch", "tune", "--index", str(index_dir), "--quiet", "--views", str(args.views),
           "--max-steps", str(args.max_steps), "--validate-every", str(args.validate_every)]
    if args.stages:
        cmd += ["--stages", str(args.stages)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res["tune"] = {"seconds": round(time.perf_counter() - t, 1), "peak_rss_mib": round(peak_kib / 1024),
                   "rc": proc.returncode, "stdout": proc.stdout[-2000:], "stderr": proc.stderr[-2000:],
                   "load_after": load_average()}
    latest = index_dir / "tuned" / "latest.json"
    if latest.exists():
        res["tune"]["record"] = json.loads(latest.read_text())
    save("tune")
    if proc.returncode != 0 or not (index_dir / "tuned" / "CURRENT.json").exists():
        return
    res["build_tuned"] = build(sets["jumia_catalog"], index_dir, "auto")
    save("build_tuned")
    res["tuned"] = {"held_out": recall(index_dir, [q["image"] for q in queries], expected),
                    "phone_like": recall(index_dir, phones, expected)}
    save("tuned")
    res["load_after"] = load_average()
    save("load_after")
    b, tu = res["base"], res["tuned"]
    print("\n| queries | shipped adaptation R@1 (R@5) | tuned + adaptation R@1 (R@5) | gain R@1 |\n|---|---|---|---|")
    for k, name in (("held_out", "held-out views"), ("phone_like", "phone-like photos")):
        print(f"| {name} ({b[k]['n']}) | {b[k]['r1']:.3f} ({b[k]['r5']:.3f}) | {tu[k]['r1']:.3f} ({tu[k]['r5']:.3f}) | "
              f"{tu[k]['r1'] - b[k]['r1']:+.3f} |")


if __name__ == "__main__":
    main()
