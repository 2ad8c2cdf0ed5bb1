"""How a leave-one-source-out result reads (``loso.md``, the model card, ``evaluate``).

Kept apart from ``worker.training.loso`` so that the model card can print the table without
importing the trainer (which imports the model card)."""

from __future__ import annotations

#: Melanoma sensitivity every held-out source must keep at the urgent threshold.
REQUIRED_SENSITIVITY = 0.95
#: How ``models apply-loso`` turns the folds into a threshold: ``shift`` (the version's
#: validation threshold moved by the worst source's logit shift) or ``absolute`` (the
#: probability every held-out source needed); both capped by the version's own validation.
RULES = ("shift", "absolute")


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(d: dict | None) -> str:
    if not isinstance(d, dict) or d.get("value") is None:
        return "n/a"
    if d.get("ci_low") is None:
        return _f(d["value"])
    return f"{_f(d['value'])} ({_f(d['ci_low'])}-{_f(d['ci_high'])})"


def expected_specificity_line(loso: dict) -> str:
    """The model card's one sentence on what a new site should expect."""
    rules = loso.get("rules") or {}
    exp = rules.get("expected_at_new_site") or {}
    if not rules.get("defined") or exp.get("specificity") is None:
        return "expected specificity at a new site: unknown (no held-out source had melanomas)"
    lo, hi = exp["specificity_range"]
    n_rule = sum(1 for d in (rules.get("per_source") or {}).values() if d.get("in_rule", True))
    return (f"expected specificity at a new site: {exp['specificity']:.2f} (worst held-out source, "
            f"{exp['worst_source']}; {lo:.2f}-{hi:.2f} across the {n_rule} held-out sources in the rules) at "
            f"melanoma sensitivity >= {rules['target_sensitivity']:.2f} on every held-out source in the rules, with the "
            f"worst-source threshold rule")


def _not_in_rule(d: dict) -> str:
    return " \\*" if d.get("in_rule") is False else ""


def loso_markdown(loso: dict, sentence: bool = True) -> str:
    """loso.md: one row per held-out source, the worst-source rules, the expected specificity
    (``sentence`` False: without it, for a page that states it already)."""
    rules = loso.get("rules") or {}
    per = rules.get("per_source") or {}
    t = loso.get("required_sensitivity", REQUIRED_SENSITIVITY)
    lines = [
        "| held-out source | images | melanomas | melanoma AUC (95% CI) | urgent threshold (validation) | "
        f"sensitivity at it | specificity at it | threshold for sensitivity >= {t} | "
        "sensitivity / specificity, worst-source rule | same, rule fitted without this source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, f in loso["folds"].items():
        d = per.get(s) or {}
        sh, loo = d.get("shift") or {}, d.get("shift_without_this_source") or {}
        lines.append(
            f"| {s}{_not_in_rule(d)} | {f['n']} | {f['n_melanoma']}{' (few)' if d.get('uncertain') else ''} | "
            f"{_ci(f['melanoma_auc'])} | {f['threshold']:.4f} | {_ci(f['sensitivity'])} | {_ci(f['specificity'])} | "
            f"{_f(d.get('needed_threshold'), 4)} | {_f(sh.get('sensitivity'))} / {_f(sh.get('specificity'))} "
            f"(t {_f(sh.get('threshold'), 4)}) | {_f(loo.get('sensitivity'))} / {_f(loo.get('specificity'))} |")
    if rules.get("defined"):
        ab, sh = rules["absolute"], rules["shift"]
        spec_abs = ", ".join(f"{s} {_f(d['absolute']['specificity'])}" for s, d in per.items())
        lines += [
            "",
            f"- worst-source rule: every fold's validation threshold moved by {sh['logit_shift']:+.3f} on the "
            f"logit scale (set by {sh['worst_source']}); `models apply-loso` applies it to a version.",
            f"- one absolute threshold that holds on every held-out source in the rules: {ab['threshold']:.4f} (set by "
            f"{ab['worst_source']}); specificity there: {spec_abs}.",
        ]
        out_of_rule = [s for s, d in per.items() if d.get("in_rule") is False]
        if out_of_rule and rules.get("shift_all_folds"):
            al = rules["shift_all_folds"]
            spec_all = ", ".join(f"{s} {_f(v)}" for s, v in al["specificity"].items())
            shares = ", ".join(f"{s} {per[s]['training_share']:.0%}" for s in out_of_rule)
            lines.append(
                f"- \\* not in the rules: trained on less than {rules['min_training_share']:.0%} of the images "
                f"({shares}), so not the shipped model at a new clinic. With it, the shift would be "
                f"{al['logit_shift']:+.3f} (set by {al['worst_source']}) and specificity {spec_all}.")
    if sentence:
        lines += ["", f"**{expected_specificity_line(loso)}**"]
    lines.append("")
    return "\n".join(lines)
