"""Is this a dermoscopy image at all? A radiograph, a scanned letter, a screenshot or a photo
of a room must come out ``indeterminate`` ("not a dermoscopy image"), not routine or urgent:
the classifier gives every picture nine probabilities, however foreign the picture is.

The check reads honest image statistics from a ~72-pixel working copy
(``worker.imaging.colour_statistics``), not a second network, and costs about a millisecond
at 224 pixels (median 1.6 ms on a busy shared core). A dermoscopy image is a close-up of skin through a lens pressed on
it: colour that varies independently of brightness, skin hues (red-orange-brown; a blue
white-balance shifts the whole image, pen marks and stickers are small), smooth texture
(hairs are thin dark lines), sometimes a black circular border. Each rule below describes
something dermoscopy does not look like, and names it in the reason:

* **greyscale**: no colour, or colour that is one tint of brightness (a radiograph, a
  monochrome scan, a radiograph photographed on a light box);
* **graphics**: large areas of exactly one colour (screenshot, logo, chart, test pattern);
* **document**: much near-white, colourless paper crossed by sharp text edges;
* **scene**: many sharp edges that survive removing thin dark lines (hair), i.e. a photo
  of objects, a face, a room;
* **foreign colours**: much saturated green or cyan, which skin is not (a green drape).

Thresholds sit beyond the extremes of 600 real dermoscopy images of the three training
sources (a tuning sample). A rule "skin in the middle, a blue background around it" was
tried and dropped: on a second sample it flagged 6 of 1,000 dermoscopy images (lavender or
blue-grey skin around a lesion). ``benchmarks/eval_dermoscopy_check.py`` measures the rules on
a third sample, disjoint from both, and prints what is caught and what is missed: close-up
photos of a face, a cat or a fundus look like dermoscopy to these statistics.
"""

from __future__ import annotations

import numpy as np

from worker.imaging.colour_statistics import LIT_LUMA, working_copy

#: Fewer lit working pixels than this: nothing to judge (the exposure check speaks instead).
MIN_LIT_PIXELS = 50
#: Greyscale: 90th percentile of chroma on lit pixels below this (dermoscopy: >= 11)...
GREY_CHROMA_P90 = 8.0
#: ...or the chromaticity hardly varies: one tint at every brightness (dermoscopy: >= 0.014,
#: a tinted radiograph or cream paper: <= 0.005).
GREY_CHROMATICITY_SPREAD = 0.006
#: Graphics: share of lit pixels in perfectly flat 2x2 neighbourhoods (dermoscopy: <= 0.04).
GRAPHICS_FLAT_FRACTION = 0.25
#: Document: near-white, colourless share above this, together with...
DOCUMENT_WHITE_FRACTION = 0.30
#: ...a share of sharp luma steps (text strokes) above this.
DOCUMENT_EDGE_FRACTION = 0.15
#: Scene: share of sharp luma steps between lit pixels after a 3x3 grey closing (hair
#: removed; dermoscopy: <= 0.07, a portrait or street photo: >= 0.11).
SCENE_EDGE_FRACTION = 0.09
#: Foreign colours: share of lit pixels that are chromatic green-cyan (hue 70-200 degrees;
#: dermoscopy, with pen marks and green stickers: up to 0.31 seen).
FOREIGN_COLOUR_FRACTION = 0.35

#: A luma step this large between neighbouring working pixels is a sharp edge.
EDGE_STEP = 40.0
#: Chroma at or above which a pixel has a meaningful hue.
CHROMATIC = 30.0
#: Luma and chroma of "paper": near-white and colourless.
WHITE_LUMA, WHITE_MAX_CHROMA = 200.0, 25.0

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _filter3(a: np.ndarray, op: np.ufunc) -> np.ndarray:
    """3x3 maximum or minimum filter (``op`` np.maximum / np.minimum), edges repeated;
    separable, by shifted slices (np.pad costs more than the filter on a working copy)."""
    rows = a.copy()
    op(rows[1:], a[:-1], out=rows[1:])
    op(rows[:-1], a[1:], out=rows[:-1])
    out = rows.copy()
    op(out[:, 1:], rows[:, :-1], out=out[:, 1:])
    op(out[:, :-1], rows[:, 1:], out=out[:, :-1])
    return out


def _closing(a: np.ndarray) -> np.ndarray:
    """Dilation then erosion: removes dark lines one working pixel wide (hairs)."""
    return _filter3(_filter3(a, np.maximum), np.minimum)


def _step_fraction(y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Share of pixels with a luma step > EDGE_STEP to the right or below neighbour
    (within ``mask`` on both sides of the step, when given)."""
    gx = np.abs(y[:-1, 1:] - y[:-1, :-1])
    gy = np.abs(y[1:, :-1] - y[:-1, :-1])
    sharp = (gx > EDGE_STEP) | (gy > EDGE_STEP)
    if mask is not None:
        both = mask[:-1, :-1] & mask[:-1, 1:] & mask[1:, :-1]
        return float(np.count_nonzero(sharp & both) / max(1, np.count_nonzero(both)))
    return float(sharp.mean())


def _chromaticity_spread(px: np.ndarray) -> float:
    """Spread of the chromaticity (colour with brightness divided out) of n x 3 lit pixels:
    ~0 for a greyscale or a uniformly tinted greyscale picture, however bright or contrasted;
    a lesion on skin has at least two colours."""
    ch = px / (px.sum(axis=1, keepdims=True) + 1e-6)
    u = ch[:, 0] - ch[:, 2]
    v = ch[:, 1] - 0.5 * (ch[:, 0] + ch[:, 2])
    return float(np.hypot(u.std(), v.std()))


def _green_cyan(px: np.ndarray) -> np.ndarray:
    """Per chromatic non-red pixel (n x 3): hue between 70 and 200 degrees."""
    r, g, b = px[:, 0], px[:, 1], px[:, 2]
    c = np.maximum(px.max(axis=1) - px.min(axis=1), 1e-6)
    hue = np.where(g >= b, 60 * ((b - r) / c + 2), 60 * ((r - g) / c + 4))
    return (hue >= 70) & (hue < 200)


def dermoscopy_features(rgb: np.ndarray) -> dict[str, float]:
    """The statistics the rules read (also printed by the evaluation script)."""
    img = working_copy(np.asarray(rgb))
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    y = img @ _LUMA
    lit = y > LIT_LUMA
    n_lit = int(np.count_nonzero(lit))
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    chromatic = (chroma >= CHROMATIC) & lit
    warm = chromatic & (r > g) & (r > b)  # hue within 60 degrees of red: skin, lesion, blood
    cool = chromatic & ~warm  # green, cyan, blue, violet
    cool_px = img[cool]
    green_cyan = int(np.count_nonzero(_green_cyan(cool_px))) if len(cool_px) else 0
    key = r + 256.0 * g + 65536.0 * b  # one number per colour: equal keys, equal colours
    flat = (key[:-1, 1:] == key[:-1, :-1]) & (key[1:, :-1] == key[:-1, :-1]) & lit[:-1, :-1]
    lit_chroma = chroma[lit]
    return {
        "lit_pixels": float(n_lit),
        "chroma_p90": (float(np.partition(lit_chroma, int(0.9 * (n_lit - 1)))[int(0.9 * (n_lit - 1))])
                       if n_lit else 0.0),
        "chromaticity_spread": _chromaticity_spread(img[lit]) if n_lit >= MIN_LIT_PIXELS else 0.0,
        "flat_fraction": float(np.count_nonzero(flat) / max(1, n_lit)),
        "white_fraction": float(np.count_nonzero((y > WHITE_LUMA) & (chroma < WHITE_MAX_CHROMA)) / y.size),
        "edge_fraction": _step_fraction(y),
        "scene_edge_fraction": _step_fraction(_closing(y), lit),
        "green_cyan_fraction": float(green_cyan / max(1, n_lit)),
    }


def judge(f: dict[str, float]) -> tuple[bool, str]:
    """(is dermoscopy, reason) from :func:`dermoscopy_features`; the first rule that fires."""
    if f["lit_pixels"] < MIN_LIT_PIXELS:
        return True, "too little lit area to judge"
    if f["chroma_p90"] < GREY_CHROMA_P90 or f["chromaticity_spread"] < GREY_CHROMATICITY_SPREAD:
        return False, "greyscale: a radiograph, a monochrome scan or photo"
    if f["flat_fraction"] > GRAPHICS_FLAT_FRACTION:
        return False, f"{f['flat_fraction']:.0%} flat synthetic colour, as in a screenshot, logo or chart"
    if f["white_fraction"] > DOCUMENT_WHITE_FRACTION and f["edge_fraction"] > DOCUMENT_EDGE_FRACTION:
        return False, (f"looks like a document: {f['white_fraction']:.0%} white paper with "
                       "text-like edges")
    if f["scene_edge_fraction"] > SCENE_EDGE_FRACTION:
        return False, (f"many sharp edges, density {f['scene_edge_fraction']:.2f}: a photo of a scene "
                       "or objects, not a close-up of skin")
    if f["green_cyan_fraction"] > FOREIGN_COLOUR_FRACTION:
        return False, f"{f['green_cyan_fraction']:.0%} green or cyan, colours that skin does not have"
    return True, "consistent with dermoscopy"


def check_dermoscopy(rgb: np.ndarray) -> tuple[bool, str]:
    """(is dermoscopy, reason) for an HxWx3 RGB photo; the reason names the rule that fired."""
    return judge(dermoscopy_features(rgb))
