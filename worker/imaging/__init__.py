"""Image decoding (JPEG, PNG, DICOM) and cheap quality checks. No Celery, no TensorFlow.

``formats`` tells files apart, ``limits`` holds the size guards, ``image`` the decoded
record; ``decode`` picks the decoder and ``dicom`` decodes DICOM. Neither decoder imports
the other's module back.
"""

from worker.imaging.decode import decode_bytes, decode_file
from worker.imaging.formats import sniff_format
from worker.imaging.image import DecodedImage
from worker.imaging.limits import DecodeLimits
from worker.imaging.quality import assess_quality

__all__ = [
    "DecodedImage",
    "DecodeLimits",
    "decode_bytes",
    "decode_file",
    "sniff_format",
    "assess_quality",
]
