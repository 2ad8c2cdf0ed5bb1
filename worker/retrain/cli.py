"""Commands for the lead's typer app: ``models list|show|promote|rollback``, ``label``,
``label-import``, ``metrics``, ``retrain --now``. Output never names patients."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from worker.cli_options import HomeOption, settings_for

models_app = typer.Typer(help="The model store: versions, promotion, rollback.",
                         pretty_exceptions_show_locals=False, no_args_is_help=True)

ByOption = Annotated[Optional[str], typer.Option("--by", help="Who makes the change (default: OS user@host)")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (recorded with the change)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


class _Context:
    """Settings, a prepared home, the store and a session factory for one command."""

    def __init__(self, home: Path | None) -> None:
        from worker.db.engine import make_engine, make_session_factory
        from worker.model_store import ModelStore
        from worker.service import prepare

        self.settings = settings_for(home)
        prepare(self.settings)
        self.engine = make_engine(self.settings.database_url)
        self.sessions = make_session_factory(self.engine)
        self.store = ModelStore(self.settings.model_store_dir)

    def __enter__(self) -> _Context:
        return self

    def __exit__(self, *exc) -> None:
        self.engine.dispose()


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


@models_app.command("list")
def models_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Every stored version; * marks the current one."""
    from worker.retrain import admin

    with _Context(home) as ctx:
        rows = admin.list_versions(ctx.store)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no model versions in the store")
    for r in rows:
        auc = "n/a" if r["melanoma_auc"] is None else f"{r['melanoma_auc']:.3f}"
        typer.echo(f"{'*' if r['current'] else ' '} {r['version']:<32} created {r['created_at'][:19]}  "
                   f"parent {r['parent_version'] or '-':<28} sha256 {r['sha256'][:12]}  test mel AUC {auc}")


@models_app.command("show")
def models_show(version: str, home: HomeOption = None,
                history: Annotated[bool, typer.Option("--history", help="Also the change log")] = False) -> None:
    """model.json, files and model card of one version (JSON)."""
    from worker.errors import ModelNotAvailable
    from worker.retrain import admin

    with _Context(home) as ctx:
        try:
            info = admin.show(ctx.store, version)
        except ModelNotAvailable as exc:
            _fail(exc)
        if history:
            with ctx.sessions() as s:
                info["events"] = [e for e in admin.events(s) if version in (e["version"], e["previous_version"])]
    typer.echo(json.dumps(info, indent=2, default=str))


@models_app.command("promote")
def models_promote(version: str, reason: ReasonOption, by: ByOption = None, home: HomeOption = None) -> None:
    """Make VERSION current; workers switch on their next task."""
    from worker.errors import TriageError
    from worker.retrain import admin

    with _Context(home) as ctx:
        try:
            change = admin.promote(ctx.store, ctx.sessions, version, admin.actor_name(by), reason)
        except TriageError as exc:
            _fail(exc)
    typer.echo(f"promoted {change.version} (was {change.previous_version}) by {change.actor}")


@models_app.command("rollback")
def models_rollback(reason: ReasonOption, by: ByOption = None,
                    to: Annotated[Optional[str], typer.Option("--to", help="Target version")] = None,
                    home: HomeOption = None) -> None:
    """Back to the version current before the latest promotion or rollback (or --to)."""
    from worker.errors import TriageError
    from worker.retrain import admin

    with _Context(home) as ctx:
        try:
            change = admin.rollback(ctx.store, ctx.sessions, admin.actor_name(by), reason, to)
        except TriageError as exc:
            _fail(exc)
    typer.echo(f"rolled back to {change.version} (was {change.previous_version}) by {change.actor}")


@models_app.command("shadow")
def models_shadow(version: Annotated[Optional[str], typer.Argument(help="candidate version")] = None,
                  off: Annotated[bool, typer.Option("--off", help="stop the shadow run")] = False,
                  reason: ReasonOption = "", by: ByOption = None, home: HomeOption = None) -> None:
    """Run a candidate VERSION beside the current one on live traffic, unreported (or --off)."""
    from worker.errors import TriageError
    from worker.retrain import admin

    if (version is None) == (not off):
        _fail(ValueError("give a VERSION or --off"))
    with _Context(home) as ctx:
        try:
            change = admin.set_shadow(ctx.store, ctx.sessions, None if off else version,
                                      admin.actor_name(by), reason)
        except TriageError as exc:
            _fail(exc)
    typer.echo(f"{change.action}: {change.version} by {change.actor}")


@models_app.command("history")
def models_history(home: HomeOption = None, limit: int = 50) -> None:
    """The change log of the model in service (JSON)."""
    from worker.retrain import admin

    with _Context(home) as ctx, ctx.sessions() as s:
        typer.echo(json.dumps(admin.events(s, limit), indent=2))


def label(
    ref: Annotated[str, typer.Argument(metavar="JOB_OR_IMAGE", help="job id, image id or image sha256")],
    diagnosis: Annotated[str, typer.Option("--diagnosis", help="one of the nine class names")],
    source: Annotated[str, typer.Option("--source", help="histopathology | clinical | consensus")],
    by: ByOption = None,
    home: HomeOption = None,
) -> None:
    """Record a confirmed diagnosis for one image."""
    from worker.retrain import admin, truth

    with _Context(home) as ctx:
        try:
            with ctx.sessions.begin() as s:
                image_id, added = truth.add_label(s, ref, diagnosis, source, admin.actor_name(by))
        except truth.LabelError as exc:
            _fail(exc)
    typer.echo(f"{'recorded' if added else 'already recorded'}: image {image_id}")


def label_import(
    csv_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    source: Annotated[Optional[str], typer.Option("--source", help="when the CSV has no source column")] = None,
    by: ByOption = None,
    home: HomeOption = None,
) -> None:
    """Import a batch of confirmed diagnoses (CSV: job_id|image_id|sha256|accession_number,
    diagnosis[, source][, recorded_by]). Prints counts and failing line numbers."""
    from worker.retrain import admin, truth

    with _Context(home) as ctx:
        try:
            report = truth.import_csv(ctx.sessions, csv_file, admin.actor_name(by), source)
        except truth.LabelError as exc:
            _fail(exc)
    typer.echo(json.dumps(report.as_dict(), indent=2))
    if report.errors:
        raise typer.Exit(2)


def metrics(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Per model version: sensitivity, specificity and PPV of the triage levels on the cases
    whose truth has come back."""
    from worker.retrain import truth

    with _Context(home) as ctx, ctx.sessions() as s:
        result = truth.triage_metrics(s)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if not result:
        typer.echo("no predictions with confirmed ground truth yet")

    def pct(x):
        return "  n/a" if x is None else f"{x:5.1%}"

    for version, m in result.items():
        typer.echo(f"model {version}: {m['n']} confirmed cases ({m['n_melanoma']} melanoma, "
                   f"{m['n_indeterminate']} indeterminate)")
        for level in ("urgent", "soon", "referral"):
            r = m[level]
            typer.echo(f"  {level:<9} sensitivity {pct(r['sensitivity'])}  specificity "
                       f"{pct(r['specificity'])}  PPV {pct(r['ppv'])}   (tp {r['tp']} fp {r['fp']} "
                       f"fn {r['fn']} tn {r['tn']})")


def retrain(
    now: Annotated[bool, typer.Option("--now", help="Run one retraining here, now")] = False,
    negative_control: Annotated[bool, typer.Option(
        "--negative-control", help="Drill: train on shuffled labels; the gate must refuse it")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """The scheduled retraining, by hand: train, compare on the locked set, promote or keep."""
    import logging
    import time

    from worker.retrain.cycle import run_retrain

    if not now:
        typer.echo("retraining runs on its schedule (settings.retrain_cron); use --now to run it here")
        raise typer.Exit(2)
    logging.basicConfig(level=logging.WARNING)
    settings = settings_for(home)
    from worker.service import prepare

    prepare(settings)
    t0 = time.monotonic()

    def progress(step: int, total: int, message: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        typer.echo(f"[{stamp}] [{'#' * step}{'.' * (total - step)}] {step}/{total} {message}", err=True)

    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # the trainer's log: stdout stays for the result
        outcome = run_retrain(settings, trigger="manual", progress=progress,
                              negative_control=negative_control)
    typer.echo(f"retrain {outcome.state} in {time.monotonic() - t0:.1f} s", err=True)
    if as_json:
        typer.echo(json.dumps(outcome.as_dict(), indent=2, default=str))
    else:
        typer.echo(f"state: {outcome.state}  champion: {outcome.champion}  challenger: {outcome.challenger}")
        for reason in outcome.decision.get("reasons", []) or ([outcome.error] if outcome.error else []):
            typer.echo(f"  - {reason}")
    raise typer.Exit(0 if outcome.state in ("promoted", "kept") else 1)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.command("label")(label)
    app.command("label-import")(label_import)
    app.command("metrics")(metrics)
    app.command("retrain")(retrain)
