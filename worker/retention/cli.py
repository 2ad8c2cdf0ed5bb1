"""``melanoma-triage retention purge``: what beat does hourly, now (``worker.retention.purge``)."""

from __future__ import annotations

import typer

from worker.cli.options import HomeOption, JsonOption, ready_settings
from worker.cli.output import emit_json

app = typer.Typer(help="Retention of archived patient images (TRIAGE_RETENTION_DAYS).",
                  pretty_exceptions_show_locals=False, no_args_is_help=True)


@app.command("purge")
def purge(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Purge archived inputs older than TRIAGE_RETENTION_DAYS whose job ended and whose results
    were delivered (each purge recorded; the locked evaluation set is kept)."""
    from worker.db.engine import make_engine, make_session_factory
    from worker.retention.purge import purge_expired

    settings = ready_settings(home)
    engine = make_engine(settings.database_url)
    try:
        result = purge_expired(settings, make_session_factory(engine))
    finally:
        engine.dispose()
    if as_json:
        emit_json({"retention_days": settings.retention_days, "purged": result.purged,
                   "kept_for_evaluation": result.kept_for_evaluation})
    elif settings.retention_days is None:
        typer.echo("TRIAGE_RETENTION_DAYS is not set: archived inputs are kept")
    else:
        typer.echo(f"purged {result.purged} archived input(s) older than {settings.retention_days} "
                   f"day(s); kept {result.kept_for_evaluation} for the locked evaluation set")
