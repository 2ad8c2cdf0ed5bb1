"""Export a model-store version's Keras model to LiteRT, so that workers serve it without TensorFlow.

Runs when a version is added to the store (``ModelStore.add_version``: train, retrain and
calibrate all go through it), on the side that has TensorFlow and Keras installed. Writes
``model.tflite`` (float32: the same arithmetic as Keras, |Δ logit| ~1e-5) and
``serving.json`` beside ``model.keras``. ``serving.json`` records the exported file's sha256,
the sha256 of the Keras file it came from, and the largest logit difference between the two on
deterministic probe images, measured at export time; a version whose export disagrees with its
Keras model is refused here, before any worker can serve it.

TensorFlow is imported inside the functions: importing this module costs nothing. A process
that has not imported TensorFlow (the ``run`` parent, a serving worker) exports in a child
process (:func:`ensure_export`), so TensorFlow never enters it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from worker.classify.runtime_litert import LiteRTModel
from worker.durable import write_atomic
from worker.errors import ModelNotAvailable
from worker.store.version_files import (METADATA_FILE, MODEL_FILE, SERVING_FILE, SERVING_MODEL_FILE,
                                        adopt_export, file_sha256, read_serving, serving_is_current)

SERVING_FORMAT = "litert-float32"
# Largest |Δ logit| accepted between Keras and the exported model on the probe images.
# float32 LiteRT/XNNPACK differs by summation order only: ~2e-6 measured on EfficientNet-Lite0.
MAX_LOGIT_DELTA = 1e-3
PROBE_IMAGES = 8
#: A child process that exports one version (Lite0: ~20 s of TensorFlow start and conversion).
EXPORT_TIMEOUT_S = 900
#: Conversions kept in memory per process (by Keras sha256; Lite0's flatbuffer is 13 MB).
MAX_KEPT_CONVERSIONS = 4

log = logging.getLogger(__name__)
_conversions: dict[str, tuple[bytes, float, str]] = {}


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


def _convert(model_path: Path, keras_sha256: str, input_size: int) -> tuple[bytes, float, str]:
    """The float32 flatbuffer, its largest |Δ logit| against Keras on the probe images, and the
    converter's name. Kept per Keras file content (a few): the same model added to several
    stores, or from a staging copy, converts once per process."""
    if keras_sha256 not in _conversions:
        if len(_conversions) >= MAX_KEPT_CONVERSIONS:
            _conversions.pop(next(iter(_conversions)))
        _conversions[keras_sha256] = convert_to_litert(model_path, input_size)
    return _conversions[keras_sha256]


def convert_to_litert(model_path: Path, input_size: int) -> tuple[bytes, float, str]:
    """Convert a saved Keras model (no cache): the float32 flatbuffer, its largest |Δ logit|
    against Keras on the probe images, and the converter's name."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path, compile=False)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints every captured tensor spec
        flatbuffer = converter.convert()
    probe = probe_batch(input_size)
    expected = np.asarray(model(probe, training=False), dtype=np.float32)
    got = LiteRTModel.from_bytes(flatbuffer, num_threads=1).logits(probe)
    delta = float(np.abs(got - expected).max())
    return flatbuffer, delta, f"tensorflow {tf.__version__} TFLiteConverter.from_keras_model"


def export_version(version_dir: Path) -> Path:
    """Write ``model.tflite`` and ``serving.json`` into ``version_dir``; return the tflite path.

    Idempotent: a version whose ``serving.json`` already matches both files is left alone.
    The files are written atomically, tflite first, so a reader that finds ``serving.json``
    finds the model it describes; a lock on the folder keeps two processes from interleaving
    them (two workers finding the same version without an export).
    """
    version_dir = Path(version_dir)
    keras_path = version_dir / MODEL_FILE
    meta = json.loads((version_dir / METADATA_FILE).read_text())
    keras_sha = file_sha256(keras_path)
    if keras_sha != meta["sha256"]:
        raise ModelNotAvailable(f"{version_dir}: {MODEL_FILE} does not match model.json sha256")
    target = version_dir / SERVING_MODEL_FILE
    lock = os.open(version_dir, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if serving_is_current(version_dir, keras_sha):
            return target
        flatbuffer, delta, converter = _convert(keras_path, keras_sha, int(meta["input_size"]))
        if not delta <= MAX_LOGIT_DELTA:
            raise ModelNotAvailable(
                f"{version_dir.name}: LiteRT export differs from Keras by {delta:.2e} logits "
                f"(> {MAX_LOGIT_DELTA}); not serving it")
        write_atomic(target, flatbuffer)
        record = {
            "format": SERVING_FORMAT,
            "file": SERVING_MODEL_FILE,
            "sha256": file_sha256(target),
            "source_file": MODEL_FILE,
            "source_sha256": keras_sha,
            "input_size": int(meta["input_size"]),
            "converter": converter,
            "probe_images": PROBE_IMAGES,
            "probe_max_abs_logit_delta": delta,
        }
        write_atomic(version_dir / SERVING_FILE, (json.dumps(record, indent=1) + "\n").encode())
    finally:
        os.close(lock)  # releases the lock
    return target


def tensorflow_installed() -> bool:
    """Whether this environment can export (the ``[train]`` extra), without importing TensorFlow."""
    return "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is not None


def ensure_export(version_dir: Path, keras_sha256: str, donors: Iterable[Path] = ()) -> bool:
    """Give ``version_dir`` its serving export; False when this environment cannot make one.

    Cheapest first: an export already there; a copy from a ``donor`` version exported from
    the same Keras file (a site calibration copies the model unchanged); a conversion here,
    when this process already runs TensorFlow; else in a child process, so that TensorFlow
    never enters a serving process or the ``run`` parent.
    """
    version_dir = Path(version_dir)
    if adopt_export(version_dir, keras_sha256, donors):
        return True
    if "tensorflow" in sys.modules:
        export_version(version_dir)
        return True
    if not tensorflow_installed():
        log.warning("model %s has no LiteRT export and TensorFlow is not installed here; "
                    "workers cannot serve it until `python -m worker.classify.export %s` runs "
                    "where the [train] extra is installed", version_dir.name, version_dir)
        return False
    proc = subprocess.run([sys.executable, "-m", "worker.classify.export", str(version_dir)],
                          capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelNotAvailable(f"model {version_dir.name}: LiteRT export failed ({last[:300]})")
    return serving_is_current(version_dir, keras_sha256)


def main(argv: list[str] | None = None) -> None:
    """``python -m worker.classify.export VERSION_DIR...``: export versions shipped without one."""
    for arg in (argv if argv is not None else sys.argv[1:]):
        path = export_version(Path(arg))
        print(f"{path}  {read_serving(path.parent)['probe_max_abs_logit_delta']:.2e} max |Δ logit|")


if __name__ == "__main__":
    main()
