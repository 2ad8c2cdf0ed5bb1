"""The files of a model-store version folder, and how their content is identified.

Apart from :mod:`worker.store.versions` so that the serving export
(:mod:`worker.classify.export`), which the caller that adds a version hands to the store,
names them without importing the store. Copying an export that already exists (a donor's)
is plain file work and lives here; making one (TensorFlow) lives in the classifier.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from worker.durable import write_atomic

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


def serving_is_current(version_dir: Path, keras_sha256: str) -> bool:
    """The version has an intact export made from the Keras model ``keras_sha256``."""
    record = read_serving(version_dir)
    if not record or record.get("source_sha256") != keras_sha256:
        return False
    path = Path(version_dir) / record.get("file", SERVING_MODEL_FILE)
    return path.is_file() and file_sha256(path) == record.get("sha256")


def read_serving(version_dir: Path) -> dict | None:
    """``serving.json`` of a version, or None when the version was never exported."""
    try:
        return json.loads((Path(version_dir) / SERVING_FILE).read_text())
    except FileNotFoundError:
        return None


def adopt_export(version_dir: Path, keras_sha256: str, donors: Iterable[Path] = ()) -> bool:
    """True when ``version_dir`` has a current export, copying one from a ``donor`` version
    exported from the same Keras file if need be (no TensorFlow needed)."""
    version_dir = Path(version_dir)
    if serving_is_current(version_dir, keras_sha256):
        return True
    for donor in donors:
        donor = Path(donor)
        if donor != version_dir and serving_is_current(donor, keras_sha256):
            record = read_serving(donor)
            write_atomic(version_dir / SERVING_MODEL_FILE,
                         (donor / record.get("file", SERVING_MODEL_FILE)).read_bytes())
            write_atomic(version_dir / SERVING_FILE, (donor / SERVING_FILE).read_bytes())
            if serving_is_current(version_dir, keras_sha256):
                return True
    return False
