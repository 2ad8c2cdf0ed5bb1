"""Recording a rejected or failed job: the database row, then the rejected/ folder.

rejected/ holds the file itself plus a JSON sidecar that says why, so whoever dropped
the file sees the answer next to it. Every rejection and failure, at the door or in the
worker, is recorded through :func:`record_rejection`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path
from types import EllipsisType
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from schemas import JobState, RejectionReason
from worker.db import jobs
from worker.db.models import Job
from worker.durable import write_atomic
from worker.intake.names import safe_filename
from worker.storage.blobs import read_location


def record_rejection(
    sessions: sessionmaker[Session],
    rejected_dir: Path | RejectedBlobs,
    job_id: str,
    code: RejectionReason,
    reason: str,
    *,
    state: JobState = JobState.REJECTED,
    data: bytes | None = None,
    source: Path | None = None,
    original_name: str | None | EllipsisType = ...,
) -> Path | str:
    """Finish the job as rejected (or failed) and put the file and its sidecar in rejected/.

    A job that is already finished keeps its state (the door records a rejected job in
    its admission transaction; a redelivered task finds the job done). The file is
    ``data``, or ``source`` moved, or else the archived copy. ``original_name`` is the name
    this arrival came with (a duplicate's own); by default the job's first arrival's.
    """
    code = RejectionReason(code)
    with sessions.begin() as s:
        if state == JobState.FAILED:
            jobs.fail(s, job_id, code, reason)
        else:
            jobs.reject(s, job_id, code, reason)
        image = s.get(Job, job_id).image
        sha256, archived = image.sha256, image.archive_path
        if original_name is ...:
            original_name = jobs.original_name(s, job_id)
    if data is None and source is None and archived:
        data = read_location(archived, sessions.kw.get("bind"))
    if not isinstance(rejected_dir, Path):  # TRIAGE_STORAGE=database: kept as blobs
        return _write_to_blobs(rejected_dir, job_id, original_name, code, reason, data=data,
                               source=source, sha256=sha256, state=state.value)
    return _write_to_folder(rejected_dir, job_id, original_name, code, reason, data=data,
                            source=source, sha256=sha256, state=state.value)


def _write_to_folder(
    rejected_dir: Path,
    job_id: str,
    original_name: str | None,
    code: RejectionReason,
    reason: str,
    data: bytes | None = None,
    source: Path | None = None,
    sha256: str | None = None,
    state: str = JobState.REJECTED.value,
) -> Path:
    """Put the file (bytes, or moved from ``source``) into rejected/ with ``<name>.json`` beside it."""
    rejected_dir.mkdir(parents=True, exist_ok=True)
    target = rejected_dir / f"{job_id}__{safe_filename(original_name, fallback='unnamed')}"
    kept = True
    if source is not None:
        kept = _move(source, target)
    elif data is not None:
        write_atomic(target, data)
    stored = target.name if (kept and (source is not None or data is not None)) else None
    sidecar_path = target.with_name(target.name + ".json")
    write_atomic(sidecar_path, _sidecar(job_id, state, code, reason, original_name, sha256, stored))
    return sidecar_path


class RejectedBlobs(Protocol):
    def rejected_put(self, name: str, data: bytes) -> str: ...


def _sidecar(job_id, state, code, reason, original_name, sha256, file: str | None) -> bytes:
    return json.dumps({
        "job_id": job_id,
        "state": state,
        "code": RejectionReason(code).value,
        "reason": reason,
        "original_name": original_name,
        "sha256": sha256,
        "file": file,
        "rejected_at": datetime.now(timezone.utc).isoformat(),
    }, indent=2).encode()


def _write_to_blobs(store: RejectedBlobs, job_id: str, original_name: str | None,
                    code: RejectionReason, reason: str, data: bytes | None = None,
                    source: Path | None = None, sha256: str | None = None,
                    state: str = JobState.REJECTED.value) -> str:
    """As :func:`_write_to_folder`, into the database (``rejected/<job>__<name>`` + ``.json``);
    a moved ``source`` that is a regular file is read in, then removed from the intake."""
    name = f"{job_id}__{safe_filename(original_name, fallback='unnamed')}"
    if source is not None:
        try:
            if stat.S_ISREG(os.lstat(source).st_mode):
                data = Path(source).read_bytes()
            os.unlink(source)
        except FileNotFoundError:
            pass
    if data is not None:
        store.rejected_put(name, data)
    sidecar = _sidecar(job_id, state, code, reason, original_name, sha256,
                       name if data is not None else None)
    return store.rejected_put(name + ".json", sidecar)


def _move(source: Path, target: Path) -> bool:
    """Rename ``source`` (any kind of entry: a FIFO is never opened) to ``target``.

    Across file systems a regular file is copied, then removed; anything else (a FIFO, a
    socket, a symbolic link) is only removed: it holds no content. A source already gone
    (moved by an earlier try) is fine. Returns whether ``target`` holds the entry.
    """
    try:
        os.replace(source, target)
        return True
    except FileNotFoundError:
        return os.path.lexists(target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    if stat.S_ISREG(os.lstat(source).st_mode):
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        os.unlink(source)
        return True
    os.unlink(source)
    return False


def describe_exception(exc: BaseException) -> str:
    """What an unexpected failure is recorded as (``jobs.error``, sidecar, log): its type and
    a generic sentence, never its text, which may carry patient data (SQL parameters,
    DETAIL lines of PostgreSQL, file names, tag values)."""
    return (f"unexpected {type(exc).__name__} while processing this image "
            "(its message is not recorded: it may contain patient data)")
