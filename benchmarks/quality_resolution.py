"""Input-resolution and multi-layer read-outs of EfficientNet-Lite0 on the quality sets.

Step 1 (--embed, slow): one forward pass per photo and input size (224 / 320 px by default, short
side resized bicubic, centre crop, as the embedder does), with forward hooks on the seven block
stages; saves the average-pooled stage outputs and the 1280-d head into
/tmp/vsearch-eval/features_res. Step 2 (default, seconds): evaluates plain / higher-resolution /
multi-layer descriptors with bench_quality's simulated pipeline (same sets, same metrics) on
jumia-d2000 and grocery val.

    python benchmarks/quality_resolution.py --embed [--sizes 224,320]
    python benchmarks/quality_resolution.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import SETS, EvalSet, Features, eval_sets, product_scores  # noqa: E402
from quality_features import group_paths  # noqa: E402

from vsearch.evaluate.metrics import recall_at  # noqa: E402

ORDER = ["grocery_iconic", "grocery_val", "jumia_queries", "jumia_catalog", "abo"]
STAGES = (1, 2, 3, 4, 5, 6)  # timm block stages: 24, 40, 80, 112, 192, 320 channels


def embed(sets: Path, out: Path, sizes: list[int], batch: int = 16) -> None:
    import torch
    import torchvision.transforms as T

    from vsearch.catalog.images import load_image
    from vsearch.embedders.efficientnet import MEAN, STD, EfficientNetEmbedder

    model = EfficientNetEmbedder(precision="fp32").model
    grabbed: dict[int, torch.Tensor] = {}
    for i in STAGES:
        model.blocks[i].register_forward_hook(
            lambda mod, inp, o, i=i: grabbed.__setitem__(i, o.float().mean(dim=(2, 3)))
        )
    tfs = {
        s: T.Compose(
            [
                T.Resize(s, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(s),
                T.ToTensor(),
                T.Normalize(MEAN, STD),
            ]
        )
        for s in sizes
    }
    groups = group_paths(sets)
    for s in sizes:  # every group at the first size before the next size: usable results sooner
        for group in ORDER:
            paths = groups[group][0]
            if (out / f"{group}__r{s}.json").exists():
                continue
            t = time.time()
            acc: dict[str, list[np.ndarray]] = {}
            for start in range(0, len(paths), batch):
                imgs = [load_image(p, min_side=max(sizes)) for p in paths[start : start + batch]]
                x = torch.stack([tfs[s](im) for im in imgs])
                with torch.inference_mode():
                    head = model.forward_features(x).float().mean(dim=(2, 3))
                acc.setdefault("head", []).append(head.numpy())
                for i in STAGES:
                    acc.setdefault(f"b{i}", []).append(grabbed[i].numpy())
            for k, v in acc.items():
                np.save(out / f"{group}__r{s}_{k}.npy", np.concatenate(v).astype(np.float32))
            (out / f"{group}__r{s}.json").write_text(json.dumps({"paths": paths}))
            print(f"{group} r{s}: {len(paths)} images in {time.time() - t:.0f} s", flush=True)


def l2(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def descriptor(
    out: Path, group: str, size: int, stages: tuple[int, ...] = (), weight: float = 0.0
) -> np.ndarray:
    """L2(head) ++ weight * (concatenated L2(stage) / sqrt(#stages)), then L2."""
    h = l2(np.load(out / f"{group}__r{size}_head.npy"))
    if not stages or weight == 0:
        return h
    mid = np.concatenate(
        [l2(np.load(out / f"{group}__r{size}_b{i}.npy")) for i in stages], axis=1
    ) / np.sqrt(len(stages))
    return l2(np.concatenate([h, weight * mid], axis=1))


def score(es: EvalSet, out: Path, size: int, stages=(), weight=0.0) -> dict:
    cat = np.concatenate(
        [descriptor(out, g, size, stages, weight)[rows] for g, rows in es.catalog_groups]
    )
    q = descriptor(out, es.query_group, size, stages, weight)[es.query_rows]
    scores, uniq = product_scores(q @ cat.T, es.catalog_pids, "max")
    col = {p: i for i, p in enumerate(uniq)}
    own = scores[np.arange(len(q)), np.asarray([col[e] for e in es.expected])]
    ranks = 1 + (scores > own[:, None]).sum(axis=1)
    r = [int(x) if x <= 10 else None for x in ranks]
    return {"R@1": recall_at(r, 1), "R@5": recall_at(r, 5)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=Path, default=SETS)
    ap.add_argument("--embed", action="store_true")
    ap.add_argument("--sizes", default="224,320")
    ap.add_argument("--distractors", type=int, default=2000)
    args = ap.parse_args()
    out = args.sets / "features_res"
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.embed:
        embed(args.sets, out, sizes)
        return
    sets = eval_sets(args.sets, Features(args.sets / "features"), args.distractors)
    names = ["jumia", "grocery-val"]
    cost = {224: 1.0, 288: (288 / 224) ** 2, 320: (320 / 224) ** 2}
    configs = [(s, (), 0.0) for s in sizes]
    for stages in ((4, 5, 6), (2, 3, 4, 5, 6), (5, 6), (6,), (3, 4, 5, 6)):
        for w in (0.3, 0.5, 1.0):
            configs.append((224, stages, w))
    print(
        "| config | jumia R@1 | jumia R@5 | grocery-val R@1 | grocery-val R@5 "
        "| model time x plain |"
    )
    print("|---|---|---|---|---|---|")
    for size, stages, w in configs:
        res = {n: score(sets[n], out, size, stages, w) for n in names}
        label = f"avg@{size}" + (
            f" + stages {','.join(map(str, stages))} w={w:g}" if stages else ""
        )
        print(
            f"| {label} | "
            + " | ".join(f"{res[n]['R@1']:.3f} | {res[n]['R@5']:.3f}" for n in names)
            + f" | {cost[size]:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
