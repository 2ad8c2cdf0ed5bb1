"""Inference: calibrated probabilities + triage for one image (the workers and ``predict``), and
the one batched loop that training, evaluation and retraining run over stacks of images.

TensorFlow is imported lazily, inside functions: Celery forks its pool after importing
this module, and forking after TensorFlow is initialised can hang (tensorflow#27074).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from schemas import CLASS_NAMES, MELANOMA, ModelMetadata, PredictionResult
from worker.classify.preprocess import to_model_input
from worker.classify.triage import decide, named_class
from worker.errors import ModelNotAvailable
from worker.store.versions import ModelStore

_configured: dict[str, int] = {}
_lock = threading.Lock()


def configure_tensorflow(threads: int = 1) -> None:
    """Pin TensorFlow's thread pools before its first op; later calls are no-ops.

    One prefork child per core with one intra-op thread each avoids oversubscription.
    """
    with _lock:
        if _configured:
            return
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TensorFlow already ran an op in this process: keep its pools
        _configured["threads"] = threads


#: Images per forward pass in :func:`predict_logits` (bounded memory on CPU workers).
BATCH_SIZE = 64


def softmax_t(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / T)`` over the last axis: one row of logits
    or a stack of them. Every calibrated probability in the product comes from here."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def predict_logits(model: Any, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Logits ``(n, 9)`` for a stack of model-size images ``(n, size, size, 3)`` (0..255).

    In batches through one traced function: ``model.predict`` has fixed per-call overhead
    and a whole set at once would not fit in memory.
    """
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    out = [fn(tf.convert_to_tensor(images[i:i + batch_size], dtype=tf.float32)).numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def predict_probabilities(model: Any, images: np.ndarray, temperature: float,
                          batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Calibrated probabilities ``(n, 9)`` of a stack of model-size images."""
    return softmax_t(predict_logits(model, images, batch_size), temperature)


class Classifier:
    """A loaded model version: ``probabilities`` and ``predict`` for one RGB image at a time."""

    def __init__(self, model: Any, metadata: ModelMetadata) -> None:
        if list(metadata.class_names) != list(CLASS_NAMES):
            raise ModelNotAvailable(
                f"model {metadata.version} class order {metadata.class_names} != {list(CLASS_NAMES)}")
        if metadata.temperature <= 0:
            raise ModelNotAvailable(f"model {metadata.version} has temperature {metadata.temperature}")
        import tensorflow as tf

        self.metadata = metadata
        self.version = metadata.version
        self.input_size = metadata.input_size
        self._model = model
        spec = tf.TensorSpec((1, self.input_size, self.input_size, 3), tf.float32)
        # A fixed signature: traced once, no per-call overhead of model.predict.
        self._logits = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    @classmethod
    def from_store(cls, store: ModelStore, version: str | None = None) -> Classifier:
        """Load ``version`` (default: the store's current) after checking its sha256."""
        version = version or store.current_version()
        if version is None:
            raise ModelNotAvailable(f"no current model version in {store.root}")
        store.verify(version)
        metadata = store.metadata(version)
        configure_tensorflow(_configured.get("threads", 1))
        import keras

        try:
            model = keras.saving.load_model(store.model_path(version), compile=False)
        except Exception as exc:  # a corrupt or foreign file: not retryable
            raise ModelNotAvailable(f"model {version} cannot be loaded: {exc}") from exc
        return cls(model, metadata)

    def logits(self, rgb: np.ndarray) -> np.ndarray:
        """One image of any size: the fast path the workers serve (no batching loop)."""
        x = to_model_input(rgb, self.input_size).astype(np.float32)[None]
        return self._logits(x).numpy()[0]

    def probabilities(self, rgb: np.ndarray) -> dict[str, float]:
        """Calibrated softmax(logits / T), keyed by class name in CLASS_NAMES order."""
        p = softmax_t(self.logits(rgb), self.metadata.temperature)
        return {name: float(v) for name, v in zip(CLASS_NAMES, p)}

    def predict(self, rgb: np.ndarray, usable_image: bool = True, path: str | None = None) -> PredictionResult:
        probs = self.probabilities(rgb)
        return PredictionResult(
            path=path, model_version=self.version, probabilities=probs,
            melanoma_probability=probs[MELANOMA],
            predicted_class=named_class(probs, self.metadata.thresholds),
            triage=decide(probs, self.metadata.thresholds, usable_image),
        )
