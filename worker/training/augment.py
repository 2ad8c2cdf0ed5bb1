"""Training augmentation as a Keras layer: the same code on every Keras backend.

The augmentation is one Keras layer working on whole uint8 batches with ``keras.ops`` and
``keras.random`` only, so a training run behaves the same under TensorFlow on a CPU worker and
under JAX or PyTorch on a GPU machine (:func:`training_inputs` says where it runs). It
augments only when ``training`` is true; validation and prediction pass through.

Per image, independently:

* **geometry** (one affine warp, reflect fill): a random element of the dihedral group
  (mirror and quarter turns), a small rotation (±0.35 rad), zoom 0.85-1.15 and a shift of
  ±6 % of the side;
* **colour** (``standard``): brightness ±0.12, contrast 0.8-1.2, saturation 0.8-1.2 and
  hue ±0.03 of a turn on 0..1 values (saturation and hue as one 3x3 map in YIQ space, which
  costs a quarter of an HSV round trip);
* **camera** (``camera`` adds): what another dermoscope, lamp or clinic does -- white balance
  (a gain per channel 0.8-1.2), an exposure curve (gamma 0.75-1.35), defocus in a quarter of
  the images (Gaussian blur, sigma 0.6-1.6) and, in 30 %, the dark circular border of a
  contact dermoscope with a random radius and centre.

The saved model never contains this layer (:func:`worker.training.train.save_clean_model`).
"""

from __future__ import annotations

import math

#: ``augmentation`` choices of a training recipe.
AUGMENTATIONS = ("standard", "camera")
_BLUR_TAPS = 3  # the Gaussian kernel spans -3..3 pixels
#: Validation batch size (no augmentation, no gradients: larger than training's).
VALIDATION_BATCH = 64


def _uniform(n, low: float, high: float, seed, rank: int = 1):
    """One uniform draw per image, shaped ``(n, 1, ..., 1)`` with ``rank`` trailing ones."""
    import keras

    return keras.random.uniform((n,) + (1,) * rank, low, high, seed=seed)


def gaussian_blur(x, sigma):
    """7-tap Gaussian blur ("SAME", zero padding) with one ``sigma`` per image (``(n, 1, 1, 1)``).

    The batch is folded into the channels so that one depthwise convolution per direction
    applies every image's own kernel."""
    from keras import ops

    n, height, width = ops.shape(x)[0], x.shape[1], x.shape[2]
    taps = ops.arange(-_BLUR_TAPS, _BLUR_TAPS + 1, dtype="float32")
    w = ops.exp(-0.5 * ops.square(taps / ops.reshape(sigma, (-1, 1))))  # (n, 7)
    w = ops.repeat(w / ops.sum(w, axis=-1, keepdims=True), 3, axis=0)  # one row per channel
    kernel = ops.transpose(w)  # (7, 3n)
    y = ops.reshape(ops.transpose(x, (1, 2, 0, 3)), (1, height, width, -1))
    y = ops.depthwise_conv(y, ops.reshape(kernel, (2 * _BLUR_TAPS + 1, 1, -1, 1)), padding="same")
    y = ops.depthwise_conv(y, ops.reshape(kernel, (1, 2 * _BLUR_TAPS + 1, -1, 1)), padding="same")
    return ops.transpose(ops.reshape(y, (height, width, n, 3)), (2, 0, 1, 3))


def warp(x, linear: tuple, tx, ty, size: int):
    """Bilinear affine warp of a batch about the image centre, reflect fill.

    ``linear = (a0, a1, b0, b1)`` maps output to input coordinates (``x_in = a0 x + a1 y``,
    ``y_in = b0 x + b1 y`` relative to the centre), then shifted by ``tx``, ``ty`` pixels;
    one value per image each."""
    from keras import ops

    a0, a1, b0, b1 = linear
    c = (size - 1) / 2.0
    zeros = ops.zeros_like(a0)
    transform = ops.stack([a0, a1, c - a0 * c - a1 * c + tx,
                           b0, b1, c - b0 * c - b1 * c + ty, zeros, zeros], axis=1)
    return ops.image.affine_transform(x, transform, interpolation="bilinear", fill_mode="reflect")


def _yiq_bases():
    """Constant 3x3 matrices A, B, C with ``A + c B + d C`` = RGB -> YIQ, chroma (I, Q) scaled
    by ``s`` and turned by ``theta`` (c = s cos theta, d = s sin theta), -> RGB."""
    import numpy as np

    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    back = np.linalg.inv(to_yiq)
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])
    a = back[:, :1] @ to_yiq[:1]
    b = back[:, 1:] @ to_yiq[1:]
    c = back[:, 1:] @ turn @ to_yiq[1:]
    return [m.T.astype("float32") for m in (a, b, c)]  # transposed: applied as pixel @ M


_LAYER_CLASS: list = []  # the Keras layer class, made on first use (no Keras at import)


def augmentation_layer(size: int, augmentation: str, seed: int):
    """The augmentation layer of a recipe's ``augmentation`` for ``size`` x ``size`` images."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, not {augmentation!r}")
    if not _LAYER_CLASS:
        _LAYER_CLASS.append(_make_layer_class())
    return _LAYER_CLASS[0](size=size, camera=augmentation == "camera", seed=seed, name="augment")


def _make_layer_class():
    """The augmentation layer class; long because the whole class is defined in here, so that
    Keras is imported on first use and not by importing this module."""
    import keras
    from keras import ops

    class Augment(keras.layers.Layer):
        """uint8 or float 0..255 images in, float32 0..255 out; random only when training."""

        def __init__(self, size: int, camera: bool, seed: int, **kwargs):
            super().__init__(**kwargs)
            self.size, self.camera = size, camera
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=None):
            x = ops.cast(images, "float32")
            if not training:
                return x
            n = ops.shape(x)[0]
            x = self.geometry(x, n) / 255.0
            x = self.colour(x, n)
            if self.camera:
                x = self.camera_variation(ops.clip(x, 0.0, 1.0), n)
            return ops.clip(x, 0.0, 1.0) * 255.0

        def geometry(self, x, n):
            """Mirror, quarter turns, small rotation, zoom and shift as one affine warp."""
            seed = self.seed_generator
            quarter = ops.floor(keras.random.uniform((n,), 0.0, 4.0, seed=seed))
            angle = quarter * (math.pi / 2) + keras.random.uniform((n,), -0.35, 0.35, seed=seed)
            scale = keras.random.uniform((n,), 0.85, 1.15, seed=seed)
            mirror = ops.where(keras.random.uniform((n,), seed=seed) < 0.5, -1.0, 1.0)
            cos, sin = ops.cos(angle) / scale, ops.sin(angle) / scale
            tx = keras.random.uniform((n,), -0.06, 0.06, seed=seed) * self.size
            ty = keras.random.uniform((n,), -0.06, 0.06, seed=seed) * self.size
            return warp(x, (cos * mirror, -sin, sin * mirror, cos), tx, ty, self.size)

        def colour(self, x, n):
            """Brightness, contrast (about each image's channel means), then saturation and hue
            as one linear map per image: chroma in YIQ space scaled (0.8-1.2) and turned
            (±0.03 of a full turn), luma kept."""
            seed = self.seed_generator
            x = x + _uniform(n, -0.12, 0.12, seed, 3)
            mean = ops.mean(x, axis=(1, 2), keepdims=True)
            x = (x - mean) * _uniform(n, 0.8, 1.2, seed, 3) + mean
            saturation = _uniform(n, 0.8, 1.2, seed, 2)
            theta = _uniform(n, -0.03, 0.03, seed, 2) * (2 * math.pi)
            a, b, c = (ops.convert_to_tensor(m) for m in _yiq_bases())
            matrix = a + saturation * ops.cos(theta) * b + saturation * ops.sin(theta) * c
            return ops.einsum("nhwc,ncd->nhwd", x, matrix)

        def camera_variation(self, x, n):
            """White balance, exposure curve, sometimes defocus, sometimes a dermoscope's
            circular border (on 0..1 values)."""
            seed = self.seed_generator
            x = x * keras.random.uniform((n, 1, 1, 3), 0.8, 1.2, seed=seed)
            x = ops.power(ops.clip(x, 1e-4, 1.0), _uniform(n, 0.75, 1.35, seed, 3))
            blurred = gaussian_blur(x, _uniform(n, 0.6, 1.6, seed, 3))
            x = ops.where(_uniform(n, 0.0, 1.0, seed, 3) < 0.25, blurred, x)
            size = float(self.size)
            grid = ops.arange(self.size, dtype="float32")
            yy, xx = grid[None, :, None, None], grid[None, None, :, None]
            cy = size / 2 + _uniform(n, -0.08, 0.08, seed, 3) * size
            cx = size / 2 + _uniform(n, -0.08, 0.08, seed, 3) * size
            radius = _uniform(n, 0.5, 0.75, seed, 3) * size
            dist = ops.sqrt(ops.square(yy - cy) + ops.square(xx - cx))
            inside = ops.clip((radius - dist) / (0.03 * size) + 0.5, 0.0, 1.0)
            bordered = x * inside + _uniform(n, 0.0, 0.12, seed, 3) * (1.0 - inside)
            return ops.where(_uniform(n, 0.0, 1.0, seed, 3) < 0.3, bordered, x)

        def get_config(self):
            return {**super().get_config(), "size": self.size, "camera": self.camera}

    return Augment


def training_inputs(model, train: tuple, validation: tuple, batch_size: int, augmentation: str,
                    seed: int) -> tuple:
    """(the model ``fit`` trains, ``fit``'s data arguments) for uint8 training rows
    ``train = (images, masks, weights)`` and ``validation = (images, masks)``.

    Under TensorFlow (the CPU workers) the layer runs in a ``tf.data`` pipeline beside the
    training step, on whole batches: on two cores that keeps fine-tuning epochs as fast as the
    per-image pipeline it replaced (inside the step they took a third longer, measured). Under
    JAX or PyTorch (a GPU machine) the layer sits in front of the network in a wrapper model
    (:func:`training_model`) and runs on the device. The same layer and the same
    distributions either way (the random streams differ between backends).
    """
    import keras

    images, masks, weights = train
    size = int(model.input_shape[1])
    layer = augmentation_layer(size, augmentation, seed)
    if keras.backend.backend() != "tensorflow":
        return training_model(model, layer), {
            "x": images, "y": masks, "sample_weight": weights, "batch_size": batch_size,
            "shuffle": True, "validation_data": validation, "validation_batch_size": VALIDATION_BATCH}
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, masks, weights))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    ds = ds.map(lambda x, m, w: (layer(x, training=True), m, w), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=False)
    val = tf.data.Dataset.from_tensor_slices(validation).batch(VALIDATION_BATCH)
    val = val.map(lambda x, m: (tf.cast(x, tf.float32), m))
    return model, {"x": ds.prefetch(tf.data.AUTOTUNE), "validation_data": val.prefetch(tf.data.AUTOTUNE)}


def training_model(model, layer):
    """``model`` behind the augmentation ``layer``, taking uint8 images.

    The wrapper shares ``model``'s layers, so training it trains ``model``; only ``model`` is
    ever saved."""
    import keras

    size = int(model.input_shape[1])
    inputs = keras.Input((size, size, 3), dtype="uint8", name="rgb_uint8")
    return keras.Model(inputs, model(layer(inputs)), name=f"{model.name}_training")
