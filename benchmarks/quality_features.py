"""Cache EfficientNet-Lite0 feature variants of every evaluation photo (npy), for bench_quality.py.

One forward pass per image and scale gives both pooled read-outs (avg and GeM), so every
pooling / multi-scale / TTA experiment is a numpy computation on these files instead of a
re-embedding. The variants are computed exactly as vsearch computes them at query and build
time (same image loading, preprocessing, tensor-level flip and rescale), so numbers measured
here are the numbers the product gets; bench_quality.py checks that end to end.

    python benchmarks/quality_features.py [--sets /tmp/vsearch-eval] [--groups g1,g2]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

SCALES = {"s100": 1.0, "s071": 0.7071}


def group_paths(sets: Path) -> dict[str, tuple[list[str], bool]]:
    """{group: (image paths, is_query)} in the order they are embedded (dev sets first)."""

    def col(path: Path) -> list[str]:
        with open(path, newline="", encoding="utf-8") as f:
            return [r["image"] for r in csv.DictReader(f)]

    g = sets / "grocery-d2000"
    j = sets / "jumia-d2000"
    abo = [p for p in col(g / "catalog.csv") if "/abo/" in p]
    return {
        "grocery_iconic": ([p for p in col(g / "catalog.csv") if "/abo/" not in p], False),
        "grocery_val": (col(g / "queries_val.csv"), True),
        "jumia_catalog": ([p for p in col(j / "catalog.csv") if "/abo/" not in p], False),
        "jumia_queries": (col(j / "queries.csv"), True),
        "abo": (abo, False),
        "ooc": (col(sets / "ooc" / "queries.csv"), True),
        "grocery_test": (col(g / "queries_test.csv"), True),
    }


def embed_group(
    embedder, paths: list[str], is_query: bool, batch: int = 32, plain: bool = False
) -> dict[str, np.ndarray]:
    import torch
    import torch.nn.functional as F
    from PIL import ImageOps

    from vsearch.catalog.images import load_image

    out: dict[str, list[np.ndarray]] = {}
    model = embedder.model

    def pooled(x, tag):
        with torch.inference_mode():
            fmap = model.forward_features(x).float()
        avg = fmap.mean(dim=(2, 3))
        gem = fmap.clamp(min=1e-6).pow(3.0).mean(dim=(2, 3)).pow(1 / 3.0)
        for name, v in (("avg", avg), ("gem", gem)):
            v = torch.nn.functional.normalize(v, dim=-1).numpy().astype(np.float32)
            out.setdefault(f"{tag}_{name}", []).append(v)

    def rescale(x, s):
        if s == 1.0:
            return x
        size = round(x.shape[-1] * s)
        return F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )

    for start in range(0, len(paths), batch):
        imgs = [load_image(p, min_side=embedder.input_size) for p in paths[start : start + batch]]
        x = torch.stack([embedder.preprocess(im) for im in imgs])
        for tag, s in SCALES.items():
            if plain and s != 1.0:
                continue
            pooled(rescale(x, s), tag)
        if is_query and not plain:
            xf = torch.flip(x, dims=[3])
            for tag, s in SCALES.items():
                pooled(rescale(xf, s), f"flip_{tag}")
            xp = torch.stack(
                [
                    embedder.preprocess(
                        ImageOps.pad(im, (max(im.size),) * 2, color=(255, 255, 255))
                    )
                    for im in imgs
                ]
            )
            pooled(xp, "pad_s100")
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sets", type=Path, default=Path("/tmp/vsearch-eval"))
    p.add_argument("--groups", default="")
    p.add_argument(
        "--plain",
        action="store_true",
        help="scale 1 only, no query views (enough for the chosen defaults)",
    )
    args = p.parse_args()
    from vsearch.embedders.efficientnet import EfficientNetEmbedder

    feats = args.sets / "features"
    feats.mkdir(parents=True, exist_ok=True)
    embedder = EfficientNetEmbedder(precision="fp32")
    wanted = [g for g in args.groups.split(",") if g]
    for group, (paths, is_query) in group_paths(args.sets).items():
        if wanted and group not in wanted:
            continue
        if (feats / f"{group}.json").exists():
            print(f"{group}: cached", flush=True)
            continue
        t = time.time()
        arrays = embed_group(embedder, paths, is_query, plain=args.plain)
        for k, v in arrays.items():
            np.save(feats / f"{group}__{k}.npy", v)
        (feats / f"{group}.json").write_text(
            json.dumps({"paths": paths, "variants": sorted(arrays)})
        )
        print(f"{group}: {len(paths)} images in {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
