"""The PDF triage report: content on the page, one page, safe file names, atomic write."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFontFace

from schemas import CLASS_NAMES, MELANOMA, ImageMetadata, TriageLevel, TriageThresholds
from schemas.classes import DISPLAY_NAMES
from tests.imagegen import jpeg_bytes
from worker.report import ReportContent, layout, render_report, report_filename
from worker.report.layout import FONT, FONT_BOLD, format_person_name
from worker.report.thumbnail import THUMBNAIL_SIDE, embeddable_jpeg, thumbnail_jpeg


JOB_ID = "3f2a9c1e-6b7d-4e21-9a0b-5c4d3e2f1a00"
RECEIVED = datetime(2024, 3, 5, 9, 12, 3, tzinfo=timezone.utc)


def gradient_image(h: int = 300, w: int = 400) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], axis=-1).astype(np.uint8)
    img[(yy - h // 2) ** 2 + (xx - w // 2) ** 2 < (min(h, w) // 4) ** 2] = (90, 50, 30)
    return img


def probabilities(melanoma: float = 0.31) -> dict[str, float]:
    rest = (1.0 - melanoma) / (len(CLASS_NAMES) - 1)
    return {c: (melanoma if c == MELANOMA else rest) for c in CLASS_NAMES}


def make_content(**overrides) -> ReportContent:
    values = dict(
        job_id=JOB_ID,
        metadata=ImageMetadata(
            patient_id="P00012345",
            patient_name="Doe^Jane",
            accession_number="ACC0001",
            study_instance_uid="1.2.826.0.1.3680043.8.498.1",
            series_instance_uid="1.2.826.0.1.3680043.8.498.2",
            sop_instance_uid="1.2.826.0.1.3680043.8.498.3",
            study_date=date(2024, 3, 5),
            body_site="Upper back",
            laterality="L",
        ),
        image_rgb=gradient_image(),
        probabilities=probabilities(),
        triage=TriageLevel.URGENT,
        triage_explanation="Melanoma probability 0.31 is at or above the urgent threshold 0.12.",
        thresholds=TriageThresholds(urgent_melanoma=0.12, soon_keratinocyte=0.2, min_confidence=0.4),
        model_version="2024.03.1-test",
        image_sha256="ab" * 32,
        received_at=RECEIVED,
        reported_at=RECEIVED + timedelta(seconds=6),
    )
    values.update(overrides)
    return ReportContent(**values)


def pdf_text(path: Path) -> str:
    out = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True).stdout
    return " ".join(out.split())  # wrapped lines -> one line of words


def page_count(path: Path) -> int:
    out = subprocess.run(["pdfinfo", str(path)], check=True, capture_output=True, text=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", out, re.M).group(1))


def render(tmp_path: Path, content: ReportContent) -> Path:
    out = tmp_path / report_filename(content.metadata, content.job_id)
    render_report(content, out)
    return out


# ---------------------------------------------------------------- page content


def test_report_shows_identifiers_result_and_statement(tmp_path: Path) -> None:
    content = make_content()
    out = render(tmp_path, content)
    text = pdf_text(out)
    assert page_count(out) == 1
    for expected in (
        "Dermoscopy triage report — decision support",
        "P00012345",
        "ACC0001",
        "Doe, Jane",
        "2024-03-05",
        "Upper back",
        "Left (L)",
        "1.2.826.0.1.3680043.8.498.3",
        JOB_ID,
        "2024-03-05 09:12:03 UTC",
        "2024-03-05 09:12:09 UTC",
        TriageLevel.URGENT.wording,
        content.triage_explanation,
        "2024.03.1-test",
        "This is decision support, not a diagnosis.",
        "A routine result does not exclude melanoma",
        "12.0 %",  # urgent threshold
        "31.0 %",  # melanoma value label
    ):
        assert expected in text, expected
    for name in CLASS_NAMES:
        assert DISPLAY_NAMES[name] in text, name
    assert "None" not in text


@pytest.mark.parametrize("level", list(TriageLevel))
def test_every_triage_level_renders_its_wording(tmp_path: Path, level: TriageLevel) -> None:
    out = render(tmp_path, make_content(triage=level))
    assert page_count(out) == 1
    assert level.wording in pdf_text(out)


def test_missing_fields_read_not_recorded(tmp_path: Path) -> None:
    out = render(tmp_path, make_content(metadata=ImageMetadata()))
    assert out.name == f"NOID_{JOB_ID}.pdf"
    text = pdf_text(out)
    assert text.count("not recorded") >= 9
    assert "None" not in text
    assert page_count(out) == 1


def test_quality_note_is_shown(tmp_path: Path) -> None:
    note = "Image is out of focus; lesion border not assessable."
    out = render(tmp_path, make_content(triage=TriageLevel.INDETERMINATE, quality_note=note))
    text = pdf_text(out)
    assert "IMAGE QUALITY WARNING" in text
    assert note in text


def test_long_hostile_values_stay_on_one_page(tmp_path: Path) -> None:
    long = "<b>&amp; " + "x" * 5000
    # Values the door refuses today (DICOM VR lengths): the layout must still hold if one
    # ever gets past it, so the metadata is built without validation.
    content = make_content(
        metadata=ImageMetadata.model_construct(patient_name=long, body_site=long,
                                               accession_number="A" * 300),
        triage_explanation=long,
        quality_note=" ".join(["The image is blurred."] * 200),
        model_version="v" * 500,
    )
    out = render(tmp_path, content)
    assert page_count(out) == 1
    assert "<b>&amp;" in pdf_text(out)  # escaped, printed literally, not markup


@pytest.mark.parametrize("name", ["Müller^Zoë", "李^小龙", "Yamada^Tarou=山田^太郎=やまだ^たろう", "Ñúñez^José^María^Dr^Jr"])
def test_unicode_patient_names_do_not_crash(tmp_path: Path, name: str) -> None:
    out = render(tmp_path, make_content(metadata=ImageMetadata(patient_id="P1", patient_name=name)))
    assert page_count(out) == 1
    if name == "Müller^Zoë":
        assert "Müller, Zoë" in pdf_text(out)


def test_no_patient_data_in_pdf_metadata(tmp_path: Path) -> None:
    out = render(tmp_path, make_content())
    info = subprocess.run(["pdfinfo", str(out)], check=True, capture_output=True, text=True).stdout
    for phi in ("Doe", "Jane", "P00012345", "ACC0001"):
        assert phi not in info


def test_person_name_formatting() -> None:
    assert format_person_name("Müller^Zoë") == "Müller, Zoë"
    assert format_person_name("Doe^Jane^Q^Dr^Jr") == "Doe, Dr Jane Q, Jr"
    assert format_person_name("Doe") == "Doe"
    assert format_person_name("^Jane") == "Jane"
    assert format_person_name("Yamada^Tarou=山田^太郎") == "Yamada, Tarou (山田, 太郎)"
    assert format_person_name("") is None
    assert format_person_name("^^^") is None
    assert format_person_name(None) is None


# ---------------------------------------------------------------- writing


def test_render_is_atomic_and_returns_sha256(tmp_path: Path) -> None:
    out = tmp_path / "report.pdf"
    digest = render_report(make_content(), out)
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    assert out.read_bytes().startswith(b"%PDF-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf"]


def test_render_replaces_existing_file_and_is_reproducible(tmp_path: Path) -> None:
    out = tmp_path / "report.pdf"
    out.write_bytes(b"old")
    first = render_report(make_content(), out)
    second = render_report(make_content(), out)
    assert first == second  # a retried job writes the same bytes
    assert sorted(os.listdir(tmp_path)) == ["report.pdf"]


def test_private_render_writes_its_new_hidden_file_in_place(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's pending file: written and fsynced where it is (it renames it itself)."""
    out = tmp_path / ".report.pdf.1234.pending"
    monkeypatch.setattr(os, "replace", lambda *a: pytest.fail("renamed"))
    digest = render_report(make_content(), out, private=True)
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    assert digest == render_report(make_content(), tmp_path / ".other.pending", private=True)
    with pytest.raises(FileExistsError):  # never over another attempt's file
        render_report(make_content(), out, private=True)
    assert sorted(os.listdir(tmp_path)) == [".other.pending", ".report.pdf.1234.pending"]


def test_failed_private_render_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fd):  # noqa: ANN001
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        render_report(make_content(), tmp_path / ".r.pending", private=True)
    assert list(tmp_path.iterdir()) == []


def test_failed_render_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report.pdf"

    def boom(src, dst):  # noqa: ANN001
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        render_report(make_content(), out)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the embedded picture


def _jpeg(rgb: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def _decoded(jpeg: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(jpeg)).convert("RGB"))


def _embedded_jpegs(tmp_path: Path, pdf: Path) -> list[bytes]:
    """The pictures of a PDF as the PDF stores them (pdfimages -j: DCT streams as they are)."""
    subprocess.run(["pdfimages", "-j", str(pdf), str(tmp_path / "img")], check=True)
    return [p.read_bytes() for p in sorted(tmp_path.glob("img-*.jpg"))]


def test_source_jpeg_is_embedded_as_it_is_without_its_metadata(tmp_path: Path) -> None:
    rgb = gradient_image(300, 400)
    exif = PILImage.Exif()
    exif[0x010E] = "Doe^Jane P00012345 EXIF-SECRET"  # ImageDescription
    exif[0x0112] = 1  # orientation: as stored
    source = _jpeg(rgb, exif=exif.tobytes(), comment=b"COMMENT-SECRET", icc_profile=b"ICC-SECRET" * 20)
    source += b"TRAILING-SECRET"  # bytes after the end of the image
    pixels = _decoded(source)
    out = render(tmp_path, make_content(image_rgb=pixels, source_jpeg=source))
    data = out.read_bytes()
    for secret in (b"EXIF-SECRET", b"COMMENT-SECRET", b"ICC-SECRET", b"TRAILING-SECRET"):
        assert secret not in data
    (embedded,) = _embedded_jpegs(tmp_path, out)
    assert embedded == embeddable_jpeg(source, 400, 300)
    assert len(embedded) < len(source) and embedded[-2:] == b"\xff\xd9"
    assert np.array_equal(_decoded(embedded), pixels)  # the same scans: the same pixels


def test_source_jpeg_is_encoded_again_when_it_does_not_show_the_pixels(tmp_path: Path) -> None:
    rgb = gradient_image(300, 400)
    turned = jpeg_bytes(rgb, exif_orientation=6)
    assert embeddable_jpeg(turned, 400, 300) is None  # EXIF turned it: the viewer would not
    assert embeddable_jpeg(_jpeg(rgb, progressive=True), 400, 300) is None
    assert embeddable_jpeg(_jpeg(rgb[..., 0]), 400, 300) is not None  # greyscale: DeviceGray
    assert embeddable_jpeg(_jpeg(rgb), 200, 150) is None  # decoded at another size (draft)
    assert embeddable_jpeg(b"\xff\xd8\xff\xe0 not a jpeg", 400, 300) is None
    cmyk = io.BytesIO()
    PILImage.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG")
    assert embeddable_jpeg(cmyk.getvalue(), 400, 300) is None

    upright = np.ascontiguousarray(np.rot90(rgb, -1))  # what the decoder made of `turned`
    out = render(tmp_path, make_content(image_rgb=upright, source_jpeg=turned))
    (embedded,) = _embedded_jpegs(tmp_path, out)
    shown = _decoded(embedded)
    assert shown.shape == upright.shape
    assert np.abs(shown.astype(int) - upright).mean() < 3  # encoded from the turned pixels


@pytest.mark.parametrize(("size", "expected"), [
    ((450, 600), (600, 450)),  # report size: as it is
    ((750, 1000), (500, 375)),  # 2 x 2 block average
    ((3000, 4000), (572, 429)),  # 7 x 7 block average (rounded up)
    ((525, 700), (600, 450)),  # a block average would leave 350 px: resized instead
])
def test_large_pictures_are_reduced_to_report_size(size: tuple[int, int], expected: tuple[int, int]) -> None:
    rgb = gradient_image(*size)
    jpeg, w, h = thumbnail_jpeg(rgb)
    assert (w, h) == expected == PILImage.open(io.BytesIO(jpeg)).size
    assert max(w, h) <= THUMBNAIL_SIDE


def test_font_subsets_made_once_are_those_reportlab_makes(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    content = make_content(metadata=ImageMetadata(patient_id="P9", patient_name="Øster^Zoë"))
    cached = [render_report(content, tmp_path / f"cached{i}.pdf") for i in range(2)]  # miss, hit
    for name in (FONT, FONT_BOLD):  # reportlab's own face: subset cut and compressed again
        face = pdfmetrics.getFont(name).face
        assert isinstance(face, layout._SubsetOnceFace) and face._programs
        monkeypatch.setattr(face, "__class__", TTFontFace)
    plain = render_report(content, tmp_path / "plain.pdf")
    assert cached == [plain, plain]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_rgb": np.zeros((10, 10), np.uint8)}, "HxWx3"),
        ({"image_rgb": np.zeros((10, 10, 3), np.float32)}, "uint8"),
        ({"probabilities": {MELANOMA: 1.0}}, "missing"),
        ({"probabilities": {**probabilities(), "wart": 0.0}}, "unexpected"),
        ({"probabilities": {**probabilities(), MELANOMA: float("nan")}}, "finite"),
        ({"received_at": datetime(2024, 3, 5, 9, 0)}, "timezone-aware"),
        ({"source_jpeg": "not bytes"}, "source_jpeg"),
    ],
)
def test_content_is_validated(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_content(**overrides)


# ---------------------------------------------------------------- file names


@pytest.mark.parametrize(
    "metadata, expected_key",
    [
        (ImageMetadata(accession_number="ACC0001", patient_id="P1"), "ACC0001"),
        (ImageMetadata(patient_id="P1"), "P1"),
        (ImageMetadata(), "NOID"),
        (ImageMetadata(accession_number="", patient_id="  "), "NOID"),
        (ImageMetadata(accession_number="../../etc/passwd"), "etc_passwd"),
        (ImageMetadata(accession_number="..", patient_id="P2"), "P2"),
        (ImageMetadata(accession_number="ACC 00 1"), "ACC_00_1"),
        (ImageMetadata(accession_number="Müller-Zoë"), "Muller-Zoe"),
        (ImageMetadata(accession_number="李小龙", patient_id="P3"), "P3"),
        (ImageMetadata(accession_number=".hidden"), "hidden"),
        # Refused at the door (a backslash separates DICOM values), yet the file name must
        # stay safe whatever reaches it: built without validation.
        (ImageMetadata.model_construct(accession_number="a\\b/c:d*e?f"), "a_b_c_d_e_f"),
        (ImageMetadata(accession_number="-rf"), "rf"),
    ],
)
def test_report_filename(metadata: ImageMetadata, expected_key: str) -> None:
    assert report_filename(metadata, JOB_ID) == f"{expected_key}_{JOB_ID}.pdf"


def test_report_filename_is_bounded_and_safe() -> None:
    # Values the door refuses (too long, control characters), built without validation:
    # the file name must be safe whatever gets past it.
    name = report_filename(ImageMetadata.model_construct(accession_number="A" * 1000), "j" * 1000)
    assert len(name) <= 140
    hostile = report_filename(ImageMetadata.model_construct(accession_number="../..//..\x00\n"),
                              "../x y")
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.pdf", hostile)
    assert ".." not in hostile and "/" not in hostile
    assert hostile == "NOID_x_y.pdf"


def test_report_filename_rejects_unusable_job_id() -> None:
    with pytest.raises(ValueError):
        report_filename(ImageMetadata(), "../..")


def test_falls_back_to_bundled_vera_without_dejavu() -> None:
    """The Docker image installs DejaVu; without it the report must still render."""
    code = (
        "import worker.report.layout as L\n"
        "L.FONT_DIRS = ()\n"
        "L.register_fonts()\n"
        "assert L.pdfmetrics.getFont(L.FONT).face.filename.endswith('Vera.ttf')\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_reason_prints_small_thresholds_with_a_decimal():
    from worker.classify.triage import decide, explain

    t = TriageThresholds(urgent_melanoma=0.0146, soon_keratinocyte=0.2178, min_confidence=0.55)
    probs = dict.fromkeys(CLASS_NAMES, 0.0)
    probs.update(melanoma=0.012, nevus=0.95, basal_cell_carcinoma=0.038)
    level = decide(probs, t)
    # 1.2 % against 1.5 %: rounded to whole percent both would read "1 %"
    assert explain(probs, t, level) == ("Melanoma probability 1.2 % and keratinocyte-lesion probability "
                                        "3.8 % are below their thresholds (1.5 %, 21.8 %).")
    probs.update(melanoma=0.02, nevus=0.93)
    assert explain(probs, t, decide(probs, t)) == ("Melanoma probability 2.0 % is at or above this "
                                                   "model's urgent threshold (1.5 %).")
