"""The urgent threshold a leave-one-source-out run supports, applied to a stored version.

Rule (``worker.training.loso.worst_source_rules``, "shift"): in every LOSO fold the urgent
threshold chosen on the training sources' validation split is moved on the logit scale: down
until the worst held-out source keeps melanoma sensitivity >= 0.95, or, when every held-out
source had room, up only as far as each keeps 0.97 (the validation margin). That move is
applied to the version's own validation threshold; an upward move stops at the version's own
``urgent_melanoma_ceiling`` (validation sensitivity 0.95), and a version that does not record
one is never raised. Folds trained on under half of the images are reported but set no rule.
The move transfers between models of one recipe (temperature-scaled probabilities, thresholds
in the same tail); it is refused for a version of another recipe unless the caller says
otherwise.

The result is a new version (``worker.store.derived``): same weights and temperature, the new
urgent threshold, ``loso.json`` in its folder (the model card shows the LOSO table), the
choice under ``model.json`` ``metrics["loso_threshold"]``. ``models promote`` makes it current.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas import ModelMetadata
from worker.store.derived import derive_version
from worker.store.versions import ModelStore
from worker.training.loso import LOSO_FILE, expected_specificity_line, logit, sigmoid
from worker.training.loso_report import RULES

KIND = "loso_threshold"


class LosoPolicyError(ValueError):
    """The LOSO result cannot set this version's threshold (no rule, another recipe)."""


#: Recipe fields whose difference makes a LOSO threshold shift not transfer.
_MODEL_SHAPING = ("backbone", "input_size", "colour_constancy", "augmentation", "partial_labels")


def recipe_differences(loso: dict, base: ModelMetadata) -> list[str]:
    """Where the LOSO recipe differs from the version's: every model-shaping field when the
    version records its recipe, else what its notes show (input size, backbone)."""
    from worker.training.config import default
    from worker.training.network import BACKBONE_TITLES

    rec = loso.get("recipe") or {}
    if base.recipe is not None:
        return [f"{k} {rec.get(k, default(k))} (LOSO) vs {base.recipe.get(k, default(k))} (version)"
                for k in _MODEL_SHAPING if rec.get(k, default(k)) != base.recipe.get(k, default(k))]
    out = []
    if rec.get("input_size") not in (None, base.input_size):
        out.append(f"input size {rec['input_size']} (LOSO) vs {base.input_size} (version)")
    title = BACKBONE_TITLES.get(rec.get("backbone", ""), "")
    if title and base.notes and title not in base.notes:
        out.append(f"backbone {title} (LOSO) not in the version's notes ({base.notes})")
    return out


def loso_threshold(loso: dict, base_threshold: float, ceiling: float | None = None, rule: str = "shift") -> dict:
    """The urgent threshold for a version whose validation threshold is ``base_threshold``;
    ``ceiling``: the most its own validation allows (``urgent_melanoma_ceiling``; None: the
    threshold is never raised).

    ``rule`` ``shift``: the validation threshold moved by the LOSO logit shift. ``absolute``:
    the probability every held-out source in the rules needed (calibrated probabilities of
    one recipe agree better at the tail than its validation thresholds do when a few
    validation melanomas set those). Either way the own validation ceiling applies."""
    rules = loso.get("rules") or {}
    if not rules.get("defined"):
        raise LosoPolicyError(f"the LOSO run defines no threshold rule: {rules.get('reason', 'no rules')}")
    if rule not in RULES:
        raise LosoPolicyError(f"rule must be one of {RULES}, not {rule!r}")
    base_threshold = float(base_threshold)
    per = {s: d for s, d in rules["per_source"].items() if d.get("in_rule", True)}
    if rule == "shift":
        shift = float(rules["shift"]["logit_shift"])
        wanted, worst = sigmoid(logit(base_threshold) + shift), rules["shift"]["worst_source"]
    else:
        wanted, worst = float(rules["absolute"]["threshold"]), rules["absolute"]["worst_source"]
    threshold = wanted
    if wanted > base_threshold:  # raised no further than the version's own validation allows
        threshold = max(base_threshold, min(wanted, ceiling if ceiling is not None else base_threshold))
    at = {s: d[rule] for s, d in per.items()}
    sens = [d["sensitivity"] for d in at.values() if d["sensitivity"] is not None]
    specs = {s: d["specificity"] for s, d in at.items() if d["specificity"] is not None}
    expected_source = min(specs, key=specs.get) if specs else None
    return {
        "rule": rule, "threshold": threshold, "base_threshold": base_threshold,
        "logit_shift": logit(threshold) - logit(base_threshold),
        "worst_source": worst, "required_sensitivity": rules["target_sensitivity"],
        "worst_heldout_sensitivity": min(sens) if sens else None,
        "expected_specificity": specs.get(expected_source) if expected_source else None,
        "expected_specificity_source": expected_source,
        "ceiling": ceiling, "capped": threshold < wanted - 1e-12,
        "rule_text": {"shift": "validation threshold moved by the worst held-out source's logit shift",
                      "absolute": "the probability every held-out source in the rules needed"}[rule]
                     + "; raised only as far as the version's own validation keeps sensitivity 0.95",
        "sentence": _sentence(rule, rules, specs),
    }


def _sentence(rule: str, rules: dict, specs: dict) -> str:
    if rule == "shift":
        return expected_specificity_line({"rules": rules})
    if not specs:
        return "expected specificity at a new site: unknown (no held-out source had melanomas)"
    worst = min(specs, key=specs.get)
    return (f"expected specificity at a new site: {specs[worst]:.2f} (worst held-out source, {worst}; "
            f"{min(specs.values()):.2f}-{max(specs.values()):.2f} across the {len(specs)} held-out sources "
            f"in the rules) at melanoma sensitivity >= {rules['target_sensitivity']:.2f} on every held-out "
            f"source in the rules, with the absolute-threshold rule")


def _render_card(folder: Path) -> None:
    """The model card from the folder's artefacts; a short one when the parent had none."""
    from worker.training.model_card import MODEL_CARD_FILE, loso_lines, rewrite_model_card

    if all((folder / n).is_file() for n in ("data_quality.json", "calibration.json", "metrics.json")):
        rewrite_model_card(folder)
        return
    meta = ModelMetadata.model_validate_json((folder / "model.json").read_text())
    loso = json.loads((folder / LOSO_FILE).read_text())
    lines = [f"# Model card: {meta.version}", "", f"- {meta.notes}", ""] + loso_lines(loso, meta)
    (folder / MODEL_CARD_FILE).write_text("\n".join(lines) + "\n")


def apply_loso(store: ModelStore, version: str, loso: dict, command: str, allow_other_recipe: bool = False,
               staging_root: Path | None = None, rule: str = "shift") -> tuple[str, dict]:
    """(new version name, the choice): ``version``'s weights with the LOSO urgent threshold."""
    base = store.metadata(version)
    differences = recipe_differences(loso, base)
    if differences and not allow_other_recipe:
        raise LosoPolicyError("the LOSO run used another recipe than this version: " + "; ".join(differences))
    choice = loso_threshold(loso, base.thresholds.urgent_melanoma, base.thresholds.urgent_melanoma_ceiling, rule)
    choice |= {"recipe_differences": differences, "loso_created_at": loso.get("created_at"),
               "loso_command": loso.get("command")}
    thresholds = base.thresholds.model_copy(update={
        "urgent_melanoma": choice["threshold"], "urgent_sensitivity": choice["worst_heldout_sensitivity"],
        "urgent_specificity": choice["expected_specificity"]})
    notes = (f"{base.notes or ''}; urgent threshold {choice['base_threshold']:.4f} -> {choice['threshold']:.4f} "
             f"by the LOSO {rule} rule (logit shift {choice['logit_shift']:+.3f}, set by "
             f"{choice['worst_source']}); same weights and temperature as {base.version}").lstrip("; ")
    name = derive_version(store, version, thresholds, kind=KIND, label="loso", provenance=choice, command=command, notes=notes,
                          extra_files={LOSO_FILE: json.dumps(loso, indent=1)}, finish=_render_card,
                          staging_root=staging_root)
    return name, choice
