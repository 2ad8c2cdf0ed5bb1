"""``melanoma-triage users create|list|disable|reset-password`` and ``audit list``.

A generated password is printed once, alone on the last line of stdout (like ``tokens
create``), and must be changed at the first sign-in. Passwords never reach a log.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta, timezone
from typing import Annotated, Optional

import typer

from worker.cli.options import HomeOption, JsonOption, ready_settings, settings_for
from worker.cli.output import emit_json, fail, note
from worker.workspace.users import Role

users_app = typer.Typer(help="People who sign in to the clinician workspace (/ui/ of the HTTP API).",
                        pretty_exceptions_show_locals=False, no_args_is_help=True)
audit_app = typer.Typer(help="The workspace's audit trail: sign-ins, job views, reviews, diagnoses.",
                        pretty_exceptions_show_locals=False, no_args_is_help=True)
NameArgument = Annotated[str, typer.Argument(help="The user's sign-in name")]
_RELATIVE = re.compile(r"^(\d+)([mhd])$")


class _Database:
    """Settings and a session factory; ``write`` prepares the schema (idempotent) first."""

    def __init__(self, home, write: bool) -> None:
        from worker.db.engine import make_engine, make_session_factory

        if write:
            from worker.db.migrate import upgrade

            self.settings = settings_for(home)
            self.settings.ensure_folders()
            upgrade(self.settings.database_url)
        else:
            self.settings = ready_settings(home)
        self.engine = make_engine(self.settings.database_url)
        self.sessions = make_session_factory(self.engine)

    def __enter__(self) -> _Database:
        return self

    def __exit__(self, *exc) -> None:
        self.engine.dispose()


def _audit_cli(sessions, action, target: str, **detail) -> None:
    from worker.store.admin import actor_name
    from worker.workspace import audit

    with sessions.begin() as s:
        audit.record(s, action, actor_name(None), target=target, via="command line", **detail)


@users_app.command("create")
def users_create(
    name: NameArgument,
    role: Annotated[Role, typer.Option("--role", case_sensitive=False, help="viewer, clinician or admin")],
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from stdin (no forced change at first sign-in)")] = False,
    home: HomeOption = None,
) -> None:
    """Add a user. Without --password-stdin a generated password is printed as the last line
    of stdout; it must be changed at the first sign-in."""
    from worker.workspace.audit import AuditAction
    from worker.workspace.users import UserError, create_user

    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    with _Database(home, write=True) as db:
        try:
            generated = create_user(db.sessions, name, role, password)
        except UserError as exc:
            fail(str(exc))
        _audit_cli(db.sessions, AuditAction.USER_CREATED, name, role=role.value)
    typer.echo(f"created {name} ({role.value})")
    if generated is not None:
        note("initial password (shown once; it must be changed at the first sign-in):")
        typer.echo(generated)


@users_app.command("list")
def users_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Users with their role and state (never a password or its hash; read-only)."""
    from worker.workspace.users import list_users

    with _Database(home, write=False) as db:
        users = list_users(db.sessions)
    if as_json:
        emit_json([{"name": u.name, "role": u.role.value, "active": u.active,
                    "must_change_password": u.must_change_password, "created_at": u.created_at,
                    "disabled_at": u.disabled_at} for u in users])
        return
    if not users:
        typer.echo("no users")
    for u in users:
        state = "active" if u.active else f"disabled {u.disabled_at:%Y-%m-%d %H:%M}"
        due = "  (password change due)" if u.must_change_password and u.active else ""
        typer.echo(f"{u.name:<32} {u.role.value:<10} {state}{due}")


@users_app.command("disable")
def users_disable(name: NameArgument, home: HomeOption = None) -> None:
    """The user can no longer sign in; their open sessions end at once."""
    from worker.workspace.audit import AuditAction
    from worker.workspace.users import UserError, disable_user

    with _Database(home, write=True) as db:
        try:
            disable_user(db.sessions, name)
        except UserError as exc:
            fail(str(exc))
        _audit_cli(db.sessions, AuditAction.USER_DISABLED, name)
    typer.echo(f"disabled {name}")


@users_app.command("reset-password")
def users_reset_password(name: NameArgument, home: HomeOption = None) -> None:
    """A new generated password, printed as the last line of stdout; changed at the next sign-in."""
    from worker.workspace.audit import AuditAction
    from worker.workspace.users import UserError, reset_password

    with _Database(home, write=True) as db:
        try:
            password = reset_password(db.sessions, name)
        except UserError as exc:
            fail(str(exc))
        _audit_cli(db.sessions, AuditAction.PASSWORD_RESET, name)
    note(f"new password for {name} (shown once; it must be changed at the next sign-in):")
    typer.echo(password)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO date or time (UTC when it names no zone), or a span back from now: 30m, 12h, 7d."""
    now = now or datetime.now(timezone.utc)
    match = _RELATIVE.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now - timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: amount})
    try:
        ts = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter("give an ISO date or time (2026-12-01, 2026-12-01T08:00) or 30m, 12h, 7d") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


@audit_app.command("list")
def audit_list(
    user: Annotated[Optional[str], typer.Option("--user", help="Only this user's events")] = None,
    job: Annotated[Optional[str], typer.Option("--job", help="Only events about this job id")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="ISO date/time, or 30m, 12h, 7d")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="The newest this many")] = 1000,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Who signed in, opened a job, reviewed or recorded a diagnosis, and when (read-only)."""
    from worker.workspace.audit import list_events

    start = parse_since(since) if since else None
    with _Database(home, write=False) as db:
        events = list_events(db.sessions, user=user, job=job, since=start, limit=limit)
    if as_json:
        emit_json(events)
        return
    if not events:
        typer.echo("no audit events")
    for e in events:
        detail = " ".join(f"{k}={v}" for k, v in e["detail"].items())
        typer.echo(f"{e['at'][:19]}  {e['user'] or '-':<20} {e['action']:<17} {e['job_id'] or '-':<32} "
                   f"{e['client'] or '-':<15} {detail}".rstrip())
    if len(events) == limit:
        note(f"(the newest {limit} events; --limit for more)")


def register(app: typer.Typer) -> None:
    """Add ``users`` and ``audit`` to ``app``."""
    app.add_typer(users_app, name="users")
    app.add_typer(audit_app, name="audit")
