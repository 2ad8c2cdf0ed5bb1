"""DICOM photographs: validate the image pixel module, decode to RGB, read identifiers.

Only single-frame, 8-bit, 3-sample colour photographs are accepted; a CT slice or a
monochrome screenshot sent to the triage queue is refused with a reason, not guessed at.

Decisions:
* Only Part 10 files (preamble + "DICM") reach this module: ``sniff_format`` finds no
  other DICOM, and files are read with ``force=False``. A bare data set without file
  meta is rejected as ``not_an_image``; a PACS export always has the file meta.
* The transfer syntax is read from the file meta first, so a deflated or otherwise
  unsupported file is refused before its data set is inflated (no deflate bombs).
* Rows x Columns is checked against ``DecodeLimits`` before any pixel is decoded.
* A file that ends inside an element (``worker.imaging.completeness``) is ``truncated``,
  named by the element it ends in: pydicom drops such an element silently, which would
  read as "no Pixel Data". A file cut inside its file meta stays ``dicom_invalid``.
* Identifiers are checked against their VR (``schemas.dicom_values``): one that breaks
  it rejects the image as ``dicom_invalid``, never cut, and never echoed in the reason.
* Pixels are decoded by pydicom's pixel backend with ``as_rgb=True``; the decoding
  plugin is pinned per transfer syntax (``DECODING_PLUGINS``) because colour handling
  of JPEG baseline YBR_FULL_422 differs between plugins. The result is checked to be RGB.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime
from io import BytesIO
from typing import Any

import numpy as np
from pydantic import ValidationError
from pydicom import dcmread, uid
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import convert_color_space, get_decoder

from schemas import ImageMetadata, Laterality, RejectionReason
from schemas.dicom_values import FIELD_RULES
from worker.errors import InputRejected
from worker.imaging.completeness import dicom_cut
from worker.imaging.image import DecodedImage
from worker.imaging.limits import DecodeLimits, check_dimensions

DERMOSCOPY_SOP = "1.2.840.10008.5.1.4.1.1.77.1.7"
VL_PHOTOGRAPHIC_SOP = "1.2.840.10008.5.1.4.1.1.77.1.4"
SECONDARY_CAPTURE_SOP = "1.2.840.10008.5.1.4.1.1.7"

#: SOP classes that can hold a dermoscopy photograph.
ACCEPTED_SOP_CLASSES: dict[str, str] = {
    DERMOSCOPY_SOP: "Dermoscopic Photography Image Storage",
    VL_PHOTOGRAPHIC_SOP: "VL Photographic Image Storage",
    SECONDARY_CAPTURE_SOP: "Secondary Capture Image Storage",
}

J2K_SYNTAXES = frozenset({uid.JPEG2000Lossless, uid.JPEG2000})

#: Transfer syntaxes decoded here.
ACCEPTED_TRANSFER_SYNTAXES = frozenset(
    {
        uid.ExplicitVRLittleEndian,
        uid.ImplicitVRLittleEndian,
        uid.JPEGBaseline8Bit,
        uid.JPEGLSLossless,
        uid.JPEGLSNearLossless,
        uid.RLELossless,
        *J2K_SYNTAXES,
    }
)

#: Stored photometric interpretations accepted (all decoded to RGB).
#: YBR_RCT / YBR_ICT are only legal, and only accepted, with JPEG 2000.
ACCEPTED_PHOTOMETRIC = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"})

#: pydicom decoding plugin per compressed transfer syntax (pylibjpeg-* are the pinned
#: production dependencies). Falls back to any available plugin if the pin is missing.
DECODING_PLUGINS: dict[str, str] = {
    uid.JPEGBaseline8Bit: "pylibjpeg",
    uid.JPEGLSLossless: "pylibjpeg",
    uid.JPEGLSNearLossless: "pylibjpeg",
    uid.JPEG2000Lossless: "pylibjpeg",
    uid.JPEG2000: "pylibjpeg",
    uid.RLELossless: "pylibjpeg",
}


def quiet_pydicom() -> None:
    """Stop pydicom echoing element values (patient names included) into logs and warnings.

    pydicom validates values while reading and reports bad ones *with the value* through
    its "pydicom" logger and ``warnings``. Call once at each worker entry point.
    """
    import logging

    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)


def decode_dicom(data: bytes, limits: DecodeLimits, draft_min_side: int | None = None,
                 decode_jpeg: Callable | None = None) -> DecodedImage:
    """Decode a DICOM Part 10 file held in memory.

    ``decode_jpeg`` (:func:`worker.imaging.decode.decode_jpeg_codestream`, handed in by
    ``decode_bytes``): a wrapped JPEG is decoded by it, as that JPEG dropped as a file is
    (``draft_min_side`` as there); without it pydicom decodes every syntax."""
    tsyntax = _transfer_syntax(data)
    try:
        ds = dcmread(BytesIO(data), force=False)
    except InvalidDicomError as exc:
        _raise_if_cut(data)
        raise InputRejected(
            RejectionReason.DICOM_INVALID, f"the DICOM file cannot be parsed ({exc})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file
        _raise_if_cut(data)
        raise InputRejected(
            RejectionReason.DICOM_INVALID, f"the DICOM file cannot be parsed ({type(exc).__name__})"
        ) from None
    if "PixelData" not in ds:
        _raise_if_cut(data)  # pydicom drops an element the file ends inside
    try:
        photometric = _validate(ds, tsyntax, limits)
        declared = None
        frame = _wrapped_jpeg(ds, tsyntax, photometric) if decode_jpeg else None
        if frame is not None:
            rgb, declared = _jpeg_pixels(ds, decode_jpeg(frame, limits, draft_min_side))
        else:
            rgb = _pixels(ds, tsyntax, photometric)
        metadata = read_metadata(ds)
    except (InputRejected, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - lazily parsed elements fail late
        raise InputRejected(
            RejectionReason.DICOM_INVALID, f"the DICOM data set is malformed ({type(exc).__name__})"
        ) from None
    return DecodedImage(
        rgb=rgb,
        metadata=metadata,
        source_format="dicom",
        transfer_syntax=str(tsyntax),
        photometric=photometric,
        declared_width=declared[0] if declared else None,
        declared_height=declared[1] if declared else None,
    )


#: Markers that say how a JPEG codestream's colour is coded (JFIF: YCbCr; Adobe: either).
_JFIF_OR_ADOBE = re.compile(rb"\xff\xe0..JFIF\x00|\xff\xee..Adobe", re.S)


def _wrapped_jpeg(ds: Dataset, tsyntax: uid.UID, photometric: str) -> bytes | None:
    """The codestream of a one-frame, 8-bit JPEG Baseline colour image whose colour coding
    the codestream itself or a YBR label makes plain; None: decoded by pydicom as before."""
    if tsyntax != uid.JPEGBaseline8Bit or _int(ds, "NumberOfFrames", 1) != 1:
        return None
    if _int(ds, "SamplesPerPixel", 3) != 3 or _int(ds, "BitsAllocated", 8) != 8:
        return None
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception:  # noqa: BLE001 - pydicom's own decoder then says what is wrong
        return None
    if photometric.startswith("YBR") or _JFIF_OR_ADOBE.search(frame[:4096]):
        return frame
    return None


def _jpeg_pixels(ds: Dataset, decoded: tuple[np.ndarray, tuple[int, int] | None]
                 ) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The wrapped JPEG as decoded (pixels, declared size); its size must be the data set's."""
    arr, declared = decoded
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    size = declared or (arr.shape[1], arr.shape[0])
    if size != (cols, rows):
        raise InputRejected(
            RejectionReason.DICOM_INVALID,
            f"the DICOM's JPEG is {size[0]} x {size[1]} but its Columns x Rows say "
            f"{cols} x {rows}",
        )
    return arr, declared


def _transfer_syntax(data: bytes) -> uid.UID:
    """Read only the file meta, so unsupported encodings are refused before parsing."""
    from pydicom.filereader import _read_file_meta_info, read_preamble  # pinned pydicom 3.0

    fp = BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        tsyntax = meta.get("TransferSyntaxUID")
    except Exception as exc:  # noqa: BLE001
        raise InputRejected(
            RejectionReason.DICOM_INVALID,
            _meta_cut_reason(data)
            or f"the DICOM file meta information cannot be parsed ({type(exc).__name__})",
        ) from None
    if not tsyntax:
        raise InputRejected(
            RejectionReason.DICOM_INVALID,
            _meta_cut_reason(data) or "the DICOM file meta has no Transfer Syntax UID",
        )
    tsyntax = uid.UID(str(tsyntax).strip("\x00 "))
    if not tsyntax.is_valid:
        raise InputRejected(
            RejectionReason.DICOM_INVALID, "the DICOM Transfer Syntax UID is not a valid UID"
        )
    if tsyntax not in ACCEPTED_TRANSFER_SYNTAXES:
        raise InputRejected(
            RejectionReason.DICOM_UNSUPPORTED,
            f"DICOM transfer syntax {tsyntax} ({tsyntax.name}) is not supported; send "
            "uncompressed, JPEG baseline, JPEG-LS, JPEG 2000 or RLE",
        )
    return tsyntax


def _meta_cut_reason(data: bytes) -> str | None:
    """Why the file meta could not be read, when the reason is that the file ends inside it.

    Kept as ``dicom_invalid``: without its meta the file is not a usable Part 10 file."""
    cut = dicom_cut(data)
    if cut is not None and cut.tag is None:
        return f"the DICOM file is truncated: {cut.what}"
    return None


def _raise_if_cut(data: bytes) -> None:
    """A file that ends inside an element is truncated, whatever pydicom made of the rest
    (it drops the element silently: "no Pixel Data" would be the wrong reason)."""
    cut = dicom_cut(data)
    if cut is None:
        return
    if cut.tag is None:
        raise InputRejected(RejectionReason.DICOM_INVALID, f"the DICOM file is truncated: {cut.what}")
    name = keyword_for_tag(cut.tag) or "a private element"
    group, element = cut.tag >> 16, cut.tag & 0xFFFF
    detail = f" ({cut.have:,} of {cut.need:,} bytes)" if cut.need is not None else ""
    raise InputRejected(
        RejectionReason.TRUNCATED,
        f"the DICOM file is truncated: it ends inside element ({group:04X},{element:04X}) "
        f"{name}{detail}",
    )


def _validate(ds: Dataset, tsyntax: uid.UID, limits: DecodeLimits) -> str:
    """Check the image pixel module; return the stored photometric interpretation."""
    sop_class = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "")
    sop_class = sop_class.strip()
    if not sop_class:
        raise InputRejected(RejectionReason.DICOM_INVALID, "the DICOM file has no SOP Class UID")
    if not uid.UID(sop_class).is_valid:
        raise InputRejected(
            RejectionReason.DICOM_INVALID, "the DICOM SOP Class UID is not a valid UID"
        )
    if sop_class not in ACCEPTED_SOP_CLASSES:
        raise InputRejected(
            RejectionReason.DICOM_UNSUPPORTED,
            f"DICOM SOP class {sop_class} ({uid.UID(sop_class).name}) is not a photograph; "
            "accepted: " + ", ".join(ACCEPTED_SOP_CLASSES.values()),
        )

    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise InputRejected(
                RejectionReason.DICOM_UNSUPPORTED,
                "floating-point DICOM pixel data is not a photograph",
            )
        raise InputRejected(
            RejectionReason.DICOM_NO_PIXEL_DATA, "the DICOM file has no Pixel Data element"
        )

    frames = _int(ds, "NumberOfFrames", 1)
    if frames != 1:
        raise InputRejected(
            RejectionReason.DICOM_UNSUPPORTED,
            f"multi-frame DICOM ({frames} frames) is not supported; send one photograph per file",
        )

    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = _int(ds, "SamplesPerPixel", 0)
    bits = _int(ds, "BitsAllocated", 0)
    if samples == 1 or photometric.startswith("MONOCHROME") or photometric == "PALETTE COLOR":
        kind = "palette-colour" if photometric == "PALETTE COLOR" else "monochrome"
        raise InputRejected(
            RejectionReason.DICOM_UNSUPPORTED,
            f"{bits}-bit {kind} DICOM is not a dermoscopy photograph "
            "(colour photographs have 3 samples per pixel)",
        )
    if samples != 3:
        raise InputRejected(
            RejectionReason.DICOM_UNSUPPORTED,
            f"DICOM with {samples} samples per pixel is not supported (need 3)",
        )
    if bits != 8:
        raise InputRejected(
            RejectionReason.DICOM_UNSUPPORTED,
            f"{bits}-bit colour DICOM is not supported (need 8 bits per sample)",
        )
    if _int(ds, "PixelRepresentation", 0) != 0:
        raise InputRejected(
            RejectionReason.DICOM_UNSUPPORTED, "signed colour pixel data is not supported"
        )
    if photometric not in ACCEPTED_PHOTOMETRIC:
        raise InputRejected(
            RejectionReason.DICOM_UNSUPPORTED,
            f"DICOM photometric interpretation {photometric or '(missing)'} is not supported; "
            "accepted: " + ", ".join(sorted(ACCEPTED_PHOTOMETRIC)),
        )
    if photometric in ("YBR_RCT", "YBR_ICT") and tsyntax not in J2K_SYNTAXES:
        raise InputRejected(
            RejectionReason.DICOM_UNSUPPORTED,
            f"photometric interpretation {photometric} requires JPEG 2000",
        )

    check_dimensions(_int(ds, "Rows", 0), _int(ds, "Columns", 0), limits)
    return photometric


def _pixels(ds: Dataset, tsyntax: uid.UID, photometric: str) -> np.ndarray:
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise InputRejected(
            RejectionReason.DICOM_UNSUPPORTED, f"no pixel decoder for {tsyntax.name}"
        ) from None
    if not decoder.is_available:
        raise InputRejected(
            RejectionReason.DICOM_UNSUPPORTED,
            f"no decoder for {tsyntax.name} is installed on this worker "
            f"(missing: {'; '.join(decoder.missing_dependencies)})",
        )
    plugin = DECODING_PLUGINS.get(tsyntax, "")
    if plugin and plugin not in decoder.available_plugins:
        plugin = ""
    try:
        arr, meta = decoder.as_array(ds, index=0, as_rgb=True, decoding_plugin=plugin)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any codec failure means broken pixel data
        raise InputRejected(
            RejectionReason.TRUNCATED,
            f"the DICOM pixel data is truncated or corrupt ({_short(exc)})",
        ) from None

    out_pi = str(meta.get("photometric_interpretation", photometric))
    if out_pi in ("YBR_FULL", "YBR_FULL_422"):
        arr = convert_color_space(arr, "YBR_FULL", "RGB")
    elif out_pi != "RGB":
        raise InputRejected(
            RejectionReason.DICOM_UNSUPPORTED,
            f"the decoder returned {out_pi} pixels instead of RGB",
        )
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    if arr.shape != (rows, cols, 3) or arr.dtype != np.uint8:
        raise InputRejected(
            RejectionReason.TRUNCATED,
            f"the DICOM pixel data decoded to {arr.shape} {arr.dtype}, "
            f"expected ({rows}, {cols}, 3) uint8",
        )
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------- metadata

_DATE_SOURCES = ("StudyDate", "AcquisitionDateTime", "AcquisitionDate", "ContentDate")
_LATERALITIES = frozenset(lat.value for lat in Laterality)


_TEXT_KEYWORDS = ("PatientName", "PatientID", "AccessionNumber", "BodyPartExamined")


def _assume_utf8_when_undeclared(ds: Dataset) -> None:
    """Writers often put UTF-8 into files that declare no character set (the default is
    ASCII, read by pydicom as Latin-1: "Müller" would print as "MÃ¼ller"). When nothing is
    declared and the raw text is valid, non-ASCII UTF-8, read it as UTF-8."""
    if "SpecificCharacterSet" in ds:
        return
    for keyword in _TEXT_KEYWORDS:
        elem = ds.get_item(keyword)
        raw = getattr(elem, "value", None)
        if isinstance(raw, bytes) and not raw.isascii():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return  # really some 8-bit set: keep the standard's default
            implicit, little = ds.original_encoding
            ds.set_original_encoding(implicit, little, "utf-8")  # how raw text gets decoded
            return


def read_metadata(ds: Dataset) -> ImageMetadata:
    """Identifiers and acquisition context from the tags.

    An unreadable date or laterality is skipped. An identifier that breaks its DICOM VR
    (too long, several values, not a UID) rejects the image as ``dicom_invalid``: stored
    cut, it could name another patient; stored whole, PostgreSQL refuses it after the
    report was written.
    """
    try:
        _assume_utf8_when_undeclared(ds)
    except Exception:  # noqa: BLE001 - a heuristic must never reject an image
        pass
    laterality = None
    for keyword in ("ImageLaterality", "Laterality"):
        value = (_text(ds, keyword) or "").upper()
        if value in _LATERALITIES:
            laterality = value
            break
    try:
        return ImageMetadata(
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName"),
            accession_number=_text(ds, "AccessionNumber"),
            study_instance_uid=_text(ds, "StudyInstanceUID"),
            series_instance_uid=_text(ds, "SeriesInstanceUID"),
            sop_instance_uid=_text(ds, "SOPInstanceUID"),
            sop_class_uid=_text(ds, "SOPClassUID"),
            study_date=_first_date(ds),
            body_site=_body_site(ds),
            laterality=laterality,
        )
    except ValidationError as exc:
        raise InputRejected(RejectionReason.DICOM_INVALID, _vr_reason(exc)) from None


def _vr_reason(exc: ValidationError) -> str:
    """Which element breaks which rule (never the value: it is patient data)."""
    parts = []
    for error in exc.errors(include_input=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        rule = FIELD_RULES.get(field)
        keyword = rule.keyword if rule else field
        cause = (error.get("ctx") or {}).get("error")
        parts.append(f"DICOM element {keyword} {cause if cause else error['msg']}")
    return "; ".join(parts) or "the DICOM identifiers are invalid"


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001
        return None
    if value is None:
        return None
    if isinstance(value, MultiValue):  # a backslash in the value: refused by the VR check
        value = "\\".join(str(v) for v in value)
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _first_date(ds: Dataset) -> date | None:
    for keyword in _DATE_SOURCES:
        parsed = parse_dicom_date(_text(ds, keyword))
        if parsed is not None:
            return parsed
    return None


def parse_dicom_date(value: str | None) -> date | None:
    """DA "YYYYMMDD" (or old "YYYY.MM.DD") or the date part of a DT; None if unparseable."""
    if not value:
        return None
    digits = re.sub(r"[.\-]", "", value)[:8]
    try:
        return datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        return None


def _body_site(ds: Dataset) -> str | None:
    try:
        seq = ds.get("AnatomicRegionSequence")
        if seq:
            meaning = _text(seq[0], "CodeMeaning")
            if meaning:
                return meaning
    except Exception:  # noqa: BLE001
        pass
    return _text(ds, "BodyPartExamined")


def _int(ds: Dataset, keyword: str, default: int) -> int:
    value: Any = ds.get(keyword, default)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputRejected(
            RejectionReason.DICOM_INVALID, f"DICOM element {keyword} is not a number"
        ) from None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
