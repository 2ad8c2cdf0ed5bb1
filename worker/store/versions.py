"""The versioned model store: immutable version folders and atomically switched pointers.

Layout of a store root::

    CURRENT                      the current version's name (replaced atomically)
    SHADOW                       a candidate run in shadow on live traffic (optional)
    versions/<version>/model.keras
    versions/<version>/model.json    schemas.ModelMetadata
    versions/<version>/model.tflite  the LiteRT export the workers serve (+ serving.json)
    versions/<version>/...           metrics, split, calibration, model card

The store a deployment uses lives in its own folder (the home folder under ``run``, a
volume in production) and is seeded from the models shipped in this repository's
``model_store/`` package; nothing is ever written into the installed package.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

from schemas import ModelMetadata
from worker.durable import write_atomic
from worker.errors import ModelNotAvailable
from worker.store.version_files import METADATA_FILE, MODEL_FILE, adopt_export, file_sha256

__all__ = ["METADATA_FILE", "MODEL_FILE", "CURRENT_FILE", "SHADOW_FILE", "ModelStore",
           "file_sha256", "shipped_store_root"]

#: Makes a staged version's serving export: ``(version_dir, keras_sha256, donors)``.
#: ``worker.classify.export.ensure_export`` is the one the commands that add versions pass.
ExportFn = Callable[[Path, str, Iterable[Path]], object]

CURRENT_FILE = "CURRENT"
SHADOW_FILE = "SHADOW"


def shipped_store_root() -> Path:
    """The read-only store inside the installed package (the repository's model_store/)."""
    return Path(str(resources.files("model_store")))


class ModelStore:
    """One store root on disk. Pointer changes with their record: ``worker.store.admin``."""

    def __init__(self, root: Path, export: ExportFn | None = None) -> None:
        """``export`` makes the serving export of a version being added. Without one (a
        reader, or a store that only receives versions exported elsewhere) a new version
        keeps the export it arrives with, or copies that of a version with the same weights.
        """
        self.root = Path(root)
        self.export = export or adopt_export

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    def version_dir(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise ModelNotAvailable(f"invalid model version name {version!r}")
        return self.versions_dir / version

    def list_versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.versions_dir.iterdir()
            if not p.name.startswith(".") and (p / METADATA_FILE).is_file()  # skip add_version staging
        )

    def _pointer(self, name: str) -> str | None:
        try:
            version = (self.root / name).read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def current_version(self) -> str | None:
        return self._pointer(CURRENT_FILE)

    def shadow_version(self) -> str | None:
        """A candidate that also runs on live traffic, its predictions recorded, not reported."""
        return self._pointer(SHADOW_FILE)

    def set_shadow(self, version: str | None) -> None:
        if version is None:
            (self.root / SHADOW_FILE).unlink(missing_ok=True)
            return
        self.verify(version)
        write_atomic(self.root / SHADOW_FILE, (version + "\n").encode())

    def metadata(self, version: str) -> ModelMetadata:
        path = self.version_dir(version) / METADATA_FILE
        try:
            return ModelMetadata.model_validate_json(path.read_text())
        except FileNotFoundError as exc:
            raise ModelNotAvailable(f"model version {version!r} is not in {self.root}") from exc

    def current(self) -> ModelMetadata:
        version = self.current_version()
        if version is None:
            raise ModelNotAvailable(f"no current model version in {self.root}")
        return self.metadata(version)

    def model_path(self, version: str) -> Path:
        return self.version_dir(version) / MODEL_FILE

    def verify(self, version: str) -> None:
        """Refuse a version whose model file does not match its recorded hash."""
        meta = self.metadata(version)
        actual = file_sha256(self.model_path(version))
        if actual != meta.sha256:
            raise ModelNotAvailable(f"model {version} sha256 mismatch: store is corrupt")

    def set_current(self, version: str) -> None:
        """Switch the pointer atomically (write a temp file, fsync, rename)."""
        self.verify(version)
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / CURRENT_FILE, (version + "\n").encode())

    def add_version(self, source_dir: Path) -> str:
        """Copy a finished version folder in; the copy appears atomically or not at all.

        Its LiteRT export (what workers serve) is made in the staging copy, before the version
        appears, by the store's ``export`` function (train, retrain and calibrate hand in
        ``worker.classify.export.ensure_export``). An export that disagrees with the Keras
        model refuses the version.
        """
        source_dir = Path(source_dir)
        meta = ModelMetadata.model_validate_json((source_dir / METADATA_FILE).read_text())
        if file_sha256(source_dir / MODEL_FILE) != meta.sha256:
            raise ModelNotAvailable(f"{source_dir}: model file does not match model.json sha256")
        target = self.version_dir(meta.version)
        if target.exists():
            return meta.version  # versions are immutable: same name, same content
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.versions_dir, prefix=f".{meta.version}."))
        try:
            shutil.copytree(
                source_dir, staging, dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("checkpoints", "*.tmp"),
            )
            self._export_for_serving(staging, meta.sha256)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return meta.version

    def _export_for_serving(self, version_dir: Path, keras_sha256: str) -> None:
        self.export(version_dir, keras_sha256, [self.version_dir(v) for v in self.list_versions()])

    def seed_from(self, shipped: Path | None = None) -> None:
        """Copy in shipped versions this store lacks; adopt the shipped current if none."""
        shipped_store = ModelStore(shipped or shipped_store_root())
        for version in shipped_store.list_versions():
            self.add_version(shipped_store.version_dir(version))
            # A version seeded before exports were shipped takes the shipped export along.
            adopt_export(self.version_dir(version), self.metadata(version).sha256,
                         [shipped_store.version_dir(version)])
        if self.current_version() is None and shipped_store.current_version():
            self.set_current(shipped_store.current_version())
