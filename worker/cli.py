"""The ``melanoma-triage`` command."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from schemas import ImageMetadata, SourceDoor
from worker.cli_options import HomeOption, settings_for

# Never print local variables in tracebacks: they can hold patient data or credentials.
app = typer.Typer(
    help="Dermoscopy triage worker: intake, CNN classification, PDF triage reports.",
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
)
db_app = typer.Typer(help="Database schema.", pretty_exceptions_show_locals=False)
app.add_typer(db_app, name="db")

def _logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def run(home: HomeOption = None) -> None:
    """Start the watcher, a worker and beat on the embedded defaults (Ctrl-C stops)."""
    from worker.service import run_service

    _logging()
    raise typer.Exit(run_service(settings_for(home)))


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
    laterality: Annotated[Optional[str], typer.Option("--laterality", help="L, R, B or U")] = None,
    body_site: Annotated[Optional[str], typer.Option("--body-site")] = None,
    home: HomeOption = None,
) -> None:
    """Submit one image; this metadata wins over the file's own tags. Prints the job id."""
    from worker.client import TriageClient
    from worker.service import prepare

    settings = settings_for(home)
    prepare(settings)
    try:
        metadata = ImageMetadata(patient_id=patient_id, accession_number=accession,
                                 laterality=laterality, body_site=body_site)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with TriageClient(settings) as client:
        admission = client.submit(file, metadata, door=SourceDoor.CLI)
    typer.echo(json.dumps({"job_id": admission.job_id, "state": admission.state.value,
                           "duplicate": admission.duplicate, "reason": admission.reason}))


@app.command()
def status(home: HomeOption = None,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Jobs by state, queue depth, counts per triage level, current model version."""
    from worker.status import collect_status, format_status

    info = collect_status(settings_for(home))
    typer.echo(json.dumps(info, indent=2) if as_json else format_status(info))


@app.command()
def reconcile(home: HomeOption = None) -> None:
    """Re-enqueue jobs left in received/queued/running (one pass; beat runs it every minute)."""
    from datetime import timedelta

    from worker.client import TriageClient
    from worker.reconciler import reconcile as do_reconcile

    settings = settings_for(home)
    with TriageClient(settings) as client:
        sent = do_reconcile(client.intake.sessions, client.intake.enqueue,
                            timedelta(seconds=30), timedelta(seconds=settings.stale_after_s))
    typer.echo(f"re-enqueued {sent} job(s)")


@app.command()
def init(home: HomeOption = None) -> None:
    """Create the folders, migrate the database and seed the model store (idempotent)."""
    from worker.model_store import ModelStore
    from worker.service import prepare

    settings = settings_for(home)
    prepare(settings)
    current = ModelStore(settings.model_store_dir).current_version()
    typer.echo(f"ready: home {settings.home}, model {current or 'none'}")


@db_app.command("upgrade")
def db_upgrade(home: HomeOption = None,
               revision: Annotated[str, typer.Option()] = "head") -> None:
    """Apply the Alembic migrations to the configured database."""
    from worker.db.migrate import current_revision, upgrade

    settings = settings_for(home)
    settings.ensure_folders()
    upgrade(settings.database_url, revision)
    typer.echo(f"database at revision {current_revision(settings.database_url)}")


def _register_command_groups() -> None:
    """Training/evaluation/prediction and model-store/retraining commands live with their code."""
    from worker.retrain.cli import register as register_retrain
    from worker.training.cli import register as register_training

    register_training(app)
    register_retrain(app)


_register_command_groups()


def main() -> None:
    from worker.imaging.dicom import quiet_pydicom

    quiet_pydicom()
    app()
