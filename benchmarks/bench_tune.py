"""`vsearch tune` against the shipped adaptation, side by side in one run (offline model).

    nice -n 10 python benchmarks/bench_tune.py --set jumia [--products N] \\
        [--distractors 2000] [--views 4] [--max-steps 300]
    nice -n 10 python benchmarks/bench_tune.py --set grocery [--distractors 2000] \\
        [--max-queries N]

jumia (benchmarks/eval_sets.py): the last view of each product group is held out as a query (never
in any catalog, so never seen by the tune). The product groups with 2+ photos (all, or a fixed
random subset of ``--products``) are split into two random halves: A is in the catalog when the
tune runs, B is added after it (the product-disjoint half). Queries: the held-out views, and
phone-like photos of them (vsearch.learn.shopper_photos: cut out, on clutter, tilted, re-lit,
blurred, noised, JPEG 75; the simulation of bench_adaptation.py --phone).
  - shipped: `vsearch build` of A + B + distractors with the base model (adaptation "auto").
  - tuned:   `vsearch build` of A + distractors, `vsearch tune` on it, then `vsearch build` of
             A + B + distractors with the tuned model (adaptation "auto" on top).
grocery: the 81 packshots + distractors, built with the 296 val photos as --train-pairs (both arms);
the tune also gets them as --train-pairs; queries: the test photos (never tuned on).
The tune runs as `python -m vsearch tune` in a subprocess: its wall time and peak memory
(ru_maxrss).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, load_average  # noqa: E402
from eval_sets import DEFAULT_DATA, write_sets  # noqa: E402

OUT = Path("/tmp/vsearch-bench-tune")


def phone_photos(queries: list[dict], folder: Path) -> list[Path]:
    """Simulated phone photos of the query views, written once (deterministic per query image)."""
    from vsearch.learn.shopper_photos import cutout, scenes, shopper_photo

    folder.mkdir(parents=True, exist_ok=True)
    backgrounds = None
    out = []
    for q in queries:
        key = Path(q["image"]).stem
        path = folder / f"phone-{key}.jpg"
        if not path.exists():
            if backgrounds is None:
                backgrounds = scenes(12, random.Random("bench-phone"), size=(800, 600))
            photo = shopper_photo(
                cutout(Path(q["image"])),
                random.Random(f"phone:{key}"),
                size=(800, 600),
                scene=backgrounds[sum(map(ord, key)) % 12],
            )
            buf = io.BytesIO()
            photo.save(buf, "JPEG", quality=75)
            path.write_bytes(buf.getvalue())
        out.append(path)
    return out


def recall(index_dir: Path, images: list, expected: list[str]) -> dict[str, float]:
    from vsearch import ProductIndex

    index = ProductIndex.load(index_dir)
    r1 = r5 = 0
    t = time.perf_counter()
    for img, want in zip(images, expected):
        ids = [h.product_id for h in index.search(image=str(img), k=5)]
        r1 += bool(ids) and ids[0] == want
        r5 += want in ids
    n = max(1, len(expected))
    return {
        "r1": round(r1 / n, 4),
        "r5": round(r5 / n, 4),
        "n": len(expected),
        "ms_per_query": round(1000 * (time.perf_counter() - t) / n, 1),
    }


def build(
    catalog: Path, index_dir: Path, tuned: str, pairs: Path | None = None
) -> dict[str, float]:
    from vsearch.build import build_index

    t = time.perf_counter()
    rep = build_index(
        catalog,
        index_dir,
        model="efficientnet-lite0",
        tuned=tuned,
        train_pairs=pairs,
        allow_outside_paths=True,
    )
    return {
        "seconds": round(time.perf_counter() - t, 1),
        "embedded": rep.embedded,
        "reused": rep.reused,
        "images": rep.images,
        "fingerprint": rep.embedder.fingerprint[-30:],
    }


def tune(index_dir: Path, args: argparse.Namespace, pairs: Path | None = None) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "vsearch",
        "tune",
        "--index",
        str(index_dir),
        "--quiet",
        "--views",
        str(args.views),
        "--max-steps",
        str(args.max_steps),
        "--validate-every",
        str(args.validate_every),
    ]
    if args.stages:
        cmd += ["--stages", str(args.stages)]
    if args.max_minutes:
        cmd += ["--max-minutes", str(args.max_minutes)]
    if pairs is not None:
        cmd += ["--train-pairs", str(pairs)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = {
        "seconds": round(time.perf_counter() - t, 1),
        "peak_rss_mib": round(peak_kib / 1024),
        "rc": proc.returncode,
        "stdout": proc.stdout[-1500:],
        "stderr": proc.stderr[-1500:],
        "load_after": load_average(),
    }
    latest = index_dir / "tuned" / "latest.json"
    if latest.exists():
        out["record"] = json.loads(latest.read_text())
    return out


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=["jumia", "grocery"], default="jumia")
    ap.add_argument("--distractors", type=int, default=2000)
    ap.add_argument(
        "--products",
        type=int,
        default=0,
        help="jumia: a fixed random subset of N product groups with 2+ photos (0 = all of them)",
    )
    ap.add_argument(
        "--max-queries",
        type=int,
        default=0,
        help="grocery: a fixed random subset of N test photos (0 = all)",
    )
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--stages", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--validate-every", type=int, default=20)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--shipped-from",
        type=Path,
        default=None,
        help="jumia: a previous run's folder with the same --products/--distractors; its shipped "
        "arm (index and figures) is reused instead of built and measured again (R@1 is the same; "
        "its build time is then from that run, not side by side)",
    )
    args = ap.parse_args()
    res: dict = {"load_before": load_average(), "args": {k: str(v) for k, v in vars(args).items()}}
    tag = (
        f"{args.set}-p{args.products}-d{args.distractors}-s{args.stages or 'default'}-v{args.views}"
    )
    work = args.out / tag
    work.mkdir(parents=True, exist_ok=True)
    log = work / "results.json"

    def save(step: str) -> None:
        log.write_text(json.dumps(res, indent=2))
        print(f"[{time.strftime('%H:%M:%S')}] {step}: {json.dumps(res.get(step))}", flush=True)

    sets = write_sets(DEFAULT_DATA, args.out / "sets", distractors=args.distractors)
    if args.set == "grocery":
        _, queries = read_csv(sets["grocery_test"])
        if args.max_queries:
            queries = random.Random(0).sample(queries, min(args.max_queries, len(queries)))
        pairs = sets["grocery_val"]
        expected = [q["product_id"] for q in queries]
        images = [q["image"] for q in queries]
        arms = {}
        for arm in ("shipped", "tuned"):
            index_dir = work / f"index-{arm}"
            if arm == "shipped":
                res["build_shipped"] = build(sets["grocery_catalog"], index_dir, "off", pairs)
                save("build_shipped")
            # the same index (a copy: its embedding cache spares embedding everything again), then
            # tuned
            else:
                shutil.rmtree(index_dir, ignore_errors=True)
                shutil.copytree(work / "index-shipped", index_dir, symlinks=True)
                res["tune"] = tune(index_dir, args, pairs)
                save("tune")
                if not (index_dir / "tuned" / "CURRENT.json").exists():
                    break
                res["build_tuned"] = build(sets["grocery_catalog"], index_dir, "auto", pairs)
                save("build_tuned")
            res[arm] = {"test": recall(index_dir, images, expected)}
            save(arm)
            arms[arm] = res[arm]
        kinds = (("test", "grocery test photos"),)
    else:
        fields, catalog = read_csv(sets["jumia_catalog"])
        _, queries = read_csv(sets["jumia_queries"])
        # products with a held-out view to search for
        groups = sorted({r["product_id"] for r in queries})
        if args.products:
            groups = sorted(random.Random(0).sample(groups, args.products))
        random.Random(1).shuffle(groups)
        half_a = set(groups[: len(groups) // 2])
        half_b = set(groups[len(groups) // 2 :])
        full = [
            r
            for r in catalog
            if r["category"] == "distractor" or r["product_id"] in half_a | half_b
        ]
        only_a = [r for r in full if r["product_id"] not in half_b]
        cat_full = write_csv(work / "catalog-full.csv", fields, full)
        cat_a = write_csv(work / "catalog-a.csv", fields, only_a)
        q = {
            "a": [x for x in queries if x["product_id"] in half_a],
            "b": [x for x in queries if x["product_id"] in half_b],
        }
        phones = {h: phone_photos(q[h], args.out / "phone") for h in q}
        res["catalog"] = {
            "groups_a": len(half_a),
            "groups_b": len(half_b),
            "images_full": len(full),
            "images_a": len(only_a),
            "queries_a": len(q["a"]),
            "queries_b": len(q["b"]),
        }
        save("catalog")

        def measure(index_dir: Path) -> dict:
            out = {}
            for h in q:
                want = [x["product_id"] for x in q[h]]
                out[f"held_out_{h}"] = recall(index_dir, [x["image"] for x in q[h]], want)
                out[f"phone_like_{h}"] = recall(index_dir, phones[h], want)
            return out

        shipped = work / "index-shipped"
        if args.shipped_from:
            if args.shipped_from.resolve() == work.resolve():
                sys.exit("--shipped-from: a previous run's folder, not this run's (use --out)")
            prev = json.loads((args.shipped_from / "results.json").read_text())
            same = ("set", "products", "distractors")
            if any(prev["args"][k] != str(getattr(args, k)) for k in same):
                sys.exit(f"--shipped-from {args.shipped_from}: not the same {'/'.join(same)}")
            shutil.rmtree(shipped, ignore_errors=True)
            shutil.copytree(args.shipped_from / "index-shipped", shipped, symlinks=True)
            res["build_shipped"] = {**prev["build_shipped"], "from": str(args.shipped_from)}
            res["shipped"] = prev["shipped"]
        else:
            res["build_shipped"] = build(cat_full, shipped, "off")
            save("build_shipped")
            res["shipped"] = measure(shipped)
        save("shipped")
        tuned_dir = work / "index-tuned"
        # a copy: its embedding cache spares embedding A again
        shutil.rmtree(tuned_dir, ignore_errors=True)
        shutil.copytree(shipped, tuned_dir, symlinks=True)
        res["build_a"] = build(cat_a, tuned_dir, "off")
        save("build_a")
        res["tune"] = tune(tuned_dir, args)
        save("tune")
        if (tuned_dir / "tuned" / "CURRENT.json").exists():
            res["build_tuned"] = build(cat_full, tuned_dir, "auto")
            save("build_tuned")
            res["tuned"] = measure(tuned_dir)
            save("tuned")
        arms = {"shipped": res["shipped"], "tuned": res.get("tuned")}
        kinds = (
            ("held_out_a", "held-out views, tuned products (A)"),
            ("phone_like_a", "phone-like photos, tuned products (A)"),
            ("held_out_b", "held-out views, added after the tune (B)"),
            ("phone_like_b", "phone-like photos, added after the tune (B)"),
        )
    res["load_after"] = load_average()
    save("load_after")
    b, tu = arms["shipped"], arms.get("tuned")
    if not tu:
        print("the tune was not kept: nothing to compare")
        return
    print(
        "\n| queries | shipped adaptation R@1 (R@5) | tuned + adaptation R@1 (R@5) | gain R@1 "
        "|\n|---|---|---|---|"
    )
    for k, name in kinds:
        print(
            f"| {name} ({b[k]['n']}) | {b[k]['r1']:.3f} ({b[k]['r5']:.3f}) | {tu[k]['r1']:.3f} "
            f"({tu[k]['r5']:.3f}) | "
            f"{tu[k]['r1'] - b[k]['r1']:+.3f} |"
        )


if __name__ == "__main__":
    main()
