"""Image decoding (JPEG, PNG, DICOM) and cheap quality checks. No Celery, no TensorFlow."""

from worker.imaging.decode import (
    DecodedImage,
    DecodeLimits,
    decode_bytes,
    decode_file,
    sniff_format,
)
from worker.imaging.quality import assess_quality

__all__ = [
    "DecodedImage",
    "DecodeLimits",
    "decode_bytes",
    "decode_file",
    "sniff_format",
    "assess_quality",
]
