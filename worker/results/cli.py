"""``melanoma-triage deliveries list|resend``: see where results went, re-send dead letters.

What ``status`` shows of them is :mod:`worker.results.delivery_status`.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Optional

import typer

from worker.cli.options import HomeOption, settings_for
from worker.db import deliveries
from worker.results.delivery_status import delivery_row
from schemas import DeliveryState

app = typer.Typer(help="Results sent to PACS, FHIR and webhooks; re-send dead letters.",
                  pretty_exceptions_show_locals=False, no_args_is_help=True)

def _sessions(settings):
    from worker.db.engine import make_engine, make_session_factory
    from worker.db.migrate import upgrade

    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    return engine, make_session_factory(engine)


@app.command("list")
def list_(
    state: Annotated[str, typer.Option("--state", help="pending, sent, dead or all")] = "all",
    limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
    home: HomeOption = None,
) -> None:
    """One JSON line per delivery, newest first."""
    if state != "all" and state not in {s.value for s in DeliveryState}:
        raise typer.BadParameter("state must be pending, sent, dead or all")
    settings = settings_for(home)
    engine, sessions = _sessions(settings)
    try:
        with sessions() as s:
            rows = deliveries.listing(s, None if state == "all" else DeliveryState(state), limit)
            for r in rows:
                typer.echo(json.dumps(delivery_row(r)))
            if not rows:
                typer.echo("no deliveries" + ("" if state == "all" else f" {state}"), err=True)
    finally:
        engine.dispose()


@app.command()
def resend(
    job_id: Annotated[Optional[str], typer.Argument(help="Re-send this job's dead letters")] = None,
    delivery_id: Annotated[Optional[str], typer.Option("--id", help="Re-send one delivery")] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Re-send every dead letter")] = False,
    home: HomeOption = None,
) -> None:
    """Dead letters back to pending and delivered now (with the usual retries)."""
    from worker.results.delivery import resend as resend_dead

    if sum([job_id is not None, delivery_id is not None, all_dead]) != 1:
        raise typer.BadParameter("give exactly one of JOB_ID, --id or --all-dead")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_for(home)
    engine, sessions = _sessions(settings)
    try:
        results = resend_dead(settings, sessions, job_id=job_id, delivery_id=delivery_id)
    finally:
        engine.dispose()
    if not results:
        typer.echo("no dead letters matched")
    for jid, outs in results.items():
        for o in outs:
            typer.echo(json.dumps({"job_id": jid, "id": o.delivery_id, "kind": o.kind,
                                   "destination": o.destination, "state": o.state,
                                   "attempts": o.attempts, "last_error": o.last_error}))
    if any(o.state != DeliveryState.SENT.value for outs in results.values() for o in outs):
        raise typer.Exit(1)
