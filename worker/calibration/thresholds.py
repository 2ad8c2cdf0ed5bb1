"""Choosing one operating point from a site's confirmed cases, honestly. Pure numpy.

The rule is the training rule (``worker.training.calibration.sensitivity_threshold``): the
largest threshold whose sensitivity on the cases reaches an *in-sample target*. On a few
dozen melanomas that rule is optimistic: a threshold set exactly at the second-lowest
melanoma score misses more than 1 in 30 of the *next* melanomas. So the in-sample target is
itself chosen by out-of-bag bootstrap: for each resample (stratified by class) the rule is
applied to the drawn cases and judged on the cases not drawn; the least conservative target
whose pooled out-of-bag sensitivity still reaches the required sensitivity wins. The
out-of-bag sensitivity and specificity are what the site should expect on new cases; the
percentile bootstrap intervals at the chosen threshold describe the cases at hand.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

#: In-sample sensitivity targets tried, least conservative first.
TARGET_GRID = (0.95, 0.96, 0.97, 0.98, 0.99, 1.0)


def threshold_for(y: np.ndarray, scores: np.ndarray, in_sample_target: float) -> float:
    """Largest t with sensitivity(scores >= t) >= target on these cases (0 without positives)."""
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(y, bool)])[::-1]
    if pos.size == 0:
        return 0.0
    k = max(1, math.ceil(in_sample_target * pos.size - 1e-9))
    return float(pos[k - 1])


def sens_spec(y: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of ``scores >= threshold``; NaN where undefined."""
    y = np.asarray(y, bool)
    pred = np.asarray(scores, dtype=np.float64) >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    sens = float((pred & y).sum() / n_pos) if n_pos else math.nan
    spec = float((~pred & ~y).sum() / n_neg) if n_neg else math.nan
    return sens, spec


def _stratified(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    """One bootstrap draw that keeps the number of positives and negatives."""
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    return np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def text(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold chosen on a site's cases, with what it gives."""

    threshold: float
    in_sample_target: float
    sensitivity: Interval  # on these cases, percentile bootstrap interval
    specificity: Interval
    expected_sensitivity: float  # out-of-bag: on new cases like these
    expected_specificity: float
    n_positive: int
    n_negative: int

    def as_dict(self) -> dict:
        return asdict(self)


def interval_at(y: np.ndarray, scores: np.ndarray, threshold: float, n_boot: int = 2000,
                confidence: float = 0.95, seed: int = 0) -> tuple[Interval, Interval]:
    """Sensitivity and specificity at a fixed threshold with stratified percentile intervals."""
    y = np.asarray(y, bool)
    s = np.asarray(scores, dtype=np.float64)
    sens, spec = sens_spec(y, s, threshold)
    rng = np.random.default_rng(seed)
    draws = np.array([sens_spec(y[idx], s[idx], threshold) for idx in
                      (_stratified(rng, y) for _ in range(n_boot))])
    alpha = 100 * (1 - confidence) / 2
    lo = np.nanpercentile(draws, alpha, axis=0)
    hi = np.nanpercentile(draws, 100 - alpha, axis=0)
    return Interval(sens, float(lo[0]), float(hi[0])), Interval(spec, float(lo[1]), float(hi[1]))


def out_of_bag(y: np.ndarray, scores: np.ndarray, targets: tuple[float, ...] = TARGET_GRID,
               n_boot: int = 1000, seed: int = 0) -> dict[float, tuple[float, float]]:
    """Per in-sample target: pooled out-of-bag (sensitivity, specificity) of the rule."""
    y = np.asarray(y, bool)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    counts = {t: np.zeros(4) for t in targets}  # tp, positives, tn, negatives (out of bag)
    for _ in range(n_boot):
        idx = _stratified(rng, y)
        oob = np.ones(y.size, bool)
        oob[idx] = False
        yo, so = y[oob], s[oob]
        if not yo.any() or yo.all():
            continue
        for t in targets:
            thr = threshold_for(y[idx], s[idx], t)
            pred = so >= thr
            counts[t] += ((pred & yo).sum(), yo.sum(), (~pred & ~yo).sum(), (~yo).sum())
    return {t: (c[0] / c[1] if c[1] else math.nan, c[2] / c[3] if c[3] else math.nan)
            for t, c in counts.items()}


def choose_operating_point(y: np.ndarray, scores: np.ndarray, required_sensitivity: float = 0.95,
                           n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> OperatingPoint:
    """The least conservative rule whose out-of-bag sensitivity reaches ``required_sensitivity``
    (the most conservative one when none does), applied to all cases."""
    y = np.asarray(y, bool)
    s = np.asarray(scores, dtype=np.float64)
    oob = out_of_bag(y, s, TARGET_GRID, n_boot, seed)
    target = next((t for t in TARGET_GRID if oob[t][0] >= required_sensitivity), TARGET_GRID[-1])
    threshold = threshold_for(y, s, target)
    sens, spec = interval_at(y, s, threshold, 2 * n_boot, confidence, seed)
    return OperatingPoint(threshold=threshold, in_sample_target=target, sensitivity=sens, specificity=spec,
                          expected_sensitivity=float(oob[target][0]), expected_specificity=float(oob[target][1]),
                          n_positive=int(y.sum()), n_negative=int((~y).sum()))
