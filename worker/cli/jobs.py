"""``melanoma-triage jobs list|show``: find a job by state, triage, time or the name its file
came with, and see it whole (read-only: nothing is created or migrated)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Optional

import typer

from schemas import JobState, TriageLevel
from worker.cli.options import HomeOption, JsonOption, ready_settings
from worker.cli.output import ExitCode, emit_json, fail

app = typer.Typer(help="Find jobs (by state, triage, time or original file name) and show one.",
                  pretty_exceptions_show_locals=False, no_args_is_help=True)

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``1d``, ``1w`` ago, or an ISO date or time (UTC unless it says)."""
    now = now or datetime.now(timezone.utc)
    found = _RELATIVE.match(text.strip().lower())
    if found:
        return now - timedelta(seconds=float(found.group(1)) * _UNIT_S[found.group(2)])
    try:
        ts = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter("give a duration (30m, 2h, 1d, 1w) or an ISO date or time "
                                 "(2026-12-05, 2026-12-05T09:00)") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _sessions(home):
    from worker.db.engine import make_engine, make_session_factory

    settings = ready_settings(home)
    engine = make_engine(settings.database_url)
    return engine, make_session_factory(engine)


def _percent(p: float | None) -> str:
    return "-" if p is None else f"{100 * p:.1f}%"


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'JOB':<32}  {'STATE':<9} {'TRIAGE':<13} {'CLASS CALL':<27} {'P(MEL)':>6}  "
             f"{'RECEIVED (UTC)':<19}  NAME"]
    for r in rows:
        received = (r["received_at"] or "")[:19].replace("T", " ")
        lines.append(f"{r['job_id']:<32}  {r['state']:<9} {r['triage'] or '-':<13} "
                     f"{r['class_call'] or '-':<27} {_percent(r['p_melanoma']):>6}  "
                     f"{received:<19}  {r['original_name'] or '-'}")
    return "\n".join(lines)


@app.command("list")
def list_(
    state: Annotated[Optional[JobState], typer.Option("--state", case_sensitive=False)] = None,
    triage: Annotated[Optional[TriageLevel], typer.Option("--triage", case_sensitive=False)] = None,
    since: Annotated[Optional[str], typer.Option(
        "--since", help="Received since: 30m, 2h, 1d, 1w, or an ISO date/time")] = None,
    name: Annotated[Optional[str], typer.Option(
        "--name", help="Part of the original file name (any case)")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Jobs, newest first: state, triage, class call, P(melanoma), received, original name."""
    from worker.db.job_lookup import JobFilter, find_jobs

    filters = JobFilter(state=state.value if state else None,
                        triage=triage.value if triage else None,
                        since=parse_since(since) if since else None, name=name, limit=limit)
    engine, sessions = _sessions(home)
    try:
        with sessions() as s:
            rows = find_jobs(s, filters)
    finally:
        engine.dispose()
    if as_json:
        emit_json(rows)
    elif not rows:
        typer.echo("no jobs" + (" match" if any((state, triage, since, name)) else ""))
    else:
        typer.echo(format_rows(rows))


def format_detail(d: dict) -> str:
    lines = [f"job {d['job_id']}: {d['state']}" + (f" ({d['error_code']}: {d['error']})"
                                                    if d["error_code"] else "")]
    fields = [("original name", d["original_name"]), ("patient id", d["patient_id"]),
              ("accession", d["accession_number"]), ("received", d["received_at"]),
              ("finished", d["finished_at"]), ("triage", d["triage"]),
              ("class call", d["class_call"]), ("model", d["model_version"]),
              ("report", d["report_path"]), ("image sha256", d["image_sha256"])]
    lines += [f"  {label:<14} {value if value is not None else '-'}" for label, value in fields]
    if d["probabilities"]:
        lines.append("  probabilities:")
        ordered = sorted(d["probabilities"].items(), key=lambda kv: -kv[1])
        lines += [f"    {cls:<28} {_percent(p):>6}" for cls, p in ordered]
    lines.append(f"  submissions ({len(d['submissions'])}; a re-send of the same content joins "
                 "this job):")
    lines += [f"    {s['received_at'][:19].replace('T', ' ')} via {s['door']:<6} "
              f"{s['original_name'] or '-'}{'  (re-send)' if s['duplicate'] else ''}"
              for s in d["submissions"]]
    if d["deliveries"]:
        lines.append("  deliveries:")
        lines += [f"    {x['kind']:<8} -> {x['destination']}: {x['state']} after {x['attempts']} "
                  f"attempt(s){': ' + x['last_error'] if x['last_error'] else ''}"
                  for x in d["deliveries"]]
    else:
        lines.append("  deliveries: none")
    return "\n".join(lines)


@app.command()
def show(
    job: Annotated[str, typer.Argument(metavar="JOB_ID_OR_NAME",
                                       help="A job id (or a unique prefix) or an original file name")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """One job in full: state, triage, class call, probabilities, original name, patient id,
    accession, report path, every submission of it and its deliveries."""
    from worker.db.job_lookup import job_detail, resolve

    engine, sessions = _sessions(home)
    try:
        with sessions() as s:
            ids = resolve(s, job)
            details = [job_detail(s, i) for i in ids[:1]]
    finally:
        engine.dispose()
    if not ids:
        fail("no job has that id or original file name (`melanoma-triage jobs list --name "
             "PART` searches names)")
    if len(ids) > 1:
        typer.echo(f"{len(ids)} jobs match; give one of their ids:", err=True)
        for i in ids:
            typer.echo(i, err=True)
        raise typer.Exit(int(ExitCode.FAILED))
    if as_json:
        emit_json(details[0])
    else:
        typer.echo(format_detail(details[0]))
