"""What ``melanoma-triage status`` shows, and whether a home is ready for the read-only
commands (``status``, ``models list|show|history``, ``metrics``).

Read-only means it: nothing here creates a folder or a database file or migrates a schema,
so looking at a production home never changes it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from schemas import TriageLevel
from worker.db import jobs
from worker.db.engine import make_engine, make_session_factory
from worker.queues import TRIAGE_QUEUE
from worker.settings import Settings
from worker.store.versions import ModelStore


def _head_revision(url: str) -> str | None:
    from alembic.script import ScriptDirectory

    from worker.db.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def _first_line(exc: SQLAlchemyError) -> str:
    """The driver's message without SQLAlchemy's SQL and parameter lines (no patient data)."""
    text = str(getattr(exc, "orig", None) or type(exc).__name__)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def readiness_problem(settings: Settings, database: bool = True) -> str | None:
    """Why a read-only command cannot look at this home yet, in one line; None when it can."""
    from worker.db.migrate import current_revision

    if not settings.home.is_dir():
        return f"home folder {settings.home} does not exist yet: run `melanoma-triage init` or pass --home"
    if not database:
        return None
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        return f"no database at {url.database} yet: run `melanoma-triage init`"
    try:
        revision = current_revision(settings.database_url)
    except SQLAlchemyError as exc:
        return f"cannot read the database: {_first_line(exc)}"
    head = _head_revision(settings.database_url)
    if revision is None:
        return "the database has no schema yet: run `melanoma-triage init`"
    if revision != head:
        return (f"the database schema is at revision {revision}, this version needs {head}: "
                "run `melanoma-triage db upgrade`")
    return None


def queue_depth(settings: Settings, queue: str = TRIAGE_QUEUE) -> int | None:
    """Messages waiting in the broker; None when the broker cannot be reached."""
    from worker.celery_app import create_app  # Celery only for this one figure

    app = create_app(settings)
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            with conn.channel() as channel:
                return channel.queue_declare(queue=queue, passive=True).message_count
    except Exception:
        return None


def collect_status(settings: Settings) -> dict:
    """Job counts, queue depth, triage counts and the current model of one home."""
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
    lines += [f"  {level.value:<13} {info['triage'].get(level.value, 0)}" for level in TriageLevel]
    lines.append(f"Current model version: {info['model_version'] or 'none'}")
    return "\n".join(lines)
