"""Inference: calibrated probabilities + triage for one image (the workers and ``predict``), and
the one batched loop that training, evaluation and retraining run over stacks of images.

Serving (:class:`Classifier`) runs the version's LiteRT export and never imports TensorFlow
or Keras. The batched loop (:func:`predict_logits`) runs the Keras model, for training and
evaluation; TensorFlow is imported inside those functions, so importing this module costs
nothing (and forking after TensorFlow is initialised can hang, tensorflow#27074).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from schemas import CLASS_NAMES, MELANOMA, ModelMetadata, PredictionResult
from worker.classify.preprocess import to_model_input
from worker.classify.recalibration import Recalibration, load_recalibration
from worker.classify.runtime_litert import LiteRTModel
from worker.classify.triage import decide, named_class
from worker.errors import ModelNotAvailable
from worker.store.versions import ModelStore

log = logging.getLogger(__name__)

_configured: dict[str, int] = {}
_lock = threading.Lock()


def configure_tensorflow(threads: int = 1) -> None:
    """Pin TensorFlow's thread pools before its first op (training, evaluation); later calls
    are no-ops.

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
    and a whole set at once would not fit in memory. Under another Keras backend (a GPU
    training machine) ``model.predict`` does the batching.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return np.asarray(model.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0))
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
    """A served model version: ``probabilities`` and ``predict`` for one RGB image at a time.

    Runs the version's LiteRT export (``model.tflite``, float32, XNNPACK): no TensorFlow or
    Keras in the process, ~0.1 s to load, ~90 MB resident. The export is made when the
    version is added to the store (``worker.classify.export``); a version from before that
    is exported on first load when TensorFlow is installed, else refused with the command
    that fixes it. A site version's ``recalibration`` (``worker.classify.recalibration``) is
    applied after the temperature: its thresholds are on those probabilities.
    """

    def __init__(self, model: LiteRTModel, metadata: ModelMetadata,
                 recalibration: Recalibration | None = None) -> None:
        if list(metadata.class_names) != list(CLASS_NAMES):
            raise ModelNotAvailable(
                f"model {metadata.version} class order {metadata.class_names} != {list(CLASS_NAMES)}")
        if metadata.temperature <= 0:
            raise ModelNotAvailable(f"model {metadata.version} has temperature {metadata.temperature}")
        if model.input_size != metadata.input_size:
            raise ModelNotAvailable(f"model {metadata.version}: export takes {model.input_size} px, "
                                    f"model.json says {metadata.input_size}")
        self.metadata = metadata
        self.version = metadata.version
        self.input_size = metadata.input_size
        self.recalibration = recalibration
        self._model = model

    @classmethod
    def from_store(cls, store: ModelStore, version: str | None = None, threads: int = 1,
                   allow_export: bool = True, site_recalibration: bool = True) -> Classifier:
        """Load ``version`` (default: the store's current).

        The export's sha256 is checked, and its record names the sha256 of the Keras file in
        ``model.json``, so a worker never serves some other model. ``allow_export=False``
        (a worker warming up within Celery's start-up limit) refuses rather than converts.
        ``site_recalibration=False``: the weights' own probabilities, without the version's
        ``recalibration.json`` (what a new site calibration is fitted on).
        """
        from worker.classify.export import ensure_export, tensorflow_installed

        version = version or store.current_version()
        if version is None:
            raise ModelNotAvailable(f"no current model version in {store.root}")
        metadata = store.metadata(version)
        vdir = store.version_dir(version)
        try:
            model = LiteRTModel.from_version_dir(vdir, metadata.sha256, num_threads=threads)
        except ModelNotAvailable:
            if not (allow_export and tensorflow_installed()):
                raise
            log.warning("model %s has no current LiteRT export: exporting it now", version)
            donors = [store.version_dir(v) for v in store.list_versions() if v != version]
            ensure_export(vdir, metadata.sha256, donors)
            model = LiteRTModel.from_version_dir(vdir, metadata.sha256, num_threads=threads)
        return cls(model, metadata, load_recalibration(vdir) if site_recalibration else None)

    def warm_up(self) -> None:
        """XNNPACK packs its weights on the first call: pay that before the first image."""
        self._model.warm_up()

    def logits(self, rgb: np.ndarray) -> np.ndarray:
        """One image of any size: resized to the model's input, one interpreter call."""
        return self._model.logits(to_model_input(rgb, self.input_size)[None])[0]

    @property
    def calibration_note(self) -> str:
        """Which calibration the probabilities use, for the report."""
        if self.recalibration is not None:
            return self.recalibration.note(self.version)
        site = self.metadata.metrics.get("site")  # a site version that kept the model's probabilities
        if isinstance(site, dict) and "counts" in site and "created_at" in site:
            return (f"{self.version}, thresholds calibrated on {site['counts'].get('used')} confirmed cases of "
                    f"this site ({str(site['created_at'])[:10]}); probabilities as trained")
        return f"{self.version}, as trained (temperature fitted on its validation split)"

    def probabilities(self, rgb: np.ndarray) -> dict[str, float]:
        """Calibrated softmax(logits / T), recalibrated for the site when the version is a
        site version; keyed by class name in CLASS_NAMES order."""
        p = softmax_t(self.logits(rgb), self.metadata.temperature)
        if self.recalibration is not None:
            p = self.recalibration.apply(p)
        return {name: float(v) for name, v in zip(CLASS_NAMES, p)}

    def predict(self, rgb: np.ndarray, usable_image: bool = True, path: str | None = None) -> PredictionResult:
        probs = self.probabilities(rgb)
        return PredictionResult(
            path=path, model_version=self.version, probabilities=probs,
            melanoma_probability=probs[MELANOMA],
            predicted_class=named_class(probs, self.metadata.thresholds),
            triage=decide(probs, self.metadata.thresholds, usable_image),
        )
