"""The files of a model-store version folder, and how their content is identified.

Apart from :mod:`worker.store.versions` so that the serving export
(:mod:`worker.classify.export`), which the store calls when a version is added, names
them without importing the store back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_FILE = "model.keras"  # the trained Keras model (training, evaluation, export)
METADATA_FILE = "model.json"  # schemas.ModelMetadata
SERVING_MODEL_FILE = "model.tflite"  # what the workers serve (LiteRT)
SERVING_FILE = "serving.json"  # the export's record: its sha256 and its source's


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
