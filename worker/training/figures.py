"""Figure plumbing shared by ``describe`` and ``evaluation``: no pyplot global state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image


def save_figure(fig: Figure, path: Path, dpi: int = 150) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)


def load_thumbnail(path: str, size: int) -> np.ndarray | None:
    """An RGB thumbnail of an image file, or None when it cannot be read (never fatal)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return np.asarray(im)
    except (OSError, ValueError):
        return None
