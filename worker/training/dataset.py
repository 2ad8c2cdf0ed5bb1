"""Decoded-image cache, partial-label targets and sample weights.

Every image is decoded once (EXIF orientation applied, RGB) and resized with
:func:`worker.classify.preprocess.to_model_input` -- the same resize inference uses -- into
one uint8 array kept under ``runs/cache/`` keyed by manifest hash and input size.
Augmentation works on whole batches (:mod:`worker.training.augment`).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from schemas import CLASS_NAMES, MELANOMA_INDEX
from worker.classify.preprocess import to_model_input

NUM_CLASSES = len(CLASS_NAMES)


def load_rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def cache_key(df: pd.DataFrame, size: int) -> str:
    h = hashlib.sha256("\n".join(df["sha256"]).encode()).hexdigest()[:16]
    return f"{h}-{size}"


def build_cache(df: pd.DataFrame, size: int, cache_dir: Path, progress: bool = True) -> np.ndarray:
    """(n, size, size, 3) uint8 in the row order of ``df``; reused when already on disk."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"images-{cache_key(df, size)}.npy"
    if target.is_file():
        arr = np.load(target, mmap_mode="r")
        if arr.shape == (len(df), size, size, 3):
            return np.asarray(arr)
    out = np.empty((len(df), size, size, 3), dtype=np.uint8)
    n = len(df)
    end = "" if sys.stdout.isatty() else "\n"
    for i, path in enumerate(df["path"]):
        out[i] = to_model_input(load_rgb(path), size)
        if progress and ((i + 1) % 1000 == 0 or i + 1 == n):
            print(f"\rcaching images ({size}px) {i + 1}/{n}", end=end, flush=True)
    if progress and end == "":
        print()
    # A private temp name: two trainings (say, two LOSO folds side by side) may build the
    # same cache at once; each renames a complete file into place.
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, out)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def label_masks(df: pd.DataFrame) -> np.ndarray:
    """(n, 9) float32 mask of the classes each target allows.

    Nine-class label: one-hot. Melanoma-only positive: {melanoma}. Negative: every class
    except melanoma.
    """
    masks = np.zeros((len(df), NUM_CLASSES), dtype=np.float32)
    for i, (label, mel) in enumerate(zip(df["label"], df["melanoma"])):
        if label is not None and not (isinstance(label, float) and math.isnan(label)):
            masks[i, CLASS_NAMES.index(label)] = 1.0
        elif int(mel) == 1:
            masks[i, MELANOMA_INDEX] = 1.0
        else:
            masks[i] = 1.0
            masks[i, MELANOMA_INDEX] = 0.0
    return masks


def label_indices(df: pd.DataFrame) -> np.ndarray:
    """Class index per row, -1 where only the melanoma axis is known."""
    return np.array([CLASS_NAMES.index(lb) if isinstance(lb, str) else -1 for lb in df["label"]],
                    dtype=np.int64)


def sample_weights(masks: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Softened inverse-frequency weights (``power`` 0.5: square root), mean 1.

    Each row counts toward the class its mask allows; a melanoma-only negative counts
    toward a pseudo-class of its own. Square-root weighting lifts rare classes without the
    probability distortion of full balancing (temperature scaling cannot undo a prior shift).
    """
    keys = [int(np.argmax(m)) if m.sum() == 1 else -1 for m in masks]
    counts = pd.Series(keys).value_counts()
    w = np.array([(len(keys) / (len(counts) * counts[k])) ** power for k in keys], dtype=np.float32)
    return w / w.mean()
