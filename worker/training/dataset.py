"""Decoded-image cache, partial-label targets and the tf.data pipelines.

Every image is decoded once (EXIF orientation applied, RGB) and resized with
:func:`worker.classify.preprocess.to_model_input` -- the same resize inference uses -- into
one uint8 array kept under ``runs/cache/`` keyed by manifest hash and input size.
Augmentation happens on the fly in tf.data, on the training split only.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from schemas import CLASS_NAMES, MELANOMA_INDEX
from worker.classify.preprocess import to_model_input
from worker.training.config import AUGMENTATIONS

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
    import sys

    end = "" if sys.stdout.isatty() else "\n"
    for i, path in enumerate(df["path"]):
        out[i] = to_model_input(load_rgb(path), size)
        if progress and ((i + 1) % 1000 == 0 or i + 1 == n):
            print(f"\rcaching images ({size}px) {i + 1}/{n}", end=end, flush=True)
    if progress and end == "":
        print()
    tmp = target.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(target)
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


def camera_variation(x, size: int):
    """What another dermoscope, lamp or clinic does to an image in 0..1 (float32, HxWx3).

    White balance (a gain per channel), an exposure curve (gamma), sometimes defocus (a
    Gaussian blur) and sometimes the dark circular border of a contact dermoscope, with a
    random radius and centre. Applied after the mild colour jitter of :func:`augment`.
    """
    import tensorflow as tf

    x = x * tf.random.uniform([1, 1, 3], 0.8, 1.2)
    x = tf.pow(tf.clip_by_value(x, 1e-4, 1.0), tf.random.uniform([], 0.75, 1.35))

    def blur(img):
        sigma = tf.random.uniform([], 0.6, 1.6)
        k = tf.exp(-0.5 * tf.square(tf.range(-3.0, 4.0) / sigma))
        k = k / tf.reduce_sum(k)
        kernel = tf.tile((k[:, None] * k[None, :])[:, :, None, None], [1, 1, 3, 1])
        return tf.nn.depthwise_conv2d(img[None], kernel, [1, 1, 1, 1], "SAME")[0]

    x = tf.cond(tf.random.uniform([]) < 0.25, lambda: blur(x), lambda: x)

    def border(img):
        yy, xx = tf.meshgrid(tf.range(size, dtype=tf.float32), tf.range(size, dtype=tf.float32),
                             indexing="ij")
        cy = size / 2.0 + tf.random.uniform([], -0.08, 0.08) * size
        cx = size / 2.0 + tf.random.uniform([], -0.08, 0.08) * size
        radius = tf.random.uniform([], 0.5, 0.75) * size
        dist = tf.sqrt(tf.square(yy - cy) + tf.square(xx - cx))
        inside = tf.clip_by_value((radius - dist) / (0.03 * size) + 0.5, 0.0, 1.0)[:, :, None]
        return img * inside + tf.random.uniform([], 0.0, 0.12) * (1.0 - inside)

    return tf.cond(tf.random.uniform([]) < 0.3, lambda: border(x), lambda: x)


def augment(image, seed_size: int, camera: bool = False):
    """Random geometry and colour for one uint8 image tensor -> float32 0..255; ``camera``:
    also :func:`camera_variation`."""
    import tensorflow as tf

    size = seed_size
    x = tf.cast(image, tf.float32)
    x = tf.image.random_flip_left_right(x)
    x = tf.image.random_flip_up_down(x)
    x = tf.image.rot90(x, k=tf.random.uniform([], 0, 4, dtype=tf.int32))
    # Small rotation + random scale (zoom 0.85-1.15) in one projective transform.
    angle = tf.random.uniform([], -0.35, 0.35)
    scale = tf.random.uniform([], 0.85, 1.15)
    c = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    tx = tf.random.uniform([], -0.06, 0.06) * size
    ty = tf.random.uniform([], -0.06, 0.06) * size
    transform = tf.stack([cos, -sin, c - cos * c + sin * c + tx,
                          sin, cos, c - sin * c - cos * c + ty, 0.0, 0.0])
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform[None], output_shape=tf.constant([size, size]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")[0]
    x = x / 255.0
    x = tf.image.random_brightness(x, 0.12)
    x = tf.image.random_contrast(x, 0.8, 1.2)
    x = tf.image.random_saturation(x, 0.8, 1.2)
    x = tf.image.random_hue(x, 0.03)
    if camera:
        x = camera_variation(tf.clip_by_value(x, 0.0, 1.0), size)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def make_dataset(images: np.ndarray, masks: np.ndarray, weights: np.ndarray | None,
                 batch_size: int, training: bool, seed: int = 0, augmentation: str = "standard"):
    """Batched (image float32 0..255, mask[, weight]) pipeline with prefetch; ``augmentation``
    (training only): ``standard`` or ``camera`` (:func:`camera_variation` too)."""
    import tensorflow as tf

    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, not {augmentation!r}")
    camera = augmentation == "camera"

    size = images.shape[1]
    tensors = (images, masks) if weights is None else (images, masks, weights)
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if training:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)

        def aug(img, *rest):
            return (augment(img, size, camera), *rest)

        ds = ds.map(aug, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    else:
        ds = ds.map(lambda img, *rest: (tf.cast(img, tf.float32), *rest))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
