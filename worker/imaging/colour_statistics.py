"""A small, fixed-size working copy of a photo and the colour statistics read from it.

Shared by the dermoscopy check (``dermoscopy_check``) and the shift monitor
(``worker.monitor.shift``), so that both judge a 224-pixel challenge image and a 12-megapixel
phone photo on the same scale: the photo is strided down to at most ~4 x the working size,
then block-averaged (area downsampling, no aliasing of hairs or text) to about
``WORKING_SIDE`` pixels on its short side. Costs well under a millisecond at 224 pixels.
"""

from __future__ import annotations

import numpy as np

#: Short side of the working copy, in pixels.
WORKING_SIDE = 72
#: Luma below which a pixel is "unlit" (vignette, shadow) and left out of colour statistics.
LIT_LUMA = 40.0

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def working_copy(rgb: np.ndarray, side: int = WORKING_SIDE) -> np.ndarray:
    """float32 HxWx3 copy with a short side of about ``side`` pixels (never upsampled)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ValueError(f"expected HxWx3 RGB, got {rgb.shape}")
    h, w = rgb.shape[:2]
    stride = max(1, min(h, w) // (4 * side))
    if stride > 1:
        rgb = rgb[::stride, ::stride]
        h, w = rgb.shape[:2]
    block = max(1, min(h, w) // side)
    if block == 1:
        return rgb.astype(np.float32)
    # Block sums as b strided slices per axis: far cheaper than reshape(...).mean(axis=(1, 3)).
    # The uint8 rows are cast while they are added (no float copy of the whole photo).
    x = rgb[:(h // block) * block, :(w // block) * block]
    rows = x[0::block].astype(np.float32)
    for i in range(1, block):
        rows += x[i::block]
    out = rows[:, 0::block].copy()
    for j in range(1, block):
        out += rows[:, j::block]
    out *= 1.0 / (block * block)
    return out


def luma(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of a float HxWx3 image."""
    return img @ _LUMA_WEIGHTS


def hue_chroma(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hue in degrees 0..360, chroma = max - min channel) per pixel of a float image."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    mx, mn = img.max(axis=2), img.min(axis=2)
    chroma = mx - mn
    c = np.maximum(chroma, 1e-6)
    hue = np.where(mx == r, ((g - b) / c) % 6, np.where(mx == g, (b - r) / c + 2, (r - g) / c + 4)) * 60
    return hue, chroma


def colour_statistics(rgb: np.ndarray) -> dict[str, float]:
    """Brightness and colour of the lit part of a photo: the camera's and clinic's signature
    that the shift monitor compares with the validation images (0..255 scales, saturation 0..1).

    ``red_blue``: mean red minus mean blue (a colour cast moves it), ``lit_fraction``: share
    of pixels above ``LIT_LUMA`` (a dermatoscope's black border lowers it)."""
    img = working_copy(np.asarray(rgb))
    y = luma(img)
    lit = y > LIT_LUMA
    if not lit.any():
        lit = np.ones_like(y, dtype=bool)
    px = img[lit]
    mx = px.max(axis=1)
    sat = (mx - px.min(axis=1)) / np.maximum(mx, 1.0)
    return {
        "brightness": float(y[lit].mean()),
        "contrast": float(y[lit].std()),
        "saturation": float(sat.mean()),
        "red_blue": float(px[:, 0].mean() - px[:, 2].mean()),
        "lit_fraction": float(lit.mean()),
    }
