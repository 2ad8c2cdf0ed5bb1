"""The report explains itself (issue 19): the rule that fired and the most likely class where
it differs, the class call, the original file name (on the page and in the file name), the
threshold mark clear of text, the referral wording as a setting, times in the site's zone."""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from reportlab.pdfgen.canvas import Canvas

from schemas import CLASS_NAMES, ImageMetadata, SourceDoor, TriageLevel, TriageThresholds
from tests.conftest import make_settings
from tests.imagegen import jpeg_bytes, lesion_rgb
from tests.test_report import make_content, pdf_text
from worker.report import render_report, report_filename
from worker.report.layout import MARK_CLEARANCE, ProbabilityChart, value_label_x
from worker.report.wording import local_time, referral_wording, triage_sentence

THRESHOLDS = TriageThresholds(urgent_melanoma=0.029, soon_keratinocyte=0.35, min_confidence=0.3)


def _probs(**given: float) -> dict[str, float]:
    rest = (1.0 - sum(given.values())) / (len(CLASS_NAMES) - len(given))
    return {c: given.get(c, rest) for c in CLASS_NAMES}


def test_an_urgent_result_whose_longest_bar_is_a_nevus_says_so():
    probs = _probs(melanoma=0.192, nevus=0.62)
    sentence = triage_sentence(probs, THRESHOLDS, TriageLevel.URGENT)
    assert sentence == ("Melanoma probability 19.2 % is at or above this model's urgent threshold "
                        "(2.9 %); the most likely class is melanocytic nevus, 62.0 %.")


def test_the_most_likely_class_is_named_only_where_it_differs():
    urgent = triage_sentence(_probs(melanoma=0.7), THRESHOLDS, TriageLevel.URGENT)
    assert "most likely" not in urgent and urgent.startswith("Melanoma probability 70.0 %")
    soon = triage_sentence(_probs(melanoma=0.01, basal_cell_carcinoma=0.5), THRESHOLDS,
                           TriageLevel.SOON)
    assert "most likely" not in soon
    routine = triage_sentence(_probs(melanoma=0.01, squamous_cell_carcinoma=0.3,
                                     nevus=0.2), THRESHOLDS, TriageLevel.ROUTINE)
    assert routine.endswith("the most likely class is squamous cell carcinoma, 30.0 %.")


def test_the_referral_wording_is_neutral_unless_the_site_sets_it():
    assert "2-week" not in referral_wording(TriageLevel.URGENT)
    site = {"urgent": "URGENT - refer on the 2-week wait pathway"}
    assert referral_wording(TriageLevel.URGENT, site) == site["urgent"]
    assert referral_wording(TriageLevel.SOON, site) == TriageLevel.SOON.wording
    with pytest.raises(ValueError, match="triage levels"):
        make_settings(Path("/tmp/x"), referral_wording={"urgentish": "x"})


def test_times_are_printed_in_the_site_zone_with_the_zone_named():
    ts = datetime(2024, 3, 5, 9, 12, 3, tzinfo=timezone.utc)
    assert local_time(ts) == "2024-03-05 09:12:03 UTC"
    assert local_time(ts, "Europe/Berlin") == "2024-03-05 10:12:03 CET (Europe/Berlin)"
    with pytest.raises(ValueError, match="unknown time zone"):
        make_settings(Path("/tmp/x"), timezone="Mars/Olympus")


def test_the_page_prints_name_class_call_zone_and_site_wording(tmp_path):
    content = make_content(
        metadata=ImageMetadata(), original_name="lesion 07 (left arm).jpg",
        probabilities=_probs(melanoma=0.192, nevus=0.62), predicted_class="nevus",
        triage_explanation=triage_sentence(_probs(melanoma=0.192, nevus=0.62), THRESHOLDS,
                                           TriageLevel.URGENT),
        thresholds=THRESHOLDS, timezone="Europe/Berlin",
        referral_wording="URGENT - refer on the 2-week wait pathway")
    out = tmp_path / report_filename(content.metadata, content.job_id, content.original_name)
    render_report(content, out)
    text = pdf_text(out)
    assert out.name == f"lesion_07_left_arm_{content.job_id}.pdf"
    assert "Original file lesion 07 (left arm).jpg" in text
    assert "Class call: Melanocytic nevus (62.0 %)" in text  # the most probable: no note
    assert "the most likely class is melanocytic nevus, 62.0 %" in text
    assert "Received 2024-03-05 10:12:03 CET (Europe/Berlin)" in text
    assert "URGENT - refer on the 2-week wait pathway" in text


def test_a_class_call_that_is_not_the_most_probable_says_why(tmp_path):
    probs = _probs(melanoma=0.069, nevus=0.592, pigmented_benign_keratosis=0.322)
    content = make_content(probabilities=probs, predicted_class="pigmented_benign_keratosis",
                           thresholds=THRESHOLDS)
    render_report(content, tmp_path / "r.pdf")
    text = pdf_text(tmp_path / "r.pdf")
    assert "Class call: Pigmented benign keratosis (32.2 %; named after weighing each class" in text


@pytest.mark.parametrize("metadata, name, key", [
    (ImageMetadata(accession_number="ACC1", patient_id="P1"), "a.jpg", "ACC1"),
    (ImageMetadata(patient_id="P1"), "a.jpg", "P1"),
    (ImageMetadata(), "IMG 0001.JPG", "IMG_0001"),
    (ImageMetadata(), "../../x/Zoë.png", "Zoe"),
    (ImageMetadata(), "...", "NOID"),
    (ImageMetadata(), None, "NOID"),
])
def test_the_report_file_is_named_by_id_else_by_the_original_name(metadata, name, key):
    assert report_filename(metadata, "job1", name) == f"{key}_job1.pdf"


class _RecordingCanvas(Canvas):
    """reportlab's canvas, noting where strings and lines go as it draws them."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.strings: list[tuple[float, str, str, float]] = []
        self.lines: list[tuple[float, float, float, float]] = []

    def drawString(self, x, y, text, *a, **k):  # noqa: N802 - reportlab's API
        self.strings.append((x, text, self._fontname, self._fontsize))
        return super().drawString(x, y, text, *a, **k)

    def line(self, x1, y1, x2, y2):
        self.lines.append((x1, y1, x2, y2))
        return super().line(x1, y1, x2, y2)


@pytest.mark.parametrize("melanoma", [0.0004, 0.02, 0.03])
def test_the_threshold_mark_never_covers_the_melanoma_value(tmp_path, melanoma):
    from reportlab.pdfbase import pdfmetrics

    from worker.classify.triage import percent

    content = make_content(probabilities=_probs(melanoma=melanoma), thresholds=THRESHOLDS)
    chart = ProbabilityChart(content)
    canvas = _RecordingCanvas(str(tmp_path / "chart.pdf"))
    chart.wrap(chart.width, chart.height)
    chart.drawOn(canvas, 0, 0)
    plot_w = chart.width - chart.LABEL_W - chart.VALUE_W
    mark = chart.LABEL_W + plot_w * THRESHOLDS.urgent_melanoma
    assert any(abs(x1 - mark) < 1e-6 and x1 == x2 for x1, _y1, x2, _y2 in canvas.lines)
    [(x, text, font, size)] = [s for s in canvas.strings if s[1] == percent(melanoma)][:1]
    width = pdfmetrics.stringWidth(text, font, size)
    assert not (x - MARK_CLEARANCE < mark < x + width + MARK_CLEARANCE), (x, width, mark)
    canvas.save()


def test_value_label_x_moves_only_a_label_that_would_lie_across_the_mark():
    assert value_label_x(100, 20, None) == 100
    assert value_label_x(100, 20, 50) == 100  # the mark is inside the bar, left of the label
    assert value_label_x(100, 20, 110) == 110 + MARK_CLEARANCE
    assert value_label_x(100, 20, 200) == 100


def test_a_dropped_jpeg_without_ids_is_reported_under_its_own_name(migrated_settings,
                                                                     store_with_tiny_model):
    from worker.jobs import pipeline
    from worker.jobs.runtime import build_runtime

    rt = build_runtime(migrated_settings, send=lambda job_id: None)
    try:
        job_id = rt.intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=31)), SourceDoor.INTAKE,
                                       original_name="mole back 3.jpg").job_id
        assert pipeline.process_job(rt, job_id) == "done"
    finally:
        rt.close()
    [pdf] = list(migrated_settings.reports_dir.glob("*.pdf"))
    assert pdf.name == f"mole_back_3_{job_id}.pdf"
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "mole back 3.jpg" in text and "Class call:" in text
