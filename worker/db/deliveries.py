"""The ``deliveries`` table: one row per (job, kind, destination) a result goes to, with its
state (pending -> sent | dead), attempts and last error. It is what makes sending
idempotent (a sent row is never sent again) and what ``status`` shows as dead letters.

Kept apart from ``worker.db.models`` on the same declarative ``Base``; ``last_error``
never holds patient data (see :mod:`worker.results.errors`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from schemas import DeliveryKind, DeliveryState
from worker.db.models import Base, new_id, utcnow

#: Longest stored error message (the column is TEXT; this keeps ``status`` readable).
MAX_ERROR_CHARS = 500


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("job_id", "kind", "destination", name="uq_deliveries_job_kind_destination"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    # AE@host:port, or a URL without credentials or query.
    destination: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]


def ensure(session: Session, job_id: str, kind: DeliveryKind, destination: str) -> Delivery:
    """The row for this (job, kind, destination), created pending if it is new."""
    row = session.execute(
        select(Delivery).where(Delivery.job_id == job_id, Delivery.kind == kind.value,
                               Delivery.destination == destination)
    ).scalar_one_or_none()
    if row is None:
        row = Delivery(job_id=job_id, kind=kind.value, destination=destination,
                       state=DeliveryState.PENDING.value, attempts=0)
        session.add(row)
        session.flush()
    return row


def start_attempt(session: Session, delivery_id: str) -> int | None:
    """Count one attempt before it is made (a crash mid-send still counts); None if not pending."""
    row = session.execute(
        select(Delivery).where(Delivery.id == delivery_id).with_for_update()
    ).scalar_one_or_none()
    if row is None or row.state != DeliveryState.PENDING.value:
        return None
    row.attempts += 1
    row.last_attempt_at = row.updated_at = utcnow()
    return row.attempts


def mark_sent(session: Session, delivery_id: str) -> None:
    now = utcnow()
    session.execute(
        update(Delivery).where(Delivery.id == delivery_id)
        .values(state=DeliveryState.SENT.value, last_error=None, sent_at=now, updated_at=now)
    )


def record_failure(session: Session, delivery_id: str, error: str, dead: bool) -> None:
    values = {"last_error": error[:MAX_ERROR_CHARS], "updated_at": utcnow()}
    if dead:
        values["state"] = DeliveryState.DEAD.value
    session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))


def for_job(session: Session, job_id: str) -> list[Delivery]:
    return list(session.execute(
        select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.kind, Delivery.destination)
    ).scalars())


def listing(session: Session, state: DeliveryState | None = None, limit: int = 100) -> list[Delivery]:
    """Newest first; one state or all."""
    query = select(Delivery).order_by(Delivery.updated_at.desc()).limit(limit)
    if state is not None:
        query = query.where(Delivery.state == state.value)
    return list(session.execute(query).scalars())


def counts_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
    counts = {state.value: 0 for state in DeliveryState}
    counts.update({state: n for state, n in rows})
    return counts


def reopen(session: Session, job_id: str | None = None, delivery_id: str | None = None) -> list[str]:
    """Dead rows back to pending with a fresh attempt budget; returns their job ids."""
    query = select(Delivery).where(Delivery.state == DeliveryState.DEAD.value)
    if job_id is not None:
        query = query.where(Delivery.job_id == job_id)
    if delivery_id is not None:
        query = query.where(Delivery.id == delivery_id)
    rows = list(session.execute(query.with_for_update()).scalars())
    for row in rows:
        row.state = DeliveryState.PENDING.value
        row.attempts = 0
        row.updated_at = utcnow()
    return sorted({row.job_id for row in rows})
