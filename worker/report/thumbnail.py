"""The picture a report embeds: the source JPEG itself when it can be, else one small JPEG.

A PDF shows a JPEG as it is (DCTDecode), so a photo that arrived as a plain JPEG of report
size is embedded without being encoded again: no cost, and no second generation of JPEG
loss. Only its image segments are kept (quantisation and Huffman tables, frame, scans); the
APPn and comment segments are dropped, so EXIF, XMP, ICC, camera serial numbers, GPS or an
embedded preview never travel into a report that goes to PACS and FHIR. Anything else is
encoded once from the pixels as classified: a file larger than ``THUMBNAIL_SIDE``, one that
EXIF turned, a progressive, arithmetic, 12-bit, CMYK or Adobe-transformed JPEG (a PDF viewer
could show its colours differently from Pillow), a PNG or a DICOM image.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

#: Longest side of the embedded picture: enough for print (~250 dpi across 62 mm).
THUMBNAIL_SIDE = 600
#: A reduced picture is made by averaging k x k blocks (``Image.reduce``, a fraction of the
#: cost of a bilinear resize) when that leaves at least this long a side; else it is resized.
MIN_REDUCED_SIDE = 450
#: A source JPEG larger than this is encoded again (a quality-100 photo would swell the PDF).
MAX_EMBEDDED_BYTES = 256 * 1024
#: JPEG quality of an encoded picture; 4:4:4 (no chroma subsampling) keeps pigment edges.
JPEG_QUALITY = 92

_ORIENTATION = 0x0112
#: Frame and table segments a baseline or extended-sequential 8-bit JPEG needs before its
#: first scan: SOF0, SOF1, DHT, DQT, DRI.
_KEPT = frozenset((0xC0, 0xC1, 0xC4, 0xDB, 0xDD))
_SOS, _EOI = 0xDA, 0xD9


def thumbnail_jpeg(rgb: np.ndarray, source_jpeg: bytes | None = None) -> tuple[bytes, int, int]:
    """(JPEG bytes, width, height) of the picture to embed for the HxWx3 pixels ``rgb``;
    ``source_jpeg``: the file ``rgb`` was decoded from, when it is a JPEG."""
    h, w = rgb.shape[:2]
    if source_jpeg is not None and len(source_jpeg) <= MAX_EMBEDDED_BYTES and max(h, w) <= THUMBNAIL_SIDE:
        embedded = embeddable_jpeg(source_jpeg, w, h)
        if embedded is not None:
            return embedded, w, h
    pil = Image.fromarray(rgb, mode="RGB")
    if max(h, w) > THUMBNAIL_SIDE:
        k = math.ceil(max(h, w) / THUMBNAIL_SIDE)
        if max(h, w) // k >= MIN_REDUCED_SIDE:
            pil = pil.reduce(k)  # box average: antialiased, ~15x cheaper than resize here
        else:
            # Pillow's bilinear filter widens with the reduction (antialiased); Lanczos cost
            # 2x as much for no visible difference at this size.
            pil.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR, reducing_gap=None)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue(), pil.size[0], pil.size[1]


def embeddable_jpeg(data: bytes, width: int, height: int) -> bytes | None:
    """The JPEG's image segments only, when a PDF viewer shows them as the ``width`` x
    ``height`` pixels Pillow decoded from ``data``; None when it must be encoded again."""
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
            if (im.mode not in ("RGB", "L") or im.size != (width, height) or "adobe" in im.info
                    or im.info.get("progressive") or im.getexif().get(_ORIENTATION, 1) != 1):
                return None
    except Exception:  # noqa: BLE001 - anything odd: encode the pixels instead
        return None
    return _image_segments(data)


def _image_segments(data: bytes) -> bytes | None:
    """SOI, the kept segments before the first scan, then everything from the first SOS to
    the EOI (entropy-coded data is walked, not searched: table bytes may hold FF D9)."""
    if data[:2] != b"\xff\xd8":
        return None
    out = [b"\xff\xd8"]
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        end = i + 2 + length
        if length < 2 or end > n:
            return None
        if marker == _SOS:
            eoi = _end_of_image(data, end)
            if eoi is None:
                return None
            out.append(data[i:eoi])
            return b"".join(out)
        if marker in (0xC0, 0xC1) and not _sof_ok(data[i + 4:end]):
            return None
        if marker in _KEPT:
            out.append(data[i:end])
        elif not (0xE0 <= marker <= 0xEF or marker == 0xFE):  # APPn and COM are dropped
            return None  # progressive, lossless, arithmetic, hierarchical, DNL...
        i = end
    return None


def _sof_ok(body: bytes) -> bool:
    """8-bit samples, one component or three that are YCbCr (not IDs 'R', 'G', 'B', which
    libjpeg decodes as RGB and a PDF viewer would transform as YCbCr)."""
    if len(body) < 6 or body[0] != 8:
        return False
    count = body[5]
    if count == 1:
        return True
    return count == 3 and bytes(body[6:6 + 9:3]) != b"RGB"


def _end_of_image(data: bytes, i: int) -> int | None:
    """Index just past the EOI that ends the scans starting at ``i``."""
    n = len(data)
    while True:
        j = data.find(b"\xff", i)
        if j < 0 or j + 1 >= n:
            return None
        marker = data[j + 1]
        if marker == 0x00 or 0xD0 <= marker <= 0xD7 or marker == 0xFF:  # stuffing, RSTn, fill
            i = j + 1 if marker == 0xFF else j + 2
            continue
        if marker == _EOI:
            return j + 2
        if j + 4 > n or 0xE0 <= marker <= 0xEF or marker == 0xFE:  # no APPn/COM in a report
            return None
        length = int.from_bytes(data[j + 2:j + 4], "big")  # DHT, DQT, SOS... between scans
        if length < 2:
            return None
        i = j + 2 + length
