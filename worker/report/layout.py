"""Page layout of the triage report (reportlab platypus + a vector bar chart).

Everything that is drawn is decided here; :mod:`worker.report.pdf` only writes the bytes.
A report is laid out once, plainly; only when very long field values push it past one
page is it laid out again inside a ``KeepInFrame`` that shrinks to fit, so hostile values
can never make a second page and ordinary reports never pay for the shrinking.

Cost per report (issue 10, ``benchmarks/bench_pipeline.py``): reportlab's C accelerator
(``rl_accel``, the ``reportlab[accel]`` extra), no ASCII85 armour on the streams
(``rl_config.useA85 = 0``: binary PDF streams are standard), styles built once per
process, the patient fields as plain table strings (24 Paragraphs cost more than the rest
of the page), and the thumbnail embedded as a JPEG, not decoded again by reportlab to hash
its pixels: the source file itself when it is a plain JPEG of report size, else encoded
once (:mod:`worker.report.thumbnail`). Boxes, columns and the bar chart are drawn by
:mod:`worker.report.flowables` and :class:`ProbabilityChart`, not by nested tables. Once per
process, not per report: the text that every report prints (title, headings, disclaimer)
is parsed and broken into lines (:class:`FixedParagraph`), and each distinct font subset
is cut from the TrueType font and compressed (:class:`_SubsetOnceFace`). Measured on this
2-core machine, 50 reports: 8.4 -> 4.7 ms for a 600 x 450 JPEG, 12.4 -> 6.6 ms for the
1,000 x 750 pixels of a 4,000 x 3,000 JPEG. The two caches leave a report's bytes as they
were (a test compares them with plain reportlab's).
"""

from __future__ import annotations

import copy
import functools
import io
import pathlib
import zlib
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase import pdfdoc
from reportlab.pdfbase.ttfonts import FF_NONSYMBOLIC, FF_SYMBOLIC, TTFont, TTFontFace
from reportlab.platypus import (
    Flowable,
    LayoutError,
    KeepInFrame,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

import reportlab
from reportlab import rl_config
from schemas import CLASS_NAMES, MELANOMA, SOON_CLASSES, Laterality, TriageLevel
from schemas.classes import DISPLAY_NAMES
from worker.classify.triage import percent
from worker.report.content import ReportContent
from worker.report.flowables import Box, Columns, EncodedJpeg, FixedParagraph, FramedPicture, Panel
from worker.report.thumbnail import thumbnail_jpeg
from worker.report.wording import local_time, most_likely, referral_wording

TITLE = "Dermoscopy triage report \u2014 decision support"
NOT_RECORDED = "not recorded"
DISCLAIMER = (
    "This is decision support, not a diagnosis. The result must be reviewed by a qualified "
    "clinician together with the clinical history and, where indicated, examination of the "
    "patient. A routine result does not exclude melanoma: any lesion that is changing, new "
    "or clinically suspicious must be assessed regardless of this report."
)

rl_config.useA85 = 0  # binary streams: ASCII85 only made the file 25 % larger and slower

#: Searched in order; the Docker image installs fonts-dejavu-core (first entry).
FONT_DIRS = (
    pathlib.Path("/usr/share/fonts/truetype/dejavu"),
    pathlib.Path("/usr/share/fonts/dejavu"),
)
FONT = "TriageSans"
FONT_BOLD = "TriageSans-Bold"

PAGE_W, PAGE_H = A4
MARGIN = 15 * mm
FRAME_PAD = 6  # platypus Frame default padding
CONTENT_W = PAGE_W - 2 * MARGIN

INK = colors.HexColor("#1a1a1a")
MUTED = colors.HexColor("#555555")
RULE = colors.HexColor("#9e9e9e")
PANEL = colors.HexColor("#f3f4f6")
BAR = colors.HexColor("#6b7f94")
BAR_MELANOMA = colors.HexColor("#b3261e")

#: Banner fill and text colour per level. The wording is always printed: colour is a second cue.
BANNER = {
    TriageLevel.URGENT: (colors.HexColor("#b3261e"), colors.white),
    TriageLevel.SOON: (colors.HexColor("#f0a500"), colors.black),
    TriageLevel.ROUTINE: (colors.HexColor("#2e7d32"), colors.white),
    TriageLevel.INDETERMINATE: (colors.HexColor("#616161"), colors.white),
}

#: Free-text values longer than this are cut (the frame shrinks anyway; this keeps it legible).
MAX_FIELD_CHARS = 200
#: Explanation and quality note are pipeline sentences: allow more before cutting.
MAX_SENTENCE_CHARS = 800


#: Distinct font subsets kept per face (a report's subset is all of ASCII plus the few other
#: characters it prints, in the order first printed: nearly every report has the same one).
MAX_CACHED_SUBSETS = 16


class _SubsetOnceFace(TTFontFace):
    """reportlab's TrueType face, but each distinct subset's font program is cut from the
    font and compressed once per process, not once per report (~1.5 ms of a ~8 ms report).
    The objects written are those of ``TTFontFace.addSubsetObjects``, byte for byte."""

    _programs: dict[tuple[int, ...], tuple[int, bytes, bytes]]

    def addSubsetObjects(self, doc, fontname, subset):  # noqa: ANN001, N802 - reportlab's API
        key = tuple(subset)
        program = self._programs.get(key)
        if program is None:
            raw = self.makeSubset(subset)
            program = (len(raw), raw, zlib.compress(raw))  # what pdfdoc.PDFZCompress writes
            if len(self._programs) < MAX_CACHED_SUBSETS:
                self._programs[key] = program
        raw_length, raw, packed = program
        font_file = pdfdoc.PDFStream()
        font_file.dictionary["Length1"] = raw_length
        if doc.compression:
            font_file.content = packed
            font_file.dictionary["Filter"] = pdfdoc.PDFArray([pdfdoc.PDFName("FlateDecode")])
        else:
            font_file.content = raw
        font_file_ref = doc.Reference(font_file, f"fontFile:{self.filename}({fontname})")
        descriptor = pdfdoc.PDFDictionary({
            "Type": "/FontDescriptor",
            "Ascent": self.ascent,
            "CapHeight": self.capHeight,
            "Descent": self.descent,
            "Flags": (self.flags & ~FF_NONSYMBOLIC) | FF_SYMBOLIC,
            "FontBBox": pdfdoc.PDFArray(self.bbox),
            "FontName": pdfdoc.PDFName(fontname),
            "ItalicAngle": self.italicAngle,
            "StemV": self.stemV,
            "FontFile2": font_file_ref,
            "MissingWidth": self.defaultWidth,
        })
        return doc.Reference(descriptor, "fontDescriptor:" + fontname)


def _report_font(name: str, path: pathlib.Path) -> TTFont:
    font = TTFont(name, str(path))
    font.face.__class__ = _SubsetOnceFace  # TTFont builds a plain TTFontFace; same data
    font.face._programs = {}
    return font


@functools.cache
def register_fonts() -> tuple[str, str]:
    """Register a Unicode TTF (DejaVu, else reportlab's Vera) under stable names."""
    candidates = [(d / "DejaVuSans.ttf", d / "DejaVuSans-Bold.ttf") for d in FONT_DIRS]
    rl_fonts = pathlib.Path(reportlab.__file__).parent / "fonts"
    candidates.append((rl_fonts / "Vera.ttf", rl_fonts / "VeraBd.ttf"))
    for regular, bold in candidates:
        if regular.is_file() and bold.is_file():
            pdfmetrics.registerFont(_report_font(FONT, regular))
            pdfmetrics.registerFont(_report_font(FONT_BOLD, bold))
            pdfmetrics.registerFontFamily(FONT, normal=FONT, bold=FONT_BOLD, italic=FONT, boldItalic=FONT_BOLD)
            return FONT, FONT_BOLD
    raise RuntimeError("no TrueType font found for the report (install fonts-dejavu-core)")


def _missing_glyphs(text: str) -> bool:
    """True when the registered font cannot draw some character (e.g. CJK in DejaVu)."""
    face = pdfmetrics.getFont(FONT).face
    cmap = face.charToGlyph
    return any(ord(ch) not in cmap for ch in text if not ch.isspace())


# ---------------------------------------------------------------- text helpers


@functools.cache
def _styles() -> dict[str, ParagraphStyle]:
    """Built once per process (never mutated: variants are new styles)."""
    base = ParagraphStyle("base", fontName=FONT, fontSize=9, leading=11.5, textColor=INK, alignment=TA_LEFT)
    return {
        "base": base,
        "title": ParagraphStyle("title", base, fontName=FONT_BOLD, fontSize=15, leading=19),
        "subtitle": ParagraphStyle("subtitle", base, fontSize=8, leading=10, textColor=MUTED),
        "h": ParagraphStyle("h", base, fontName=FONT_BOLD, fontSize=10, leading=13, spaceBefore=2, spaceAfter=3),
        "label": ParagraphStyle("label", base, fontSize=8, leading=10, textColor=MUTED),
        "value": ParagraphStyle("value", base, fontSize=9, leading=11),
        "value_bold": ParagraphStyle("value_bold", base, fontName=FONT_BOLD, fontSize=10, leading=12.5),
        "small": ParagraphStyle("small", base, fontSize=7, leading=8.5, textColor=MUTED),
        "small_ink": ParagraphStyle("small_ink", base, fontSize=7, leading=8.5),
        "caption": ParagraphStyle("caption", base, fontSize=7, leading=8.5, textColor=MUTED, alignment=1),
        "disclaimer": ParagraphStyle("disclaimer", base, fontSize=8.5, leading=11),
        "when": ParagraphStyle("when", base, fontSize=8, leading=10, textColor=MUTED, alignment=2),
        "banner_label": ParagraphStyle("bl", base, fontSize=7.5, leading=10, textColor=MUTED),
        "banner": ParagraphStyle("bw", base, fontName=FONT_BOLD, fontSize=13, leading=16),
        "quality": ParagraphStyle("q", base, fontSize=10, leading=13),
    }


@functools.cache
def _fixed_template(text: str, style: str) -> FixedParagraph:
    return FixedParagraph(text, _styles()[style])


def _fixed(text: str, style: str) -> Paragraph:
    """A paragraph of text that is the same in every report: parsed and broken into lines
    once per process (:class:`FixedParagraph`); ``text`` is markup, escaped by the caller."""
    return copy.copy(_fixed_template(text, style))


def _text(value: object | None, limit: int = MAX_FIELD_CHARS) -> str:
    """Escaped, length-bounded text; missing values read 'not recorded', never 'None'."""
    if value is None:
        return f"<i>{NOT_RECORDED}</i>"
    s = " ".join(str(value).split())
    if not s:
        return f"<i>{NOT_RECORDED}</i>"
    if len(s) > limit:
        s = s[: limit - 1] + "\u2026"
    return escape(s)


def format_person_name(pn: str | None) -> str | None:
    """DICOM PN 'Family^Given^Middle^Prefix^Suffix' (groups split by '=') -> 'Family, Given Middle'."""
    if pn is None or not pn.strip():
        return None
    groups = []
    for group in pn.split("="):
        parts = [p.strip() for p in group.split("^")] + [""] * 5
        family, given, middle, prefix, suffix = parts[:5]
        first = " ".join(p for p in (prefix, given, middle) if p)
        name = ", ".join(p for p in (family, first) if p)
        if suffix:
            name = f"{name}, {suffix}" if name else suffix
        if name:
            groups.append(name)
    if not groups:
        return None
    return groups[0] if len(groups) == 1 else f"{groups[0]} ({' / '.join(groups[1:])})"


def _laterality_text(code: str | None) -> str | None:
    """'Left (L)': the words and the DICOM code; an unknown code is printed as it is."""
    if not code:
        return None
    try:
        wording = Laterality(code).wording
    except ValueError:
        wording = code
    return f"{wording} ({code})"


# ---------------------------------------------------------------- blocks


def _header(c: ReportContent, st: dict[str, ParagraphStyle]) -> list:
    sub = _fixed("Automated dermoscopy image analysis for referral triage. "
                 "Not a diagnosis \u2014 see the statement at the foot of this page.", "subtitle")
    when = Paragraph(f"Reported {escape(local_time(c.reported_at, c.timezone))}", st["when"])
    row = Columns(sub, when, CONTENT_W - 60 * mm, 60 * mm, valign="bottom")
    head = Panel([(_fixed(escape(TITLE), "title"), 3), (row, 0)], CONTENT_W,
                 Box(bottom=5, rule_below=(1.2, INK)))
    return [head, Spacer(1, 6)]


def _plain(value: object | None, limit: int = MAX_FIELD_CHARS) -> str:
    """:func:`_text` for a table string (drawn as it is: no markup, nothing to escape)."""
    if value is None:
        return NOT_RECORDED
    s = " ".join(str(value).split())
    if not s:
        return NOT_RECORDED
    return s if len(s) <= limit else s[: limit - 1] + "\u2026"


#: Patient-block value fonts: (font, size, leading) per kind of row.
_VALUE_FONTS = {
    "bold": (FONT_BOLD, 10, 12.5),
    "value": (FONT, 9, 11),
    "small": (FONT, 7, 8.5),
}


def _patient_block(c: ReportContent, st: dict[str, ParagraphStyle], width: float) -> Table:
    """Label/value rows as plain strings, wrapped here (one Paragraph per cell cost more
    than the rest of the page); fonts and colours come from the table style."""
    md = c.metadata
    name = format_person_name(md.patient_name)
    rows = [
        ("Patient name", _plain(name), "bold"),
        ("Patient ID", _plain(md.patient_id), "bold"),
        ("Accession number", _plain(md.accession_number), "value"),
        ("Study date", _plain(md.study_date.isoformat() if md.study_date else None), "value"),
        ("Body site", _plain(md.body_site), "value"),
        ("Laterality", _plain(_laterality_text(md.laterality)), "value"),
        ("Original file", _plain(c.original_name), "value"),
        ("Received", local_time(c.received_at, c.timezone), "value"),
        ("Reported", local_time(c.reported_at, c.timezone), "value"),
        ("Study UID", _plain(md.study_instance_uid), "small"),
        ("Series UID", _plain(md.series_instance_uid), "small"),
        ("SOP instance UID", _plain(md.sop_instance_uid), "small"),
        ("Job ID", _plain(c.job_id), "small"),
    ]
    if name and _missing_glyphs(name):
        rows.insert(1, ("", "Some characters of the name cannot be shown in this font; "
                            "identify the patient by ID.", "small"))
    label_w = 30 * mm
    value_w = width - label_w - 4  # the right padding
    data, style = [], [
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LEFTPADDING", (0, 0), (-1, -1), 0),
        ("RIGHTPADDING", (0, 0), (-1, -1), 4),
        ("TOPPADDING", (0, 0), (-1, -1), 1.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
        ("FONT", (0, 0), (0, -1), FONT, 8, 10),
        ("TEXTCOLOR", (0, 0), (0, -1), MUTED),
        ("TEXTCOLOR", (1, 0), (1, -1), INK),
    ]
    for i, (label, value, kind) in enumerate(rows):
        font, size, leading = _VALUE_FONTS[kind]
        data.append([label, "\n".join(simpleSplit(value, font, size, value_w))])
        style.append(("FONT", (1, i), (1, i), font, size, leading))
        if not label:  # the note under the name
            style.append(("TEXTCOLOR", (1, i), (1, i), MUTED))
        # A rule under each row but the last, and none between the name and its note.
        if i < len(rows) - 1 and rows[i + 1][0]:
            style.append(("LINEBELOW", (0, i), (-1, i), 0.25, colors.HexColor("#dddddd")))
    t = Table(data, colWidths=[label_w, width - label_w])
    t.setStyle(TableStyle(style))
    return t


def _thumbnail(c: ReportContent, st: dict[str, ParagraphStyle], column: float) -> Panel:
    """The image as classified: the source JPEG as it is, or one <= 600 px JPEG encoded once
    (:mod:`worker.report.thumbnail`); the PDF embeds either without decoding it."""
    h, w = c.image_rgb.shape[:2]
    jpeg, tw, th = thumbnail_jpeg(c.image_rgb, c.source_jpeg)
    frame = column - 2
    box = frame - 6
    scale = min(box / w, box / h)
    picture = FramedPicture(EncodedJpeg(jpeg, tw, th), w * scale, h * scale, frame,
                            fill=colors.HexColor("#fafafa"), stroke=RULE)
    caption = Paragraph(f"Image as classified ({w} \u00d7 {h} px)", st["caption"])
    return Panel([(picture, 2), (caption, 0)], column, Box(left=1, right=1))


def _banner(c: ReportContent, st: dict[str, ParagraphStyle]) -> list:
    fill, ink = BANNER[c.triage]
    hexink = ink.hexval()[2:]
    label = _fixed(f'<font color="#{hexink}">TRIAGE RESULT</font>', "banner_label")
    words = c.referral_wording or referral_wording(c.triage)
    wording = _fixed(f'<font color="#{hexink}">{escape(words)}</font>', "banner")
    banner = Panel([(label, 1), (wording, 0)], CONTENT_W, Box(left=8, right=8, top=5, bottom=7, fill=fill))
    reason = Paragraph(f"<b>Reason:</b> {_text(c.triage_explanation, MAX_SENTENCE_CHARS)}", st["value"])
    lines = [(reason, 0)]
    if c.predicted_class is not None:
        weighed = ("; named after weighing each class by how often the model gives it, so it can "
                   "differ from the most probable" if c.predicted_class != most_likely(c.probabilities)[0]
                   else "")
        call = Paragraph(f"<b>Class call:</b> {escape(DISPLAY_NAMES[c.predicted_class])} "
                         f"({percent(float(c.probabilities[c.predicted_class]))}{weighed})", st["value"])
        lines = [(reason, 2), (call, 0)]
    explanation = Panel(lines, CONTENT_W,
                        Box(left=8, right=6, top=4, bottom=5, stroke=fill, stroke_width=1))
    return [banner, explanation]


def _quality_box(note: str, st: dict[str, ParagraphStyle]) -> Panel:
    text = Paragraph(f"<b>IMAGE QUALITY WARNING:</b> {_text(note, MAX_SENTENCE_CHARS)}", st["quality"])
    return Panel([(text, 0)], CONTENT_W, Box(left=8, right=6, top=5, bottom=6,
                                             fill=colors.HexColor("#fff4ce"),
                                             stroke=colors.HexColor("#c77700"), stroke_width=1.5))


class ProbabilityChart(Flowable):
    """Horizontal bars in the fixed model order, so every report reads the same way; drawn
    straight onto the canvas (a reportlab.graphics Drawing of ~50 shapes cost more)."""

    ROW_H, BAR_H = 17.0, 10.5
    LABEL_W, VALUE_W = 150.0, 52.0
    TOP_PAD, AXIS_H = 4.0, 14.0

    def __init__(self, c: ReportContent, width: float = CONTENT_W) -> None:
        super().__init__()
        self.probabilities = {n: min(max(float(c.probabilities[n]), 0.0), 1.0) for n in CLASS_NAMES}
        self.urgent = c.thresholds.urgent_melanoma
        self.width = width
        self.height = self.TOP_PAD + len(CLASS_NAMES) * self.ROW_H + self.AXIS_H

    def wrap(self, available_width: float, available_height: float) -> tuple[float, float]:
        return self.width, self.height

    def draw(self) -> None:
        cv = self.canv
        x0, axis_h = self.LABEL_W, self.AXIS_H
        plot_w = self.width - self.LABEL_W - self.VALUE_W
        y_top = self.height - self.TOP_PAD
        cv.saveState()
        cv.setStrokeColor(colors.HexColor("#e0e0e0"))
        cv.setLineWidth(0.5)
        cv.setFont(FONT, 6.5)
        cv.setFillColor(MUTED)
        for k in range(0, 101, 25):  # grid and axis
            x = x0 + plot_w * k / 100
            cv.line(x, axis_h, x, y_top)
            cv.drawCentredString(x, axis_h - 9, f"{k} %")
        cv.setStrokeColor(RULE)
        cv.setLineWidth(0.7)
        cv.line(x0, axis_h, x0, y_top)
        for i, name in enumerate(CLASS_NAMES):
            p = self.probabilities[name]
            is_mel = name == MELANOMA
            y = y_top - (i + 1) * self.ROW_H + (self.ROW_H - self.BAR_H) / 2
            font = FONT_BOLD if is_mel else FONT
            cv.setFillColor(INK)
            cv.setFont(font, 8.5)
            cv.drawRightString(x0 - 6, y + 2.8, DISPLAY_NAMES[name] + (" *" if name in SOON_CLASSES else ""))
            cv.setFont(font, 8)
            label = percent(p)
            mark = x0 + plot_w * self.urgent if is_mel else None
            cv.drawString(value_label_x(x0 + plot_w * p + 4, pdfmetrics.stringWidth(label, font, 8),
                                        mark), y + 2.8, label)
            if p > 0:
                cv.setFillColor(BAR_MELANOMA if is_mel else BAR)
                cv.rect(x0, y, max(plot_w * p, 0.6), self.BAR_H, stroke=0, fill=1)
            if is_mel:
                tx = x0 + plot_w * self.urgent
                cv.setStrokeColor(INK)
                cv.setLineWidth(1.2)
                cv.setDash([2, 1.5])
                cv.line(tx, y - 3, tx, y + self.BAR_H + 3)
                cv.setDash()
        cv.restoreState()


#: Space kept between the threshold mark and the value label beside it (points).
MARK_CLEARANCE = 3.0


def value_label_x(x: float, width: float, mark: float | None) -> float:
    """Where a bar's value label starts: just after its bar, or just after the threshold
    mark when the label would otherwise lie across it (the mark never covers text)."""
    if mark is not None and x - MARK_CLEARANCE <= mark <= x + width + MARK_CLEARANCE:
        return mark + MARK_CLEARANCE
    return x


def _chart_block(c: ReportContent, st: dict[str, ParagraphStyle]) -> list:
    soon_sum = sum(float(c.probabilities[k]) for k in SOON_CLASSES)
    note = (
        f"Melanoma highlighted in red; the dashed mark on its bar is the urgent threshold "
        f"({percent(c.thresholds.urgent_melanoma)}). * Classes summed for the \u201csoon\u201d rule: "
        f"combined {percent(soon_sum)} (threshold {percent(c.thresholds.soon_keratinocyte)}). "
        f"Fixed class order; probabilities are calibrated model outputs, not prevalence-adjusted risks."
    )
    return [
        _fixed("Class probabilities", "h"),
        ProbabilityChart(c),
        Spacer(1, 2),
        Paragraph(note, st["small"]),
    ]


def _technical_block(c: ReportContent, st: dict[str, ParagraphStyle]) -> Panel:
    th = c.thresholds

    def perf(sens: float | None, spec: float | None) -> str:
        if sens is None and spec is None:
            return ""
        s = "n/a" if sens is None else f"{sens:.2f}"
        p = "n/a" if spec is None else f"{spec:.2f}"
        return f" (validation sensitivity {s}, specificity {p})"

    lines = [
        f"<b>Model version:</b> {_text(c.model_version)}",
        *([f"<b>Calibration:</b> {_text(c.calibration_note)}"] if c.calibration_note else []),
        f"<b>Thresholds of this model version:</b> urgent if melanoma \u2265 {percent(th.urgent_melanoma)}"
        f"{perf(th.urgent_sensitivity, th.urgent_specificity)}; soon if BCC + SCC + actinic keratosis \u2265 "
        f"{percent(th.soon_keratinocyte)}{perf(th.soon_sensitivity, th.soon_specificity)}; "
        f"indeterminate if the highest class probability &lt; {percent(th.min_confidence)}.",
        f"<b>Image SHA-256:</b> {_text(c.image_sha256)}",
    ]
    items = [(Paragraph(line, st["small_ink"]), 3) for line in lines]
    items[-1] = (items[-1][0], 0)
    return Panel(items, CONTENT_W, Box(left=6, right=6, top=4, bottom=4, fill=PANEL))


def _disclaimer() -> Panel:
    text = _fixed(f"<b>Important.</b> {escape(DISCLAIMER)}", "disclaimer")
    return Panel([(text, 0)], CONTENT_W, Box(left=8, right=8, top=5, bottom=6, stroke=INK,
                                             stroke_width=0.8))


def _footer(canvas, doc) -> None:  # noqa: ANN001 (reportlab callback signature)
    canvas.saveState()
    canvas.setFont(FONT, 7)
    canvas.setFillColor(MUTED)
    canvas.setStrokeColor(RULE)
    canvas.setLineWidth(0.5)
    y = MARGIN - 5 * mm
    canvas.line(MARGIN, y + 9, PAGE_W - MARGIN, y + 9)
    canvas.drawString(MARGIN, y, f"{TITLE} \u00b7 job {doc.triage_job_id}")
    canvas.drawRightString(PAGE_W - MARGIN, y, "Page 1 of 1")
    canvas.restoreState()


# ---------------------------------------------------------------- document


def build_story(c: ReportContent) -> list:
    register_fonts()
    st = _styles()
    img_col = 70 * mm
    left_w = CONTENT_W - img_col - 6 * mm
    top = Columns(_patient_block(c, st, left_w), _thumbnail(c, st, img_col), left_w + 6 * mm, img_col)
    story: list = []
    story += _header(c, st)
    story += [_fixed("Patient and study", "h"), top, Spacer(1, 8)]
    story += _banner(c, st)
    if c.quality_note is not None and c.quality_note.strip():
        story += [Spacer(1, 5), _quality_box(c.quality_note, st)]
    story += [Spacer(1, 6)]
    story += _chart_block(c, st)
    story += [Spacer(1, 7), _technical_block(c, st), Spacer(1, 7), _disclaimer()]
    return story


def build_pdf(c: ReportContent) -> bytes:
    """The report as PDF bytes. No patient data goes into the document metadata.

    Laid out plainly first; a report that does not fit one page (very long field values)
    is laid out again, shrunk to fit by a ``KeepInFrame``.
    """
    register_fonts()
    try:
        data, pages = _render(c, shrink=False)
    except LayoutError:  # one block taller than the page
        pages = 2
    if pages > 1:
        data, _ = _render(c, shrink=True)
    return data


def _render(c: ReportContent, shrink: bool) -> tuple[bytes, int]:
    """PDF bytes and the number of pages the story took."""
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        # The frame pads by FRAME_PAD: content edges then sit exactly on MARGIN.
        leftMargin=MARGIN - FRAME_PAD,
        rightMargin=MARGIN - FRAME_PAD,
        topMargin=MARGIN - FRAME_PAD,
        bottomMargin=MARGIN + 6 * mm - FRAME_PAD,
        title="Dermoscopy triage report",
        author="melanoma-triage",
        subject=f"Decision-support triage report, job {c.job_id}",
        creator="melanoma-triage",
        keywords="",
        invariant=1,  # same content -> same bytes -> same sha256 on a retried job
    )
    doc.triage_job_id = c.job_id
    story = build_story(c)
    if shrink:
        frame_h = PAGE_H - doc.topMargin - doc.bottomMargin - 2 * FRAME_PAD
        story = [KeepInFrame(CONTENT_W, frame_h, story, mode="shrink")]
    doc.build(story, onFirstPage=_footer, onLaterPages=_footer)
    return buf.getvalue(), doc.page
