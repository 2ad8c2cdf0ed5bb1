"""The file formats the decoders accept, told apart by magic bytes (never by file name).

No imports beyond the standard library: intake admission sniffs files with this before
any decoder is loaded.
"""

from __future__ import annotations

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128

#: Bytes needed by ``sniff_format`` to tell every supported format apart.
SNIFF_BYTES = DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)


def sniff_format(head: bytes) -> str | None:
    """The format, "jpeg", "png" or "dicom", or None, from the first ``SNIFF_BYTES`` bytes."""
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(PNG_MAGIC):
        return "png"
    if head[DICOM_MAGIC_OFFSET:SNIFF_BYTES] == DICOM_MAGIC:
        return "dicom"
    return None
