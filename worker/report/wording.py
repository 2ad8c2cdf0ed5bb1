"""What the report says in words: the triage sentence, the class call, the referral wording
of a level, times in the site's zone, and the report's name for an image without ids.

The triage sentence names the rule that fired with its numbers and, where the most
probable class is not the one the level is about, says so: an "urgent" banner over a chart
whose longest bar is a nevus is right by the rules (melanoma at or above its threshold),
and the report must say why rather than seem to contradict itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

from schemas import CLASS_NAMES, MELANOMA, SOON_CLASSES, TriageLevel, TriageThresholds
from schemas.classes import DISPLAY_NAMES
from worker.classify.triage import explain, percent

#: Classes each level is about: a most likely class outside them is named in the sentence.
_ABOUT = {
    TriageLevel.URGENT: frozenset({MELANOMA}),
    TriageLevel.SOON: frozenset(SOON_CLASSES),
    TriageLevel.ROUTINE: frozenset(set(CLASS_NAMES) - {MELANOMA} - set(SOON_CLASSES)),
}


def class_wording(name: str) -> str:
    """``nevus`` -> ``melanocytic nevus`` (as a sentence prints it)."""
    return DISPLAY_NAMES.get(name, name).lower()


def most_likely(probabilities: Mapping[str, float]) -> tuple[str, float]:
    name = max(CLASS_NAMES, key=lambda c: probabilities[c])
    return name, float(probabilities[name])


def triage_sentence(
    probabilities: Mapping[str, float],
    thresholds: TriageThresholds,
    level: TriageLevel,
    quality_reason: str | None = None,
) -> str:
    """The rule that fired, with its numbers; then the most likely class where it differs.

    "Melanoma probability 19.2 % is at or above this model's urgent threshold (2.9 %); the
    most likely class is melanocytic nevus, 62.0 %."
    """
    sentence = explain(probabilities, thresholds, level, quality_reason)
    if level is TriageLevel.INDETERMINATE and quality_reason:
        return sentence
    top, p = most_likely(probabilities)
    if level is TriageLevel.INDETERMINATE:
        return f"{sentence[:-1]} ({class_wording(top)})."
    if top in _ABOUT[level]:
        return sentence
    return f"{sentence[:-1]}; the most likely class is {class_wording(top)}, {percent(p)}."


def referral_wording(level: TriageLevel, overrides: Mapping[str, str] | None = None) -> str:
    """The banner's words for ``level``: the site's (``TRIAGE_REFERRAL_WORDING``) or the
    neutral default (:attr:`schemas.TriageLevel.wording`, no country's pathway named)."""
    return (overrides or {}).get(level.value) or level.wording


def local_time(ts: datetime, zone: str = "UTC") -> str:
    """``2026-12-05 17:10:03 CET (Europe/Berlin)``; UTC prints as ``... UTC``."""
    local = ts.astimezone(ZoneInfo(zone))
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    abbreviation = local.tzname() or ""
    if zone in ("UTC", "Etc/UTC"):
        return f"{text} UTC"
    return f"{text} {abbreviation} ({zone})" if abbreviation and abbreviation != zone else f"{text} ({zone})"
