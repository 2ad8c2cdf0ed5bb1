"""Evaluation metrics for the lesion classifier: pure numpy and scikit-learn.

The notebook reported accuracy alone; a triage product needs the numbers a clinician asks
about (melanoma sensitivity and specificity at the operating point, with uncertainty),
per-class behaviour under heavy class imbalance, and whether the probabilities can be
trusted (calibration). Undefined values (an AUC with one class present) are ``None`` in
the returned dicts so they serialise to JSON ``null`` rather than ``NaN``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from schemas.messages import TriageThresholds

#: Default number of bootstrap resamples for confidence intervals.
N_BOOT = 1000
#: Default number of equal-width confidence bins for calibration error.
N_BINS = 15


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def binary_sens_spec(
    y_true: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[float, float]:
    """Sensitivity and specificity when a score ``>= threshold`` counts as positive.

    Either value is NaN when its denominator is empty (no positives / no negatives),
    which :func:`bootstrap_ci` treats as "undefined for this resample". Counted with
    numpy rather than ``sklearn.metrics.confusion_matrix``: it runs inside bootstraps of
    thousands of resamples, where the scikit-learn input validation dominates.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    pred = np.asarray(scores, dtype=float).ravel() >= threshold
    if y.shape != pred.shape:
        raise ValueError("y_true and scores must have the same length")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    tp = int((pred & y).sum())
    tn = int((~pred & ~y).sum())
    sens = tp / n_pos if n_pos else float("nan")
    spec = tn / n_neg if n_neg else float("nan")
    return float(sens), float(spec)


def _top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels).astype(int).ravel()
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be (n, k) matching labels (n,); got {probs.shape} and {labels.shape}")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    return confidence, correct


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # Bins are (lower, upper]; the first one also holds exactly 0.
    return np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Per equal-width confidence bin: bounds, count, mean confidence and accuracy.

    Bins are ``(lower, upper]`` (the first also holds 0). Empty bins are kept, with
    ``confidence`` and ``accuracy`` set to ``None``, so plots have a fixed x axis.
    """
    confidence, correct = _top_label(probs, labels)
    idx = _bin_index(confidence, n_bins)
    bins = []
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        bins.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "count": count,
                "confidence": float(confidence[mask].mean()) if count else None,
                "accuracy": float(correct[mask].mean()) if count else None,
            }
        )
    return bins


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label ECE: sum over bins of (bin share) * |accuracy - mean confidence|."""
    confidence, correct = _top_label(probs, labels)
    n = confidence.shape[0]
    if n == 0:
        return float("nan")
    idx = _bin_index(confidence, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    # |sum(acc) - sum(conf)| / n per bin equals share * |mean acc - mean conf|.
    return float(np.abs(acc_sum - conf_sum).sum() / n) if counts.sum() else float("nan")


def _is_undefined(value) -> bool:
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = N_BOOT,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high): percentile bootstrap over rows, the same rows for every array.

    Resamples where the metric is undefined (raises ``ValueError`` or returns None/NaN,
    e.g. a resample holding one class only) are skipped. When the point estimate itself
    is undefined, or no resample is defined, the missing values are NaN.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError("all arrays must have the same number of rows")

    def evaluate(*xs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                warnings.simplefilter("ignore", UserWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                value = metric_fn(*xs)
        except ValueError:
            return None
        return None if _is_undefined(value) else float(value)

    point = evaluate(*arrays)
    nan = float("nan")
    if point is None or n == 0:
        return (nan if point is None else point), nan, nan
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        value = evaluate(*(a[idx] for a in arrays))
        if value is not None:
            values.append(value)
    if not values:
        return point, nan, nan
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(low), float(high)


def _ci_dict(point_low_high: tuple[float, float, float]) -> dict:
    point, low, high = point_low_high
    return {
        "value": _finite_or_none(point),
        "ci_low": _finite_or_none(low),
        "ci_high": _finite_or_none(high),
    }


def _auc_or_none(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    y = np.asarray(y_true).astype(int)
    if y.size == 0 or y.min() == y.max():
        return None
    return float(roc_auc_score(y, scores))


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                           pred: np.ndarray | None = None) -> dict:
    """Nine-class metrics of the class calls ``pred`` (default: argmax of ``probs``), plus
    one-vs-rest ROC AUC per class (from ``probs``).

    Macro averages are over classes present in ``labels`` (support > 0), and over classes
    with a defined AUC; a class absent from the evaluation set would otherwise drag the
    averages to 0 for reasons that say nothing about the model.
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels).astype(int).ravel()
    class_names = list(class_names)
    k = len(class_names)
    if probs.ndim != 2 or probs.shape != (labels.shape[0], k):
        raise ValueError(f"probs must be (n, {k}) matching labels; got {probs.shape}, {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError("labels must be class indices in [0, k)")
    pred = probs.argmax(axis=1) if pred is None else np.asarray(pred).astype(int).ravel()
    if pred.shape != labels.shape:
        raise ValueError("pred must have one class index per label")
    ks = list(range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        precision, recall, f1, support = precision_recall_fscore_support(
            labels, pred, labels=ks, zero_division=0
        )
        bal_acc = balanced_accuracy_score(labels, pred) if labels.size else None
    cm = confusion_matrix(labels, pred, labels=ks)

    per_class = {}
    for i, name in enumerate(class_names):
        per_class[name] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "auc": _auc_or_none(labels == i, probs[:, i]),
        }
    present = [n for n in class_names if per_class[n]["support"] > 0]
    aucs = [per_class[n]["auc"] for n in class_names if per_class[n]["auc"] is not None]

    def macro(key: str) -> float | None:
        vals = [per_class[n][key] for n in present]
        return float(np.mean(vals)) if vals else None

    return {
        "n": int(labels.size),
        "class_names": class_names,
        "accuracy": float(accuracy_score(labels, pred)) if labels.size else None,
        "balanced_accuracy": _finite_or_none(bal_acc),
        "per_class": per_class,
        "macro": {
            "precision": macro("precision"),
            "recall": macro("recall"),
            "f1": macro("f1"),
            "auc": float(np.mean(aucs)) if aucs else None,
            "n_classes_present": len(present),
            "n_classes_with_auc": len(aucs),
        },
        "confusion_matrix": cm.astype(int).tolist(),
    }


def melanoma_metrics(
    melanoma_prob: np.ndarray,
    melanoma_true: np.ndarray,
    thresholds: TriageThresholds | float,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> dict:
    """Melanoma vs rest: ROC AUC and sensitivity/specificity at the urgent threshold, each
    with a 95% percentile-bootstrap CI. ``thresholds`` may be the model's
    :class:`TriageThresholds` or the urgent threshold itself."""
    threshold = float(getattr(thresholds, "urgent_melanoma", thresholds))
    p = np.asarray(melanoma_prob, dtype=float).ravel()
    y = np.asarray(melanoma_true).astype(int).ravel()
    if p.shape != y.shape:
        raise ValueError("melanoma_prob and melanoma_true must have the same length")
    auc = bootstrap_ci(lambda yy, pp: roc_auc_score(yy, pp), y, p, n_boot=n_boot, seed=seed)
    sens = bootstrap_ci(
        lambda yy, pp: binary_sens_spec(yy, pp, threshold)[0], y, p, n_boot=n_boot, seed=seed
    )
    spec = bootstrap_ci(
        lambda yy, pp: binary_sens_spec(yy, pp, threshold)[1], y, p, n_boot=n_boot, seed=seed
    )
    return {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "threshold": threshold,
        "auc": _ci_dict(auc),
        "sensitivity": _ci_dict(sens),
        "specificity": _ci_dict(spec),
    }
