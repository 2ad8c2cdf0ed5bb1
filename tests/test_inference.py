"""Classifier on a tiny generated model in a temporary store: shapes, calibration, triage.

The Classifier serves the version's LiteRT export; the Keras model is the reference."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from schemas import CLASS_NAMES, MELANOMA, ModelMetadata, TriageLevel, TriageThresholds
from worker.classify.export import ensure_export
from worker.classify.export import export_version
from worker.classify.inference import Classifier, configure_tensorflow
from worker.classify.preprocess import to_model_input
from worker.errors import ModelNotAvailable
from worker.store.versions import METADATA_FILE, MODEL_FILE, ModelStore, file_sha256

SIZE = 32
T = 2.0


def _write_version(root: Path, name: str, thresholds: TriageThresholds) -> None:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(len(CLASS_NAMES))(x))
    d = root / "versions" / name
    d.mkdir(parents=True)
    model.save(d / MODEL_FILE)
    meta = ModelMetadata(version=name, created_at=datetime.now(UTC),
                         sha256=file_sha256(d / MODEL_FILE), input_size=SIZE, temperature=T,
                         thresholds=thresholds)
    (d / METADATA_FILE).write_text(meta.model_dump_json())
    if name != "v-unexported":
        export_version(d)  # what ModelStore.add_version does


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ModelStore:
    configure_tensorflow(1)
    root = tmp_path_factory.mktemp("store")
    _write_version(root, "v-normal", TriageThresholds(urgent_melanoma=0.99, soon_keratinocyte=0.99,
                                                      min_confidence=0.0))
    _write_version(root, "v-urgent", TriageThresholds(urgent_melanoma=0.0, soon_keratinocyte=0.5,
                                                      min_confidence=0.2))
    _write_version(root, "v-unsure", TriageThresholds(urgent_melanoma=1.0, soon_keratinocyte=1.0,
                                                      min_confidence=1.0))
    _write_version(root, "v-unexported", TriageThresholds(urgent_melanoma=0.99,
                                                          soon_keratinocyte=0.99, min_confidence=0.0))
    s = ModelStore(root, export=ensure_export)
    s.set_current("v-normal")
    return s


def _rgb(h: int = 50, w: int = 70, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_probabilities_are_calibrated_softmax_of_logits(store):
    clf = Classifier.from_store(store)
    assert clf.version == "v-normal" and clf.metadata.temperature == T
    rgb = _rgb()
    probs = clf.probabilities(rgb)
    assert list(probs) == list(CLASS_NAMES)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
    import keras

    model = keras.saving.load_model(store.model_path("v-normal"), compile=False)
    logits = np.asarray(model(to_model_input(rgb, SIZE).astype("float32")[None]))[0]
    z = logits / T
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert np.allclose([probs[c] for c in CLASS_NAMES], expected, atol=1e-5)


def test_any_input_size_and_deterministic(store):
    clf = Classifier.from_store(store, "v-normal")
    a = clf.probabilities(_rgb(300, 200, seed=3))
    b = clf.probabilities(_rgb(300, 200, seed=3))
    assert a == b
    clf.probabilities(_rgb(SIZE, SIZE))
    with pytest.raises(ValueError):
        clf.probabilities(np.zeros((10, 10), dtype=np.uint8))


def test_predict_applies_the_versions_thresholds(store):
    rgb = _rgb()
    normal = Classifier.from_store(store, "v-normal").predict(rgb)
    assert normal.triage == TriageLevel.ROUTINE
    assert normal.predicted_class == max(normal.probabilities, key=normal.probabilities.get)
    assert normal.melanoma_probability == normal.probabilities[MELANOMA]
    urgent = Classifier.from_store(store, "v-urgent")
    assert urgent.predict(rgb).triage == TriageLevel.URGENT
    assert urgent.predict(rgb, usable_image=False).triage == TriageLevel.INDETERMINATE
    assert Classifier.from_store(store, "v-unsure").predict(rgb).triage == TriageLevel.INDETERMINATE
    assert json.loads(normal.model_dump_json())["model_version"] == "v-normal"


def test_from_store_refuses_a_corrupt_model(store, tmp_path):
    import shutil

    bad = ModelStore(tmp_path / "bad", export=ensure_export)
    shutil.copytree(store.root / "versions" / "v-normal", bad.versions_dir / "v-normal")
    meta = json.loads((bad.version_dir("v-normal") / METADATA_FILE).read_text())
    meta["sha256"] = "0" * 64
    (bad.version_dir("v-normal") / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelNotAvailable):
        Classifier.from_store(bad, "v-normal")
    with pytest.raises(ModelNotAvailable):
        Classifier.from_store(ModelStore(tmp_path / "empty", export=ensure_export))


def test_a_version_without_export_is_exported_on_load_or_refused_with_the_fix(store):
    vdir = store.version_dir("v-unexported")
    with pytest.raises(ModelNotAvailable, match="python -m worker.classify.export"):
        Classifier.from_store(store, "v-unexported", allow_export=False)  # no TensorFlow here
    try:
        clf = Classifier.from_store(store, "v-unexported")  # TensorFlow installed: exported
        assert (vdir / "model.tflite").is_file() and (vdir / "serving.json").is_file()
        assert clf.predict(_rgb()).model_version == "v-unexported"
    finally:
        for name in ("model.tflite", "serving.json"):
            (vdir / name).unlink(missing_ok=True)


def test_importing_inference_does_not_import_tensorflow():
    code = ("import sys, worker.classify.inference, worker.training.cli; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_batched_probabilities_match_the_single_image_path(store):
    import keras

    from worker.classify.inference import predict_probabilities

    clf = Classifier.from_store(store, "v-normal")
    rgbs = [_rgb(SIZE, SIZE, seed=s) for s in range(5)]
    model = keras.saving.load_model(store.model_path("v-normal"), compile=False)
    stack = np.stack([to_model_input(r, SIZE) for r in rgbs])
    batched = predict_probabilities(model, stack, T, batch_size=2)  # 2 + 2 + 1: a partial batch
    assert batched.shape == (5, len(CLASS_NAMES))
    for row, rgb in zip(batched, rgbs):
        single = clf.probabilities(rgb)
        assert np.allclose(row, [single[c] for c in CLASS_NAMES], atol=1e-5)
    assert predict_probabilities(model, stack[:0], T).shape == (0, len(CLASS_NAMES))
