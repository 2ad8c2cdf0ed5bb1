"""Triage rules: calibrated probabilities and the model version's thresholds -> a level.

The thresholds come from the model store (chosen on validation data when the model was
trained); nothing here or in the report code hard-codes an operating point.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from schemas import CLASS_NAMES, MELANOMA, SOON_CLASSES, TriageLevel, TriageThresholds


def percent(p: float) -> str:
    """A probability or threshold as the report prints it: one decimal, so that a threshold
    of 1.5 % is not shown as "1 %" or "2 %" next to a probability on the other side of it."""
    if p < 0.001:
        return "<0.1 %"
    return f"{100 * p:.1f} %"


def class_call(probs: np.ndarray, class_bias: Sequence[float] | None) -> np.ndarray:
    """Index of the named class per row of ``probs`` (n, 9) -- or one index for a 1-D row.

    ``argmax(log p + class_bias)``: the model version's prior correction, so a rare class
    with a high probability *relative to how often the model says it* gets named. With no
    bias, the plain most probable class.
    """
    p = np.asarray(probs, dtype=np.float64)
    if class_bias is None:
        return p.argmax(axis=-1)
    bias = np.asarray(class_bias, dtype=np.float64)
    if bias.shape != (p.shape[-1],):
        raise ValueError(f"class_bias needs {p.shape[-1]} values, got {bias.shape}")
    return (np.log(np.clip(p, 1e-12, None)) + bias).argmax(axis=-1)


def named_class(probabilities: Mapping[str, float], thresholds: TriageThresholds) -> str:
    """:func:`class_call` for one image's probabilities keyed by class name."""
    row = np.array([probabilities[c] for c in CLASS_NAMES])
    return CLASS_NAMES[int(class_call(row, thresholds.class_bias))]


def decide(
    probabilities: Mapping[str, float],
    thresholds: TriageThresholds,
    usable_image: bool = True,
) -> TriageLevel:
    """Order matters: an unusable image cannot be triaged; otherwise safety first."""
    if not usable_image:
        return TriageLevel.INDETERMINATE
    if probabilities[MELANOMA] >= thresholds.urgent_melanoma:
        return TriageLevel.URGENT
    if sum(probabilities[c] for c in SOON_CLASSES) >= thresholds.soon_keratinocyte:
        return TriageLevel.SOON
    if max(probabilities.values()) < thresholds.min_confidence:
        return TriageLevel.INDETERMINATE
    return TriageLevel.ROUTINE


def explain(
    probabilities: Mapping[str, float],
    thresholds: TriageThresholds,
    level: TriageLevel,
    quality_reason: str | None = None,
) -> str:
    """One sentence for the report: which rule produced the level, with the numbers."""
    mel = probabilities[MELANOMA]
    soon = sum(probabilities[c] for c in SOON_CLASSES)
    if level is TriageLevel.INDETERMINATE and quality_reason:
        return f"The image is not usable for automated triage: {quality_reason}."
    if level is TriageLevel.URGENT:
        return (f"Melanoma probability {percent(mel)} is at or above this model's urgent threshold "
                f"({percent(thresholds.urgent_melanoma)}).")
    if level is TriageLevel.SOON:
        return (f"Combined probability of basal cell carcinoma, squamous cell carcinoma and actinic "
                f"keratosis {percent(soon)} is at or above the threshold ({percent(thresholds.soon_keratinocyte)}).")
    top = max(probabilities.values())
    if level is TriageLevel.INDETERMINATE:
        return (f"No class is confident: the highest probability is {percent(top)}, below "
                f"{percent(thresholds.min_confidence)}.")
    return (f"Melanoma probability {percent(mel)} and keratinocyte-lesion probability {percent(soon)} are below "
            f"their thresholds ({percent(thresholds.urgent_melanoma)}, {percent(thresholds.soon_keratinocyte)}).")
