"""What ``melanoma-triage status`` shows."""

from __future__ import annotations

from worker.celery_app import TRIAGE_QUEUE, create_app
from worker.db import jobs
from worker.db.engine import make_engine, make_session_factory
from worker.model_store import ModelStore
from worker.settings import Settings


def queue_depth(settings: Settings, queue: str = TRIAGE_QUEUE) -> int | None:
    """Messages waiting in the broker; None when the broker cannot be reached."""
    app = create_app(settings)
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            with conn.channel() as channel:
                return channel.queue_declare(queue=queue, passive=True).message_count
    except Exception:
        return None


def collect_status(settings: Settings) -> dict:
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as s:
            states = jobs.counts_by_state(s)
            triage = jobs.counts_by_triage(s)
    finally:
        engine.dispose()
    return {
        "jobs": states,
        "queue_depth": queue_depth(settings),
        "triage": triage,
        "model_version": ModelStore(settings.model_store_dir).current_version(),
        "home": str(settings.home),
    }


def format_status(info: dict) -> str:
    lines = ["Jobs by state:"]
    lines += [f"  {state:<10} {n}" for state, n in info["jobs"].items()]
    depth = info["queue_depth"]
    lines.append(f"Queue depth: {depth if depth is not None else 'broker unreachable'}")
    lines.append("Reports by triage level:")
    lines += [f"  {level:<13} {info['triage'].get(level, 0)}"
              for level in ("urgent", "soon", "routine", "indeterminate")]
    lines.append(f"Current model version: {info['model_version'] or 'none'}")
    return "\n".join(lines)
