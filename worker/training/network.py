"""The classifier network: MobileNet (alpha 0.25) body, a dropout + Dense(9) logits head.

Pixel scaling sits inside the model (``Rescaling(1/127.5, offset=-1)``), so the model file
alone defines its input: float RGB 0..255 of ``(size, size, 3)``. The head outputs
**logits**; calibrated probabilities are ``softmax(logits / T)`` at inference.
"""

from __future__ import annotations

from pathlib import Path

from schemas import CLASS_NAMES, MELANOMA

#: ImageNet weights shipped in the shared folder (sha256 dbdb03ee...).
DEFAULT_WEIGHTS = Path("../shared/weights/mobilenet_2_5_224_tf_no_top.h5")
BASE_NAME = "mobilenet_base"
MEL_INDEX = CLASS_NAMES.index(MELANOMA)


def configure_threads(threads: int) -> None:
    """Pin TensorFlow's thread pools (before the first op)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:
        pass  # already initialised: keep what was set first


def build_network(input_size: int, weights: str | Path | None, dropout: float = 0.3, alpha: float = 0.25):
    """A Keras model: uint8-range float RGB in, 9 logits out. ``weights`` None: from scratch."""
    import keras

    base = keras.applications.MobileNet(
        input_shape=(input_size, input_size, 3), alpha=alpha, include_top=False,
        weights=str(weights) if weights is not None else None,
    )
    base.name = BASE_NAME
    inputs = keras.Input((input_size, input_size, 3), name="rgb")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(inputs)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(len(CLASS_NAMES), name="logits")(x)
    return keras.Model(inputs, logits, name="melanoma_triage_mobilenet")


def set_trainable(model, phase: int, unfreeze_from: str = "conv_dw_4") -> None:
    """Phase 1: the base frozen. Phase 2: the base from ``unfreeze_from`` on, BatchNorm frozen.

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
    start = names.index(unfreeze_from) if unfreeze_from in names else 0
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
            p = ops.softmax(y_pred, axis=-1)[:, MEL_INDEX]
            return super().update_state(y_true[:, MEL_INDEX], p, sample_weight=None)

    return MelanomaAUC(name="mel_auc", num_thresholds=400)


def allowed_accuracy_metric():
    from keras import ops

    def allowed_acc(mask, logits):
        """Top-1 class is among the allowed ones (ordinary accuracy for one-hot rows)."""
        top = ops.argmax(logits, axis=-1)
        return ops.take_along_axis(ops.cast(mask, "float32"), top[:, None], axis=-1)[:, 0]

    return allowed_acc
