"""Retrieval metrics on product rankings: pure functions shared by evaluation, calibration and
benchmarks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def first_correct_rank(ranked: Sequence[str], expected: Iterable[str]) -> int | None:
    """1-based rank of the first acceptable product in a ranking, None when absent."""
    wanted = set(expected)
    for i, pid in enumerate(ranked, start=1):
        if pid in wanted:
            return i
    return None


def recall_at(ranks: Sequence[int | None], k: int) -> float:
    """Share of queries whose first correct product is within the top k."""
    if not ranks:
        return 0.0
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks)


def mean_reciprocal_rank(ranks: Sequence[int | None]) -> float:
    """Mean of 1/rank (0 for queries with no correct product in the list)."""
    if not ranks:
        return 0.0
    return sum(1.0 / r for r in ranks if r is not None) / len(ranks)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); 0 for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else 0.0
