"""Decoding layer: golden pixels for every DICOM encoding, colour, orientation, metadata, rejects."""

from __future__ import annotations

import shutil
import subprocess
from datetime import date
from io import BytesIO

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread, uid
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from schemas import ImageMetadata
from tests.imagegen import (
    CT_SOP,
    DICOM_MATRIX,
    JLS_NEAR_ERROR,
    LOSSY_SYNTAXES,
    PATCH_COLOURS,
    SECONDARY_CAPTURE_SOP,
    VL_PHOTOGRAPHIC_SOP,
    bomb_png_bytes,
    colour_patches_rgb,
    corrupt_dicom_bytes,
    dicom_bytes,
    dicom_bytes_with_sizes,
    dicom_monochrome16,
    dicom_multiframe,
    dicom_without_pixels,
    garbage_bytes,
    jpeg_bytes,
    lesion_rgb,
    patch_centre,
    png_bytes,
    truncated_dicom_bytes,
    truncated_jpeg_bytes,
)
from worker.errors import InputRejected
from worker.imaging import DecodeLimits, decode_bytes, decode_file, sniff_format
from worker.imaging import dicom as dicom_mod

#: Mean absolute error allowed for lossy or chroma-subsampled round trips (measured: <= 3.4).
LOSSY_MAE = 5.0
#: Per-channel error allowed at the centre of a flat colour patch.
PATCH_TOLERANCE = 12


@pytest.fixture(scope="module")
def lesion() -> np.ndarray:
    return lesion_rgb()


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return colour_patches_rgb()


def _matrix_id(entry: tuple[str, str]) -> str:
    ts, pi = entry
    return f"{uid.UID(ts).keyword}-{pi}"


def _is_exact(ts: str, pi: str) -> bool:
    """Bit-exact round trip: lossless codec and no YCbCr rounding or subsampling."""
    return ts not in LOSSY_SYNTAXES and pi in ("RGB", "YBR_RCT")


def _retag(data: bytes, **tags: object) -> bytes:
    """Rewrite a DICOM file with some elements changed (None deletes)."""
    ds = dcmread(BytesIO(data))
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _rejected(data: bytes, limits: DecodeLimits = DecodeLimits()) -> InputRejected:
    with pytest.raises(InputRejected) as info:
        decode_bytes(data, limits)
    return info.value


# --------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0" + b"\x00" * 200, "jpeg"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "png"),
        (b"\x00" * 128 + b"DICM" + b"\x02\x00", "dicom"),
        (b"\x00" * 128 + b"DICM", "dicom"),
        (b"DICM" + b"\x00" * 200, None),  # magic at the wrong offset
        (b"GIF89a" + b"\x00" * 200, None),
        (b"", None),
        (b"\xff\xd8", None),
        (b"\x00" * 131, None),
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


def test_sniff_format_on_fixtures(lesion: np.ndarray) -> None:
    assert sniff_format(jpeg_bytes(lesion)) == "jpeg"
    assert sniff_format(png_bytes(lesion)) == "png"
    assert sniff_format(dicom_bytes(lesion)) == "dicom"
    assert sniff_format(garbage_bytes()) is None


# --------------------------------------------------------------------------- DICOM golden values


@pytest.mark.parametrize("entry", DICOM_MATRIX, ids=_matrix_id)
def test_dicom_matrix_golden_pixels(entry: tuple[str, str], lesion: np.ndarray) -> None:
    ts, pi = entry
    decoded = decode_bytes(dicom_bytes(lesion, ts, pi))
    assert decoded.source_format == "dicom"
    assert decoded.transfer_syntax == ts
    assert decoded.photometric == pi
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == lesion.shape
    assert decoded.rgb.flags["C_CONTIGUOUS"]
    err = np.abs(decoded.rgb.astype(np.int16) - lesion.astype(np.int16))
    if _is_exact(ts, pi):
        assert err.max() == 0
    elif ts == uid.JPEGLSNearLossless:
        assert err.max() <= JLS_NEAR_ERROR
    elif ts in LOSSY_SYNTAXES or pi == "YBR_FULL_422":
        assert err.mean() < LOSSY_MAE
    else:  # lossless YBR_FULL: only colour-conversion rounding
        assert err.max() <= 1


@pytest.mark.parametrize("entry", DICOM_MATRIX, ids=_matrix_id)
def test_dicom_matrix_colour_is_right(entry: tuple[str, str], patches: np.ndarray) -> None:
    """A red patch stays red: catches YBR decoded as RGB and the reverse."""
    ts, pi = entry
    rgb = decode_bytes(dicom_bytes(patches, ts, pi)).rgb
    for name, colour in PATCH_COLOURS.items():
        got = rgb[patch_centre(name)].astype(int)
        assert np.abs(got - colour).max() <= PATCH_TOLERANCE, (name, got.tolist(), colour)
    red = rgb[patch_centre("red")]
    assert red[0] > 200 and red[1] < 50 and red[2] < 50


def test_lesion_is_darker_than_skin_after_dicom_jpeg(lesion: np.ndarray) -> None:
    rgb = decode_bytes(dicom_bytes(lesion, uid.JPEGBaseline8Bit, "YBR_FULL_422")).rgb
    h, w = rgb.shape[:2]
    centre = rgb[h // 2 - 10 : h // 2 + 10, w // 2 - 10 : w // 2 + 10].mean()
    corner = rgb[:20, :20].mean()
    assert centre < corner - 50


@pytest.mark.filterwarnings("ignore:.*Photometric Interpretation")
@pytest.mark.parametrize("label", ["RGB", "YBR_FULL"])
def test_dicom_jpeg_with_wrong_photometric_label_keeps_colour(
    label: str, patches: np.ndarray
) -> None:
    """Some writers label a YCbCr JPEG as RGB: the codestream's JFIF marker wins."""
    buf = BytesIO()
    Image.fromarray(patches).save(buf, format="JPEG", quality=92)  # YCbCr 4:2:0, JFIF
    data = dicom_bytes(patches, uid.JPEGBaseline8Bit, "YBR_FULL_422")
    ds = dcmread(BytesIO(data))
    ds.PixelData = encapsulate([buf.getvalue()])
    ds.PhotometricInterpretation = label
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    rgb = decode_bytes(out.getvalue()).rgb
    red = rgb[patch_centre("red")].astype(int)
    assert np.abs(red - PATCH_COLOURS["red"]).max() <= PATCH_TOLERANCE


def test_dicom_planar_configuration_1(lesion: np.ndarray) -> None:
    data = dicom_bytes(lesion)
    ds = dcmread(BytesIO(data))
    ds.PlanarConfiguration = 1
    ds.PixelData = np.ascontiguousarray(lesion.transpose(2, 0, 1)).tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert np.array_equal(decode_bytes(out.getvalue()).rgb, lesion)


@pytest.mark.parametrize("sop", [VL_PHOTOGRAPHIC_SOP, SECONDARY_CAPTURE_SOP])
def test_dicom_other_accepted_sop_classes(sop: str, lesion: np.ndarray) -> None:
    decoded = decode_bytes(dicom_bytes(lesion, sop_class=sop))
    assert decoded.metadata.sop_class_uid == sop


def test_dicom_fixture_reads_with_dcmtk(tmp_path, lesion: np.ndarray) -> None:
    """An independent parser agrees that the fixture is a valid DICOM file."""
    assert shutil.which("dcmdump"), "dcmtk is part of the test setup (scripts/setup.sh)"
    path = tmp_path / "x.dcm"
    path.write_bytes(dicom_bytes(lesion, uid.JPEGBaseline8Bit, "YBR_FULL_422"))
    out = subprocess.run(["dcmdump", "-Un", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "1.2.840.10008.1.2.4.50" in out.stdout
    assert "YBR_FULL_422" in out.stdout
    assert "1.2.840.10008.5.1.4.1.1.77.1.7" in out.stdout


# --------------------------------------------------------------------------- DICOM metadata


def test_dicom_metadata_defaults(lesion: np.ndarray) -> None:
    meta = decode_bytes(dicom_bytes(lesion)).metadata
    assert meta.patient_id == "TEST-0001"
    assert meta.patient_name == "Doe^Jane"
    assert meta.accession_number == "ACC0001"
    assert meta.study_date == date(2026, 11, 20)
    assert meta.body_site == "BACK"
    assert meta.laterality == "L"
    assert meta.sop_class_uid == "1.2.840.10008.5.1.4.1.1.77.1.7"
    assert meta.study_instance_uid and meta.series_instance_uid and meta.sop_instance_uid


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"StudyDate": None, "AcquisitionDateTime": "20250102103000"}, date(2025, 1, 2)),
        ({"StudyDate": None, "ContentDate": "20240229"}, date(2024, 2, 29)),
        ({"StudyDate": "", "ContentDate": "20240301"}, date(2024, 3, 1)),
        ({"StudyDate": "20241399", "ContentDate": "20240301"}, date(2024, 3, 1)),
        ({"StudyDate": "garbage"}, None),
        ({"StudyDate": None}, None),
    ],
)
def test_dicom_study_date_fallback(tags: dict, expected: date | None) -> None:
    meta = decode_bytes(dicom_bytes(lesion_rgb((64, 64)), metadata=tags)).metadata
    assert meta.study_date == expected


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"ImageLaterality": "R"}, "R"),
        ({"ImageLaterality": None, "Laterality": "R"}, "R"),
        ({"ImageLaterality": "U"}, "U"),
        ({"ImageLaterality": None}, None),
        ({"ImageLaterality": "X"}, None),  # invalid value is dropped, not fatal
    ],
)
def test_dicom_laterality(tags: dict, expected: str | None) -> None:
    meta = decode_bytes(dicom_bytes(lesion_rgb((64, 64)), metadata=tags)).metadata
    assert meta.laterality == expected


def test_dicom_body_site_prefers_anatomic_region_sequence() -> None:
    region = Dataset()
    region.CodeValue = "123037004"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Skin of upper back"
    data = dicom_bytes(lesion_rgb((64, 64)), metadata={"AnatomicRegionSequence": [region]})
    assert decode_bytes(data).metadata.body_site == "Skin of upper back"
    data = dicom_bytes(lesion_rgb((64, 64)), metadata={"BodyPartExamined": None})
    assert decode_bytes(data).metadata.body_site is None


def test_dicom_missing_identifiers_are_none() -> None:
    data = dicom_bytes(
        lesion_rgb((64, 64)),
        metadata={"PatientID": None, "PatientName": "", "AccessionNumber": None},
    )
    meta = decode_bytes(data).metadata
    assert meta.patient_id is None and meta.patient_name is None
    assert meta.accession_number is None


# --------------------------------------------------------------------------- JPEG / PNG


def test_jpeg_decodes_close_to_source(lesion: np.ndarray) -> None:
    decoded = decode_bytes(jpeg_bytes(lesion))
    assert decoded.source_format == "jpeg"
    assert decoded.metadata == ImageMetadata()
    assert decoded.transfer_syntax is None and decoded.photometric is None
    assert decoded.rgb.shape == lesion.shape and decoded.rgb.dtype == np.uint8
    assert np.abs(decoded.rgb.astype(int) - lesion).mean() < LOSSY_MAE


def test_jpeg_colour_is_right(patches: np.ndarray) -> None:
    rgb = decode_bytes(jpeg_bytes(patches)).rgb
    assert np.abs(rgb[patch_centre("red")].astype(int) - PATCH_COLOURS["red"]).max() <= 12


def test_png_is_exact(lesion: np.ndarray) -> None:
    decoded = decode_bytes(png_bytes(lesion))
    assert decoded.source_format == "png"
    assert np.array_equal(decoded.rgb, lesion)


@pytest.mark.parametrize(
    ("orientation", "transform"),
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # camera turned: display rotated 90 degrees clockwise
        (8, lambda a: np.rot90(a, 1)),
    ],
)
def test_jpeg_exif_orientation(orientation: int, transform, lesion: np.ndarray) -> None:
    rgb = decode_bytes(jpeg_bytes(lesion, exif_orientation=orientation)).rgb
    expected = transform(lesion)
    assert rgb.shape == expected.shape
    assert np.abs(rgb.astype(int) - expected).mean() < LOSSY_MAE


def test_exif_orientation_6_swaps_dimensions(lesion: np.ndarray) -> None:
    h, w = lesion.shape[:2]
    assert decode_bytes(jpeg_bytes(lesion, exif_orientation=6)).rgb.shape == (w, h, 3)


def test_greyscale_png_and_jpeg_become_rgb(lesion: np.ndarray) -> None:
    grey = lesion[..., 1].copy()
    for data in (png_bytes(grey), jpeg_bytes(grey)):
        rgb = decode_bytes(data).rgb
        assert rgb.shape == lesion.shape
        assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert np.array_equal(decode_bytes(png_bytes(grey)).rgb[..., 0], grey)


def test_sixteen_bit_greyscale_png_is_scaled(lesion: np.ndarray) -> None:
    grey16 = lesion[..., 0].astype(np.uint16) * 257
    buf = BytesIO()
    Image.fromarray(grey16).save(buf, format="PNG")
    rgb = decode_bytes(buf.getvalue()).rgb
    assert np.array_equal(rgb[..., 0], lesion[..., 0])


def test_rgba_and_palette_png_become_rgb(lesion: np.ndarray) -> None:
    rgba = np.dstack([lesion, np.full(lesion.shape[:2], 200, np.uint8)])
    assert np.array_equal(decode_bytes(png_bytes(rgba)).rgb, lesion)
    buf = BytesIO()
    paletted = Image.fromarray(colour_patches_rgb()).quantize(colors=16)
    paletted.save(buf, format="PNG")
    rgb = decode_bytes(buf.getvalue()).rgb
    assert rgb.shape == colour_patches_rgb().shape
    assert np.abs(rgb[patch_centre("red")].astype(int) - PATCH_COLOURS["red"]).max() <= 12


def test_cmyk_jpeg_becomes_rgb(patches: np.ndarray) -> None:
    buf = BytesIO()
    Image.fromarray(patches).convert("CMYK").save(buf, format="JPEG", quality=95)
    rgb = decode_bytes(buf.getvalue()).rgb
    assert rgb.shape == patches.shape
    assert np.abs(rgb[patch_centre("red")].astype(int) - PATCH_COLOURS["red"]).max() <= 20


def test_decode_file(tmp_path, lesion: np.ndarray) -> None:
    path = tmp_path / "photo.bin"  # the name is not used to pick the format
    path.write_bytes(dicom_bytes(lesion))
    assert np.array_equal(decode_file(path).rgb, lesion)
    assert np.array_equal(decode_file(str(path)).rgb, lesion)


# --------------------------------------------------------------------------- rejects


def _deflated_dicom() -> bytes:
    ds = dcmread(BytesIO(dicom_bytes(lesion_rgb((64, 64)))))
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _jpeg_dicom_with_broken_codestream() -> bytes:
    ds = dcmread(BytesIO(dicom_bytes(lesion_rgb((64, 64)), uid.JPEGBaseline8Bit, "YBR_FULL_422")))
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + garbage_bytes(2000)])
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


BAD_INPUTS = {
    "empty": (lambda: b"", "empty_file"),
    "garbage": (garbage_bytes, "not_an_image"),
    "gif": (lambda: b"GIF89a" + garbage_bytes(500), "not_an_image"),
    "png_magic_only": (lambda: b"\x89PNG\r\n\x1a\n" + garbage_bytes(200), "not_an_image"),
    "truncated_jpeg": (truncated_jpeg_bytes, "truncated"),
    "truncated_png": (lambda: png_bytes(lesion_rgb())[:5000], "truncated"),
    "bomb_png": (bomb_png_bytes, "decompression_bomb"),
    "tiny_png": (lambda: png_bytes(lesion_rgb((16, 16))), "too_small"),
    "dicom_no_pixels": (dicom_without_pixels, "dicom_no_pixel_data"),
    "dicom_monochrome16": (dicom_monochrome16, "dicom_unsupported"),
    "dicom_multiframe": (dicom_multiframe, "dicom_unsupported"),
    "dicom_corrupt": (corrupt_dicom_bytes, "dicom_invalid"),
    "dicom_no_preamble": (lambda: dicom_bytes(lesion_rgb((64, 64)))[128:], "not_an_image"),
    "dicom_truncated": (truncated_dicom_bytes, "truncated"),
    "dicom_broken_jpeg": (_jpeg_dicom_with_broken_codestream, "truncated"),
    "dicom_bomb": (lambda: dicom_bytes_with_sizes(20000, 20000), "decompression_bomb"),
    "dicom_tiny": (lambda: dicom_bytes_with_sizes(10, 1000), "too_small"),
    "dicom_ct_sop": (
        lambda: dicom_bytes(lesion_rgb((64, 64)), sop_class=CT_SOP),
        "dicom_unsupported",
    ),
    "dicom_deflated": (_deflated_dicom, "dicom_unsupported"),
    "dicom_16bit_rgb": (
        lambda: _retag(dicom_bytes(lesion_rgb((64, 64))), BitsAllocated=16, BitsStored=16),
        "dicom_unsupported",
    ),
    "dicom_palette": (
        lambda: _retag(
            dicom_bytes(lesion_rgb((64, 64))),
            PhotometricInterpretation="PALETTE COLOR",
            SamplesPerPixel=1,
        ),
        "dicom_unsupported",
    ),
    "dicom_ybr_rct_uncompressed": (
        lambda: _retag(dicom_bytes(lesion_rgb((64, 64))), PhotometricInterpretation="YBR_RCT"),
        "dicom_unsupported",
    ),
    "dicom_cmyk": (
        lambda: _retag(dicom_bytes(lesion_rgb((64, 64))), PhotometricInterpretation="CMYK"),
        "dicom_unsupported",
    ),
}


@pytest.mark.filterwarnings("ignore:.*(Invalid value|value length)")
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_rejected_with_code(name: str) -> None:
    make, code = BAD_INPUTS[name]
    err = _rejected(make())
    assert err.code == code, err.reason
    assert err.reason and len(err.reason) < 300
    # Reasons are stored and shown: never identifiers.
    assert "Doe" not in err.reason and "TEST-0001" not in err.reason


def test_missing_sop_class_falls_back_to_file_meta() -> None:
    data = _retag(dicom_bytes(lesion_rgb((64, 64))), SOPClassUID=None)
    assert decode_bytes(data).rgb.shape == (64, 64, 3)


def test_monochrome_reason_names_the_problem() -> None:
    err = _rejected(dicom_monochrome16())
    assert "16-bit monochrome" in err.reason


def test_multiframe_reason_names_the_problem() -> None:
    assert "multi-frame" in _rejected(dicom_multiframe(3)).reason


def test_too_large_file() -> None:
    err = _rejected(png_bytes(lesion_rgb((64, 64))), DecodeLimits(max_bytes=100))
    assert err.code == "too_large_file"


def test_pixel_limit_applies_to_jpeg(lesion: np.ndarray) -> None:
    err = _rejected(jpeg_bytes(lesion), DecodeLimits(max_pixels=10_000))
    assert err.code == "decompression_bomb"


def test_min_side_limit(lesion: np.ndarray) -> None:
    assert _rejected(jpeg_bytes(lesion), DecodeLimits(min_side=300)).code == "too_small"
    assert decode_bytes(jpeg_bytes(lesion), DecodeLimits(min_side=240)).rgb.shape[0] == 240


def test_missing_decoder_is_unsupported(monkeypatch, lesion: np.ndarray) -> None:
    class _Unavailable:
        is_available = False
        missing_dependencies = ["plugin 'x' requires y"]

    monkeypatch.setattr(dicom_mod, "get_decoder", lambda ts: _Unavailable())
    data = dicom_bytes(lesion, uid.JPEG2000Lossless, "RGB")
    err = _rejected(data)
    assert err.code == "dicom_unsupported" and "no decoder" in err.reason


def test_decode_file_missing_and_directory(tmp_path) -> None:
    with pytest.raises(InputRejected) as info:
        decode_file(tmp_path / "missing.jpg")
    assert info.value.code == "unreadable"
    assert "missing.jpg" not in info.value.reason  # paths may carry identifiers
    with pytest.raises(InputRejected) as info:
        decode_file(tmp_path)
    assert info.value.code == "unreadable"


def test_decode_file_checks_size_before_reading(tmp_path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(lesion_rgb((64, 64))))
    with pytest.raises(InputRejected) as info:
        decode_file(path, DecodeLimits(max_bytes=10))
    assert info.value.code == "too_large_file"
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(InputRejected) as info:
        decode_file(empty)
    assert info.value.code == "empty_file"


def _mutations(data: bytes, seed: int, count: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        buf = bytearray(data)
        if rng.random() < 0.5:
            yield bytes(buf[: int(rng.integers(1, len(buf)))])
        else:
            for pos in rng.integers(0, len(buf), size=8):
                buf[int(pos)] = int(rng.integers(0, 256))
            yield bytes(buf)


@pytest.mark.filterwarnings("ignore")
def test_damaged_files_never_raise_raw_exceptions() -> None:
    small = lesion_rgb((48, 64))
    sources = [
        jpeg_bytes(small),
        png_bytes(small),
        dicom_bytes(small),
        dicom_bytes(small, uid.JPEGBaseline8Bit, "YBR_FULL_422"),
        dicom_bytes(small, uid.RLELossless, "RGB"),
        dicom_bytes(small, uid.JPEG2000Lossless, "RGB"),
    ]
    for i, data in enumerate(sources):
        for damaged in _mutations(data, seed=i, count=12):
            try:
                decoded = decode_bytes(damaged)
            except InputRejected:
                continue
            assert decoded.rgb.dtype == np.uint8 and decoded.rgb.ndim == 3


def test_quiet_pydicom_stops_value_echo(monkeypatch) -> None:
    import logging

    from pydicom import config

    monkeypatch.setattr(config.settings, "reading_validation_mode", config.WARN)
    logger = logging.getLogger("pydicom")
    monkeypatch.setattr(logger, "level", logger.level)
    dicom_mod.quiet_pydicom()
    assert config.settings.reading_validation_mode == config.IGNORE
    assert logger.level == logging.ERROR
    data = dicom_bytes(lesion_rgb((64, 64)), metadata={"StudyDate": "notadate"})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_bytes(data).metadata.study_date is None


def test_undeclared_utf8_patient_name_is_read_as_utf8():
    """img2dcm and others write UTF-8 without (0008,0005): read "Zoë", not "ZoÃ«"."""
    data = dicom_bytes(lesion_rgb((64, 64)), metadata={"PatientName": "Zoe^Anna"})
    data = data.replace(b"Zoe^Anna", "Zoë^Ann".encode("utf-8"))  # same length: 8 bytes
    assert b"\x08\x00\x05\x00" not in data[:2000]  # no Specific Character Set element
    assert decode_bytes(data).metadata.patient_name == "Zoë^Ann"


# --------------------------------------------------------------------------- truncation


def _explicit_dicom(lesion_size=(64, 64), **kwargs) -> bytes:
    return dicom_bytes(lesion_rgb(lesion_size, seed=9), **kwargs)


@pytest.mark.parametrize("at", [0.05, 0.3, 0.6, 0.95])
def test_dicom_cut_before_its_pixel_data_is_truncated_not_without_pixels(at: float) -> None:
    data = _explicit_dicom()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # after (0002,0000)'s group
    pixels = data.index(b"\xe0\x7f\x10\x00")
    cut = meta_end + int((pixels - meta_end) * at) | 1  # odd: inside an element, never between
    err = _rejected(data[:cut])
    assert err.code == "truncated", err.reason
    assert "the DICOM file is truncated: it ends inside element (" in err.reason


@pytest.mark.parametrize("cut", [150, 201, 299])
def test_dicom_cut_inside_its_file_meta_says_so(cut: int) -> None:
    err = _rejected(_explicit_dicom()[:cut])
    assert err.code == "dicom_invalid" and "ends inside its file meta" in err.reason, err.reason


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8, 0.99])
def test_dicom_with_its_jpeg_fragments_cut_is_truncated(fraction: float) -> None:
    data = _explicit_dicom(transfer_syntax=uid.JPEGBaseline8Bit, photometric="YBR_FULL_422")
    err = _rejected(data[: int(len(data) * fraction)])
    assert err.code == "truncated", err.reason
    assert "(7FE0,0010) PixelData" in err.reason or "ends inside element" in err.reason


def test_dicom_without_pixel_data_that_ends_cleanly_keeps_its_reason() -> None:
    assert _rejected(dicom_without_pixels()).code == "dicom_no_pixel_data"


def test_completeness_walkers_on_whole_files_and_prefixes(lesion: np.ndarray) -> None:
    from worker.imaging.completeness import cut_short

    whole = [jpeg_bytes(lesion), png_bytes(lesion), dicom_bytes(lesion),
             dicom_bytes(lesion, uid.JPEGBaseline8Bit, "YBR_FULL_422"),
             dicom_bytes(lesion, uid.RLELossless), jpeg_bytes(lesion, exif_orientation=6),
             jpeg_bytes(lesion) + garbage_bytes(100), dicom_bytes(lesion) + garbage_bytes(100)]
    for data in whole:
        assert cut_short(data) is None
        for fraction in (0.1, 0.5, 0.9):
            assert cut_short(data[: int(len(data) * fraction)]) is not None
    buf = BytesIO()
    Image.fromarray(lesion).save(buf, format="JPEG", progressive=True)
    assert cut_short(buf.getvalue()) is None and cut_short(buf.getvalue()[:-2]) is not None
    assert cut_short(garbage_bytes()) is None and cut_short(b"") is None


def test_completeness_walker_accepts_every_pydicom_test_file_that_is_whole() -> None:
    from pathlib import Path

    import pydicom.data

    from worker.imaging.completeness import dicom_cut

    shipped = sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))
    assert len(shipped) > 50  # the files in the wheel, never downloaded
    cut = [path.name for path in shipped if dicom_cut(path.read_bytes()) is not None]
    assert sorted(cut) == ["MR_truncated.dcm", "rtplan_truncated.dcm"]


# --------------------------------------------------------------------------- VR limits


def test_dicom_identifiers_over_their_vr_reject_the_image_without_their_values() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = dicom_bytes(lesion_rgb((64, 64)), metadata={
            "AccessionNumber": "ACC" + "7" * 40, "PatientName": "Doe^" + "J" * 70})
    err = _rejected(data)
    assert err.code == "dicom_invalid"
    assert "AccessionNumber is longer than 16 characters (DICOM SH)" in err.reason
    assert "PatientName has a component group longer than 64" in err.reason
    assert "7777" not in err.reason and "JJJJ" not in err.reason


def test_dicom_with_an_invalid_uid_is_rejected() -> None:
    data = dicom_bytes(lesion_rgb((64, 64)), metadata={"StudyInstanceUID": "1.2.03.4"})
    err = _rejected(data)
    assert err.code == "dicom_invalid" and "StudyInstanceUID is not a valid DICOM UID" in err.reason
