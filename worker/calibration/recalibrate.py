"""Recalibrating the melanoma probability on a site's confirmed cases, judged out of bag.

A threshold can restore sensitivity at a new site, but not the meaning of the printed
percentages: when the camera or the case mix shifts the melanoma logit, "12 %" no longer
means 12 in 100 there, and the calibration-error gate fails whatever the threshold. So the
site version also carries a monotone map of the melanoma probability
(``worker.classify.recalibration``, applied by the workers):

* **Platt scaling** on the melanoma logit, ``sigmoid(a * logit(p) + b)`` (``a > 0``; a
  temperature is the special case ``b = 0``), by maximum likelihood: two parameters, stable
  on a few dozen melanomas;
* **isotonic regression** on the melanoma logit, only when the site has ``ISOTONIC_MIN``
  melanomas and other lesions, and only if its out-of-bag log loss beats Platt's;
* **none**: where no map beats the base's own probabilities out of bag (a site where the
  base is calibrated already), they are kept: a map fitted on a few dozen melanomas only
  adds noise there.

Fitting and judging on the same cases would flatter the map, so it is judged like the
thresholds: fitted on stratified bootstrap resamples and applied to the cases each resample
left out; each case's out-of-bag probabilities (averaged over the resamples that left it
out) are what the gate scores. The map the version carries is fitted on all the cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from sklearn.isotonic import IsotonicRegression

from schemas import MELANOMA_INDEX
from worker.calibration.thresholds import stratified_resample
from worker.classify.recalibration import EPS, Recalibration

#: Melanomas and other lesions needed before isotonic regression is tried.
ISOTONIC_MIN = (100, 300)
#: Isotonic output is kept inside [P_FLOOR, 1 - P_FLOOR]: a probability of exactly 0 or 1 is
#: never honest on a few hundred cases.
P_FLOOR = 1e-3


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def fit_platt(p_mel: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood ``(slope, intercept)`` of ``sigmoid(slope * logit(p) + intercept)``."""
    z = _logit(p_mel)
    t = np.asarray(y, dtype=np.float64)

    def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
        u = w[0] * z + w[1]
        loss = np.logaddexp(0, u) - t * u
        g = 1 / (1 + np.exp(-u)) - t
        return float(loss.sum()), np.array([(g * z).sum(), g.sum()])

    res = minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                   bounds=[(0.05, 20.0), (-20.0, 20.0)])
    return float(res.x[0]), float(res.x[1])


def fit_isotonic(p_mel: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Knots (melanoma logit, probability) of the isotonic fit."""
    iso = IsotonicRegression(y_min=P_FLOOR, y_max=1 - P_FLOOR, out_of_bounds="clip", increasing=True)
    iso.fit(_logit(p_mel), np.asarray(y, dtype=np.float64))
    return [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]


def fit(method: str, p_mel: np.ndarray, y: np.ndarray, **record) -> Recalibration:
    """``method`` fitted on these cases; ``record``: n_cases, n_melanoma, fitted_on."""
    if method == "platt":
        a, b = fit_platt(p_mel, y)
        return Recalibration("platt", slope=a, intercept=b, **record)
    x, p = fit_isotonic(p_mel, y)
    if len(x) < 2:  # all scores equal: a constant map
        x, p = [x[0] - 1.0, x[0] + 1.0] if x else [-1.0, 1.0], [p[0], p[0]] if p else [0.5, 0.5]
    return Recalibration("isotonic", knots_logit=x, knots_p=p, **record)


def out_of_bag_probabilities(probs: np.ndarray, y: np.ndarray, method: str, n_boot: int = 1000,
                             seed: int = 0) -> np.ndarray:
    """``(n, 9)``: each case's probabilities recalibrated by maps fitted without it (averaged
    over the resamples that left it out; the all-case fit for a case no resample left out)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, bool)
    p_mel = probs[:, MELANOMA_INDEX]
    total = np.zeros_like(probs)
    seen = np.zeros(len(y))
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        idx = stratified_resample(rng, y)
        oob = np.ones(y.size, bool)
        oob[idx] = False
        if not oob.any():
            continue
        total[oob] += fit(method, p_mel[idx], y[idx]).apply(probs[oob])
        seen[oob] += 1
    out = fit(method, p_mel, y).apply(probs)
    have = seen > 0
    out[have] = total[have] / seen[have, None]
    return out


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean binary log loss of melanoma probabilities ``p``."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, bool)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


@dataclass
class RecalibrationFit:
    """The map the version carries (None: the base's probabilities are kept), the
    probabilities the gate judges (out of bag), and how each candidate did out of bag."""

    recalibration: Recalibration | None
    oob_probs: np.ndarray  # (n, 9)
    oob_log_loss: dict[str, float]
    log_loss_before: float

    def summary(self) -> dict:
        r = self.recalibration
        return {"method": r.method if r else "none", "slope": r.slope if r else None,
                "intercept": r.intercept if r else None, "n_knots": len(r.knots_logit) if r else 0,
                "oob_log_loss": self.oob_log_loss, "log_loss_before": self.log_loss_before}


def recalibrate(probs: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0,
                fitted_on: str = "") -> RecalibrationFit:
    """Platt scaling, or isotonic regression where the cases suffice and it does better out of
    bag, fitted on all the cases, with every case's out-of-bag probabilities; or none, when
    neither beats the base's own probabilities (their log loss, nothing fitted) out of bag."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, bool)
    methods = ["platt"]
    if y.sum() >= ISOTONIC_MIN[0] and (~y).sum() >= ISOTONIC_MIN[1]:
        methods.append("isotonic")
    oob = {m: out_of_bag_probabilities(probs, y, m, n_boot, seed) for m in methods}
    losses = {m: log_loss(oob[m][:, MELANOMA_INDEX], y) for m in methods}
    before = log_loss(probs[:, MELANOMA_INDEX], y)
    best = min(methods, key=lambda m: losses[m])
    if losses[best] >= before:
        return RecalibrationFit(None, probs, losses, before)
    recal = fit(best, probs[:, MELANOMA_INDEX], y, n_cases=int(y.size), n_melanoma=int(y.sum()),
                fitted_on=fitted_on)
    return RecalibrationFit(recal, oob[best], losses, before)
