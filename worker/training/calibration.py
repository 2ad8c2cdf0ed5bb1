"""Temperature scaling and triage operating points, both fitted on the validation split.

* Temperature ``T``: minimises the validation negative log-likelihood of
  ``softmax(logits / T)``. Melanoma-only (ISIC 2017) rows are included with their
  partial-label likelihood: the probability of the set of classes they allow (melanoma
  vs the eight others), the same likelihood they were trained with.
* ``urgent_melanoma``: the largest threshold on the calibrated melanoma probability with
  validation melanoma sensitivity >= 0.97 (all rows: every row has a melanoma label). The
  requirement is 0.95; the 0.02 margin is for the sampling error of ~160 validation
  melanomas (95% CI about +-0.035): thresholds set at exactly 0.95 on validation gave
  0.907-0.951 on the test split in three MobileNet runs. The threshold at exactly 0.95 is
  kept too (``urgent_melanoma_ceiling``): the most a leave-one-source-out rule may raise it.
* ``soon_keratinocyte``: the largest threshold on the summed probability of
  ``SOON_CLASSES`` with validation sensitivity >= 0.90 for those classes (nine-class rows
  only: a melanoma-only negative may be a BCC, so it is neither positive nor negative).
* ``min_confidence``: the top-class probability at which validation accuracy reaches 50%
  (isotonic fit of "top class correct" on top probability, nine-class rows): below it the
  model is more often wrong than right about the class, so a non-urgent, non-soon image is
  marked indeterminate. Capped at 0.6; 0 if even the least confident images are mostly right.
* ``class_bias`` (the class call, not triage): ``-beta * log(prior)``, where ``prior`` is the
  mean calibrated probability per class over validation (floored at 1e-3) and ``beta`` in
  0, 0.125, ..., 1.5 maximises validation balanced accuracy (ties: the smaller beta). One
  parameter, so 1,300 validation images cannot overfit it class by class. beta 0 is argmax.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from schemas import CLASS_NAMES, MELANOMA_INDEX, SOON_CLASSES, TriageThresholds
from worker.classify.inference import softmax_t
from worker.training.metrics import binary_sens_spec, expected_calibration_error

SOON = [CLASS_NAMES.index(c) for c in SOON_CLASSES]
URGENT_SENSITIVITY = 0.97  # validation target: the required 0.95 plus a margin
REQUIRED_URGENT_SENSITIVITY = 0.95  # the requirement itself: the ceiling a LOSO rule may raise to
SOON_SENSITIVITY = 0.90
MIN_CONFIDENCE_CAP = 0.6
PRIOR_FLOOR = 1e-3
BETA_GRID = tuple(np.round(np.arange(0.0, 1.5001, 0.125), 3))


def partial_nll(logits: np.ndarray, masks: np.ndarray, temperature: float) -> float:
    """Mean -log(sum(softmax(logits/T) * mask))."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    allowed = np.where(np.asarray(masks) > 0, z, -np.inf)
    return float(np.mean(logsumexp(z, axis=1) - logsumexp(allowed, axis=1)))


def fit_temperature(logits: np.ndarray, masks: np.ndarray) -> float:
    """1-D bounded search over log T in [log 0.05, log 20]."""
    res = minimize_scalar(lambda lt: partial_nll(logits, masks, math.exp(lt)),
                          bounds=(math.log(0.05), math.log(20.0)), method="bounded",
                          options={"xatol": 1e-4})
    return float(math.exp(res.x))


def sensitivity_threshold(y_true: np.ndarray, scores: np.ndarray, target: float) -> float:
    """Largest t with sensitivity(scores >= t) >= target."""
    pos = np.sort(np.asarray(scores, dtype=float)[np.asarray(y_true).astype(bool)])[::-1]
    if pos.size == 0:
        return 0.0
    k = math.ceil(target * pos.size)  # need at least k positives at or above t
    return float(pos[k - 1])


def min_confidence_threshold(probs: np.ndarray, labels: np.ndarray, cap: float = MIN_CONFIDENCE_CAP) -> float:
    """The top probability at which validation accuracy reaches 50%, from an isotonic
    (monotone) fit of correctness on confidence; 0 when even the least confident images
    are right at least half the time; at most ``cap``."""
    from sklearn.isotonic import IsotonicRegression

    known = labels >= 0
    if not known.any():
        return 0.0
    conf = probs[known].max(axis=1)
    correct = (probs[known].argmax(axis=1) == labels[known]).astype(float)
    grid = np.unique(conf)
    fitted = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(conf, correct).predict(grid)
    reached = np.flatnonzero(fitted >= 0.5)
    if reached.size == 0:
        return float(cap)
    if reached[0] == 0:
        return 0.0
    return float(min(grid[reached[0]], cap))


def fit_class_bias(probs: np.ndarray, labels: np.ndarray) -> tuple[list[float] | None, float, dict]:
    """(class_bias, beta, validation balanced accuracy per beta keyed ``str(beta)``, as in
    calibration.json); class_bias None when beta is 0."""
    from sklearn.metrics import balanced_accuracy_score

    known = labels >= 0
    if not known.any():
        return None, 0.0, {}
    log_prior = np.log(np.clip(probs.mean(axis=0), PRIOR_FLOOR, None))
    log_p = np.log(np.clip(probs[known], 1e-12, None))
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a call of a class absent from labels
        for beta in BETA_GRID:
            pred = (log_p - beta * log_prior).argmax(axis=1)
            scores[str(float(beta))] = float(balanced_accuracy_score(labels[known], pred))
    best = float(max(scores, key=lambda b: (round(scores[b], 6), -float(b))))
    bias = None if best == 0 else [float(v) for v in -best * log_prior]
    return bias, best, scores


def choose_thresholds(probs: np.ndarray, labels: np.ndarray, melanoma: np.ndarray,
                      class_bias: list[float] | None = None) -> TriageThresholds:
    p_mel = probs[:, MELANOMA_INDEX]
    urgent = sensitivity_threshold(melanoma, p_mel, URGENT_SENSITIVITY)
    u_sens, u_spec = binary_sens_spec(melanoma, p_mel, urgent)
    known = labels >= 0
    soon_true = np.isin(labels[known], SOON).astype(int)
    p_soon = probs[known][:, SOON].sum(axis=1)
    soon = sensitivity_threshold(soon_true, p_soon, SOON_SENSITIVITY)
    s_sens, s_spec = binary_sens_spec(soon_true, p_soon, soon)
    return TriageThresholds(
        urgent_melanoma=urgent, soon_keratinocyte=soon,
        min_confidence=min_confidence_threshold(probs, labels),
        urgent_sensitivity=u_sens, urgent_specificity=u_spec,
        urgent_melanoma_ceiling=sensitivity_threshold(melanoma, p_mel, REQUIRED_URGENT_SENSITIVITY),
        soon_sensitivity=s_sens, soon_specificity=s_spec, class_bias=class_bias,
    )


def calibrate(logits: np.ndarray, masks: np.ndarray, labels: np.ndarray, melanoma: np.ndarray) -> dict:
    """Fit T and the thresholds on validation outputs; a JSON-able record of both."""
    t = fit_temperature(logits, masks)
    probs_raw = softmax_t(logits, 1.0)
    probs = softmax_t(logits, t)
    class_bias, beta, beta_scores = fit_class_bias(probs, labels)
    thresholds = choose_thresholds(probs, labels, melanoma, class_bias)
    known = labels >= 0
    conf = probs[known].max(axis=1) if known.any() else np.array([])
    return {
        "temperature": t,
        "fitted_on": "validation split",
        "n_validation": len(labels),
        "n_validation_nine_class": int(known.sum()),
        "nll_before": partial_nll(logits, masks, 1.0),
        "nll_after": partial_nll(logits, masks, t),
        "ece_before": expected_calibration_error(probs_raw[known], labels[known]),
        "ece_after": expected_calibration_error(probs[known], labels[known]),
        "class_call": {"class_bias": class_bias, "beta": beta, "balanced_accuracy_by_beta": beta_scores},
        "indeterminate_share_validation": float((conf < thresholds.min_confidence).mean()) if conf.size else 0.0,
        "thresholds": thresholds.model_dump(),
        "rules": __doc__.strip(),
    }
