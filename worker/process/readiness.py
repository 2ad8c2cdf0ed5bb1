"""Whether a home is ready for the read-only commands (``status``, ``models list|show|history``,
``metrics``): folder there, database there and at the schema this code needs.

Read-only means it: nothing here creates a folder or a database file or migrates a schema,
so looking at a production home never changes it, and a home that is not set up yet gets
one line that says what to run instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from worker.settings import Settings


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
