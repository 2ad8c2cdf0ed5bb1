"""What ``melanoma-triage status`` and ``deliveries list`` show of the deliveries: counts by
state and the newest dead letters. Plain reads (no migration, no Celery), no patient data:
ids, kinds, destinations and error texts (see :mod:`worker.results.errors`)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from schemas import DeliveryState
from worker.db import deliveries
from worker.db.deliveries import Delivery

#: Dead letters listed by ``status`` (newest first).
STATUS_DEAD_LIMIT = 10


def delivery_row(r: Delivery) -> dict:
    """One delivery as JSON-ready fields."""
    return {"id": r.id, "job_id": r.job_id, "kind": r.kind, "destination": r.destination,
            "state": r.state, "attempts": r.attempts, "last_error": r.last_error,
            "updated_at": r.updated_at.isoformat() if r.updated_at else None}


def delivery_status(session: Session) -> dict:
    """Counts by state and the newest dead letters."""
    dead = deliveries.listing(session, DeliveryState.DEAD, limit=STATUS_DEAD_LIMIT)
    return {
        "deliveries": deliveries.counts_by_state(session),
        "dead_letters": [delivery_row(r) for r in dead],
    }


def format_delivery_status(info: dict) -> str:
    lines = ["Deliveries by state:"]
    lines += [f"  {state:<10} {n}" for state, n in info["deliveries"].items()]
    if info["dead_letters"]:
        lines.append("Dead letters (newest first; `melanoma-triage deliveries resend` retries):")
        lines += [f"  {d['id']} job {d['job_id']} {d['kind']} -> {d['destination']}: "
                  f"{d['last_error'] or 'no error recorded'}" for d in info["dead_letters"]]
    return "\n".join(lines)
