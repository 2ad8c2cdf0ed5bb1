"""A site calibration proposal as people read it: the terminal lines of ``calibrate``, the
operating-point table, the site version's notes and model card."""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas import ModelMetadata
from worker.calibration.thresholds import Interval, OperatingPoint

if TYPE_CHECKING:  # site imports this module to write the model card
    from worker.calibration.site import Proposal


def _iv(x: Interval | dict | None) -> str:
    if x is None:
        return "n/a"
    return (Interval(**x) if isinstance(x, dict) else x).text()


def table_lines(rows: list[OperatingPoint], chosen: float | None = None, markdown: bool = False) -> list[str]:
    """The operating points on the site's cases: what to expect on new cases (out of bag,
    95 % intervals) for each required sensitivity."""
    traffic = any(r.traffic_flagged is not None for r in rows)
    head = ["sensitivity wanted", "threshold", "sensitivity", "specificity", "share flagged urgent",
            *(["share of recent traffic flagged"] if traffic else [])]
    body = []
    for r in rows:
        mark = " <- chosen" if chosen is not None and r.required_sensitivity == chosen else ""
        note = "" if r.reached else " (not reached)"
        body.append([f"{r.required_sensitivity:.2f}{note}", f"{r.threshold:.4f}", _iv(r.oob_sensitivity),
                     _iv(r.oob_specificity), _iv(r.oob_flagged), *([_iv(r.traffic_flagged)] if traffic else [])])
        body[-1][-1] += mark
    if markdown:
        return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]


def recalibration_line(p: Proposal) -> str:
    r, fit = p.recalibration, p.recalibration_fit
    if r is None and fit is None:
        return "probabilities: the base's, unchanged (threshold-only, --no-recalibrate)"
    losses = ", ".join(f"{m} {v:.4f}" for m, v in fit["oob_log_loss"].items())
    if r is None:
        return (f"probabilities: the base's, kept: no map fitted on these cases beats them out of bag "
                f"(melanoma log loss {fit['log_loss_before']:.4f}; out of bag {losses})")
    how = (f"Platt scaling of the melanoma logit (slope {r['slope']:.3f}, intercept {r['intercept']:+.3f})"
           if r["method"] == "platt" else f"isotonic regression on the melanoma logit ({len(r['knots_logit'])} knots)")
    return (f"probabilities recalibrated on these cases: {how}; melanoma log loss {fit['log_loss_before']:.4f} "
            f"(base) -> out of bag {losses}")


def _ece_line(p: Proposal) -> str:
    base, site = p.gate.get("champion", {}).get("ece"), p.gate.get("challenger", {}).get("ece")
    fmt = (lambda v: "n/a" if v is None else f"{v:.3f}")  # noqa: E731
    return f"calibration error (top-label ECE): base {fmt(base)} -> site version {fmt(site)} (out of bag)"


def format_proposal(p: Proposal) -> list[str]:
    """The proposal for the terminal: the trade-off first, then what was chosen and the gate."""
    u, b = p.urgent, p.base_urgent
    c = p.counts
    lines = [
        f"site cases: {c['used']} usable confirmed cases ({c['melanoma']} melanomas, {c['other']} other; "
        f"{c['unusable']} unusable and {c['unscored']} unscored left out)",
        recalibration_line(p),
        _ece_line(p),
        "",
        "operating points on the site's cases (out of bag, 95 % intervals; thresholds on the site version's "
        f"probabilities; traffic: the latest {c.get('traffic', 0)} usable images reported):",
        *("  " + line for line in table_lines(p.table, u.required_sensitivity)),
        "",
        f"urgent threshold: {b['threshold']:.4f} (base) -> {u.threshold:.4f} (site, sensitivity "
        f"{u.required_sensitivity:.2f} wanted)",
        f"  base on these cases: sensitivity {_iv(b['sensitivity'])}, specificity {_iv(b['specificity'])}",
        f"  site on these cases: sensitivity {u.sensitivity.text()}, specificity {u.specificity.text()}",
        f"  expected on new cases (out of bag): sensitivity {u.expected_sensitivity:.3f}, "
        f"specificity {u.expected_specificity:.3f} (in-sample target {u.in_sample_target:.2f})",
        (f"soon threshold: {p.base_soon['threshold']:.4f} (base) -> {p.soon.threshold:.4f} (site)" if p.soon
         else f"soon threshold: {p.thresholds.soon_keratinocyte:.4f} (base kept; {c['keratinocyte']} keratinocyte "
              f"lesions, {c.get('keratinocyte_needed', 30)} needed)"),
    ]
    if p.soon:
        bs = p.base_soon
        lines += [f"  base on these cases: keratinocyte sensitivity {_iv(bs['sensitivity'])}, "
                  f"specificity {_iv(bs['specificity'])}",
                  f"  site on these cases: keratinocyte sensitivity {p.soon.sensitivity.text()}, "
                  f"specificity {p.soon.specificity.text()}",
                  f"  expected on new cases (out of bag): sensitivity {p.soon.expected_sensitivity:.3f}, "
                  f"specificity {p.soon.expected_specificity:.3f}"]
    default = p.gate.get("default_min_sensitivity")
    if default is not None and u.required_sensitivity < default:
        lines.append(f"sensitivity {u.required_sensitivity:.2f} is below the product default {default:.2f}: "
                     "the site's decision, recorded on the model card with --by and --reason")
    if p.chosen_by:
        lines.append(f"chosen by {p.chosen_by}: {p.reason}")
    lines.append(f"gate: {'passed' if p.passed else 'FAILED'}")
    lines += [f"  - {r}" for r in p.gate.get("reasons", [])]
    return lines


def version_notes(base: ModelMetadata, p: Proposal) -> str:
    """``model.json`` ``notes`` of the site version."""
    u = p.urgent
    recal = (f"melanoma probability recalibrated ({p.recalibration['method']})" if p.recalibration
             else "probabilities unchanged")
    return (f"site calibration of {base.version}: urgent threshold {base.thresholds.urgent_melanoma:.4f} -> "
            f"{u.threshold:.4f} (sensitivity {u.required_sensitivity:.2f} chosen by {p.chosen_by or 'n/a'}) from "
            f"{p.counts['used']} confirmed cases ({p.counts['melanoma']} melanomas, case set sha256 "
            f"{p.cases_sha256[:12]}); expected sensitivity {u.expected_sensitivity:.3f}, specificity "
            f"{u.expected_specificity:.3f} (out of bag); same weights and temperature, {recal}")


def _sentence(line: str) -> str:
    return line[:1].upper() + line[1:] + "."


def model_card(version: str, base_card: str | None, p: Proposal) -> str:
    u, b = p.urgent, p.base_urgent
    lines = [
        f"# Model card: {version}",
        "",
        f"Site calibration of `{p.base_version}`: the same network and temperature, "
        + ("the melanoma probability recalibrated and " if p.recalibration else "")
        + f"thresholds chosen on this site's {p.counts['used']} confirmed cases ({p.counts['melanoma']} "
        f"melanomas) by `melanoma-triage calibrate` on {p.created_at}.",
        "",
        "## The choice",
        "",
        f"Operating point: melanoma sensitivity {u.required_sensitivity:.2f} on new cases, chosen by "
        f"**{p.chosen_by or 'not recorded'}**. Reason: {p.reason or 'not recorded'}.",
        "",
        "Operating points on the site's cases (out of bag, 95 % intervals):",
        "",
        *table_lines(p.table, u.required_sensitivity, markdown=True),
        "",
        "## Probabilities",
        "",
        _sentence(recalibration_line(p)),
        "",
        _sentence(_ece_line(p)),
        "",
        "## Thresholds",
        "",
        "| | base threshold | site threshold |",
        "|---|---|---|",
        f"| urgent melanoma probability | {b['threshold']:.4f} | {u.threshold:.4f} |",
        f"| sensitivity on the site's cases (95 % CI) | {_iv(b['sensitivity'])} | {u.sensitivity.text()} |",
        f"| specificity on the site's cases (95 % CI) | {_iv(b['specificity'])} | {u.specificity.text()} |",
        f"| expected on new cases (out of bag) | | sensitivity {u.expected_sensitivity:.3f}, "
        f"specificity {u.expected_specificity:.3f} |",
        "",
        (f"Soon threshold: site-calibrated, {p.soon.threshold:.4f}." if p.soon else
         "Soon threshold: the base version's (too few confirmed keratinocyte lesions)."),
        f"Gate: {'passed' if p.passed else 'FAILED'}: " + "; ".join(p.gate.get("reasons", [])),
        "",
    ]
    if base_card:
        lines += ["## The base version's model card", "", base_card]
    return "\n".join(lines) + "\n"
