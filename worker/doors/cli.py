"""Commands of the network doors: ``serve``, ``receive-dicom`` and ``tokens``."""

from __future__ import annotations

import logging
import signal
import threading
from enum import Enum
from typing import Annotated

import typer

from worker.cli.options import HomeOption, JsonOption, ready_settings, settings_for
from worker.cli.output import emit_json, fail, note

tokens_app = typer.Typer(help="Bearer tokens of the HTTP API (stored hashed).",
                         pretty_exceptions_show_locals=False, no_args_is_help=True)
NameArgument = Annotated[str, typer.Argument(help="Who the token is for, e.g. the calling system")]


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _migrated(home):
    """Settings with folders and schema in place (both idempotent)."""
    from worker.db.migrate import upgrade

    settings = settings_for(home)
    settings.ensure_folders()
    upgrade(settings.database_url)
    return settings


def _sessions(settings):
    from worker.db.engine import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    return engine, make_session_factory(engine)


def serve(home: HomeOption = None) -> None:
    """Run only the HTTP API on TRIAGE_HTTP_PORT (default 8080; production: one container)."""
    from worker.doors.http_api import run_http

    _logging()
    raise typer.Exit(run_http(_migrated(home)))


def receive_dicom(home: HomeOption = None) -> None:
    """Run only the DICOM receiver on TRIAGE_DICOM_PORT (default 11112; production: one container)."""
    from worker.messaging.celery_app import create_app, process_sender
    from worker.doors.dicom_receiver import start_dicom_receiver
    from worker.intake.admission import open_intake

    _logging()
    settings = _migrated(home)
    intake = open_intake(settings, process_sender(create_app(settings)))
    receiver = start_dicom_receiver(settings, intake)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        receiver.shutdown()
        intake.close()


class ScopeChoice(str, Enum):
    submit = "submit"
    read = "read"
    admin = "admin"


@tokens_app.command("create")
def tokens_create(
    name: NameArgument,
    scope: Annotated[ScopeChoice, typer.Option(
        "--scope", help="submit: submit images and read only its own jobs; read: read every "
        "job; admin: both")] = ScopeChoice.submit,
    home: HomeOption = None,
) -> None:
    """Create a token; it is printed once, alone on the last line, and never shown again."""
    from worker.doors.tokens import TokenError, create_token

    settings = _migrated(home)
    engine, sessions = _sessions(settings)
    try:
        token = create_token(sessions, name, scope.value)
    except TokenError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    note(f"{scope.value} token for {name!r} (send it as 'Authorization: Bearer <token>'; "
         "it is not shown again):")
    typer.echo(token)


@tokens_app.command("revoke")
def tokens_revoke(name: NameArgument, home: HomeOption = None) -> None:
    """Revoke a token at once; requests that carry it get 401."""
    from worker.doors.tokens import TokenError, revoke_token

    settings = ready_settings(home)
    engine, sessions = _sessions(settings)
    try:
        revoke_token(sessions, name)
    except TokenError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    typer.echo(f"revoked {name}")


@tokens_app.command("list")
def tokens_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Token names with when they were created and revoked (never the tokens)."""
    from worker.doors.tokens import list_tokens

    settings = ready_settings(home)
    engine, sessions = _sessions(settings)
    try:
        tokens = list_tokens(sessions)
    finally:
        engine.dispose()
    if as_json:
        emit_json([{"name": t.name, "scope": t.scope.value, "created_at": t.created_at,
                    "revoked_at": t.revoked_at, "active": t.active} for t in tokens])
        return
    if not tokens:
        typer.echo("no tokens")
    for t in tokens:
        state = "active" if t.active else f"revoked {t.revoked_at:%Y-%m-%d %H:%M}"
        typer.echo(f"{t.name:<32} {t.scope.value:<6} created {t.created_at:%Y-%m-%d %H:%M}  {state}")


def register(app: typer.Typer) -> None:
    """Add the network-door commands to ``app``."""
    app.command("serve")(serve)
    app.command("receive-dicom")(receive_dicom)
    app.add_typer(tokens_app, name="tokens")

