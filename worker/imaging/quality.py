"""Cheap checks that a decoded photo can be triaged at all (not that it shows a lesion).

Luma is computed with BT.601 weights on a strided sample of at most ~1 MP, so the check
costs milliseconds on a 50 MP photo. Dermoscopy photos often have a black circular
vignette around the field of view (about a quarter of the frame), so darkness is judged
on the mean and on the bright fraction, never on the share of dark pixels.

A well-exposed picture that is not a dermoscopy image at all (a radiograph, a scanned
letter, a screenshot, a photo of a room) is unusable too: ``worker.imaging.dermoscopy_check``
says so, and triage comes out indeterminate with that reason instead of nine meaningless
probabilities.
"""

from __future__ import annotations

import numpy as np

from worker.imaging.dermoscopy_check import check_dermoscopy

#: Luma standard deviation below which the picture is one flat colour (lens cap, blank).
MIN_LUMA_STD = 4.0
#: Mean luma below which the picture is far too dark to see a lesion.
MIN_MEAN_LUMA = 30.0
#: ...unless at least this fraction of pixels is reasonably lit (a small bright field of
#: view inside a wide black border is still usable).
LIT_LUMA = 60.0
MIN_LIT_FRACTION = 0.10
#: Samples at or above this value are clipped highlights.
CLIPPED_VALUE = 250
#: Fraction of pixels with all three channels clipped above which the photo is blown out.
MAX_CLIPPED_FRACTION = 0.40
#: Mean luma above which the photo is overexposed even without hard clipping.
MAX_MEAN_LUMA = 240.0
#: Pixels sampled at most (strided subsampling keeps the check cheap).
MAX_SAMPLED_PIXELS = 1_000_000

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def assess_quality(rgb: np.ndarray) -> tuple[bool, str | None]:
    """(usable, reason if not) for an HxWx3 uint8 RGB photo."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f"expected HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(h * w / MAX_SAMPLED_PIXELS))))
    sample = rgb[::step, ::step]
    luma = sample.astype(np.float32) @ _LUMA_WEIGHTS

    # Exposure first: a black or white frame is better explained as dark or blown out.
    mean = float(luma.mean())
    lit = float((luma >= LIT_LUMA).mean())
    if mean < MIN_MEAN_LUMA and lit < MIN_LIT_FRACTION:
        return False, f"the image is far too dark (mean brightness {mean:.0f} of 255)"
    clipped = float((sample >= CLIPPED_VALUE).all(axis=2).mean())
    if clipped > MAX_CLIPPED_FRACTION:
        return False, f"the image is overexposed: {clipped:.0%} of pixels are blown out to white"
    if mean > MAX_MEAN_LUMA:
        return False, f"the image is overexposed (mean brightness {mean:.0f} of 255)"
    std = float(luma.std())
    if std < MIN_LUMA_STD:
        return False, f"the image is nearly uniform (brightness std {std:.1f}): no visible detail"
    is_dermoscopy, why = check_dermoscopy(sample)
    if not is_dermoscopy:
        return False, f"not a dermoscopy image ({why})"
    return True, None
