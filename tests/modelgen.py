"""A tiny Keras model written as a model store version, for tests (seconds, no ../shared)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from schemas import CLASS_NAMES, ModelMetadata, TriageThresholds
from worker.store.versions import MODEL_FILE, METADATA_FILE, file_sha256

TINY_THRESHOLDS = TriageThresholds(urgent_melanoma=0.3, soon_keratinocyte=0.5, min_confidence=0.2)


def write_tiny_version(out_dir: Path, version: str = "tiny-1", input_size: int = 32,
                       seed: int = 0, thresholds: TriageThresholds = TINY_THRESHOLDS,
                       shades_of_gray: bool = False) -> Path:
    """Same contract as a trained model: RGB 0..255 in, nine logits out (``shades_of_gray``:
    with the trainer's in-model colour constancy first)."""
    import keras

    from worker.training import network

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3))
    x = network.shades_of_gray(inputs) if shades_of_gray else inputs
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES))(x)
    model = keras.Model(inputs, outputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / MODEL_FILE)
    meta = ModelMetadata(
        version=version,
        created_at=datetime.now(timezone.utc),
        sha256=file_sha256(out_dir / MODEL_FILE),
        input_size=input_size,
        temperature=1.0,
        thresholds=thresholds,
        training_command="tests/modelgen.py",
    )
    (out_dir / METADATA_FILE).write_text(meta.model_dump_json(indent=2))
    return out_dir
