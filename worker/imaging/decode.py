"""Bytes or a file in, an RGB uint8 array out, or ``InputRejected`` with a reason.

The format is chosen by magic bytes, never by file name: JPEG, PNG, or DICOM Part 10
(128-byte preamble then "DICM"). Size guards run on the header before any pixel is
decoded, so a small file claiming a huge image (decompression bomb) costs nothing.

JPEG/PNG decisions:
* On request (``draft_min_side``; the triage pipeline passes ``DRAFT_MIN_SIDE``) a large
  JPEG is decoded at a reduced size (libjpeg DCT scaling, ``Image.draft``): the smallest
  1/2, 1/4 or 1/8 scale whose sides stay at least ``draft_min_side``. The model
  takes 224 px, the quality check samples <= 1 MP and the report thumbnail is <= 600 px,
  so a 4,000 x 3,000 photo need not become a 36 MB array first (it decodes at 1,000 x 750:
  232 -> 24 ms here). The size checks run on the size the file declares, and that size is
  what the job records. Measured on 300 test images enlarged to 4,000 x 3,000
  (``benchmarks/compare_serving.py``): no triage level or usability changes, melanoma AUC
  the same, largest change of p(melanoma) 0.014. Callers that keep the pixels (a DICOM copy of the photograph for
  PACS) decode at full size, the default.
* EXIF orientation is applied (``ImageOps.exif_transpose``); broken EXIF is ignored.
* A JPEG wrapped in DICOM (JPEG Baseline, one frame, a JFIF/Adobe marker or a YBR label;
  dcmtk's ``img2dcm`` makes these) is decoded by this same code, draft scaling included:
  the same picture gives the same pixels, so the same answer, whichever door it came by.
* Greyscale, palette, RGBA (alpha dropped), CMYK and YCbCr are converted to RGB.
  8-bit greyscale is accepted (a clinician may send a greyscale photo; the model then
  sees a grey image, and the quality check still applies).
* 16-bit greyscale PNG is scaled to 8 bits (value >> 8); 16-bit RGB PNG is reduced to
  8 bits by Pillow itself.
* Every image is fully decoded (``img.load()``), so truncated files are rejected.
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set.
"""

from __future__ import annotations

import os
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from schemas import ImageMetadata, RejectionReason
from worker.errors import InputRejected
from worker.imaging.formats import SNIFF_BYTES, sniff_format
from worker.imaging.image import DecodedImage
from worker.imaging.limits import DecodeLimits, check_byte_size, check_dimensions

_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG"}
#: What the triage pipeline asks for: a JPEG decoded no smaller than this on both sides
#: (twice the model's 224 px input). ``None`` (the default) decodes at full size.
DRAFT_MIN_SIDE = 448


def decode_file(path: str | os.PathLike, limits: DecodeLimits = DecodeLimits(),
                draft_min_side: int | None = None) -> DecodedImage:
    """Read and decode one file; the size limit is checked before reading it."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            check_byte_size(size, limits)
            data = fh.read(limits.max_bytes + 1)
    except OSError as exc:
        # The path may carry patient identifiers: report only the OS reason.
        reason = exc.strerror or type(exc).__name__
        raise InputRejected(
            RejectionReason.UNREADABLE, f"the file could not be read ({reason})"
        ) from None
    return decode_bytes(data, limits, draft_min_side)


def decode_bytes(data: bytes, limits: DecodeLimits = DecodeLimits(),
                 draft_min_side: int | None = None) -> DecodedImage:
    """Decode a JPEG, PNG or DICOM image held in memory.

    A JPEG whose sides are both at least twice ``draft_min_side`` is decoded at a reduced
    scale; ``declared_width``/``declared_height`` then keep the size the file declares.
    """
    check_byte_size(len(data), limits)
    fmt = sniff_format(data[:SNIFF_BYTES])
    if fmt is None:
        raise InputRejected(
            RejectionReason.NOT_AN_IMAGE,
            "the file is not a JPEG, PNG or DICOM image (unknown file signature)",
        )
    if fmt == "dicom":
        from worker.imaging.dicom import decode_dicom  # pydicom is only needed here

        decoded = decode_dicom(data, limits, draft_min_side, decode_jpeg=decode_jpeg_codestream)
    else:
        rgb, declared = _decode_pil(data, fmt, limits, draft_min_side)
        decoded = DecodedImage(rgb=rgb, metadata=ImageMetadata(), source_format=fmt,
                               declared_width=declared[0] if declared else None,
                               declared_height=declared[1] if declared else None)
    check_dimensions(decoded.rgb.shape[0], decoded.rgb.shape[1], limits)
    return decoded


def decode_jpeg_codestream(data: bytes, limits: DecodeLimits, draft_min_side: int | None
                           ) -> tuple[np.ndarray, tuple[int, int] | None]:
    """A JPEG codestream held in a DICOM file, decoded exactly as that JPEG dropped as a file
    (one picture, one answer by every door), but with no EXIF turn: a DICOM image's rows and
    columns are its geometry."""
    return _decode_pil(data, "jpeg", limits, draft_min_side, orient=False)


def _decode_pil(data: bytes, fmt: str, limits: DecodeLimits,
                draft_min_side: int | None, orient: bool = True
                ) -> tuple[np.ndarray, tuple[int, int] | None]:
    """RGB pixels, and (width, height) as declared when they were decoded smaller."""
    name = fmt.upper()
    try:
        img = Image.open(BytesIO(data), formats=[_PIL_FORMATS[fmt]])
    except Image.DecompressionBombError:
        raise InputRejected(
            RejectionReason.DECOMPRESSION_BOMB, f"the {name} header claims an enormous image"
        ) from None
    except UnidentifiedImageError:
        raise InputRejected(
            RejectionReason.NOT_AN_IMAGE,
            f"the file has a {name} signature but is not a readable {name}",
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on broken headers
        raise InputRejected(
            RejectionReason.TRUNCATED, f"the {name} header is broken ({_short(exc)})"
        ) from None
    with img:
        width, height = img.size
        check_dimensions(height, width, limits)  # before any pixel is decoded
        if draft_min_side and fmt == "jpeg" and min(width, height) >= 2 * draft_min_side:
            img.draft("RGB", (draft_min_side, draft_min_side))  # DCT scaling while decoding
        try:
            img.load()
        except Image.DecompressionBombError:
            raise InputRejected(
                RejectionReason.DECOMPRESSION_BOMB, f"the {name} image is too large to decode"
            ) from None
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any codec failure means broken data
            raise InputRejected(
                RejectionReason.TRUNCATED,
                f"the {name} data is truncated or corrupt ({_short(exc)})",
            ) from None
        reduced = img.size != (width, height)
        stored_h = img.size[1]
        if orient:
            _apply_orientation(img)
        rgb = _to_rgb_array(img)
    if not reduced:
        return rgb, None
    if rgb.shape[0] != stored_h:  # EXIF turned it by 90 degrees
        width, height = height, width
    return rgb, (width, height)


def _apply_orientation(img: Image.Image) -> None:
    """In place: no copy of an image that needs no turning."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - malformed EXIF: keep the stored orientation
        pass


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale PNG: scale to 8 bits rather than clipping at 255.
        arr = np.asarray(img).astype(np.uint32)
        grey = np.clip(arr >> 8, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if mode == "F":
        raise InputRejected(
            RejectionReason.NOT_AN_IMAGE, "floating-point images are not photographs"
        )
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")  # drops alpha, converts L/LA/1/CMYK/YCbCr
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
