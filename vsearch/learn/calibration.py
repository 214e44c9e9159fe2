"""What the build learns about its own answers: leave-one-image-out recall and the "close match"
verdict. Pure numpy + FAISS on vectors and scores, so both the build (below the search stage)
and the evaluation (above it) can use them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vsearch.learn.transforms import nearest
from vsearch.query_options import QUERY_DEFAULTS


def held_out_recall(
    vectors: np.ndarray, product_of_image: np.ndarray, *, sample: int = 1000, seed: int = 0
) -> tuple[float, int]:
    """(R@1, n) of leave-one-image-out retrieval on stored vectors: each sampled image of a
    multi-image product, with itself removed, must rank its own product first (max over images).
    The cheap, label-free signal build uses to decide per catalog whether whitening helps.
    ``vectors`` may be a memory map: only the sampled rows and a block at a time are read."""
    _, inverse = np.unique(np.asarray(product_of_image), return_inverse=True)
    multi = np.flatnonzero(np.bincount(inverse)[inverse] >= 2)
    if len(multi) == 0:
        return 0.0, 0
    picked = np.random.default_rng(seed).choice(multi, size=min(sample, len(multi)), replace=False)
    _, ids = nearest(vectors[picked], vectors, 2)
    top = np.where(ids[:, 0] == picked, ids[:, 1], ids[:, 0])
    return float(np.mean(inverse[top] == inverse[picked])), len(picked)


# ---------------------------------------------------------------- the "close match" verdict

TARGET_PRECISION = 0.90  # when the index says "close match", the first result is right this often
# at most this share of photos of unsold products may be called a close match
MAX_UNSOLD_RATE = 0.10
MIN_CORRECT_ABOVE = 8  # a threshold must be backed by at least this many right answers above it
MIN_RECALL = 0.05  # a verdict that almost never says "close match" is no verdict
WILSON_Z = 1.0  # precision is judged by its one-sigma lower bound, not the raw share


# what a threshold is put on: the top-1 score, or its lead over the runner-up
SIGNALS = ("score", "margin")


@dataclass(frozen=True)
class VerdictCalibration:
    """When an index may say "close match": the top-1 result's signal >= threshold.

    The signal is the top-1 score, or its margin over the best *other* product (s1 - s2): with a
    model that scores every studio photo alike, a photo that clearly prefers one product is the
    trustworthy case (grocery: recall 0.25 at precision 0.90 by margin against 0.03 by score).
    Both are calibrated and the one with the higher recall at the target precision is kept.
    Under the margin rule only the first result can be a close match.

    Learned from shopper-like queries whose answer is known (``correct``) and from the same photos
    with their own product removed from the catalog (``unsold``: what a photo of a product the shop
    does not sell scores). ``threshold`` None means the index gives no verdict: no threshold reaches
    the target precision with a useful recall, so saying "close match" would mislead.
    """

    threshold: float | None
    precision: float  # on the calibration queries, at the threshold (nan when no verdict)
    recall: float  # share of right top-1 answers called a close match
    unsold_rate: float  # share of unsold photos called a close match
    queries: int
    unsold: int
    target_precision: float
    sources: Mapping[str, int]  # how many calibration queries of each kind
    reason: str  # how the threshold was chosen, or why there is none
    signal: str = "score"  # "score" (top-1 score) or "margin" (top-1 score minus the runner-up's)
    # Products the threshold was calibrated for; None = every product. A verdict that rests on
    # confirmed shopper photos (which also taught the projection their products) says nothing about
    # products nobody confirmed a photo of: their top-1 answers get no verdict.
    covers: frozenset[str] | None = None
    # The query-side settings the calibration queries were searched with ({"tta", "query_expansion",
    # "product_scoring"}); None = QUERY_DEFAULTS (indexes built before it was recorded). Scores made
    # with other settings are not the ones the bar was set on: such a search gets no verdict.
    query_settings: Mapping[str, Any] | None = None

    def applies_to(
        self, tta: str, query_expansion: Mapping[str, Any] | None, product_scoring: str
    ) -> bool:
        """Whether a search with these effective settings scores the way the calibration queries
        did."""
        calibrated = {**QUERY_DEFAULTS, **dict(self.query_settings or {})}
        return query_settings_key(tta, query_expansion, product_scoring) == query_settings_key(
            calibrated["tta"], calibrated["query_expansion"], calibrated["product_scoring"]
        )

    def decide(
        self, top_score: float, runner_up: float | None = None, product_id: str | None = None
    ) -> bool | None:
        """True = close match, False = not sure (below the bar), None = this index gives no verdict
        (at all, or for this top-1 product: see ``covers``).

        runner_up: the second product's score (None when there is no second product: the margin
        is then the score itself, as if the runner-up scored 0, i.e. were unrelated)."""
        if self.threshold is None or (self.covers is not None and product_id not in self.covers):
            return None
        value = (
            top_score
            if self.signal == "score"
            else top_score - (runner_up if runner_up is not None else 0.0)
        )
        return bool(value >= self.threshold)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = dict(self.sources)
        d["covers"] = None if self.covers is None else sorted(self.covers)
        if self.query_settings is None:  # absent = QUERY_DEFAULTS (the manifest contract)
            del d["query_settings"]
        else:
            d["query_settings"] = json.loads(json.dumps(dict(self.query_settings)))
        return {
            k: (
                None
                if isinstance(v, float) and math.isnan(v)
                else round(v, 6)
                if isinstance(v, float)
                else v
            )
            for k, v in d.items()
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VerdictCalibration:
        nan = float("nan")
        signal = str(d.get("signal") or "score")
        if signal not in SIGNALS:
            raise ValueError(f"verdict signal {signal!r} is not one of {', '.join(SIGNALS)}")
        return cls(
            threshold=None if d.get("threshold") is None else float(d["threshold"]),
            precision=nan if d.get("precision") is None else float(d["precision"]),
            recall=float(d.get("recall") or 0.0),
            unsold_rate=nan if d.get("unsold_rate") is None else float(d["unsold_rate"]),
            queries=int(d.get("queries", 0)),
            unsold=int(d.get("unsold", 0)),
            target_precision=float(d.get("target_precision", TARGET_PRECISION)),
            sources=dict(d.get("sources") or {}),
            reason=str(d.get("reason", "")),
            signal=signal,
            covers=None if d.get("covers") is None else frozenset(str(p) for p in d["covers"]),
            query_settings=None if d.get("query_settings") is None else dict(d["query_settings"]),
        )


def query_settings_key(
    tta: str, query_expansion: Mapping[str, Any] | None, product_scoring: str
) -> tuple:
    """What makes two searches' scores comparable: tta, QE (k, and alpha when k > 0; alpha
    defaults to 3.0 as in search) and product scoring. {"k": 0} and no QE are the same."""
    qe = dict(query_expansion or {})
    qe_k = int(qe.get("k", 0) or 0)
    return (
        str(tta),
        qe_k,
        round(float(qe.get("alpha", 3.0)), 6) if qe_k > 0 else None,
        str(product_scoring),
    )


def wilson_lower(successes: np.ndarray, n: np.ndarray, z: float = WILSON_Z) -> np.ndarray:
    """Lower bound of the Wilson score interval for a share successes / n (elementwise)."""
    n = np.maximum(np.asarray(n, dtype=np.float64), 1e-12)
    p = np.asarray(successes, dtype=np.float64) / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def calibrate_verdict(
    scores: np.ndarray,
    correct: np.ndarray,
    unsold_scores: np.ndarray,
    *,
    margins: np.ndarray | None = None,
    unsold_margins: np.ndarray | None = None,
    sources: Mapping[str, int] | None = None,
    target_precision: float = TARGET_PRECISION,
    max_unsold_rate: float = MAX_UNSOLD_RATE,
) -> VerdictCalibration:
    """The lowest threshold on the top-1 score (or margin) at which "close match" is right often
    enough.

    scores/correct: top-1 score of each calibration query and whether that first product was the
    right one; unsold_scores: top-1 scores of the same kind of photos when their product is not in
    the catalog; margins/unsold_margins: the same queries' lead of the top-1 product over the
    runner-up (optional: without them only the score is tried). A threshold t qualifies when, among
    queries at or above t, the Wilson lower bound of the share that is right is >= target_precision,
    at least MIN_CORRECT_ABOVE right answers and MIN_RECALL of all right answers are above it, and
    at most max_unsold_rate of the unsold photos reach t. The lowest qualifying t (the most useful
    verdict) wins; of the two signals, the one with the higher recall; none qualifying = no verdict.
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    src = dict(sources or {})
    nan = float("nan")
    n_unsold = len(unsold_scores)
    if len(scores) == 0:
        return VerdictCalibration(
            None,
            nan,
            0.0,
            nan,
            0,
            n_unsold,
            target_precision,
            src,
            "no verdict: nothing to calibrate on (no product has two photos and no "
            "--train-pairs were given)",
        )
    if not correct.any():
        return VerdictCalibration(
            None,
            nan,
            0.0,
            nan,
            len(scores),
            n_unsold,
            target_precision,
            src,
            "no verdict: no calibration query was answered right",
        )
    tried = {
        "score": _lowest_threshold(
            scores, correct, unsold_scores, target_precision, max_unsold_rate
        )
    }
    if margins is not None and unsold_margins is not None:
        tried["margin"] = _lowest_threshold(
            margins, correct, unsold_margins, target_precision, max_unsold_rate
        )
    found = {k: v for k, v in tried.items() if v[0] is not None}
    if not found:
        best = max(v[1] for v in tried.values())
        signals = " or ".join(f"top-1 {k}" for k in tried)
        return VerdictCalibration(
            None,
            nan,
            0.0,
            nan,
            len(scores),
            n_unsold,
            target_precision,
            src,
            f"no verdict: no threshold on the {signals} reaches precision {target_precision:.2f} "
            "with "
            f"recall >= {MIN_RECALL:.2f} and <= {max_unsold_rate:.0%} unsold photos above it "
            f"(best precision with {MIN_CORRECT_ABOVE}+ right answers: {best:.2f})",
        )
    # higher recall; a tie keeps the plain score
    signal = max(found, key=lambda k: (found[k][2], k == "score"))
    threshold, _, recall, precision, unsold_rate = found[signal]
    what = "top-1 score" if signal == "score" else "lead of the top-1 product over the runner-up"
    return VerdictCalibration(
        threshold=threshold,
        precision=precision,
        recall=recall,
        unsold_rate=unsold_rate,
        queries=len(scores),
        unsold=n_unsold,
        target_precision=target_precision,
        sources=src,
        reason=f"lowest {what} with precision >= {target_precision:.2f} (Wilson lower bound) on "
        f"{len(scores)} shopper-like queries and <= {max_unsold_rate:.0%} of {n_unsold} unsold "
        "photos above it",
        signal=signal,
    )


def _lowest_threshold(
    values: np.ndarray,
    correct: np.ndarray,
    unsold_values: np.ndarray,
    target_precision: float,
    max_unsold_rate: float,
):
    """(threshold or None, best precision seen, recall, precision, unsold rate) for one signal."""
    values = np.asarray(values, dtype=np.float64)
    unsold_values = np.sort(np.asarray(unsold_values, dtype=np.float64))
    order = np.argsort(-values, kind="stable")
    s, c = values[order], correct[order]
    above = np.arange(1, len(s) + 1)
    right = np.cumsum(c)
    lower = wilson_lower(right, above)
    unsold_above = (len(unsold_values) - np.searchsorted(unsold_values, s, side="left")) / max(
        len(unsold_values), 1
    )
    # a threshold sits at a query's value: everything from there up is "above"; ties share one
    # decision
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    ok = (
        last_of_tie
        & (lower >= target_precision)
        & (right >= MIN_CORRECT_ABOVE)
        & (right / correct.sum() >= MIN_RECALL)
        & (unsold_above <= max_unsold_rate)
    )
    best = float(np.max(np.where(right >= MIN_CORRECT_ABOVE, right / above, 0.0)))
    if not ok.any():
        return None, best, 0.0, float("nan"), float("nan")
    i = int(np.flatnonzero(ok)[-1])
    return (
        float(s[i]),
        best,
        float(right[i] / correct.sum()),
        float(right[i] / above[i]),
        float(unsold_above[i]),
    )
