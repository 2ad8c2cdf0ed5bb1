"""Pictures that are *not* dermoscopy, generated in code (deterministic, no files, no network).

Used by the tests of ``worker.imaging.dermoscopy_check`` and by
``benchmarks/eval_dermoscopy_check.py``: what a clinic's intake folder receives by mistake
(a radiograph, a scanned letter, a screenshot, a blank frame, a clinical photo of an arm).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw


def _u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def radiograph_rgb(size: tuple[int, int] = (256, 256), seed: int = 0, tint: float = 0.0) -> np.ndarray:
    """A limb radiograph: dark field, a soft-tissue band, two bright bones, film grain.

    ``tint`` > 0 adds a faint blue cast (a radiograph photographed on a lightbox)."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(-0.3, 0.3)
    u = (xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle)  # across the limb
    img = np.full((h, w), 25.0, np.float32)
    img += 70 * np.exp(-((u / (0.30 * w)) ** 4))  # soft tissue
    for centre, width in ((-0.08 * w, 0.05 * w), (0.09 * w, 0.06 * w)):
        c = centre + rng.uniform(-5, 5)
        img += 120 * np.exp(-(((u - c) / width) ** 2)) * (0.9 + 0.1 * np.sin(yy / 17.0))
    img += rng.normal(0, 6, (h, w))
    grey = np.stack([img] * 3, axis=-1)
    if tint:
        grey *= np.array([1 - tint, 1 - tint / 2, 1 + tint], np.float32)
    return _u8(grey)


def chest_radiograph_rgb(size: tuple[int, int] = (320, 320), seed: int = 0) -> np.ndarray:
    """A chest film: two dark lung fields, a bright mediastinum and rib arcs."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w), 170.0, np.float32)
    for side in (-1, 1):
        cx = w / 2 + side * 0.22 * w
        lung = ((xx - cx) / (0.17 * w)) ** 2 + ((yy - 0.5 * h) / (0.33 * h)) ** 2 < 1
        img[lung] = 60
        for k in range(6):
            rib = np.abs(yy - (0.2 * h + k * 0.09 * h) - 0.3 * np.abs(xx - w / 2) + 0.05 * w) < 3
            img[lung & rib] += 50
    img += rng.normal(0, 5, (h, w))
    return _u8(np.stack([img] * 3, axis=-1))


def document_rgb(size: tuple[int, int] = (300, 230), seed: int = 0, paper: tuple[int, int, int] = (250, 250, 248),
                 letterhead: bool = False) -> np.ndarray:
    """A scanned letter: near-white paper, black text lines of random word lengths."""
    h, w = size
    rng = np.random.default_rng(seed)
    page = Image.new("RGB", (w, h), paper)
    draw = ImageDraw.Draw(page)
    y = int(0.12 * h)
    if letterhead:
        draw.rectangle([int(0.08 * w), int(0.04 * h), int(0.25 * w), int(0.11 * h)], fill=(20, 70, 160))
        y = int(0.18 * h)
    line_h = max(6, h // 28)
    while y < 0.9 * h:
        x = int(0.08 * w)
        end = int(0.92 * w) if rng.random() > 0.15 else int(rng.uniform(0.3, 0.8) * w)
        while x < end:
            word = int(rng.integers(3, 11)) * max(2, line_h // 3)
            draw.rectangle([x, y, min(x + word, end), y + line_h // 2], fill=(25, 25, 25))
            x += word + max(3, line_h // 2)
        y += line_h
    arr = np.asarray(page, np.float32) + rng.normal(0, 2.0, (h, w, 3))
    return _u8(arr)


def screenshot_rgb(size: tuple[int, int] = (240, 320), seed: int = 0) -> np.ndarray:
    """A screen capture: a title bar, a side panel, flat colour buttons and text."""
    h, w = size
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, w, int(0.08 * h)], fill=(40, 90, 170))
    draw.rectangle([0, int(0.08 * h), int(0.25 * w), h], fill=(225, 230, 240))
    for i in range(5):
        y = int(0.15 * h) + i * int(0.15 * h)
        draw.rectangle([int(0.3 * w), y, int(0.3 * w) + int(rng.uniform(0.3, 0.6) * w), y + 8], fill=(30, 30, 30))
        draw.rectangle([int(0.85 * w), y - 2, int(0.95 * w), y + 12],
                       fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return np.asarray(img).copy()


def blank_rgb(value: tuple[int, int, int] = (0, 0, 0), size: tuple[int, int] = (224, 224), noise: float = 0.0,
              seed: int = 0) -> np.ndarray:
    """A frame with nothing on it (lens cap, empty scan), optionally with sensor noise."""
    rng = np.random.default_rng(seed)
    img = np.broadcast_to(np.array(value, np.float32), (*size, 3)) + rng.normal(0, noise, (*size, 3))
    return _u8(img)


def colour_bars_rgb(size: tuple[int, int] = (224, 320)) -> np.ndarray:
    """A video test pattern (seven saturated bars)."""
    h, w = size
    bars = [(192, 192, 192), (192, 192, 0), (0, 192, 192), (0, 192, 0), (192, 0, 192), (192, 0, 0), (0, 0, 192)]
    img = np.zeros((h, w, 3), np.uint8)
    for i, c in enumerate(bars):
        img[:, i * w // 7:(i + 1) * w // 7] = c
    return img


def clinical_photo_rgb(size: tuple[int, int] = (300, 400), seed: int = 0,
                       background: tuple[int, int, int] = (60, 110, 90)) -> np.ndarray:
    """A clinical (non-dermoscopic) photo: a forearm across a coloured drape, a small mole,
    shading across the limb and a bright edge of a table."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = background
    img *= (0.85 + 0.15 * np.sin(xx / 23.0) * np.sin(yy / 31.0))[..., None]  # drape folds
    centre = h * rng.uniform(0.4, 0.6) + 0.15 * (xx - w / 2)
    across = (yy - centre) / (0.2 * h)
    arm = np.abs(across) < 1
    shade = (1 - 0.35 * across**2)[..., None]
    skin = np.array((205, 150, 125), np.float32) * shade
    img = np.where(arm[..., None], skin, img)
    mole = np.hypot(yy - centre, xx - w * rng.uniform(0.4, 0.6)) < 0.03 * h
    img[mole] = (90, 55, 40)
    img[int(0.9 * h):] = (235, 235, 230)  # table edge
    img += rng.normal(0, 4, img.shape)
    return _u8(img)


#: name -> zero-argument generator; the generated part of the not-dermoscopy test set.
GENERATED: dict[str, Callable[[], np.ndarray]] = {
    **{f"radiograph_{s}": (lambda s=s: radiograph_rgb(seed=s)) for s in range(3)},
    "radiograph_lightbox_tint": lambda: radiograph_rgb(seed=3, tint=0.06),
    **{f"chest_radiograph_{s}": (lambda s=s: chest_radiograph_rgb(seed=s)) for s in range(2)},
    **{f"document_{s}": (lambda s=s: document_rgb(seed=s)) for s in range(3)},
    "document_cream_paper": lambda: document_rgb(seed=4, paper=(246, 240, 222)),
    "document_letterhead": lambda: document_rgb(seed=5, letterhead=True),
    **{f"screenshot_{s}": (lambda s=s: screenshot_rgb(seed=s)) for s in range(2)},
    "blank_black": lambda: blank_rgb((0, 0, 0)),
    "blank_white": lambda: blank_rgb((255, 255, 255)),
    "blank_grey_noisy": lambda: blank_rgb((128, 128, 128), noise=3.0),
    "blank_skin_tone": lambda: blank_rgb((222, 170, 140), noise=2.0),
    "colour_bars": colour_bars_rgb,
    "clinical_photo_green_drape": lambda: clinical_photo_rgb(seed=0),
    "clinical_photo_blue_drape": lambda: clinical_photo_rgb(seed=1, background=(70, 95, 150)),
    "clinical_photo_grey_wall": lambda: clinical_photo_rgb(seed=2, background=(150, 150, 155)),
}


def generated_set() -> dict[str, np.ndarray]:
    """Every generated not-dermoscopy picture, by name."""
    return {name: make() for name, make in GENERATED.items()}


def save_png(rgb: np.ndarray, path) -> None:
    Image.fromarray(rgb).save(path)
