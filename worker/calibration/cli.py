"""``melanoma-triage calibrate``: a site version (recalibrated probabilities, thresholds) from
this site's confirmed cases, with the operating points to choose from."""

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
    sensitivity: Annotated[float, typer.Option("--sensitivity", min=0.8, max=1.0,
                                               help="Required urgent sensitivity on new cases "
                                                    "(one of the table's rows, or any other)")] = 0.95,
    by: Annotated[Optional[str], typer.Option("--by", help="Who chose the operating point (model card)")] = None,
    reason: Annotated[Optional[str], typer.Option("--reason", help="Why (model card)")] = None,
    recalibrate: Annotated[bool, typer.Option("--recalibrate/--no-recalibrate",
                                              help="Recalibrate the melanoma probability on the site's cases")] = True,
    rescore: Annotated[bool, typer.Option("--rescore/--no-rescore",
                                          help="Score confirmed images the base has not seen")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the proposal, add no version")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recalibrate the probabilities and propose urgent (and soon) thresholds for this site,
    with a table of operating points (sensitivity 0.90, 0.93, 0.95, 0.97: threshold,
    specificity, share flagged urgent, out of bag); a passing proposal is added to the store
    as a new version (same weights) for `models promote`, and its name is the last line of
    stdout. Adding one needs --by and --reason (recorded on its model card).

    Exit code 0: proposed (or shown, with --dry-run); 1: refused (too few cases, or the gate).
    """
    from worker.calibration import site
    from worker.calibration.proposal_text import format_proposal
    from worker.db.engine import make_engine, make_session_factory
    from worker.errors import ModelNotAvailable
    from worker.process.home import prepare
    from worker.retrain.gates import GatePolicy
    from worker.classify.export import ensure_export
    from worker.store.versions import ModelStore

    if not dry_run and not (by and by.strip() and reason and reason.strip()):
        fail("a site version records who chose its operating point and why: give --by NAME and "
             "--reason TEXT (or look first with --dry-run)", ExitCode.USAGE)
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
    policy = site.SitePolicy(min_melanoma=min_melanoma, min_benign=min_benign, required_sensitivity=sensitivity,
                             recalibrate=recalibrate)
    gate_policy = GatePolicy(auc_margin=settings.retrain_auc_margin, min_sensitivity=settings.retrain_min_sensitivity,
                             max_ece=settings.retrain_max_ece)
    try:
        proposal = site.propose(cases, base_meta, policy, gate_policy, chosen_by=by, reason=reason)
    except site.CalibrationRefused as exc:
        if as_json:
            emit_json({"proposed": False, "reason": str(exc), "counts": cases.counts})
        fail(str(exc))
    added = _add_version(settings, store, proposal) if proposal.passed and not dry_run else None
    if as_json:
        emit_json({"proposed": proposal.passed, "added_version": added, **proposal.as_dict()})
    else:
        typer.echo("\n".join(format_proposal(proposal)))
        if added:
            typer.echo(f"added version {added} (not current): melanoma-triage models promote {added} "
                       f"--reason 'site calibration'")
            typer.echo(added)  # the last line: what a script promotes
        elif proposal.passed:
            typer.echo("dry run: no version added")
    if not proposal.passed:
        raise typer.Exit(int(ExitCode.FAILED))


def _add_version(settings, store, proposal) -> str:
    """The passing proposal as a store version, with the site's recent traffic as its shift
    reference; returns its name."""
    from worker.calibration import site
    from worker.db.engine import make_engine, make_session_factory
    from worker.monitor.shift import traffic_reference

    command = "melanoma-triage calibrate " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    engine = make_engine(settings.database_url)
    try:
        reference = traffic_reference(make_session_factory(engine), site.raw_versions(store, proposal.base_version),
                                      "(this site)", proposal.thresholds)
    finally:
        engine.dispose()
    return site.write_version(store, proposal, command.strip(), settings.home / "calibration", reference)


def register(app: typer.Typer) -> None:
    """Add ``calibrate`` to ``app``."""
    app.command("calibrate")(calibrate)
