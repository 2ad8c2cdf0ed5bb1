"""Tables of the network doors (worker/doors): DICOM instances received, API tokens,
idempotency keys.

Kept apart from ``worker.db.models`` but on the same declarative ``Base``, so the
migrations and ``Base.metadata`` see one schema. ``worker.db`` imports this module, so
the tables are registered whenever any table is.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from worker.db.models import Base, Image, new_id, utcnow

#: A re-sent instance is looked up by its SOP Instance UID, also among processed images.
Index("ix_images_sop_instance_uid", Image.sop_instance_uid)


class DicomInstance(Base):
    """SOP Instance UID -> job, written when the receiver admits an instance.

    ``images.sop_instance_uid`` is filled only once the worker has decoded the file, so a
    re-send that arrives before then is found here; a re-send is the same job even when
    its bytes differ (another transfer syntax, coerced tags).
    """

    __tablename__ = "dicom_instances"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The rejected job this UID was first recorded against, when a later complete instance
    #: with the same UID became this (new) job (migration 0006).
    previous_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))


class ApiToken(Base):
    """A bearer token of the HTTP API; only its SHA-256 is kept."""

    __tablename__ = "api_tokens"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    #: submit | read | admin (``worker.doors.tokens.Scope``); tokens made before scopes: admin.
    scope: Mapped[str] = mapped_column(String(16), default="submit", server_default="admin")


class JobOwner(Base):
    """Which token submitted a job over HTTP: a ``submit`` token reads only these jobs."""

    __tablename__ = "job_owners"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    token_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """The job a client's ``Idempotency-Key`` first produced, with the request's fingerprint."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("token_name", "key", name="uq_idempotency_keys_token_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    token_name: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
