"""Export a model-store version's Keras model to LiteRT, so that workers serve it without TensorFlow.

Run on the training side (TensorFlow and Keras installed) when a version is created or added
to the store. Writes ``model.tflite`` (float32: the same arithmetic as Keras, |Δ logit| ~1e-6)
and ``serving.json`` beside ``model.keras``. ``serving.json`` records the exported file's sha256,
the sha256 of the Keras file it came from, and the largest logit difference between the two on
deterministic probe images, measured at export time; a version whose export disagrees with its
Keras model is refused here, before any worker can serve it.

TensorFlow is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np

from worker.classify.runtime_litert import SERVING_FILE, SERVING_MODEL_FILE, LiteRTModel
from worker.durable import write_atomic
from worker.errors import ModelNotAvailable
from worker.store.versions import METADATA_FILE, MODEL_FILE, file_sha256

SERVING_FORMAT = "litert-float32"
# Largest |Δ logit| accepted between Keras and the exported model on the probe images.
# float32 LiteRT/XNNPACK differs by summation order only: ~2e-6 measured on EfficientNet-Lite0.
MAX_LOGIT_DELTA = 1e-3
PROBE_IMAGES = 8


def probe_batch(input_size: int, n: int = PROBE_IMAGES, seed: int = 0) -> np.ndarray:
    """Deterministic float32 RGB 0..255 images (noise and smooth blobs) to compare two runtimes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:input_size, 0:input_size] / input_size
    out = np.empty((n, input_size, input_size, 3), np.float32)
    for i in range(n):
        if i % 2:
            out[i] = rng.integers(0, 256, (input_size, input_size, 3))
        else:
            cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.4)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            skin = rng.uniform(150, 230, 3)
            lesion = rng.uniform(30, 120, 3)
            out[i] = skin * (1 - blob[..., None]) + lesion * blob[..., None]
    return out


def _convert(model_path: Path) -> tuple[bytes, object]:
    """The float32 flatbuffer and the loaded Keras model (kept to compare the two)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path, compile=False)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints every captured tensor spec
        return converter.convert(), model


def export_version(version_dir: Path) -> Path:
    """Write ``model.tflite`` and ``serving.json`` into ``version_dir``; return the tflite path.

    Idempotent: a version whose ``serving.json`` already matches both files is left alone.
    The files are written atomically, tflite first, so a reader that finds ``serving.json``
    finds the model it describes.
    """
    version_dir = Path(version_dir)
    keras_path = version_dir / MODEL_FILE
    meta = json.loads((version_dir / METADATA_FILE).read_text())
    keras_sha = file_sha256(keras_path)
    if keras_sha != meta["sha256"]:
        raise ModelNotAvailable(f"{version_dir}: {MODEL_FILE} does not match model.json sha256")
    target = version_dir / SERVING_MODEL_FILE
    existing = read_serving(version_dir)
    if existing and existing.get("source_sha256") == keras_sha and target.is_file() \
            and file_sha256(target) == existing.get("sha256"):
        return target

    flatbuffer, model = _convert(keras_path)
    write_atomic(target, flatbuffer)
    probe = probe_batch(int(meta["input_size"]))
    expected = np.asarray(model(probe, training=False), dtype=np.float32)
    got = LiteRTModel(target, num_threads=1).logits(probe)
    delta = float(np.abs(got - expected).max())
    if not delta <= MAX_LOGIT_DELTA:
        target.unlink(missing_ok=True)
        raise ModelNotAvailable(
            f"{version_dir.name}: LiteRT export differs from Keras by {delta:.2e} logits "
            f"(> {MAX_LOGIT_DELTA}); not serving it")
    import tensorflow as tf

    record = {
        "format": SERVING_FORMAT,
        "file": SERVING_MODEL_FILE,
        "sha256": file_sha256(target),
        "source_file": MODEL_FILE,
        "source_sha256": keras_sha,
        "input_size": int(meta["input_size"]),
        "converter": f"tensorflow {tf.__version__} TFLiteConverter.from_keras_model",
        "probe_images": len(probe),
        "probe_max_abs_logit_delta": delta,
    }
    write_atomic(version_dir / SERVING_FILE, (json.dumps(record, indent=1) + "\n").encode())
    return target


def read_serving(version_dir: Path) -> dict | None:
    """``serving.json`` of a version, or None when the version was never exported."""
    try:
        return json.loads((Path(version_dir) / SERVING_FILE).read_text())
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> None:
    """``python -m worker.classify.export VERSION_DIR...``: export versions shipped without one."""
    import sys

    for arg in (argv if argv is not None else sys.argv[1:]):
        path = export_version(Path(arg))
        print(f"{path}  {read_serving(path.parent)['probe_max_abs_logit_delta']:.2e} max |Δ logit|")


if __name__ == "__main__":
    main()
