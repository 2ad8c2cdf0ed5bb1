"""Typed SQLAlchemy tables. The same schema on SQLite and PostgreSQL (see migrations/).

The jobs table is the source of truth for every image that entered: a broker may lose
messages, this table does not.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict: JSON}


class Image(Base):
    """One distinct image content (by SHA-256), with the identifiers read from it or sent with it."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # NULL only for a file that could not be read at all (recorded as rejected).
    sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    archive_path: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    source_door: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    source_format: Mapped[str | None] = mapped_column(String(16))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax: Mapped[str | None] = mapped_column(String(64))
    photometric: Mapped[str | None] = mapped_column(String(32))
    # Metadata sent by the caller; it wins over the file's own tags.
    caller_metadata: Mapped[dict] = mapped_column(default=dict)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(200))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[date | None] = mapped_column(Date)
    body_site: Mapped[str | None] = mapped_column(String(128))
    laterality: Mapped[str | None] = mapped_column(String(4))

    job: Mapped[Job] = relationship(back_populates="image", uselist=False)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # The running attempt's lease, renewed by its heartbeat: once past, its worker is taken
    # for dead and the reconciler sends the job again (worker.jobs.heartbeat, worker.jobs.reconciler).
    lease_expires_at: Mapped[datetime | None]
    # Every message sent for this job: the reconciler re-sends at most once per stale period.
    last_sent_at: Mapped[datetime | None]
    sent_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    image: Mapped[Image] = relationship(back_populates="job")
    predictions: Mapped[list[Prediction]] = relationship(back_populates="job")
    report: Mapped[Report | None] = relationship(back_populates="job", uselist=False)


class Submission(Base):
    """Every arrival of a file, by any door; a repeated content is recorded as a duplicate."""

    __tablename__ = "submissions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    door: Mapped[str] = mapped_column(String(16))
    original_name: Mapped[str | None] = mapped_column(Text)
    caller_metadata: Mapped[dict] = mapped_column(default=dict)
    duplicate: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Prediction(Base):
    __tablename__ = "predictions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    p_actinic_keratosis: Mapped[float] = mapped_column(Float)
    p_basal_cell_carcinoma: Mapped[float] = mapped_column(Float)
    p_dermatofibroma: Mapped[float] = mapped_column(Float)
    p_melanoma: Mapped[float] = mapped_column(Float)
    p_nevus: Mapped[float] = mapped_column(Float)
    p_pigmented_benign_keratosis: Mapped[float] = mapped_column(Float)
    p_seborrheic_keratosis: Mapped[float] = mapped_column(Float)
    p_squamous_cell_carcinoma: Mapped[float] = mapped_column(Float)
    p_vascular_lesion: Mapped[float] = mapped_column(Float)
    predicted_class: Mapped[str] = mapped_column(String(32))
    triage_level: Mapped[str] = mapped_column(String(16), index=True)
    image_usable: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="predictions")

    def probabilities(self) -> dict[str, float]:
        from schemas import CLASS_NAMES

        return {name: getattr(self, f"p_{name}") for name in CLASS_NAMES}


class Report(Base):
    __tablename__ = "reports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="report")


class ModelEvent(Base):
    """Every change of the model in service: who, what, why."""

    __tablename__ = "model_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    action: Mapped[str] = mapped_column(String(16))  # a schemas.ModelAction value
    version: Mapped[str] = mapped_column(String(64))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class GroundTruth(Base):
    """A confirmed diagnosis that came back (pathology, clinic or consensus)."""

    __tablename__ = "ground_truth"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    diagnosis: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16))  # a schemas.TruthSource value
    recorded_by: Mapped[str] = mapped_column(String(128))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class RetrainRun(Base):
    """One retraining attempt and the gate's decision with its reasons."""

    __tablename__ = "retrain_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    trigger: Mapped[str] = mapped_column(String(16))  # schedule | manual
    state: Mapped[str] = mapped_column(String(16), index=True)  # a schemas.RetrainState value
    champion_version: Mapped[str | None] = mapped_column(String(64))
    challenger_version: Mapped[str | None] = mapped_column(String(64))
    decision: Mapped[dict] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Lock(Base):
    """A named lease held in the database, safe across machines (see worker.db.lease)."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class TaskClaim(Base):
    """A task message already run, by its Celery task id: a redelivered message (broker
    visibility timeout, a resend) finds its claim and does nothing (worker.db.task_claims)."""

    __tablename__ = "task_claims"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Blob(Base):
    """A stored file under ``TRIAGE_STORAGE=database`` (worker.storage): archived images, report
    PDFs, rejected inputs, FHIR outbox bundles and model store files, by key
    (``archive/ab/cd/<sha256>``, ``reports/<name>.pdf``, ...), so hosts share no folder."""

    __tablename__ = "blobs"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ArchivePurge(Base):
    """An archived input removed by retention (``TRIAGE_RETENTION_DAYS``): which, when, why."""

    __tablename__ = "archive_purges"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    sha256: Mapped[str | None] = mapped_column(String(64))
    location: Mapped[str] = mapped_column(Text)
    retention_days: Mapped[int] = mapped_column(Integer)
    purged_at: Mapped[datetime] = mapped_column(default=utcnow)
