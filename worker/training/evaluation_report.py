"""The one-page evaluation PDF (evaluation.pdf): headline numbers with CIs, per-class and
per-source tables, thresholds and the evaluation figures, laid out with reportlab platypus."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.platypus import Image as RLImage
from reportlab.platypus import KeepInFrame, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from schemas.classes import CLASS_NAMES, DISPLAY_NAMES
from worker.training.figures import CONFUSION_PNG, RELIABILITY_PNG, ROC_PNG

REPORT_PDF = "evaluation.pdf"


def _fmt_ci(d: dict | None, digits: int = 3) -> str:
    if not d or d.get("value") is None:
        return "n/a"
    s = f"{d['value']:.{digits}f}"
    if d.get("ci_low") is not None and d.get("ci_high") is not None:
        s += f" [{d['ci_low']:.{digits}f}, {d['ci_high']:.{digits}f}]"
    return s


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


_GRID = colors.HexColor("#BBBBBB")
_SHADE = colors.HexColor("#EEF2F7")
_MARGIN = 1.2 * cm


@dataclass(frozen=True)
class _Styles:
    h1: ParagraphStyle
    sub: ParagraphStyle
    h2: ParagraphStyle
    cell: ParagraphStyle
    num: ParagraphStyle
    head: ParagraphStyle
    big: ParagraphStyle
    note: ParagraphStyle


def _styles() -> _Styles:
    ss = getSampleStyleSheet()
    cell = ParagraphStyle("cell", parent=ss["Normal"], fontSize=7, leading=8.5)
    return _Styles(
        h1=ParagraphStyle("h1", parent=ss["Title"], fontSize=15, leading=18, spaceAfter=2),
        sub=ParagraphStyle("sub", parent=ss["Normal"], fontSize=7.5, leading=9.5,
                           textColor=colors.HexColor("#444444"), alignment=TA_CENTER),
        h2=ParagraphStyle("h2", parent=ss["Heading3"], fontName="Helvetica-Bold", fontSize=9.5,
                          leading=11, spaceBefore=5, spaceAfter=2),
        cell=cell,
        num=ParagraphStyle("num", parent=cell, alignment=TA_RIGHT),
        head=ParagraphStyle("head", parent=cell, fontName="Helvetica-Bold", alignment=TA_CENTER),
        big=ParagraphStyle("big", parent=cell, fontSize=9, leading=11, alignment=TA_CENTER),
        note=ParagraphStyle("note", parent=cell, fontSize=6, leading=7.5, textColor=colors.HexColor("#555555")),
    )


def write_evaluation_pdf(metrics: dict, fig_dir: Path, path: Path) -> None:
    """evaluation.pdf from ``metrics`` and the figures already written into ``fig_dir``."""
    width, height = A4[0] - 2 * _MARGIN, A4[1] - 2 * _MARGIN
    st = _styles()
    story = [
        Paragraph(_esc(metrics["title"]), st.h1),
        Paragraph(
            f"Model evaluation &middot; {metrics['n']} images ({metrics['n_nine_class']} with nine-class "
            f"labels, {metrics['n_melanoma_only']} melanoma/not-melanoma only; {metrics['n_melanoma']} "
            f"melanoma) &middot; 95% percentile-bootstrap CIs ({metrics['n_boot']} resamples, seed "
            f"{metrics['seed']}) &middot; {metrics['created_at']}", st.sub),
        Spacer(1, 5),
        _headline_table(metrics, st, width),
        Spacer(1, 3),
        _summary_line(metrics, st),
        _tables_row(metrics, st, width),
        Spacer(1, 4),
        _figures_table(metrics, fig_dir, st, width),
    ]
    doc = SimpleDocTemplate(str(path), pagesize=A4, leftMargin=_MARGIN, rightMargin=_MARGIN,
                            topMargin=_MARGIN, bottomMargin=_MARGIN, title=metrics["title"],
                            author="melanoma-triage", subject="Model evaluation")
    # Shrink rather than spill: the report is one page by design.
    doc.build([KeepInFrame(width, height, story, mode="shrink")])


def _headline_table(metrics: dict, st: _Styles, width: float) -> Table:
    mel, th = metrics["melanoma"], metrics["thresholds"]
    headline = [
        [Paragraph(t, st.head) for t in (
            "Melanoma vs rest<br/>ROC AUC",
            f"Melanoma sensitivity<br/>at urgent threshold {th['urgent_melanoma']:.2f}",
            f"Melanoma specificity<br/>at urgent threshold {th['urgent_melanoma']:.2f}",
            "Balanced accuracy<br/>(nine classes)",
            "Calibration error<br/>(top-label ECE)")],
        [Paragraph(_ci_html(d), st.big) for d in (
            mel["auc"], mel["sensitivity"], mel["specificity"], metrics["balanced_accuracy"],
            metrics["ece"])],
    ]
    t = Table(headline, colWidths=[width / 5] * 5)
    t.setStyle(TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.5, _GRID),
        ("BACKGROUND", (0, 0), (-1, 0), _SHADE),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 3), ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
    ]))
    return t


def _summary_line(metrics: dict, st: _Styles) -> Paragraph:
    soon, th, nine = metrics["soon"], metrics["thresholds"], metrics["nine_class"]
    return Paragraph(
        f"<b>Soon</b> (BCC + SCC + actinic keratosis probability &ge; {th['soon_keratinocyte']:.2f}): "
        f"sensitivity {_fmt_ci(soon['sensitivity'])}, specificity {_fmt_ci(soon['specificity'])} "
        f"(n = {soon['n']}, {soon['n_positive']} positive). "
        f"<b>Triage levels</b>: " + ", ".join(f"{k} {v}" for k, v in metrics["triage_counts"].items())
        + f". <b>Accuracy</b> {_fmt(nine['accuracy'])}, macro F1 {_fmt(nine['macro']['f1'])}, "
        f"macro AUC {_fmt(nine['macro']['auc'])}.", st.cell)


def _class_table(nine: dict, st: _Styles) -> Table:
    rows = [[Paragraph(h, st.head) for h in ("Class", "Support", "Precision", "Recall", "F1", "ROC AUC")]]
    for name in CLASS_NAMES:
        pc = nine["per_class"][name]
        rows.append([Paragraph(DISPLAY_NAMES[name], st.cell)] + [Paragraph(v, st.num) for v in (
            str(pc["support"]), _fmt(pc["precision"]), _fmt(pc["recall"]), _fmt(pc["f1"]),
            _fmt(pc["auc"]))])
    mac = nine["macro"]
    rows.append([Paragraph("<b>Macro (classes present)</b>", st.cell)] + [
        Paragraph(f"<b>{v}</b>", st.num) for v in (
            str(nine["n"]), _fmt(mac["precision"]), _fmt(mac["recall"]), _fmt(mac["f1"]), _fmt(mac["auc"]))])
    table = Table(rows, colWidths=[3.7 * cm] + [1.5 * cm] * 5)
    table.setStyle(TableStyle([
        ("FONTSIZE", (0, 0), (-1, -1), 7),
        ("GRID", (0, 0), (-1, -1), 0.4, _GRID),
        ("BACKGROUND", (0, 0), (-1, 0), _SHADE),
        ("BACKGROUND", (0, -1), (-1, -1), _SHADE),
        ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
        ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3),
    ]))
    return table


def _side_column(metrics: dict, st: _Styles) -> list:
    """Per-source table and the thresholds, right of the per-class table."""
    th = metrics["thresholds"]
    side = [Paragraph("Per source", st.h2)]
    if "per_source" in metrics:
        srows = [[Paragraph(h, st.head) for h in ("Source", "n", "Mel AUC", "Bal. acc.")]]
        for src, d in metrics["per_source"].items():
            srows.append([Paragraph(_esc(src), st.cell)] + [Paragraph(v, st.num) for v in (
                str(d["n"]), _fmt(_value(d["melanoma_auc"])), _fmt(_value(d["balanced_accuracy"])))])
        table = Table(srows, colWidths=[2.9 * cm, 1.2 * cm, 1.4 * cm, 1.4 * cm])
        table.setStyle(TableStyle([
            ("FONTSIZE", (0, 0), (-1, -1), 7), ("GRID", (0, 0), (-1, -1), 0.4, _GRID),
            ("BACKGROUND", (0, 0), (-1, 0), _SHADE), ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
            ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
            ("TOPPADDING", (0, 0), (-1, -1), 1), ("BOTTOMPADDING", (0, 0), (-1, -1), 1),
        ]))
        side.append(table)
    else:
        side.append(Paragraph("No source information given.", st.cell))
    side.append(Paragraph("Thresholds", st.h2))
    side.append(Paragraph(
        f"urgent (melanoma) {th['urgent_melanoma']:.3f}; soon (keratinocyte) "
        f"{th['soon_keratinocyte']:.3f}; minimum confidence {th['min_confidence']:.3f}. "
        "Thresholds come from the model store; probabilities are the calibrated outputs. "
        + ("Class calls (per-class table, confusion matrix) are prior-corrected: argmax of "
           "log p + the version's class bias." if th.get("class_bias") else
           "Class calls are the most probable class."), st.cell))
    return side


def _tables_row(metrics: dict, st: _Styles, width: float) -> Table:
    left_w = 3.7 * cm + 5 * 1.5 * cm
    row = Table([[[Paragraph("Per class (nine-class labelled images)", st.h2),
                   _class_table(metrics["nine_class"], st)], _side_column(metrics, st)]],
                colWidths=[left_w + 0.4 * cm, width - left_w - 0.4 * cm])
    row.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                             ("LEFTPADDING", (0, 0), (-1, -1), 0),
                             ("RIGHTPADDING", (0, 0), (-1, -1), 0)]))
    return row


def _figures_table(metrics: dict, fig_dir: Path, st: _Styles, width: float) -> Table:
    half = width / 2 - 0.1 * cm
    figs = Table(
        [[_rl_image(fig_dir / CONFUSION_PNG, half), _rl_image(fig_dir / ROC_PNG, half)],
         [_rl_image(fig_dir / RELIABILITY_PNG, half), Paragraph(_figure_notes(metrics), st.note)]],
        colWidths=[width / 2, width / 2])
    figs.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("ALIGN", (0, 0), (-1, -1), "CENTER"),
                              ("LEFTPADDING", (0, 0), (-1, -1), 1), ("RIGHTPADDING", (0, 0), (-1, -1), 1),
                              ("TOPPADDING", (0, 0), (-1, -1), 1), ("BOTTOMPADDING", (0, 0), (-1, -1), 1)]))
    return figs


def _value(d):
    """A CI dict's point value; a plain number as it is."""
    return d.get("value") if isinstance(d, dict) else d


def _esc(s: str) -> str:
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _ci_html(d: dict) -> str:
    if d.get("value") is None:
        return "n/a"
    s = f"<b>{d['value']:.3f}</b>"
    if d.get("ci_low") is not None and d.get("ci_high") is not None:
        s += f"<br/><font size=7>[{d['ci_low']:.3f}, {d['ci_high']:.3f}]</font>"
    return s


def _figure_notes(metrics: dict) -> str:
    tbt = metrics["triage_by_truth"]
    lines = ["<b>Triage level by truth</b> (rows: truth; urgent / soon / routine / indeterminate)"]
    names = {"melanoma": "Melanoma", "soon_class": "BCC / SCC / AK", "other": "Other nine-class",
             "not_melanoma_unspecified": "Not melanoma (2017)"}
    for key, label in names.items():
        if key in tbt:
            d = tbt[key]
            lines.append(f"{label}: {d['urgent']} / {d['soon']} / {d['routine']} / {d['indeterminate']}")
    lines.append("")
    lines.append(
        "<b>Reading the figures.</b> Confusion matrix rows are true classes normalised to 1 "
        "(row totals in brackets). ROC: thin lines are one-vs-rest per class on nine-class "
        "labelled images; the red line is melanoma vs rest on all images, the circle the "
        "operating point at the urgent threshold. Reliability: bars are accuracy per "
        f"confidence bin ({metrics['ece']['n_bins']} equal-width bins); hatched gap to the "
        "diagonal shows over- or under-confidence; below, how many images fall in each bin. "
        "The most confidently wrong images are in confidently_wrong.png; all numbers are in "
        "metrics.json.")
    return "<br/>".join(lines)


def _rl_image(path: Path, max_width: float) -> RLImage:
    with Image.open(path) as im:
        w, h = im.size
    return RLImage(str(path), width=max_width, height=max_width * h / w)
