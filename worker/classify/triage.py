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
        return (f"Melanoma probability {mel:.0%} is at or above this model's urgent threshold "
                f"({thresholds.urgent_melanoma:.0%}).")
    if level is TriageLevel.SOON:
        return (f"Combined probability of basal cell carcinoma, squamous cell carcinoma and actinic "
                f"keratosis {soon:.0%} is at or above the threshold ({thresholds.soon_keratinocyte:.0%}).")
    top = max(probabilities.values())
    if level is TriageLevel.INDETERMINATE:
        return (f"No class is confident: the highest probability is {top:.0%}, below "
                f"{thresholds.min_confidence:.0%}.")
    return (f"Melanoma probability {mel:.0%} and keratinocyte-lesion probability {soon:.0%} are below "
            f"their thresholds ({thresholds.urgent_melanoma:.0%}, {thresholds.soon_keratinocyte:.0%}).")
