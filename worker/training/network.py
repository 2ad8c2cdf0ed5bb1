"""The classifier network: an ImageNet backbone, a dropout + Dense(9) logits head.

Backbones: ``mobilenet`` (MobileNet alpha 0.25, Keras ImageNet ``.h5``) and ``lite0``,
``lite1``, ``lite2`` (EfficientNet-Lite, :mod:`worker.training.efficientnet_lite`, weights
converted to ``.npz``).
Pixel scaling sits inside the model (a ``Rescaling`` layer with the backbone's own
normalisation), so the model file alone defines its input: float RGB 0..255 of
``(size, size, 3)``. The head outputs **logits**; calibrated probabilities are
``softmax(logits / T)`` at inference. Only standard Keras layers and ``keras.ops``: a saved
model loads with plain ``keras.saving.load_model`` and converts to LiteRT as it is.

Colour constancy (``shades_of_gray``) is the model's first step when a recipe asks for it, so
training, evaluation, retraining and every serving runtime apply exactly the same correction.
"""

from __future__ import annotations

from pathlib import Path

from schemas import CLASS_NAMES, MELANOMA_INDEX
from worker.training import efficientnet_lite

#: ImageNet weights shipped in the shared folder (sha256 dbdb03ee...).
DEFAULT_WEIGHTS = Path("../shared/weights/mobilenet_2_5_224_tf_no_top.h5")
#: EfficientNet-Lite ImageNet weights per variant, made by ``scripts/fetch_lite_weights.sh``.
LITE_WEIGHTS = {variant: Path(f"runs/weights/efficientnet_{variant}_imagenet.npz")
                for variant in efficientnet_lite.VARIANTS}
BACKBONES = ("mobilenet", *efficientnet_lite.VARIANTS)
#: Where phase 2 starts fine-tuning when the caller does not say (a layer-name prefix). Every
#: Lite variant has 7 stages named alike, so "block4a" is the start of stage 4 in each.
DEFAULT_UNFREEZE = {"mobilenet": "conv_dw_4", **{variant: "block4a" for variant in efficientnet_lite.VARIANTS}}
IMAGENET = "imagenet"
#: Human-readable backbone names for model.json notes and the model card.
BACKBONE_TITLES = {"mobilenet": "MobileNet alpha 0.25", **efficientnet_lite.TITLES}
BASE_NAME = "backbone"
#: ``colour_constancy`` choices; ``shades_of_gray`` uses the Minkowski norm of this order
#: (Finlayson & Trezzi 2004; p = 6 as in the ISIC 2018/2019 winning pipelines).
COLOUR_CONSTANCY = ("none", "shades_of_gray")
SHADES_OF_GRAY_P = 6.0


def resolve_weights(weights: str | Path | None, backbone: str) -> Path | None:
    """``"imagenet"``: the backbone's ImageNet file; ``None`` / ``"none"``: from scratch."""
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights) == IMAGENET:
        return DEFAULT_WEIGHTS if backbone == "mobilenet" else LITE_WEIGHTS[backbone]
    return Path(weights)


def configure_threads(threads: int) -> None:
    """Pin TensorFlow's thread pools (before the first op); other Keras backends (JAX or
    PyTorch on a GPU machine) keep their own."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:
        pass  # already initialised: keep what was set first


def shades_of_gray(rgb, p: float = SHADES_OF_GRAY_P):
    """Shades of Gray white balance of a batch of float RGB 0..255 images (``keras.ops``).

    Each channel is divided by its Minkowski p-norm over the image and multiplied by the mean
    of the three norms: a colour cast (another camera, another lamp) is removed and the overall
    brightness kept. Pure per-channel gains cancel exactly.
    """
    from keras import ops

    v = ops.maximum(rgb, 1.0) / 255.0
    norm = ops.power(ops.mean(ops.power(v, p), axis=(1, 2), keepdims=True), 1.0 / p)
    gray = ops.mean(norm, axis=-1, keepdims=True)
    return ops.clip(rgb * gray / ops.maximum(norm, 1e-3), 0.0, 255.0)


def build_network(input_size: int, weights: str | Path | None, dropout: float = 0.3,
                  backbone: str = "lite0", colour_constancy: str = "none"):
    """A Keras model: uint8-range float RGB in, 9 logits out. ``weights`` None: from scratch."""
    import keras

    if colour_constancy not in COLOUR_CONSTANCY:
        raise ValueError(f"colour_constancy must be one of {COLOUR_CONSTANCY}, not {colour_constancy!r}")

    shape = (input_size, input_size, 3)
    if backbone == "mobilenet":
        base = keras.applications.MobileNet(input_shape=shape, alpha=0.25, include_top=False,
                                            weights=str(weights) if weights is not None else None)
        scale, offset = 1.0 / 127.5, -1.0
    elif backbone in efficientnet_lite.VARIANTS:
        base = efficientnet_lite.build_lite(backbone, shape)
        if weights is not None:
            efficientnet_lite.load_lite_weights(base, weights)
        scale = 1.0 / efficientnet_lite.INPUT_STD
        offset = -efficientnet_lite.INPUT_MEAN / efficientnet_lite.INPUT_STD
    else:
        raise ValueError(f"backbone must be one of {BACKBONES}, not {backbone!r}")
    base.name = BASE_NAME
    inputs = keras.Input(shape, name="rgb")
    x = shades_of_gray(inputs) if colour_constancy == "shades_of_gray" else inputs
    x = keras.layers.Rescaling(scale, offset=offset, name="scale")(x)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(len(CLASS_NAMES), name="logits")(x)
    return keras.Model(inputs, logits, name=f"melanoma_triage_{backbone}")


def set_trainable(model, phase: int, unfreeze_from: str) -> None:
    """Phase 1: the base frozen. Phase 2: the base from the first layer whose name starts with
    ``unfreeze_from`` (``conv_dw_6``, ``block5a``) on, BatchNorm frozen.

    Frozen BatchNorm layers run in inference mode (Keras 3), which keeps ImageNet statistics
    stable on a small data set and makes fine-tuning ~5x cheaper on CPU (measured).
    """
    import keras

    base = model.get_layer(BASE_NAME)
    if phase == 1:
        base.trainable = False
        return
    base.trainable = True
    names = [layer.name for layer in base.layers]
    start = next((i for i, name in enumerate(names) if name.startswith(unfreeze_from)), None)
    if start is None:
        raise ValueError(f"no layer of {BASE_NAME} starts with {unfreeze_from!r}")
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)


def partial_label_loss(mask, logits):
    """-log(sum(softmax(logits) * mask)): the likelihood of the set of allowed classes.

    One-hot masks make this ordinary cross-entropy; a melanoma-only negative row allows
    the eight other classes and so trains the melanoma axis without inventing a class.
    """
    from keras import ops

    mask = ops.cast(mask, logits.dtype)
    allowed = ops.where(mask > 0, logits, ops.full_like(logits, -1e9))
    return ops.logsumexp(logits, axis=-1) - ops.logsumexp(allowed, axis=-1)


def melanoma_auc_metric():
    import keras
    from keras import ops

    class MelanomaAUC(keras.metrics.AUC):
        """ROC AUC of softmax[melanoma] against the melanoma column of the mask."""

        def update_state(self, y_true, y_pred, sample_weight=None):
            p = ops.softmax(y_pred, axis=-1)[:, MELANOMA_INDEX]
            return super().update_state(y_true[:, MELANOMA_INDEX], p, sample_weight=None)

    return MelanomaAUC(name="mel_auc", num_thresholds=400)


def allowed_accuracy_metric():
    from keras import ops

    def allowed_acc(mask, logits):
        """Top-1 class is among the allowed ones (ordinary accuracy for one-hot rows)."""
        top = ops.argmax(logits, axis=-1)
        return ops.take_along_axis(ops.cast(mask, "float32"), top[:, None], axis=-1)[:, 0]

    return allowed_acc
