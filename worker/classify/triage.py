"""Triage rules: calibrated probabilities and the model version's thresholds -> a level.

The thresholds come from the model store (chosen on validation data when the model was
trained); nothing here or in the report code hard-codes an operating point.
"""

from collections.abc import Mapping

from schemas import MELANOMA, SOON_CLASSES, TriageLevel, TriageThresholds


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
