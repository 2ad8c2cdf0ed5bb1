"""The serving runtime: a model-store version's ``model.tflite`` run by LiteRT with XNNPACK.

Imports numpy and ``ai_edge_litert`` only -- never TensorFlow or Keras -- so a worker that
serves the model starts in well under a second and carries a ~60 MB runtime instead of a
1.3 GB framework. The file is checked against the sha256 that ``worker.classify.export``
recorded in ``serving.json``, and that record against the version's Keras model, so a
worker never serves an export of some other model.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from worker.errors import ModelNotAvailable
from worker.store.version_files import SERVING_FILE, SERVING_MODEL_FILE, file_sha256

__all__ = ["LiteRTModel", "SERVING_FILE", "SERVING_MODEL_FILE"]


class LiteRTModel:
    """One loaded ``.tflite``: ``logits(batch)`` for (n, size, size, 3) RGB 0..255 arrays.

    One interpreter per process, single-threaded by default (one worker process per core).
    The interpreter is not thread-safe, hence the lock; the batch dimension is resized on
    demand so that a worker may micro-batch waiting jobs.
    """

    def __init__(self, path: Path | None, num_threads: int = 1, content: bytes | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path) if path is not None else None
        try:
            if content is not None:
                self._interpreter = Interpreter(model_content=content, num_threads=num_threads)
            else:
                self._interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # a corrupt or foreign file
            raise ModelNotAvailable(f"{self.path or 'model'} cannot be loaded by LiteRT: {exc}") from exc
        inp = self._interpreter.get_input_details()[0]
        self._input = inp["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self.input_size = int(inp["shape"][1])
        self._batch = int(inp["shape"][0])
        self._lock = threading.Lock()

    @classmethod
    def from_bytes(cls, flatbuffer: bytes, num_threads: int = 1) -> LiteRTModel:
        """A flatbuffer held in memory (the exporter checks its conversion before writing it)."""
        return cls(None, num_threads=num_threads, content=flatbuffer)

    @classmethod
    def from_version_dir(cls, version_dir: Path, expected_keras_sha256: str,
                         num_threads: int = 1) -> LiteRTModel:
        """Load a version's export after checking it is intact and made from this Keras model."""
        version_dir = Path(version_dir)
        try:
            record = json.loads((version_dir / SERVING_FILE).read_text())
        except FileNotFoundError as exc:
            raise ModelNotAvailable(
                f"model {version_dir.name} has no LiteRT export ({SERVING_FILE}, {SERVING_MODEL_FILE}): "
                f"run `python -m worker.classify.export {version_dir}` where TensorFlow is "
                "installed (the [train] extra)") from exc
        if record.get("source_sha256") != expected_keras_sha256:
            raise ModelNotAvailable(f"model {version_dir.name}: {SERVING_MODEL_FILE} was exported "
                                    "from a different model.keras")
        path = version_dir / record.get("file", SERVING_MODEL_FILE)
        if not path.is_file() or file_sha256(path) != record.get("sha256"):
            raise ModelNotAvailable(f"model {version_dir.name}: {path.name} sha256 mismatch")
        return cls(path, num_threads=num_threads)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Pre-softmax outputs, (n, classes) float32, for (n, size, size, 3) uint8 or float32."""
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"expected (n, {self.input_size}, {self.input_size}, 3), got {x.shape}")
        with self._lock:
            if x.shape[0] != self._batch:
                self._interpreter.resize_tensor_input(self._input, list(x.shape))
                self._interpreter.allocate_tensors()
                self._batch = x.shape[0]
            self._interpreter.set_tensor(self._input, np.ascontiguousarray(x))
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output).copy()

    def warm_up(self) -> None:
        """One call on zeros, so XNNPACK's first-run packing is not paid by the first image."""
        self.logits(np.zeros((1, self.input_size, self.input_size, 3), np.float32))
