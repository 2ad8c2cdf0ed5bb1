"""The one preprocessing step shared by training and inference.

Training images are stored square (the public sets were resized without keeping the
aspect ratio), so inference squashes to a square the same way. Pixel scaling lives
inside the network, so the model file alone defines what it expects: RGB, 0..255.
"""

import numpy as np
from PIL import Image


def to_model_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 uint8 RGB array to (size, size, 3) uint8."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    img = Image.fromarray(rgb, mode="RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
