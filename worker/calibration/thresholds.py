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
from statistics import NormalDist

import numpy as np

#: In-sample sensitivity targets tried, least conservative first.
TARGET_GRID = tuple(round(0.80 + 0.01 * i, 2) for i in range(21))
#: The operating points ``calibrate`` shows before one is chosen.
TABLE_SENSITIVITIES = (0.90, 0.93, 0.95, 0.97)


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


def stratified_resample(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
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
    """A threshold chosen on a site's cases, with what it gives.

    In-sample: ``sensitivity`` and ``specificity`` at the threshold on the cases at hand, with
    stratified percentile bootstrap intervals. Out of bag (what to expect on new cases):
    ``oob_*``, the pooled out-of-bag value (corrected for choosing the threshold on these
    cases) with the Wilson interval of a proportion on the site's case count (melanomas for
    sensitivity, other lesions for specificity, all for the share flagged).
    ``oob_flagged``: the share of all the site's confirmed lesions (melanoma or not) flagged
    urgent.
    """

    threshold: float
    in_sample_target: float
    sensitivity: Interval  # on these cases, percentile bootstrap interval
    specificity: Interval
    expected_sensitivity: float  # out-of-bag: on new cases like these
    expected_specificity: float
    n_positive: int
    n_negative: int
    required_sensitivity: float = math.nan
    reached: bool = True  # False: no rule reached it out of bag; the most conservative one
    oob_sensitivity: Interval | None = None
    oob_specificity: Interval | None = None
    oob_flagged: Interval | None = None
    #: The share of the site's recent traffic (confirmed or not) at or above the threshold,
    #: with its Wilson interval: the confirmed cases are often richer in melanoma.
    traffic_flagged: Interval | None = None

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
                      (stratified_resample(rng, y) for _ in range(n_boot))])
    alpha = 100 * (1 - confidence) / 2
    lo = np.nanpercentile(draws, alpha, axis=0)
    hi = np.nanpercentile(draws, 100 - alpha, axis=0)
    return Interval(sens, float(lo[0]), float(hi[0])), Interval(spec, float(lo[1]), float(hi[1]))


@dataclass(frozen=True)
class OutOfBag:
    """Per bootstrap resample and in-sample target: the out-of-bag counts (true positives,
    positives, true negatives, negatives) of the rule fitted on the resample."""

    targets: tuple[float, ...]
    counts: np.ndarray  # (n_boot, len(targets), 4)

    def pooled(self, i: int) -> tuple[float, float, float]:
        """Pooled out-of-bag sensitivity, specificity and share flagged of target ``i``."""
        tp, pos, tn, neg = self.counts[:, i].sum(axis=0)
        return _rates(tp, pos, tn, neg)

    def index_for(self, required_sensitivity: float) -> tuple[int, bool]:
        """The least conservative target whose pooled out-of-bag sensitivity reaches the
        requirement (the most conservative one, and False, when none does)."""
        for i in range(len(self.targets)):
            if self.pooled(i)[0] >= required_sensitivity - 1e-12:
                return i, True
        return len(self.targets) - 1, False


def _rates(tp: float, pos: float, tn: float, neg: float) -> tuple[float, float, float]:
    return (tp / pos if pos else math.nan, tn / neg if neg else math.nan,
            (tp + neg - tn) / (pos + neg) if pos + neg else math.nan)


def out_of_bag_counts(y: np.ndarray, scores: np.ndarray, targets: tuple[float, ...] = TARGET_GRID,
                      n_boot: int = 1000, seed: int = 0) -> OutOfBag:
    """The rule (``threshold_for``) fitted on stratified resamples, judged on the cases not
    drawn, for every in-sample target."""
    y = np.asarray(y, bool)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    t = np.asarray(targets, dtype=np.float64)
    counts = np.zeros((n_boot, t.size, 4))
    for b in range(n_boot):
        idx = stratified_resample(rng, y)
        oob = np.ones(y.size, bool)
        oob[idx] = False
        yo, so = y[oob], s[oob]
        pos = np.sort(s[idx][y[idx]])[::-1]
        if pos.size == 0 or not yo.any() or yo.all():
            continue
        k = np.maximum(1, np.ceil(t * pos.size - 1e-9).astype(int))
        pred = so[None, :] >= pos[k - 1][:, None]
        counts[b] = np.stack([(pred & yo).sum(1), np.full(t.size, yo.sum()), (~pred & ~yo).sum(1),
                              np.full(t.size, (~yo).sum())], axis=1)
    return OutOfBag(tuple(targets), counts)


def wilson(p: float, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion ``p`` observed on ``n`` cases (sound at 0 and 1,
    where a percentile bootstrap collapses to a point)."""
    if n <= 0 or not math.isfinite(p):
        return Interval(float(p), math.nan, math.nan)
    z = float(NormalDist().inv_cdf(1 - (1 - confidence) / 2))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(float(p), max(0.0, centre - half), min(1.0, centre + half))


def operating_table(y: np.ndarray, scores: np.ndarray, sensitivities: tuple[float, ...] = TABLE_SENSITIVITIES,
                    n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> list[OperatingPoint]:
    """One operating point per required sensitivity, from one out-of-bag run: the least
    conservative rule whose out-of-bag sensitivity reaches it, applied to all cases."""
    y = np.asarray(y, bool)
    s = np.asarray(scores, dtype=np.float64)
    oob = out_of_bag_counts(y, s, TARGET_GRID, n_boot, seed)
    rows = []
    for required in sensitivities:
        i, reached = oob.index_for(required)
        target = TARGET_GRID[i]
        threshold = threshold_for(y, s, target)
        sens, spec = interval_at(y, s, threshold, 2 * n_boot, confidence, seed)
        expected = oob.pooled(i)
        n = (int(y.sum()), int((~y).sum()), y.size)
        oob_iv = [wilson(expected[k], n[k], confidence) for k in range(3)]
        rows.append(OperatingPoint(
            threshold=threshold, in_sample_target=target, sensitivity=sens, specificity=spec,
            expected_sensitivity=float(expected[0]), expected_specificity=float(expected[1]),
            n_positive=int(y.sum()), n_negative=int((~y).sum()), required_sensitivity=float(required),
            reached=reached, oob_sensitivity=oob_iv[0], oob_specificity=oob_iv[1], oob_flagged=oob_iv[2]))
    return rows


def choose_operating_point(y: np.ndarray, scores: np.ndarray, required_sensitivity: float = 0.95,
                           n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> OperatingPoint:
    """The least conservative rule whose out-of-bag sensitivity reaches ``required_sensitivity``
    (the most conservative one when none does), applied to all cases."""
    return operating_table(y, scores, (required_sensitivity,), n_boot, confidence, seed)[0]
