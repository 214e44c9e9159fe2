"""Find the item in a shopper's photo, then look again closer (``search(..., locate=True)``).

The first model pass gives the full photo's vector and the model's own feature map (7 x 7 cells
for EfficientNet at 224 px). Every 3 x 3 to 5 x 5 window of that map is pooled; the window that
best matches an image of one of the full photo's shortlisted products is where the item is. That
part of the original photo, with a margin, is embedded again (a second model pass, at full input
size), and each candidate product is scored by its best image under the full photo plus its best
image under the close-up. Measured in benchmarks/RESULTS.md ("Zooming in"): about +0.02 R@1 on
jumia, grocery phone photos and phone-like photos alike, for twice the model time per query.
"""

from __future__ import annotations

import math

import numpy as np

Box = tuple[int, int, int, int]  # (row0, row1, col0, col1) of map cells, end-exclusive

WINDOW_SIZES = (3, 4, 5)  # window sides in map cells; smaller windows overfit to a detail
MARGIN = 0.5  # the close-up is the window's square enlarged by this share (context for the model)
# products the window is matched against, and that each pass contributes to the merge
SHORTLIST = 50


def window_vectors(
    fmap: np.ndarray, sizes: tuple[int, ...] = WINDOW_SIZES
) -> tuple[np.ndarray, list[Box]]:
    """One photo's map [C, H, W] -> (the mean feature of every s x s window, [R, C]; their boxes).
    Sides larger than the map are skipped; a map smaller than every side gives the whole map."""
    c, h, w = fmap.shape
    # summed-area table: each window's sum is four lookups, whatever its size
    table = np.zeros((c, h + 1, w + 1), dtype=np.float64)
    table[:, 1:, 1:] = np.asarray(fmap, dtype=np.float64).cumsum(1).cumsum(2)
    vectors, boxes = [], []
    for s in [s for s in sizes if s <= min(h, w)] or [min(h, w)]:
        for r in range(h - s + 1):
            for q in range(w - s + 1):
                total = (
                    table[:, r + s, q + s]
                    - table[:, r, q + s]
                    - table[:, r + s, q]
                    + table[:, r, q]
                )
                vectors.append(total / (s * s))
                boxes.append((r, r + s, q, q + s))
    return np.asarray(vectors, dtype=np.float32), boxes


def photo_region(
    photo_size: tuple[int, int], box: Box, grid: int, input_size: int, margin: float = MARGIN
) -> tuple[int, int, int, int]:
    """The square part of the original photo (left, top, right, bottom) that a map window sees.

    The embedder resizes the photo's short side to input_size and takes the centre square, which
    the map divides into grid x grid cells; the window's centre is mapped back through that, its
    side enlarged by margin, and the square kept inside the photo (shifted, not cut)."""
    width, height = photo_size
    scale = input_size / min(width, height)  # photo pixels -> model-input pixels
    cell = input_size / grid
    off_x, off_y = (width * scale - input_size) / 2, (height * scale - input_size) / 2
    r0, r1, c0, c1 = box
    cx = ((c0 + c1) / 2 * cell + off_x) / scale
    cy = ((r0 + r1) / 2 * cell + off_y) / scale
    side = min(max(r1 - r0, c1 - c0) * cell * (1 + margin) / scale, min(width, height))
    left = min(max(cx - side / 2, 0.0), width - side)
    top = min(max(cy - side / 2, 0.0), height - side)
    return round(left), round(top), round(left + side), round(top + side)


def load_side(input_size: int, grid: int = 7) -> int:
    """Short side to decode a photo at so that even the smallest close-up still has input_size
    pixels (a phone photo is otherwise decoded at about input_size, and the close-up would be a
    blurred enlargement)."""
    smallest = min(WINDOW_SIZES) * (1 + MARGIN) / grid  # share of the short side
    return math.ceil(input_size / smallest)
