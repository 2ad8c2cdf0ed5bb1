"""Evaluation metrics for the lesion classifier: pure numpy and scikit-learn, no files.

The notebook reported accuracy alone; a triage product needs the numbers a clinician asks
about (melanoma sensitivity and specificity at the operating point, with uncertainty),
per-class behaviour under heavy class imbalance, and whether the probabilities can be
trusted (calibration). Undefined values (an AUC with one class present) are ``None`` in
the returned dicts so they serialise to JSON ``null`` rather than ``NaN``.

:func:`evaluation_metrics` gathers every number of one evaluation (what metrics.json holds);
:mod:`worker.training.evaluation` writes it with the figures and the PDF.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from schemas.classes import CLASS_NAMES, DISPLAY_NAMES, MELANOMA, MELANOMA_INDEX, SOON_CLASSES
from schemas.messages import TriageThresholds
from schemas.states import TriageLevel
from worker.classify.triage import class_call, decide

#: Default number of bootstrap resamples for confidence intervals.
N_BOOT = 1000
#: Default number of equal-width confidence bins for calibration error.
N_BINS = 15
#: How many confidently wrong images the figure shows; metrics.json lists three times as
#: many candidates (spares for image files that cannot be read).
N_WRONG = 12
_SOON = [CLASS_NAMES.index(c) for c in SOON_CLASSES]


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or None when it is None, NaN or infinite: undefined numbers
    become JSON ``null`` rather than ``NaN`` (which strict JSON readers refuse)."""
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


def ci_dict(point_low_high: tuple[float, float, float]) -> dict:
    """A :func:`bootstrap_ci` result as the ``{"value", "ci_low", "ci_high"}`` dict every
    report reads; undefined values are None."""
    point, low, high = point_low_high
    return {
        "value": finite_or_none(point),
        "ci_low": finite_or_none(low),
        "ci_high": finite_or_none(high),
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
        "balanced_accuracy": finite_or_none(bal_acc),
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
        "auc": ci_dict(auc),
        "sensitivity": ci_dict(sens),
        "specificity": ci_dict(spec),
    }


# --- one evaluation: every number metrics.json holds ---------------------------------------


def json_ready(obj):
    """``obj`` with numpy scalars as Python numbers and NaN/inf as None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    return obj


def per_source_metrics(probs: np.ndarray, labels: np.ndarray, melanoma: np.ndarray, sources: Sequence[str],
                       thresholds: TriageThresholds, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """Per source (a model can look good on one archive and fail on another): melanoma AUC,
    urgent sensitivity/specificity and balanced accuracy of the class calls, each with a
    95% percentile-bootstrap CI, and the top-label ECE. Nine-class numbers are None for a
    source with melanoma-only labels."""
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels).astype(int).ravel()
    melanoma = np.asarray(melanoma).astype(int).ravel()
    src = np.asarray(sources)
    t = thresholds.urgent_melanoma

    def auc(yy, pp):
        return roc_auc_score(yy, pp) if 0 < yy.sum() < yy.size else None

    def bal(ll, pp):
        return balanced_accuracy_score(ll, class_call(pp, thresholds.class_bias)) if ll.size else None

    def boot(fn, *arrays) -> dict:
        return ci_dict(bootstrap_ci(fn, *arrays, n_boot=n_boot, seed=seed))

    out = {}
    for name in sorted(set(src.tolist())):
        m = src == name
        y, p = melanoma[m], probs[m, MELANOMA_INDEX]
        known = labels[m] >= 0
        kl, kp = labels[m][known], probs[m][known]
        out[str(name)] = {
            "n": int(m.sum()), "n_melanoma": int(y.sum()), "n_nine_class": int(known.sum()),
            "melanoma_auc": boot(auc, y, p),
            "urgent_sensitivity": boot(lambda a, b: binary_sens_spec(a, b, t)[0], y, p),
            "urgent_specificity": boot(lambda a, b: binary_sens_spec(a, b, t)[1], y, p),
            "balanced_accuracy": boot(bal, kl, kp) if kl.size else None,
            "ece": expected_calibration_error(kp, kl) if kl.size else None,
        }
    return out


def check_evaluation_inputs(probs: np.ndarray, labels: np.ndarray, melanoma: np.ndarray,
                            paths: Sequence[str], sources: Sequence[str] | None) -> None:
    """Raise ValueError on shapes that disagree or labels that contradict the melanoma flags."""
    n = labels.shape[0]
    if probs.shape != (n, len(CLASS_NAMES)):
        raise ValueError(f"probs must be ({n}, {len(CLASS_NAMES)}), got {probs.shape}")
    if melanoma.shape != (n,) or len(paths) != n:
        raise ValueError("labels, melanoma and paths must have one entry per row of probs")
    if sources is not None and len(sources) != n:
        raise ValueError("sources must have one entry per row of probs")
    if labels.size and (labels.min() < -1 or labels.max() >= len(CLASS_NAMES)):
        raise ValueError("labels must be class indices or -1")
    known = labels >= 0
    if np.any(known & ((labels == MELANOMA_INDEX) != (melanoma == 1))):
        raise ValueError("melanoma flags disagree with nine-class labels")


def soon_metrics(p_soon: np.ndarray, soon_true: np.ndarray, threshold: float, seed: int = 0,
                 n_boot: int = N_BOOT) -> dict:
    """Sensitivity and specificity of the "soon" call (summed BCC/SCC/AK probability), with CIs."""
    def sens_spec(i: int) -> dict:
        return ci_dict(bootstrap_ci(lambda y, s: binary_sens_spec(y, s, threshold)[i], soon_true, p_soon,
                                    n_boot=n_boot, seed=seed))

    return {"threshold": threshold, "n": int(soon_true.size), "n_positive": int(soon_true.sum()),
            "sensitivity": sens_spec(0), "specificity": sens_spec(1)}


def triage_levels(probs: np.ndarray, labels: np.ndarray, melanoma: np.ndarray,
                  thresholds: TriageThresholds) -> tuple[dict, dict]:
    """(count per triage level, count per level within each truth group) under ``thresholds``."""
    levels = [decide(dict(zip(CLASS_NAMES, row)), thresholds) for row in probs.tolist()]
    known = labels >= 0
    truth_groups = np.where(
        melanoma == 1, "melanoma", np.where(~known, "not_melanoma_unspecified",
                                            np.where(np.isin(labels, _SOON), "soon_class", "other")))
    by_truth: dict[str, dict[str, int]] = {}
    for group, level in zip(truth_groups.tolist(), levels):
        by_truth.setdefault(group, {lv.value: 0 for lv in TriageLevel})[level.value] += 1
    counts = {lv.value: 0 for lv in TriageLevel}
    for level in levels:
        counts[level.value] += 1
    return counts, by_truth


def class_call_effect(kp: np.ndarray, kl: np.ndarray, nine: dict, thresholds: TriageThresholds) -> dict:
    """Balanced accuracy and accuracy of the version's class calls (``nine``) next to plain argmax."""
    if not kl.size:
        return {}
    argmax = kp.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a call of a class absent from the labels
        ba_argmax = float(balanced_accuracy_score(kl, argmax))
    return {
        "rule": "prior-corrected (class_bias)" if thresholds.class_bias else "argmax",
        "balanced_accuracy": nine["balanced_accuracy"],
        "accuracy": nine["accuracy"],
        "balanced_accuracy_argmax": ba_argmax,
        "accuracy_argmax": float(np.mean(argmax == kl)),
    }


def confidently_wrong(probs: np.ndarray, pred: np.ndarray, labels: np.ndarray, melanoma: np.ndarray,
                      thresholds: TriageThresholds, paths: Sequence[str]) -> list[dict]:
    """Wrong rows, most confident first. Nine-class rows: class call != label, confidence is the
    predicted class probability. Melanoma-only rows: wrong on the urgent decision, confidence
    is the probability put against the truth."""
    rows = []
    t = thresholds.urgent_melanoma
    for i in range(labels.shape[0]):
        call = int(pred[i])
        if labels[i] >= 0:
            if call == labels[i]:
                continue
            rows.append({"path": str(paths[i]), "true": DISPLAY_NAMES[CLASS_NAMES[labels[i]]],
                         "predicted": DISPLAY_NAMES[CLASS_NAMES[call]], "probability": float(probs[i, call])})
            continue
        p = float(probs[i, MELANOMA_INDEX])
        if melanoma[i] == 1 and p < t:
            rows.append({"path": str(paths[i]), "true": DISPLAY_NAMES[MELANOMA],
                         "predicted": DISPLAY_NAMES[CLASS_NAMES[call]] if call != MELANOMA_INDEX
                         else "Not urgent", "probability": 1.0 - p})
        elif melanoma[i] == 0 and p >= t:
            rows.append({"path": str(paths[i]), "true": "Not melanoma",
                         "predicted": DISPLAY_NAMES[MELANOMA], "probability": p})
    rows.sort(key=lambda r: -r["probability"])
    return rows[: N_WRONG * 3]  # spare candidates for unreadable files


def evaluation_metrics(probs: np.ndarray, labels: np.ndarray, melanoma: np.ndarray,
                       thresholds: TriageThresholds, paths: Sequence[str], title: str, seed: int = 0,
                       sources: Sequence[str] | None = None, n_boot: int = N_BOOT) -> dict:
    """Every number of one evaluation, JSON-ready (metrics.json without its file list).

    ``labels`` is -1 where only melanoma / not-melanoma is known (ISIC 2017): those rows
    count for melanoma metrics, triage counts and the confidently-wrong list only.
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels).astype(int).ravel()
    melanoma = np.asarray(melanoma).astype(int).ravel()
    check_evaluation_inputs(probs, labels, melanoma, paths, sources)
    known = labels >= 0
    kp, kl = probs[known], labels[known]
    pred = class_call(probs, thresholds.class_bias)
    nine = classification_metrics(kp, kl, CLASS_NAMES, pred=pred[known])
    soon = soon_metrics(probs[known][:, _SOON].sum(axis=1), np.isin(kl, _SOON).astype(int),
                        thresholds.soon_keratinocyte, seed, n_boot)
    ece = ci_dict(bootstrap_ci(expected_calibration_error, kp, kl, n_boot=n_boot, seed=seed))
    counts, by_truth = triage_levels(probs, labels, melanoma, thresholds)
    metrics: dict = {
        "title": title,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n": int(labels.shape[0]),
        "n_nine_class": int(known.sum()),
        "n_melanoma_only": int((~known).sum()),
        "n_melanoma": int(melanoma.sum()),
        "seed": seed,
        "n_boot": n_boot,
        "ci_level": 0.95,
        "class_names": list(CLASS_NAMES),
        "thresholds": thresholds.model_dump(),
        "melanoma": melanoma_metrics(probs[:, MELANOMA_INDEX], melanoma, thresholds, seed=seed, n_boot=n_boot),
        "soon": soon,
        "balanced_accuracy": ci_dict(bootstrap_ci(balanced_accuracy_score, kl, pred[known],
                                                  n_boot=n_boot, seed=seed)),
        "class_call": class_call_effect(kp, kl, nine, thresholds),
        "ece": {**ece, "n_bins": N_BINS},
        "reliability_bins": reliability_bins(kp, kl) if kl.size else [],
        "nine_class": nine,
        "triage_counts": counts,
        "triage_by_truth": by_truth,
        "confidently_wrong": confidently_wrong(probs, pred, labels, melanoma, thresholds, paths),
    }
    if sources is not None:
        metrics["per_source"] = per_source_metrics(probs, labels, melanoma, sources, thresholds, seed, n_boot)
    return json_ready(metrics)
