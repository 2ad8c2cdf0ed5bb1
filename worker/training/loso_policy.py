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


def loso_threshold(loso: dict, base_threshold: float, ceiling: float | None = None) -> dict:
    """The urgent threshold for a version whose validation threshold is ``base_threshold``;
    ``ceiling``: the most its own validation allows (``urgent_melanoma_ceiling``; None: the
    threshold is never raised)."""
    rules = loso.get("rules") or {}
    if not rules.get("defined"):
        raise LosoPolicyError(f"the LOSO run defines no threshold rule: {rules.get('reason', 'no rules')}")
    shift = float(rules["shift"]["logit_shift"])
    threshold = sigmoid(logit(base_threshold) + shift)
    if shift > 0:  # raised no further than the version's own validation sensitivity 0.95 allows
        threshold = max(float(base_threshold), min(threshold, ceiling if ceiling is not None else base_threshold))
    per = rules["per_source"]
    sens = [d["shift"]["sensitivity"] for d in per.values()
            if d["shift"]["sensitivity"] is not None and d.get("in_rule", True)]
    expected = rules["expected_at_new_site"]
    return {
        "threshold": threshold, "base_threshold": float(base_threshold), "logit_shift": shift,
        "worst_source": rules["shift"]["worst_source"], "required_sensitivity": rules["target_sensitivity"],
        "worst_heldout_sensitivity": min(sens) if sens else None,
        "expected_specificity": expected.get("specificity"),
        "expected_specificity_source": expected.get("worst_source"),
        "ceiling": ceiling, "capped": shift > 0 and threshold < sigmoid(logit(base_threshold) + shift) - 1e-12,
        "rule": ("validation threshold moved by the worst held-out source's logit shift; raised only as far "
                 "as every held-out source keeps sensitivity 0.97 and the version's validation keeps 0.95"),
        "sentence": expected_specificity_line(loso),
    }


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
               staging_root: Path | None = None) -> tuple[str, dict]:
    """(new version name, the choice): ``version``'s weights with the LOSO urgent threshold."""
    base = store.metadata(version)
    differences = recipe_differences(loso, base)
    if differences and not allow_other_recipe:
        raise LosoPolicyError("the LOSO run used another recipe than this version: " + "; ".join(differences))
    choice = loso_threshold(loso, base.thresholds.urgent_melanoma, base.thresholds.urgent_melanoma_ceiling)
    choice |= {"recipe_differences": differences, "loso_created_at": loso.get("created_at"),
               "loso_command": loso.get("command")}
    thresholds = base.thresholds.model_copy(update={
        "urgent_melanoma": choice["threshold"], "urgent_sensitivity": choice["worst_heldout_sensitivity"],
        "urgent_specificity": choice["expected_specificity"]})
    notes = (f"{base.notes or ''}; urgent threshold {choice['base_threshold']:.4f} -> {choice['threshold']:.4f} "
             f"by the LOSO worst-source rule (logit shift {choice['logit_shift']:+.3f}, set by "
             f"{choice['worst_source']}); same weights and temperature as {base.version}").lstrip("; ")
    name = derive_version(store, version, thresholds, kind=KIND, label="loso", provenance=choice, command=command, notes=notes,
                          extra_files={LOSO_FILE: json.dumps(loso, indent=1)}, finish=_render_card,
                          staging_root=staging_root)
    return name, choice
