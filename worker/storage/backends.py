"""The two storages behind ``TRIAGE_STORAGE``: folders (as ever) or the database's blobs.

Keys (database) mirror the folders (filesystem): ``archive/ab/cd/<sha256>``,
``reports/<name>.pdf``, ``rejected/<job>__<name>`` (+ ``.json``), ``outbox/fhir/<job>.json``,
``model_store/...`` (``worker.storage.model_sync``).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from worker.durable import fsync_dir, write_atomic
from worker.settings import Settings
from worker.storage.blobs import (
    blob_index, db_location, delete_blob, is_db_location, key_of, location_exists, put_blob,
    read_location,
)

log = logging.getLogger(__name__)


def archive_key(sha256: str) -> str:
    return f"archive/{sha256[:2]}/{sha256[2:4]}/{sha256}"


class FilesystemStorage:
    """Folders under the home (``archive_dir``, ``reports_dir``, ``rejected_dir``, outbox)."""

    kind = "filesystem"

    def __init__(self, settings: Settings, bind: Engine | None = None) -> None:
        self.settings = settings
        self.bind = bind  # reads a ``db:`` location still, e.g. after ``db migrate-to`` back

    def archive(self, data: bytes, sha256: str) -> str:
        from worker.intake import archive

        return str(archive.store(self.settings.archive_dir, data, sha256))

    def read(self, location: str | Path) -> bytes:
        return read_location(location, self.bind)

    def exists(self, location: str | Path) -> bool:
        return location_exists(location, self.bind)

    def delete(self, session: Session, location: str) -> None:
        """Removed once ``session`` commits is not possible for a file: removed now."""
        Path(location).unlink(missing_ok=True)

    # Reports: rendered to a pending file, placed once the database accepted the rows.
    def report_location(self, filename: str) -> str:
        return str(self.settings.reports_dir / filename)

    def report_pending(self, filename: str) -> Path:
        self.settings.reports_dir.mkdir(parents=True, exist_ok=True)
        return _pending_beside(self.settings.reports_dir / filename)

    def place_report(self, session: Session, pending: Path, location: str) -> None:
        os.replace(pending, location)
        fsync_dir(Path(location).parent)

    def report_placed(self, pending: Path, location: str) -> None:
        """After the commit: nothing left to do on a folder."""

    # Rejected inputs: the folder itself is what record_rejection writes to.
    @property
    def rejected(self) -> Path:
        return self.settings.rejected_dir

    def has_rejection(self, job_id: str) -> bool:
        return any(self.settings.rejected_dir.glob(f"{job_id}__*.json"))

    # FHIR outbox.
    def outbox_write(self, name: str, data: bytes) -> str:
        path = self.settings.home / "outbox" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)  # fsync of file and folder before it counts
        return str(path)

    def outbox_exists(self, name: str) -> bool:
        return (self.settings.home / "outbox" / name).exists()


class DatabaseStorage(FilesystemStorage):
    """The blobs table: every host reads what any host wrote; nothing shared on disk."""

    kind = "database"

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        super().__init__(settings, sessions.kw["bind"])
        self.sessions = sessions

    def _put(self, key: str, data: bytes, replace: bool = True) -> str:
        with self.sessions.begin() as s:
            put_blob(s, key, data, replace=replace)
        return db_location(key)

    def archive(self, data: bytes, sha256: str) -> str:
        return self._put(archive_key(sha256), data, replace=False)  # content-addressed

    def delete(self, session: Session, location: str) -> None:
        if is_db_location(location):
            delete_blob(session, key_of(location))
        else:
            super().delete(session, location)

    def report_location(self, filename: str) -> str:
        return db_location(f"reports/{filename}")

    def report_pending(self, filename: str) -> Path:
        spool = self.settings.home / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        return _pending_beside(spool / filename)

    def place_report(self, session: Session, pending: Path, location: str) -> None:
        """In the transaction of the job's result rows: both commit, or neither."""
        put_blob(session, key_of(location), pending.read_bytes())

    def report_placed(self, pending: Path, location: str) -> None:
        """After the commit: the optional export for staff who read files, then the spool."""
        export = self.settings.reports_export_dir
        try:
            if export is not None:
                export.mkdir(parents=True, exist_ok=True)
                target = export / Path(key_of(location)).name
                tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
                shutil.copyfile(pending, tmp)
                os.replace(tmp, target)
        except OSError as exc:  # the stored report counts; the export copy is a courtesy
            log.warning("report not exported to %s (%s)", export, type(exc).__name__)
        finally:
            pending.unlink(missing_ok=True)

    @property
    def rejected(self) -> DatabaseStorage:
        return self

    def rejected_put(self, name: str, data: bytes) -> str:
        return self._put(f"rejected/{name}", data)

    def has_rejection(self, job_id: str) -> bool:
        prefix = f"rejected/{job_id}__"
        return any(k.endswith(".json") for k in blob_index(self.bind, prefix))

    def outbox_write(self, name: str, data: bytes) -> str:
        return self._put(f"outbox/{name}", data)

    def outbox_exists(self, name: str) -> bool:
        return bool(blob_index(self.bind, f"outbox/{name}"))


Storage = FilesystemStorage  # the interface; DatabaseStorage is the other implementation


def storage_for(settings: Settings, sessions: sessionmaker[Session]) -> FilesystemStorage:
    if settings.storage == "database":
        return DatabaseStorage(settings, sessions)
    return FilesystemStorage(settings, sessions.kw.get("bind"))


def _pending_beside(report_path: Path) -> Path:
    """A hidden name beside the report (not ``*.pdf``: readers of the folder skip it)."""
    return report_path.with_name(f".{report_path.name}.{uuid.uuid4().hex}.pending")
