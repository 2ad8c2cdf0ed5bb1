"""What ``melanoma-triage status`` shows.

Read-only: nothing here creates a folder or a database file or migrates a schema (the
command checks :func:`worker.process.readiness.readiness_problem` first).
"""

from __future__ import annotations

from schemas import TriageLevel
from worker.db import jobs
from worker.db.engine import make_engine, make_session_factory
from worker.monitor.shift import format_lines, status_summary
from worker.messaging.queues import TRIAGE_QUEUE
from worker.results.delivery_status import delivery_status, format_delivery_status
from worker.settings import Settings
from worker.store.versions import ModelStore


def queue_depth(settings: Settings, queue: str = TRIAGE_QUEUE) -> int | None:
    """Messages waiting in the broker; None when the broker cannot be reached."""
    from worker.messaging.celery_app import create_app  # Celery only for this one figure

    app = create_app(settings)
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            with conn.channel() as channel:
                return channel.queue_declare(queue=queue, passive=True).message_count
    except Exception:
        return None


def collect_status(settings: Settings) -> dict:
    """Job counts, queue depth, triage counts, the current model and each role's health."""
    from worker.process.liveness import role_verdicts

    engine = make_engine(settings.database_url)
    try:
        sessions = make_session_factory(engine)
        with sessions() as s:
            states = jobs.counts_by_state(s)
            triage = jobs.counts_by_triage(s)
            delivered = delivery_status(s)  # counts by state and the newest dead letters
        roles = {role: v.as_dict() for role, v in role_verdicts(settings, sessions).items()}
    finally:
        engine.dispose()
    return {
        "jobs": states,
        "queue_depth": queue_depth(settings),
        "triage": triage,
        "model_version": ModelStore(settings.model_store_dir).current_version(),
        "home": str(settings.home),
        "roles": roles,
        "shift": status_summary(settings.database_url, settings.model_store_dir),
        **delivered,
    }


def format_status(info: dict) -> str:
    lines = ["Jobs by state:"]
    lines += [f"  {state:<10} {n}" for state, n in info["jobs"].items()]
    depth = info["queue_depth"]
    lines.append(f"Queue depth: {depth if depth is not None else 'broker unreachable'}")
    lines.append("Reports by triage level:")
    lines += [f"  {level.value:<13} {info['triage'].get(level.value, 0)}" for level in TriageLevel]
    lines.append(f"Current model version: {info['model_version'] or 'none'}")
    lines.append("Roles (as melanoma-triage run last saw them):" if info["roles"]
                 else "Roles: none recorded (melanoma-triage run has not run on this home)")
    for role, health in info["roles"].items():
        restarts = f", {health['restarts']} restart(s)" if health["restarts"] else ""
        lines.append(f"  {role:<12} {'up' if health['ok'] else 'DOWN':<5} {health['detail']}{restarts}")
    lines.append(format_delivery_status(info))
    lines += format_lines(info["shift"])
    return "\n".join(lines)
