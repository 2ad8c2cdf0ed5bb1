"""The shift monitor's reference of a site version, in the site version's probabilities.

The monitor compares the melanoma probabilities and triage rates a version reports with its
``reference.json``. A site version reports recalibrated probabilities, so a reference made
of the weights' own probabilities (the site's traffic under the base, or the parent's
validation reference) is mapped through the recalibration first; otherwise the monitor
would call the recalibration itself a shift.

Each reference image keeps only its melanoma, "soon" and top-class probabilities. The first
two map exactly (the soon classes are rescaled with the rest). The top class maps exactly
when it was not melanoma; when it was, the second-largest probability is not stored and is
taken at its smallest possible value, an eighth of the rest. Those images are almost always
urgent, which the top class does not decide.
"""

from __future__ import annotations

import numpy as np

from schemas import TriageThresholds
from worker.classify.recalibration import Recalibration, load_recalibration
from worker.monitor.reference import distribution, load_reference, triage_rates
from worker.store.versions import ModelStore


def map_reference(doc: dict, recal: Recalibration, thresholds: TriageThresholds) -> dict:
    """``doc`` (a ``reference.json`` of the weights' own probabilities) under ``recal``."""
    s = doc["scores"]
    mel, ker, top = (np.asarray(s[k], dtype=np.float64) for k in ("melanoma", "keratinocyte", "top"))
    usable = np.asarray(s["usable"], bool)
    new = recal.melanoma(mel)
    rest = np.clip(1.0 - mel, 1e-12, None)
    scale = (1.0 - new) / rest
    top_was_melanoma = top <= mel + 1e-6
    other_top = np.where(top_was_melanoma, rest / 8.0, top)
    new_top = np.maximum(new, scale * other_top)
    new_ker = scale * ker
    out = dict(doc)
    out["scores"] = s | {"melanoma": [round(float(x), 6) for x in new],
                         "keratinocyte": [round(float(x), 6) for x in new_ker],
                         "top": [round(float(x), 6) for x in new_top]}
    out["distributions"] = doc["distributions"] | {"melanoma_probability": distribution(new[usable])}
    out["rates"] = (triage_rates(new[usable], new_ker[usable], new_top[usable], thresholds)
                    | {"unusable": float(1 - usable.mean()) if usable.size else 0.0})
    out["thresholds"] = {k: getattr(thresholds, k) for k in ("urgent_melanoma", "soon_keratinocyte",
                                                             "min_confidence")}
    out["source"] = f"{doc.get('source', '')}; mapped through the site recalibration ({recal.method})"
    return out


def raw_ancestor(store: ModelStore, version: str) -> str | None:
    """The nearest of ``version`` and its ancestors (same weights) without a site recalibration."""
    seen: set[str] = set()
    current: str | None = version
    while current and current not in seen:
        seen.add(current)
        if load_recalibration(store.version_dir(current)) is None:
            return current
        current = store.metadata(current).parent_version
    return None


def site_reference(store: ModelStore, base: str, traffic: dict | None, recal: Recalibration | None,
                   thresholds: TriageThresholds) -> dict | None:
    """The reference to write into the new site version: ``traffic`` (the site's traffic in
    the weights' own probabilities) or the raw ancestor's reference, mapped through
    ``recal``. None (the monitor then replays the parent's) when there is nothing to map and
    nothing needs mapping."""
    base_recalibrated = load_recalibration(store.version_dir(base)) is not None
    source = traffic
    if source is None and (recal is not None or base_recalibrated):
        ancestor = raw_ancestor(store, base)
        found = load_reference(store, ancestor) if ancestor else None
        source = found.data if found is not None else None
    if source is None or recal is None:
        return source
    return map_reference(source, recal, thresholds)
