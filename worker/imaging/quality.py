"""Cheap checks that a decoded photo can be triaged at all (not that it shows a lesion).

Exposure (BT.601 luma, clipping) is read from a strided sample of at most ~65,000 pixels
(about 256 x 256), never from every pixel: a systematic sample keeps the photo's brightness
distribution (no averaging, so noise and clipped highlights count as they are), and the
whole check costs about a millisecond on a 600 x 450 or a 1,000 x 750 photo (it was 9-13 ms
at up to 1 MP). The dermoscopy check reads one ~72-pixel working copy, block-averaged from
the photo. Dermoscopy photos often have a black circular vignette around the field of view
(about a quarter of the frame), so darkness is judged on the mean and on the bright
fraction, never on the share of dark pixels.

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
#: Pixels sampled at most for the exposure statistics (strided subsampling keeps the check
#: cheap; 65,536 samples put a fraction within about +-0.004 of the whole photo's).
MAX_SAMPLED_PIXELS = 65_536
#: Pixels handed at most to the dermoscopy check, which block-averages them to its working
#: copy (``worker.imaging.colour_statistics.working_copy``): a view, nothing is copied.
MAX_DERMOSCOPY_PIXELS = 1_000_000

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def assess_quality(rgb: np.ndarray) -> tuple[bool, str | None]:
    """(usable, reason if not) for an HxWx3 uint8 RGB photo."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f"expected HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    sample = _strided(rgb, MAX_SAMPLED_PIXELS)
    luma = sample.astype(np.float32) @ _LUMA_WEIGHTS

    # Exposure first: a black or white frame is better explained as dark or blown out.
    mean = float(luma.mean())
    lit = float((luma >= LIT_LUMA).mean())
    if mean < MIN_MEAN_LUMA and lit < MIN_LIT_FRACTION:
        return False, f"the image is far too dark (mean brightness {mean:.0f} of 255)"
    # Per channel, then combined: ``(sample >= v).all(axis=2)`` reduces along a 3-wide
    # axis and costs ~25x more.
    clipped = float(np.count_nonzero((sample[..., 0] >= CLIPPED_VALUE) & (sample[..., 1] >= CLIPPED_VALUE)
                                     & (sample[..., 2] >= CLIPPED_VALUE)) / luma.size)
    if clipped > MAX_CLIPPED_FRACTION:
        return False, f"the image is overexposed: {clipped:.0%} of pixels are blown out to white"
    if mean > MAX_MEAN_LUMA:
        return False, f"the image is overexposed (mean brightness {mean:.0f} of 255)"
    std = float(luma.std())
    if std < MIN_LUMA_STD:
        return False, f"the image is nearly uniform (brightness std {std:.1f}): no visible detail"
    is_dermoscopy, why = check_dermoscopy(_strided(rgb, MAX_DERMOSCOPY_PIXELS))
    if not is_dermoscopy:
        return False, f"not a dermoscopy image ({why})"
    return True, None


def _strided(rgb: np.ndarray, max_pixels: int) -> np.ndarray:
    """Every n-th row and column (a view) so that at most ``max_pixels`` remain."""
    h, w = rgb.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
    return rgb[::step, ::step]
