"""Archived inputs are not kept for ever: with ``TRIAGE_RETENTION_DAYS`` set, an image received
longer ago than that is purged once its job has ended (done, rejected or failed) and, for a
done job, every delivery of its results was sent. Its archived bytes (file or blob) and the
copy of a rejected input go; the rows, the report, the sidecar and the SHA-256 stay, and an
``archive_purges`` row records each purge. An image retraining's locked evaluation set needs
is never purged: one assigned ``eval`` in the store's assignments, or a confirmed case (ground
truth recorded) that the set will lock for evaluation when it first sees it.

Beat runs :func:`purge_expired` once an hour; ``melanoma-triage retention purge`` runs it now.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, sessionmaker

from schemas import DeliveryState, JobState
from worker.db.deliveries import Delivery
from worker.db.models import ArchivePurge, GroundTruth, Image, Job
from worker.retrain.locked_set import EVAL, LockedSet, bucket
from worker.settings import Settings
from worker.storage.backends import storage_for
from worker.storage.blobs import blob_index, delete_blob, is_db_location

log = logging.getLogger(__name__)

ENDED = (JobState.DONE.value, JobState.REJECTED.value, JobState.FAILED.value)
BATCH = 200


@dataclass(frozen=True)
class PurgeResult:
    purged: int
    kept_for_evaluation: int


def _protected(settings: Settings, session: Session, shas: list[str]) -> set[str]:
    """SHA-256s the locked evaluation set holds or will hold (see the module docstring)."""
    locked = LockedSet(settings.model_store_dir, settings.retrain_eval_fraction)
    roles = dict(zip(locked.table["sha256"], locked.table["role"]))
    confirmed = set(session.execute(
        select(Image.sha256).join(GroundTruth, GroundTruth.image_id == Image.id)
        .where(Image.sha256.in_(shas))).scalars())
    return {sha for sha in shas
            if roles.get(sha) == EVAL
            or (sha in confirmed and f"confirmed:{sha}" not in set(locked.table["key"])
                and bucket(f"confirmed:{sha}") < settings.retrain_eval_fraction)}


def _candidates(session: Session, before: datetime, seen: set[str]) -> list[tuple[str, str | None, str, str]]:
    """(image id, sha256, location, job id) of ended jobs' archived inputs older than ``before``."""
    undelivered = exists().where(Delivery.job_id == Job.id,
                                 Delivery.state != DeliveryState.SENT.value)
    return list(session.execute(
        select(Image.id, Image.sha256, Image.archive_path, Job.id)
        .join(Job, Job.image_id == Image.id)
        .where(Image.archive_path.is_not(None), Image.received_at < before,
               Job.state.in_(ENDED), ~undelivered, Image.id.not_in(seen))
        .order_by(Image.received_at).limit(BATCH)).tuples())


def purge_expired(settings: Settings, sessions: sessionmaker[Session],
                  now: datetime | None = None) -> PurgeResult:
    """Purge what retention allows (nothing when ``retention_days`` is unset)."""
    if settings.retention_days is None:
        return PurgeResult(0, 0)
    before = (now or datetime.now(timezone.utc)) - timedelta(days=settings.retention_days)
    storage = storage_for(settings, sessions)
    purged, kept, seen = 0, 0, set()
    while True:
        with sessions() as s:
            rows = _candidates(s, before, seen)
            protected = _protected(settings, s, [r[1] for r in rows if r[1]])
        if not rows:
            break
        for image_id, sha, location, job_id in rows:
            seen.add(image_id)
            if sha in protected:
                kept += 1
                continue
            _purge_one(settings, sessions, storage, image_id, sha, location, job_id)
            purged += 1
    if purged or kept:
        log.info("retention: %d archived input(s) purged, %d kept for the locked evaluation set",
                 purged, kept)
    return PurgeResult(purged, kept)


def _purge_one(settings, sessions, storage, image_id: str, sha: str | None, location: str,
               job_id: str) -> None:
    """The record and the location cleared in one transaction (with the blob, on database
    storage); a file goes after the commit, so a crash leaves an orphan file, never a row
    that points at nothing."""
    with sessions.begin() as s:
        s.add(ArchivePurge(image_id=image_id, sha256=sha, location=location,
                           retention_days=settings.retention_days))
        s.get(Image, image_id).archive_path = None
        if is_db_location(location):
            storage.delete(s, location)
        for key in blob_index(s, f"rejected/{job_id}__"):
            if not key.endswith(".json"):
                delete_blob(s, key)
    if not is_db_location(location):
        Path(location).unlink(missing_ok=True)
    if settings.rejected_dir.is_dir():
        for copy in settings.rejected_dir.glob(f"{job_id}__*"):
            if not copy.name.endswith(".json"):
                copy.unlink(missing_ok=True)
