"""Shared helpers for the speed benchmarks: a random-weight ViT-B-32 checkpoint, data paths, timing.

Random weights cost exactly what trained ones cost, so speed can be measured without a download.
Everything cached lives outside the repository (``~/.cache/vsearch-bench`` or $VSEARCH_BENCH_CACHE).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
JUMIA = SHARED_DATA / "jumia"
CACHE = Path(os.environ.get("VSEARCH_BENCH_CACHE", Path.home() / ".cache" / "vsearch-bench"))


def random_clip_checkpoint(arch: str = "ViT-B-32", seed: int = 0) -> Path:
    """A state dict of a randomly initialised open_clip model, saved once and reused."""
    path = CACHE / f"{arch}-random-seed{seed}.pt"
    if not path.is_file():
        import open_clip
        import torch

        CACHE.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=None)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return path


def jumia_images(n: int) -> list[Path]:
    files = sorted((JUMIA / "images").glob("*.jpg"))
    if not files:
        raise SystemExit(f"no images in {JUMIA / 'images'}")
    return files[:n]


def write_catalog(images: list[Path], path: Path) -> Path:
    """A catalog CSV with one product per image (absolute paths; build with allow_outside_paths)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title"])
        for i, im in enumerate(images):
            w.writerow([f"p{i:07d}", str(im), im.stem])
    return path


def write_synthetic_catalog(n: int, path: Path) -> Path:
    """n products, one (never read) image path each: for --embeddings builds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("product_id,image,title,category,price\n")
        cats = ("mug", "shoe", "bag", "watch", "chair")
        for i in range(n):
            f.write(f"p{i:07d},img/{i:07d}.jpg,item {i},{cats[i % 5]},{(i % 997) / 10:.2f}\n")
    return path


def percentiles(times: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    ms = sorted(t * 1000 for t in times)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return statistics.median(ms), p95


def load_average() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
