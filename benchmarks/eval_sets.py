"""Build the retrieval evaluation sets from the real photos in ../shared/data (never copied).

Writes catalog and query CSVs (absolute image paths into the data folder) to OUT
(default /tmp/vsearch-eval):

    jumia-d{N}/catalog.csv      other views + single-image products + N ABO distractors
    jumia-d{N}/queries.csv      the last view of each product group with >= 2 images
    grocery-d{N}/catalog.csv    81 iconic packshots + N ABO distractors
    grocery-d{N}/queries_val.csv   phone photos, for development
    grocery-d{N}/queries_test.csv  phone photos, held out: report once, never tune on them
    ooc/queries.csv             ABO photos of products in no catalog (for "no close match")

Relevance in jumia is by product_group (the same listing posted twice), so the catalog's
product_id *is* the group. Distractors are a fixed random sample (seed 0) of ABO; the
out-of-catalog photos are drawn from the ABO items no catalog uses.

    python benchmarks/eval_sets.py [--data ../shared/data] [--out /tmp/vsearch-eval] [--distractors
    2000]
"""

from __future__ import annotations

import argparse
import csv
import random
from collections import defaultdict
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = Path("/tmp/vsearch-eval")
OOC_QUERIES = 300
MAX_DISTRACTORS = 4000  # ABO items reserved for distractors; the rest may be out-of-catalog queries
CATALOG_FIELDS = ["product_id", "image", "title", "category", "description"]


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict], fields: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def abo_split(data: Path) -> tuple[list[dict], list[dict]]:
    """(distractor pool, out-of-catalog pool): a fixed shuffle of ABO, disjoint halves."""
    rows = _read(data / "abo" / "manifest.csv")
    random.Random(0).shuffle(rows)
    pool = [
        {
            "product_id": f"abo-{r['item_id']}",
            "image": str((data / "abo" / r["image"]).resolve()),
            "title": "",
            "category": "distractor",
            "description": "",
        }
        for r in rows
    ]
    return pool[:MAX_DISTRACTORS], pool[MAX_DISTRACTORS:]


def jumia_rows(data: Path) -> tuple[list[dict], list[dict]]:
    """(catalog rows, query rows) for jumia: the last view of each multi-image group is the
    query."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in _read(data / "jumia" / "manifest.csv"):
        groups[r["product_group"]].append(r)
    catalog, queries = [], []
    for group, rows in sorted(groups.items()):
        rows.sort(key=lambda r: (int(r["view"]), r["product_id"], r["image"]))
        if len(rows) >= 2:
            q = rows[-1]
            queries.append(
                {
                    "image": str((data / "jumia" / q["image"]).resolve()),
                    "product_id": group,
                    "category": q["category"],
                }
            )
            rows = rows[:-1]
        for r in rows:
            catalog.append(
                {
                    "product_id": group,
                    "image": str((data / "jumia" / r["image"]).resolve()),
                    "title": r["title"],
                    "category": r["category"],
                    "description": "",
                }
            )
    return catalog, queries


def grocery_rows(data: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    """(catalog rows, {"val": queries, "test": queries}); category = Fruit / Vegetables /
    Packages."""
    catalog, queries = [], {"val": [], "test": []}
    for r in _read(data / "grocery" / "manifest.csv"):
        path = str((data / "grocery" / r["image"]).resolve())
        top = r["image"].split("/")[1]
        pid = f"{int(r['class_id']):02d}-{r['class_name']}"
        if r["kind"] == "iconic":
            catalog.append(
                {
                    "product_id": pid,
                    "image": path,
                    "title": r["class_name"].replace("-", " "),
                    "category": top,
                    "description": r["description"],
                }
            )
        else:
            queries[r["split"]].append({"image": path, "product_id": pid, "category": top})
    return catalog, queries


def write_sets(
    data: Path = DEFAULT_DATA, out: Path = DEFAULT_OUT, distractors: int = 2000
) -> dict[str, Path]:
    """Write every set; returns {name: csv path}."""
    if not 0 <= distractors <= MAX_DISTRACTORS:
        raise SystemExit(
            f"--distractors must be between 0 and {MAX_DISTRACTORS}, got {distractors}"
        )
    data = Path(data).resolve()
    out = Path(out)
    pool, ooc = abo_split(data)
    pad = pool[:distractors]
    written: dict[str, Path] = {}
    q_fields = ["image", "product_id", "category"]

    jcat, jq = jumia_rows(data)
    d = out / f"jumia-d{distractors}"
    written["jumia_catalog"] = _write(d / "catalog.csv", jcat + pad, CATALOG_FIELDS)
    written["jumia_queries"] = _write(d / "queries.csv", jq, q_fields)

    gcat, gq = grocery_rows(data)
    d = out / f"grocery-d{distractors}"
    written["grocery_catalog"] = _write(d / "catalog.csv", gcat + pad, CATALOG_FIELDS)
    written["grocery_val"] = _write(d / "queries_val.csv", gq["val"], q_fields)
    written["grocery_test"] = _write(d / "queries_test.csv", gq["test"], q_fields)

    ooc_rows = [
        {"image": r["image"], "product_id": "", "category": "out-of-catalog"}
        for r in ooc[:OOC_QUERIES]
    ]
    written["ooc_queries"] = _write(out / "ooc" / "queries.csv", ooc_rows, q_fields)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"shared data folder (default: {DEFAULT_DATA})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder, outside the repo (default: {DEFAULT_OUT})",
    )
    p.add_argument(
        "--distractors",
        type=int,
        default=2000,
        help="ABO distractor products per catalog (default: 2000)",
    )
    args = p.parse_args()
    for name, path in write_sets(args.data, args.out, args.distractors).items():
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f) - 1
        print(f"{name:16s} {n:6d} rows  {path}")


if __name__ == "__main__":
    main()
