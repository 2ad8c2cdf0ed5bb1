"""``melanoma-triage calibrate``: propose thresholds for this site from its confirmed cases."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated, Optional

import typer

from worker.cli.options import HomeOption, JsonOption, settings_for
from worker.cli.output import ExitCode, emit_json, fail


def calibrate(
    version: Annotated[Optional[str], typer.Option("--version", help="Base version (default: current)")] = None,
    min_melanoma: Annotated[int, typer.Option("--min-melanoma", min=1)] = 30,
    min_benign: Annotated[int, typer.Option("--min-benign", min=1, help="Other confirmed lesions needed")] = 100,
    sensitivity: Annotated[float, typer.Option("--sensitivity", min=0.5, max=1.0,
                                               help="Required urgent sensitivity on new cases")] = 0.95,
    rescore: Annotated[bool, typer.Option("--rescore/--no-rescore",
                                          help="Score confirmed images the base has not seen")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the proposal, add no version")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Propose urgent (and soon) thresholds for this site; a passing proposal is added to the
    store as a new version (same weights) for `models promote`.

    Exit code 0: proposed (or shown, with --dry-run); 1: refused (too few cases, or the gate).
    """
    from worker.calibration import site
    from worker.db.engine import make_engine, make_session_factory
    from worker.errors import ModelNotAvailable
    from worker.process.home import prepare
    from worker.retrain.gates import GatePolicy
    from worker.classify.export import ensure_export
    from worker.store.versions import ModelStore

    settings = settings_for(home)
    prepare(settings)
    store = ModelStore(settings.model_store_dir, export=ensure_export)
    base = version or store.current_version()
    if base is None:
        fail("no current model version", ExitCode.NOT_READY)
    try:
        base_meta = store.metadata(base)
    except ModelNotAvailable as exc:
        fail(str(exc))
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as s:
            cases = site.gather_cases(s, store, base, site.archive_rescorer(store, base, engine) if rescore else None)
    finally:
        engine.dispose()
    policy = site.SitePolicy(min_melanoma=min_melanoma, min_benign=min_benign, required_sensitivity=sensitivity)
    gate_policy = GatePolicy(auc_margin=settings.retrain_auc_margin, min_sensitivity=settings.retrain_min_sensitivity,
                             max_ece=settings.retrain_max_ece)
    try:
        proposal = site.propose(cases, base_meta, policy, gate_policy)
    except site.CalibrationRefused as exc:
        if as_json:
            emit_json({"proposed": False, "reason": str(exc), "counts": cases.counts})
        fail(str(exc))
    added = None
    if proposal.passed and not dry_run:
        from worker.monitor.shift import traffic_reference

        command = "melanoma-triage calibrate " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        engine = make_engine(settings.database_url)
        try:
            reference = traffic_reference(make_session_factory(engine), site.equivalent_versions(store, base),
                                          "(this site)", proposal.thresholds)
        finally:
            engine.dispose()
        added = site.write_version(store, proposal, command.strip(), settings.home / "calibration", reference)
    if as_json:
        emit_json({"proposed": proposal.passed, "added_version": added, **proposal.as_dict()})
    else:
        typer.echo("\n".join(site.format_proposal(proposal)))
        if added:
            typer.echo(f"added version {added} (not current): melanoma-triage models promote {added} "
                       f"--reason 'site calibration'")
        elif proposal.passed:
            typer.echo("dry run: no version added")
    if not proposal.passed:
        raise typer.Exit(int(ExitCode.FAILED))


def register(app: typer.Typer) -> None:
    """Add ``calibrate`` to ``app``."""
    app.command("calibrate")(calibrate)
