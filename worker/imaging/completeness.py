"""Does a file end where its own structure says it ends? Cheap, structural, no decoding.

A copy that stalls leaves a prefix of the file; a prefix of a JPEG has no end-of-image
marker, a prefix of a PNG no IEND chunk, a prefix of a DICOM file ends inside an element
whose length says more bytes follow. The intake watcher holds such a file for a while
instead of taking it half-written, and the DICOM decoder uses :func:`dicom_cut` to call a
cut file truncated rather than "without pixel data".

Only the standard library: the watcher imports this before any decoder is loaded.
Every walker is conservative: when the bytes are not what it understands it answers
"not cut" and leaves the verdict to the decoder.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from worker.imaging.formats import DICOM_MAGIC, DICOM_MAGIC_OFFSET, SNIFF_BYTES, sniff_format


@dataclass(frozen=True)
class Cut:
    """Where a file ends early. ``tag`` is the DICOM element it ends inside (an int
    ``0xGGGGEEEE``, top level), when known; ``have``/``need`` its value bytes."""

    what: str
    tag: int | None = None
    have: int | None = None
    need: int | None = None


def cut_short(data: bytes) -> Cut | None:
    """Where ``data`` ends before its structure does, or None (complete, or not understood)."""
    found = _walk(data)
    return found if isinstance(found, Cut) else None


def is_whole(data: bytes) -> bool:
    """True only when ``data`` is a JPEG that reaches its end-of-image marker, a PNG that
    reaches IEND, or a DICOM file whose elements are all whole: the intake watcher takes such
    a file after a short settle. False for a cut file and for anything not understood."""
    return _walk(data) is True


def _walk(data: bytes) -> Cut | bool:
    """Cut, True (whole) or False (not a structure understood here)."""
    fmt = sniff_format(data[:SNIFF_BYTES])
    if fmt == "jpeg":
        return _jpeg_walk(data)
    if fmt == "png":
        return png_cut(data) or True
    if fmt == "dicom":
        return _dicom_walk(data)
    return False


# --------------------------------------------------------------------------- JPEG

#: 0xFF followed by a marker code: not a stuffed 0x00, a restart marker or a fill byte.
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def jpeg_cut(data: bytes) -> Cut | None:
    """Walk the marker segments (and entropy-coded scans) from SOI to EOI."""
    found = _jpeg_walk(data)
    return found if isinstance(found, Cut) else None


def _jpeg_walk(data: bytes) -> Cut | bool:
    """Cut, True (EOI reached) or False (not a marker where one must be)."""
    n, i = len(data), 2
    if not data.startswith(b"\xff\xd8"):
        return False
    while True:
        if i >= n:
            return Cut("the JPEG ends before its end-of-image marker")
        if data[i] != 0xFF:
            return False  # not a marker where one must be: corrupt, not cut
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return Cut("the JPEG ends before its end-of-image marker")
        marker = data[i]
        i += 1
        if marker == 0xD9:
            return True  # EOI: complete (anything after it is trailing data)
        if marker in _JPEG_STANDALONE:
            continue
        if i + 2 > n:
            return Cut("the JPEG ends inside a marker segment")
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2:
            return False
        if i + length > n:
            return Cut("the JPEG ends inside a marker segment")
        i += length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            found = _JPEG_MARKER.search(data, i)
            if found is None:
                return Cut("the JPEG ends inside its image data")
            i = found.start()


# --------------------------------------------------------------------------- PNG


def png_cut(data: bytes) -> Cut | None:
    """Walk the chunks (length, type, data, CRC) up to IEND."""
    n, i = len(data), 8
    while True:
        if i + 8 > n:
            return Cut("the PNG ends before its IEND chunk")
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        if i + 12 + length > n:
            return Cut("the PNG ends inside a chunk")
        if kind == b"IEND":
            return None
        i += 12 + length


# --------------------------------------------------------------------------- DICOM

_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_IMPLICIT_VR_LITTLE_ENDIAN = b"1.2.840.10008.1.2"
_BIG_ENDIAN = b"1.2.840.10008.1.2.2"
_DEFLATED = (b"1.2.840.10008.1.2.1.99", b"1.2.840.10008.1.2.4.95")
#: Explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_MAX_DEPTH = 32


class _Ends(Exception):
    """The data ends inside an element (header or value)."""

    def __init__(self, have: int | None = None, need: int | None = None) -> None:
        self.have, self.need = have, need


class _NotUnderstood(Exception):
    """Not a structure this walker follows: the decoder decides."""


def dicom_cut(data: bytes) -> Cut | None:
    """Walk a Part 10 file element by element (little endian, explicit or implicit VR).

    The walk stops at the end of the top-level Pixel Data element, so trailing bytes after
    it never count. A file that ends exactly between two elements is not called cut.
    """
    found = _dicom_walk(data)
    return found if isinstance(found, Cut) else None


def _dicom_walk(data: bytes) -> Cut | bool:
    """Cut, True (every element whole) or False (a syntax or structure not followed here)."""
    if data[DICOM_MAGIC_OFFSET:SNIFF_BYTES] != DICOM_MAGIC:
        return False
    walker = _DicomWalk(data)
    try:
        pos, syntax = walker.file_meta(SNIFF_BYTES)
    except _Ends:
        return Cut("it ends inside its file meta information")
    except (_NotUnderstood, struct.error):
        return False
    if syntax == _BIG_ENDIAN or syntax in _DEFLATED:
        return False
    vr = data[pos + 4:pos + 6]
    # As pydicom does: a data set written implicit under an explicit syntax is read as such.
    walker.implicit = syntax == _IMPLICIT_VR_LITTLE_ENDIAN or not (vr.isalpha() and vr.isupper())
    try:
        walker.data_set(pos)
    except _Ends as ends:
        return Cut("it ends inside an element", tag=walker.top_tag,
                   have=ends.have, need=ends.need)
    except (_NotUnderstood, struct.error, RecursionError):
        return False
    return walker.top_tag == _PIXEL_DATA  # whole only when its pixel data is


class _DicomWalk:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.n = len(data)
        self.implicit = False
        self.top_tag: int | None = None

    def _header(self, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value length, value offset) of the element at ``pos``."""
        if pos + 8 > self.n:
            raise _Ends()
        group, element = struct.unpack_from("<HH", self.data, pos)
        tag = group << 16 | element
        if group == 0xFFFE or implicit:
            return tag, None, struct.unpack_from("<I", self.data, pos + 4)[0], pos + 8
        vr = self.data[pos + 4:pos + 6]
        if not (len(vr) == 2 and vr.isalpha() and vr.isupper()):
            raise _NotUnderstood()
        if vr in _LONG_VRS:
            if pos + 12 > self.n:
                raise _Ends()
            return tag, vr, struct.unpack_from("<I", self.data, pos + 8)[0], pos + 12
        return tag, vr, struct.unpack_from("<H", self.data, pos + 6)[0], pos + 8

    def _skip(self, value_at: int, length: int) -> int:
        end = value_at + length
        if end > self.n:
            raise _Ends(self.n - value_at, length)
        return end

    def file_meta(self, pos: int) -> tuple[int, bytes]:
        """Walk group 0002 (always explicit VR little endian); return (end, transfer syntax)."""
        syntax = b""
        while True:
            if pos + 2 > self.n:
                raise _Ends()
            if struct.unpack_from("<H", self.data, pos)[0] != 0x0002:
                return pos, syntax
            tag, _vr, length, value_at = self._header(pos, implicit=False)
            if length == _UNDEFINED:
                raise _NotUnderstood()
            pos = self._skip(value_at, length)
            if tag == 0x00020010:
                syntax = self.data[value_at:pos].rstrip(b"\x00 ")

    def data_set(self, pos: int) -> None:
        """The top-level data set, up to the end of Pixel Data or of the file."""
        while pos < self.n:
            tag, vr, length, value_at = self._header(pos, self.implicit)
            self.top_tag = tag
            pos = self._value(tag, vr, length, value_at, depth=0)
            if tag == _PIXEL_DATA:
                return

    def _value(self, tag: int, vr: bytes | None, length: int, value_at: int, depth: int) -> int:
        if length != _UNDEFINED:
            return self._skip(value_at, length)
        if depth > _MAX_DEPTH:
            raise _NotUnderstood()
        if tag == _PIXEL_DATA:
            return self._items(value_at, depth, fragments=True)
        if vr in (None, b"SQ", b"UN"):
            return self._items(value_at, depth, fragments=False)
        raise _NotUnderstood()

    def _items(self, pos: int, depth: int, fragments: bool) -> int:
        """Items of a sequence (or fragments of encapsulated pixel data) up to its delimiter."""
        while True:
            tag, _vr, length, value_at = self._header(pos, implicit=True)
            if tag == _SEQUENCE_END:
                return value_at
            if tag != _ITEM:
                raise _NotUnderstood()
            if length != _UNDEFINED:
                pos = self._skip(value_at, length)
            elif fragments:
                raise _NotUnderstood()
            else:
                pos = self._nested(value_at, depth + 1)

    def _nested(self, pos: int, depth: int) -> int:
        """A sequence item of undefined length: elements up to the item delimiter."""
        while True:
            tag, vr, length, value_at = self._header(pos, self.implicit)
            if tag == _ITEM_END:
                return value_at
            pos = self._value(tag, vr, length, value_at, depth)
