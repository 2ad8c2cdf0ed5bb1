"""The promotion gate: champion and challenger scored on the same locked evaluation set,
a policy, and a decision with its reasons. Pure functions (numpy and scikit-learn only).

A challenger is promoted only if every check passes:

1. **Melanoma AUC not below the champion's**, as a non-inferiority test: the lower bound
   of the two-sided ``confidence`` (95 %) paired-bootstrap interval of
   AUC(challenger) - AUC(champion) — both models scored on the *same* resampled rows — must
   be >= ``-auc_margin`` (0.02). Without a champion the check is skipped.
2. **Melanoma sensitivity at the challenger's own urgent threshold** >= ``min_sensitivity``
   (0.95) on the locked set.
3. **Calibration**: top-label ECE of the challenger on the nine-class rows of the locked set
   <= ``max_ece`` (0.10).
4. **Enough evidence**: the locked set holds >= ``min_positives`` melanomas and
   ``min_negatives`` non-melanomas; otherwise nothing is promoted.

A check that cannot be computed fails: the champion stays unless the evidence is there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from worker.training.metrics import binary_sens_spec, expected_calibration_error, finite_or_none

#: Non-inferiority margin of the melanoma AUC (absolute AUC units).
AUC_MARGIN = 0.02


@dataclass(frozen=True)
class GatePolicy:
    auc_margin: float = AUC_MARGIN
    confidence: float = 0.95
    min_sensitivity: float = 0.95
    max_ece: float = 0.10
    min_positives: int = 10
    min_negatives: int = 10
    n_boot: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class ModelScores:
    """One model on the locked set."""

    version: str
    n: int
    n_positive: int
    auc: float | None
    threshold: float
    sensitivity: float | None
    specificity: float | None
    ece: float | None
    n_nine_class: int


def score(version: str, probs: np.ndarray, melanoma: np.ndarray, labels: np.ndarray,
          urgent_threshold: float, mel_index: int) -> ModelScores:
    """``probs`` calibrated (n, 9); ``labels`` -1 where only the melanoma axis is known."""
    probs = np.asarray(probs, float)
    y = np.asarray(melanoma).astype(int)
    labels = np.asarray(labels).astype(int)
    p_mel = probs[:, mel_index]
    auc = roc_auc_score(y, p_mel) if 0 < y.sum() < y.size else None
    sens, spec = binary_sens_spec(y, p_mel, urgent_threshold) if y.size else (None, None)
    known = labels >= 0
    ece = expected_calibration_error(probs[known], labels[known]) if known.any() else None
    return ModelScores(version=version, n=int(y.size), n_positive=int(y.sum()),
                       auc=finite_or_none(auc), threshold=float(urgent_threshold),
                       sensitivity=finite_or_none(sens), specificity=finite_or_none(spec),
                       ece=finite_or_none(ece), n_nine_class=int(known.sum()))


def _auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half): fast enough for bootstraps."""
    ranks = rankdata(scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def paired_auc_difference(melanoma: np.ndarray, p_champion: np.ndarray, p_challenger: np.ndarray,
                          n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """AUC(challenger) - AUC(champion) with a percentile bootstrap CI over shared resamples."""
    y = np.asarray(melanoma).astype(int)
    a = np.asarray(p_champion, float)
    b = np.asarray(p_challenger, float)
    if not 0 < y.sum() < y.size:
        return {"delta": None, "low": None, "high": None, "n_boot": 0}
    delta = _auc(y, b) - _auc(y, a)
    rng = np.random.default_rng(seed)
    diffs = []
    n = y.size
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        yy = y[idx]
        if 0 < yy.sum() < n:
            diffs.append(_auc(yy, b[idx]) - _auc(yy, a[idx]))
    if not diffs:
        return {"delta": float(delta), "low": None, "high": None, "n_boot": 0}
    alpha = 1 - confidence
    low, high = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"delta": float(delta), "low": float(low), "high": float(high), "n_boot": len(diffs)}


@dataclass
class GateDecision:
    promote: bool
    checks: list[dict] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"promote": self.promote, "checks": self.checks, "reasons": self.reasons}


def decide(champion: ModelScores | None, challenger: ModelScores, auc_diff: dict | None,
           policy: GatePolicy) -> GateDecision:
    checks: list[dict] = []

    def check(name: str, passed: bool, value, limit, why: str) -> None:
        checks.append({"name": name, "passed": bool(passed), "value": value, "limit": limit,
                       "reason": why})

    n_neg = challenger.n - challenger.n_positive
    enough = challenger.n_positive >= policy.min_positives and n_neg >= policy.min_negatives
    check("evidence", enough, {"melanoma": challenger.n_positive, "other": n_neg},
          {"melanoma": policy.min_positives, "other": policy.min_negatives},
          "locked evaluation set large enough" if enough else
          f"locked evaluation set too small ({challenger.n_positive} melanomas, {n_neg} others)")

    if champion is None:
        check("auc_non_inferior", True, None, -policy.auc_margin, "no champion: nothing to compare")
    else:
        low = (auc_diff or {}).get("low")
        ok = low is not None and low >= -policy.auc_margin
        check("auc_non_inferior", ok, auc_diff, -policy.auc_margin,
              (f"melanoma AUC difference {auc_diff['delta']:+.3f}, {policy.confidence:.0%} CI lower "
               f"bound {low:+.3f} {'>=' if ok else '<'} -{policy.auc_margin}")
              if low is not None else "melanoma AUC difference cannot be estimated")

    sens = challenger.sensitivity
    ok = sens is not None and sens >= policy.min_sensitivity
    check("urgent_sensitivity", ok, sens, policy.min_sensitivity,
          f"melanoma sensitivity at the urgent threshold {challenger.threshold:.3f}: "
          + (f"{sens:.3f}" if sens is not None else "undefined")
          + (" >= " if ok else " < ") + f"{policy.min_sensitivity}")

    ece = challenger.ece
    ok = ece is not None and ece <= policy.max_ece
    check("calibration", ok, ece, policy.max_ece,
          f"expected calibration error {ece:.3f} {'<=' if ok else '>'} {policy.max_ece}"
          if ece is not None else "calibration error undefined (no nine-class rows)")

    failed = [c["reason"] for c in checks if not c["passed"]]
    promote = not failed
    reasons = failed if failed else ["every gate passed: " + "; ".join(c["reason"] for c in checks)]
    return GateDecision(promote=promote, checks=checks, reasons=reasons)


def policy_dict(policy: GatePolicy) -> dict:
    return asdict(policy)
