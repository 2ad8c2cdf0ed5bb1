"""The ``melanoma-triage`` command.

Every command behaves the same way: results on stdout (``--json`` for machines), progress
and logs on stderr, exit codes from :class:`worker.cli.output.ExitCode`. Read-only
commands (``status``, ``models list``, ``metrics``) never create or migrate anything.
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path
from typing import Annotated, Optional

import typer

from schemas import ImageMetadata, JobState, Laterality, SourceDoor
from worker.cli.options import HomeOption, JsonOption, ready_settings, settings_for
from worker.cli.output import EXIT_CODES_HELP, ExitCode, emit_json, fail

# Never print local variables in tracebacks: they can hold patient data or credentials.
app = typer.Typer(
    help="Dermoscopy triage worker: intake, CNN classification, PDF triage reports.",
    epilog=EXIT_CODES_HELP,
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
)
db_app = typer.Typer(help="Database schema.", pretty_exceptions_show_locals=False,
                     no_args_is_help=True)
app.add_typer(db_app, name="db")


def _version() -> str:
    try:
        return metadata.version("melanoma-triage")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"melanoma-triage {_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit")] = False,
) -> None:
    """Dermoscopy triage worker: intake, CNN classification, PDF triage reports."""
    from worker.storage.model_cli import after_command, before_command

    if before_command():  # TRIAGE_STORAGE=database: the model store is shared through it
        ctx.call_on_close(after_command)


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def run(home: HomeOption = None,
        roles: Annotated[str, typer.Option(
            "--roles", help="Parts of the process tree this host runs, comma-separated: "
            "intake,dicom,http,triage,deliver,beat,retrain (default all)")] = "all") -> None:
    """Start the watcher, a worker and beat on the embedded defaults (Ctrl-C stops)."""
    from worker.process.roles import parse_roles
    from worker.process.service import run_service

    try:
        chosen = parse_roles(roles)
    except ValueError as exc:
        fail(str(exc), ExitCode.USAGE)
    _logging()
    code = run_service(settings_for(home), chosen)
    # run_service answers 2 when the store has no current model: that is "not ready", not usage.
    raise typer.Exit(int(ExitCode.NOT_READY) if code == 2 else code)


@app.command()
def watch(home: HomeOption = None) -> None:
    """Run only the intake-folder watcher (production: one container)."""
    import threading

    from worker.client import TriageClient
    from worker.intake.watcher import IntakeWatcher

    _logging()
    settings = settings_for(home)
    with TriageClient(settings) as client:
        watcher = IntakeWatcher(client.intake, settings.intake_dir, settings.stable_scans)
        stop = threading.Event()
        try:
            watcher.run(settings.poll_interval_s, stop)
        except KeyboardInterrupt:
            stop.set()


@app.command()
def enqueue(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    patient_id: Annotated[Optional[str], typer.Option("--patient-id")] = None,
    accession: Annotated[Optional[str], typer.Option("--accession")] = None,
    laterality: Annotated[Optional[Laterality], typer.Option(
        "--laterality", case_sensitive=False, help="DICOM Image Laterality")] = None,
    body_site: Annotated[Optional[str], typer.Option("--body-site")] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit one image; this metadata wins over the file's own tags.

    Prints the job id and its state; exit code 1 when the image was rejected at the door.
    """
    from worker.client import TriageClient
    from worker.process.home import prepare

    try:
        image_metadata = ImageMetadata(patient_id=patient_id, accession_number=accession,
                                       laterality=laterality.value if laterality else None,
                                       body_site=body_site)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = settings_for(home)
    prepare(settings)
    with TriageClient(settings) as client:
        admission = client.submit(file, image_metadata, door=SourceDoor.CLI)
    state = JobState(admission.state)
    if as_json:
        emit_json({"job_id": admission.job_id, "state": state.value,
                   "duplicate": admission.duplicate, "reason": admission.reason})
    else:
        typer.echo(f"{admission.job_id} {state.value}{' (duplicate)' if admission.duplicate else ''}"
                   f"{f': {admission.reason}' if admission.reason else ''}")
    if state is JobState.REJECTED:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command()
def status(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Jobs by state, queue depth, counts per triage level, current model version (read-only)."""
    from worker.cli.status import collect_status, format_status

    info = collect_status(ready_settings(home))
    if as_json:
        emit_json(info)
    else:
        typer.echo(format_status(info))


@app.command()
def reconcile(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Re-enqueue jobs left in received/queued/running (one pass; beat runs it every minute)."""
    from datetime import timedelta

    from worker.client import TriageClient
    from worker.jobs.reconciler import reconcile as do_reconcile

    settings = ready_settings(home)
    with TriageClient(settings) as client:
        sent = do_reconcile(client.intake.sessions, client.intake.enqueue,
                            timedelta(seconds=30), timedelta(seconds=settings.stale_after_s))
    if as_json:
        emit_json({"re_enqueued": sent})
    else:
        typer.echo(f"re-enqueued {sent} job(s)")


@app.command()
def init(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Create the folders, migrate the database and seed the model store (idempotent);
    take world access off an existing home and say what changed."""
    from worker.process.at_rest import apply_data_group, tighten_home
    from worker.process.home import prepare
    from worker.store.versions import ModelStore

    settings = settings_for(home)
    prepare(settings)
    changed = tighten_home(settings) + apply_data_group(settings)
    current = ModelStore(settings.model_store_dir).current_version()
    if as_json:
        emit_json({"home": str(settings.home), "model_version": current, "permissions_changed": changed})
    else:
        for line in changed:
            typer.echo(f"tightened: {line}")
        typer.echo(f"ready: home {settings.home}, model {current or 'none'}")


@db_app.command("upgrade")
def db_upgrade(home: HomeOption = None,
               revision: Annotated[str, typer.Option(help="Alembic revision")] = "head",
               as_json: JsonOption = False) -> None:
    """Apply the Alembic migrations to the configured database."""
    from worker.db.migrate import current_revision, upgrade

    settings = settings_for(home)
    settings.ensure_folders()
    upgrade(settings.database_url, revision)
    now = current_revision(settings.database_url)
    if as_json:
        emit_json({"revision": now})
    else:
        typer.echo(f"database at revision {now}")


@db_app.command("migrate-to")
def db_migrate_to(url: Annotated[str, typer.Argument(help="PostgreSQL URL, e.g. postgresql+psycopg://user@host/triage")],
                  home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Copy this home (database and stored files) into PostgreSQL with database storage;
    checks row counts and SHA-256 of every file; safe to run again after an interruption."""
    from worker.storage.pilot_migration import migrate_to

    _logging()
    settings = settings_for(home)
    try:
        result = migrate_to(settings, url)
    except ValueError as exc:
        fail(str(exc), ExitCode.USAGE)
    if as_json:
        emit_json({"ok": result.ok, "tables": result.tables, "files": result.files,
                   "problems": result.problems})
    else:
        for name, counts in result.tables.items():
            typer.echo(f"{name:24} {counts['source']:>8} -> {counts['target']:>8}")
        typer.echo("files: " + ", ".join(f"{k} {v}" for k, v in sorted(result.files.items())))
        for problem in result.problems:
            typer.echo(f"PROBLEM: {problem}", err=True)
        typer.echo("verified: every row and file is in the target" if result.ok else "NOT complete: see the problems above; run again")
        if result.ok:
            typer.echo("next: set TRIAGE_DATABASE_URL to the target, TRIAGE_STORAGE=database and "
                       "TRIAGE_BROKER_URL to Redis on every host (README: from a pilot to several hosts)")
    if not result.ok:
        raise typer.Exit(int(ExitCode.FAILED))


def _register_command_groups() -> None:
    """Training/evaluation/prediction and model-store/retraining commands live with their code."""
    from worker.calibration.adapt_cli import register as register_adapt
    from worker.calibration.cli import register as register_calibration
    from worker.cli.jobs import app as jobs_app
    from worker.doors.cli import register as register_doors
    from worker.monitor.cli import register as register_monitor
    from worker.results.cli import app as deliveries_app
    from worker.retention.cli import app as retention_app
    from worker.retrain.cli import register as register_retrain
    from worker.training.cli import register as register_training
    from worker.workspace.cli import register as register_workspace

    register_training(app)
    register_retrain(app)
    register_doors(app)  # serve, receive-dicom, tokens
    app.add_typer(deliveries_app, name="deliveries")  # deliveries list|resend
    register_monitor(app)  # monitor reference|shift
    register_calibration(app)  # calibrate
    register_workspace(app)  # users create|list|disable|reset-password, audit list
    app.add_typer(jobs_app, name="jobs")  # jobs list|show
    app.add_typer(retention_app, name="retention")  # retention purge
    register_adapt(app)  # adapt


_register_command_groups()


def main() -> None:
    """Console-script entry point (also ``python -m worker``: every door and CLI process)."""
    from worker.imaging.dicom import quiet_pydicom
    from worker.process.at_rest import apply_umask

    apply_umask()  # before any file: no world access to patient data (issue 18)
    quiet_pydicom()
    app()

