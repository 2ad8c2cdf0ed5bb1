"""model_card.md of a version folder: what the model is for, how it was made, how well it does
on its held-out test split against the release targets, and what it cannot do.

Rendered from the version's own artefacts (model.json, data_quality.json, calibration.json,
metrics.json), so it can be re-rendered later without the model (:func:`rewrite_model_card`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from schemas import ModelMetadata
from worker.store.versions import METADATA_FILE

MODEL_CARD_FILE = "model_card.md"
#: The leave-one-source-out result in a version folder (``worker.training.loso.LOSO_FILE``).
LOSO_FILE = "loso.json"

#: Release targets on the held-out test split (see model_card.md).
TARGETS = {"melanoma_auc": 0.90, "urgent_sensitivity": 0.95, "balanced_accuracy": 0.65, "ece": 0.05}


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ci(d) -> str:
    if not isinstance(d, dict):
        return _fmt(d)
    return f"{_fmt(d.get('value'))} ({_fmt(d.get('ci_low'))}-{_fmt(d.get('ci_high'))})"


def _val(d):
    return d.get("value") if isinstance(d, dict) else d


def _target_rows(metrics: dict) -> list[str]:
    mel = metrics.get("melanoma", {})
    rows = [
        ("melanoma-vs-rest ROC AUC", mel.get("auc"), ">=", TARGETS["melanoma_auc"]),
        ("melanoma sensitivity at the urgent threshold", mel.get("sensitivity"), ">=", TARGETS["urgent_sensitivity"]),
        ("melanoma specificity at the urgent threshold", mel.get("specificity"), None, None),
        ("nine-class balanced accuracy", metrics.get("balanced_accuracy"), ">=", TARGETS["balanced_accuracy"]),
        ("top-label ECE (15 bins)", metrics.get("ece"), "<=", TARGETS["ece"]),
        ("soon sensitivity (BCC/SCC/AK)", metrics.get("soon", {}).get("sensitivity"), None, None),
        ("soon specificity", metrics.get("soon", {}).get("specificity"), None, None),
    ]
    out = ["| metric | test value (95% bootstrap CI) | target | met |", "|---|---|---|---|"]
    for name, d, op, target in rows:
        v = _val(d)
        met = "" if target is None or v is None else ("yes" if (v >= target if op == ">=" else v <= target) else "**no**")
        out.append(f"| {name} | {_ci(d)} | {'' if target is None else f'{op} {target}'} | {met} |")
    return out


def _source_rows(meta: ModelMetadata, metrics: dict) -> list[str]:
    """Per-source rows; versions since the per-source merge carry the same CI dicts in both
    model.json (``test_by_source``) and metrics.json (``per_source``)."""
    by_source = meta.metrics.get("test_by_source") or metrics.get("per_source") or {}
    rows = [f"| {s} | {d.get('n')} | {d.get('n_melanoma')} | {_ci(d.get('melanoma_auc'))} | "
            f"{_ci(d.get('balanced_accuracy'))} |" for s, d in by_source.items()]
    if not any("urgent_sensitivity" in d for d in by_source.values()):
        return rows
    rows += ["", "| source | urgent sensitivity | urgent specificity | ECE |", "|---|---|---|---|"]
    return rows + [f"| {s} | {_ci(d.get('urgent_sensitivity'))} | {_ci(d.get('urgent_specificity'))} | "
                   f"{_fmt(d.get('ece'))} |" for s, d in by_source.items()]


def _class_call_line(calib: dict, metrics: dict) -> str:
    call = calib.get("class_call") or {}
    scores = call.get("balanced_accuracy_by_beta") or {}
    if not call.get("class_bias"):
        return "- class call (`predicted_class`): the most probable class"
    beta = call["beta"]
    test = metrics.get("class_call") or {}
    return (f"- class call (`predicted_class`, not triage): argmax of log p + class bias, prior "
            f"correction beta {beta}; balanced accuracy with plain argmax -> with the bias: validation "
            f"{_fmt(scores.get('0.0'))} -> {_fmt(scores.get(str(float(beta))))}, "
            f"test {_fmt(test.get('balanced_accuracy_argmax'))} -> {_fmt(test.get('balanced_accuracy'))} "
            f"(test accuracy {_fmt(test.get('accuracy_argmax'))} -> {_fmt(test.get('accuracy'))})")


def render_model_card(meta: ModelMetadata, report: dict, calib: dict, metrics: dict,
                      loso: dict | None = None) -> str:
    """model_card.md: intended use, model, data, operating points, test performance, the
    leave-one-source-out table when the version has one (``loso``), limits."""
    lines = (_intro_lines(meta, calib) + _data_lines(meta, report) + _operating_point_lines(meta, calib, metrics)
             + _performance_lines(meta, metrics) + (loso_lines(loso, meta) if loso else [])
             + _limitation_lines(meta))
    return "\n".join(lines)


def loso_lines(loso: dict, meta: ModelMetadata | None = None) -> list[str]:
    """The leave-one-source-out section (``worker.training.loso``): per held-out source, AUC and
    the urgent operating point of a model that never saw that source, and what a new site
    should expect."""
    from worker.training.loso_report import expected_specificity_line, loso_markdown

    applied = (meta.metrics.get("loso_threshold") if meta is not None else None) or {}
    lines = [
        "", "## A clinic the model has never seen: leave-one-source-out", "",
        f"**{applied.get('sentence') or expected_specificity_line(loso)}**", "",
        "Per source, the recipe was trained on the other sources (lesion-grouped split, urgent threshold "
        "chosen on their pooled validation split) and scored on the held-out source (95% bootstrap CIs). "
        f"Recipe: `{json.dumps(loso.get('recipe', {}), sort_keys=True)}`; command: `{loso.get('command')}`.", "",
        loso_markdown(loso, sentence=False).rstrip(),
    ]
    if applied:
        how = {"absolute": "set to the probability every held-out source in the rules needed"}.get(
            applied.get("rule"), "moved by the worst-source rule")
        lines += ["", f"This version's urgent threshold {applied['threshold']:.4f} is its parent's validation "
                  f"threshold {applied['base_threshold']:.4f} {how} (logit shift "
                  f"{applied['logit_shift']:+.3f}, set by {applied['worst_source']}"
                  f"{'; capped by its own validation' if applied.get('capped') else ''})."]
    return lines


def _intro_lines(meta: ModelMetadata, calib: dict) -> list[str]:
    return [
        f"# Model card: {meta.version}", "",
        "## Intended use",
        "Decision support for triaging dermoscopy images of single skin lesions into urgent "
        "(suspected melanoma), soon (suspected BCC/SCC/actinic keratosis), routine or "
        "indeterminate. Not a diagnosis: every report is reviewed by a clinician. Not for "
        "clinical (non-dermoscopic) photographs, mucosal or nail lesions, or children.", "",
        "## Model",
        f"- {meta.notes}",
        f"- input: RGB {meta.input_size}x{meta.input_size} float 0..255 (scaling is inside the model), "
        "squashed to square by `worker.classify.preprocess.to_model_input`; output: 9 logits; calibrated "
        f"probabilities = softmax(logits / T), T = {meta.temperature:.4f} (fitted on validation; "
        f"validation NLL {_fmt(calib.get('nll_before'))} -> {_fmt(calib.get('nll_after'))}, "
        f"ECE {_fmt(calib.get('ece_before'))} -> {_fmt(calib.get('ece_after'))})",
        f"- training command: `{meta.training_command}`",
        f"- training wall time: {meta.metrics.get('train_seconds', 'n/a')} s (fit only) on 2 CPU cores",
        f"- data manifest sha256: `{meta.data_manifest_sha256}`", "",
    ]


def _data_lines(meta: ModelMetadata, report: dict) -> list[str]:
    final = report["final"]
    return [
        "## Training data",
        f"{final['images']} distinct images after de-duplication and label-conflict resolution "
        "(data_quality.md lists every rule and case). Split by lesion / image id / content-hash "
        f"group, stratified, 70/15/15 (split.csv): {meta.metrics.get('split_counts')}.", "",
        "| class | images |", "|---|---|",
    ] + [f"| {k} | {v} |" for k, v in final["per_class"].items()] + [
        "", "| source | images |", "|---|---|",
    ] + [f"| {k} | {v} |" for k, v in final["per_source"].items()]


def _urgent_line(meta: ModelMetadata, metrics: dict) -> str:
    th = meta.thresholds
    applied = meta.metrics.get("loso_threshold")
    if not applied:
        return (f"- urgent: P(melanoma) >= {th.urgent_melanoma:.4f} (validation sensitivity "
                f"{_fmt(th.urgent_sensitivity)}, specificity {_fmt(th.urgent_specificity)})")
    tested = (metrics.get("thresholds") or {}).get("urgent_melanoma")
    return (f"- urgent: P(melanoma) >= {th.urgent_melanoma:.4f}, set by leave-one-source-out (below): "
            f"worst held-out source sensitivity {_fmt(th.urgent_sensitivity)}, expected specificity at a new "
            f"site {_fmt(th.urgent_specificity)}; the parent's validation threshold was "
            f"{applied['base_threshold']:.4f}"
            + (f" (the test-split numbers below were measured at {tested:.4f})" if tested is not None else ""))


def _operating_point_lines(meta: ModelMetadata, calib: dict, metrics: dict) -> list[str]:
    th = meta.thresholds
    return [
        "", "## Operating points (chosen on the validation split; calibration.json has the rules)",
        _urgent_line(meta, metrics),
        f"- soon: P(BCC)+P(SCC)+P(AK) >= {th.soon_keratinocyte:.4f} (validation sensitivity "
        f"{_fmt(th.soon_sensitivity)}, specificity {_fmt(th.soon_specificity)})",
        f"- indeterminate: top probability < {th.min_confidence:.4f} (validation share "
        f"{_fmt(calib.get('indeterminate_share_validation'))}) or an unusable image",
        _class_call_line(calib, metrics), "",
    ]


def _performance_lines(meta: ModelMetadata, metrics: dict) -> list[str]:
    nine = metrics.get("nine_class", {})
    return [
        f"## Performance on the held-out test split ({metrics.get('n')} images, "
        f"{metrics.get('n_nine_class')} with nine-class labels)", "",
    ] + _target_rows(metrics) + [
        "", f"Triage levels on the test split: {metrics.get('triage_counts')}", "",
        "### Per class (nine-class rows)", "",
        "| class | support | precision | recall | F1 | one-vs-rest AUC |", "|---|---|---|---|---|---|",
    ] + [
        f"| {c} | {d.get('support')} | {_fmt(d.get('precision'))} | {_fmt(d.get('recall'))} | "
        f"{_fmt(d.get('f1'))} | {_fmt(d.get('auc'))} |"
        for c, d in (nine.get("per_class") or {}).items()
    ] + [
        "", "### Per source", "",
        "| source | images | melanoma | melanoma AUC | balanced accuracy |", "|---|---|---|---|---|",
    ] + _source_rows(meta, metrics)


def _limitation_lines(meta: ModelMetadata) -> list[str]:
    return [
        "", "## Known limitations",
        "- seborrheic_keratosis has no trustworthy training image in the supplied data: every "
        "isic-9class image of that folder is a byte-identical copy of a melanoma-folder image "
        "(no verdict: dropped; ISIC 2017 says melanoma: melanoma) or is contradicted by ISIC 2017. "
        "The model cannot predict it; HAM10000 `bkl` (which includes seborrheic keratoses) is "
        "mapped to pigmented_benign_keratosis.",
        "- squamous_cell_carcinoma, dermatofibroma, vascular_lesion and actinic_keratosis are rare: "
        "their per-class metrics have wide confidence intervals.",
        "- The urgent threshold buys 95% melanoma sensitivity with low specificity: many benign "
        "lesions are triaged urgent. That is the stated safety trade-off, not an error.",
        "- Data come from public archives (HAM10000 Vienna/Queensland, ISIC); performance on other "
        "dermatoscopes, skin types and populations is unknown; the images are mostly of light skin.",
        f"- A small network ({meta.notes or 'see model.json'}) trained on 2 CPU cores in about an hour; "
        "targets that are not met are marked **no** above.",
        "",
    ]


def write_model_card(out: Path, meta: ModelMetadata, report: dict, calib: dict, metrics: dict) -> None:
    """model_card.md into the version folder ``out`` (with the LOSO section when ``out`` holds
    a loso.json)."""
    loso_path = Path(out) / LOSO_FILE
    loso = json.loads(loso_path.read_text()) if loso_path.is_file() else None
    (Path(out) / MODEL_CARD_FILE).write_text(render_model_card(meta, report, calib, metrics, loso))


def rewrite_model_card(version_dir: Path) -> None:
    """Re-render model_card.md from the artefacts in a version folder (model untouched)."""
    d = Path(version_dir)
    meta = ModelMetadata.model_validate_json((d / METADATA_FILE).read_text())

    def load(name: str) -> dict:
        return json.loads((d / name).read_text())

    write_model_card(d, meta, load("data_quality.json"), load("calibration.json"), load("metrics.json"))
