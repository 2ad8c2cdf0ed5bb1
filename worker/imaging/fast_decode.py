"""JPEG decoded at the size the job needs (libjpeg DCT scaling), not at full resolution.

Prototype for issue 10, meant to be folded into :mod:`worker.imaging.decode` as an option of
``decode_bytes`` (see ``reduced_jpeg``'s docstring). A 4,000 x 3,000 dermoscopy JPEG decoded
at full size costs ~100+ ms and a 36 MB array that the model (224 px), the quality check
(<= 1 MP sample) and the report thumbnail (<= 600 px) all throw away again. Pillow's
``Image.draft`` asks libjpeg for 1/2, 1/4 or 1/8 scale while decoding, the smallest whose
both sides still reach the requested size, so the big photo decodes in a few ms.

The header checks (bytes, pixel count, minimum side) still run on the full size the file
declares, before any pixel is decoded; the full size is returned for the job's facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image

from schemas import ImageMetadata
from worker.imaging.decode import _apply_orientation, _to_rgb_array, decode_bytes
from worker.imaging.formats import SNIFF_BYTES, sniff_format
from worker.imaging.image import DecodedImage
from worker.imaging.limits import DecodeLimits, check_byte_size, check_dimensions

#: Both sides of a drafted image stay at least this large: the model's input (224) is
#: the floor; the report's 600 px thumbnail then comes from a >= 1/8-scale image.
DEFAULT_MIN_SIDE = 224


@dataclass(frozen=True)
class ReducedImage:
    decoded: DecodedImage  # rgb at the reduced size
    full_width: int  # what the file declares: recorded as the job's facts
    full_height: int
    scale: int  # 1, 2, 4 or 8


def reduced_jpeg(data: bytes, min_side: int = DEFAULT_MIN_SIDE,
                 limits: DecodeLimits = DecodeLimits()) -> ReducedImage:
    """``decode_bytes``, with a JPEG decoded at the smallest DCT scale whose sides stay >= ``min_side``.

    Anything that is not a clean JPEG goes to ``decode_bytes`` unchanged, which rejects it
    with the precise reason (or decodes it at full size). Folding this into decode.py is a
    3-line change in ``_decode_pil``, right after its ``check_dimensions``::

        if draft_min_side and fmt == "jpeg":
            img.draft("RGB", (draft_min_side, draft_min_side))
    """
    check_byte_size(len(data), limits)
    if sniff_format(data[:SNIFF_BYTES]) == "jpeg":
        try:
            with Image.open(BytesIO(data), formats=["JPEG"]) as img:
                full_w, full_h = img.size
                check_dimensions(full_h, full_w, limits)  # on the declared size, before decoding
                img.draft("RGB", (min_side, min_side))
                scale = max(1, full_w // img.size[0])
                img.load()
                stored_h = img.size[1]
                rgb = _to_rgb_array(_apply_orientation(img))
            if rgb.shape[0] != stored_h:  # EXIF rotated by 90 degrees
                full_w, full_h = full_h, full_w
            decoded = DecodedImage(rgb=rgb, metadata=ImageMetadata(), source_format="jpeg")
            return ReducedImage(decoded, full_w, full_h, scale)
        except Exception:  # noqa: BLE001 - rejections are decode_bytes' job
            pass
    decoded = decode_bytes(data, limits)
    h, w = decoded.rgb.shape[:2]
    return ReducedImage(decoded, w, h, 1)


def decode_floor(data: bytes, size: int) -> np.ndarray:
    """The floor the benchmark compares with: draft + bilinear resize to ``size``, no checks."""
    with Image.open(BytesIO(data)) as img:
        img.draft("RGB", (size, size))
        return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
