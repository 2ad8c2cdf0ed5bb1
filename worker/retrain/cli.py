"""Commands for the lead's typer app: ``models list|show|promote|approve|pending|rollback|shadow|
apply-loso|history``,
``label``, ``label-import``, ``metrics``, ``retrain --now``. Output never names patients.

``models list|show|history`` and ``metrics`` are read-only: they never create or migrate a
home (a home that is not set up ends them with exit code 3). The others change the set-up
and make the home ready first, as every writing command does.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from schemas import LesionClass, ModelAction, RetrainState, TruthSource
from worker.cli.options import HomeOption, JsonOption, ready_settings, settings_for
from worker.cli.output import ExitCode, emit_json, fail, progress, stdout_as_log
from worker.training.loso_report import RULES

#: ``models apply-loso --rule`` choices (``--help`` lists them).
LosoRule = Enum("LosoRule", {name.upper(): name for name in RULES}, type=str)

models_app = typer.Typer(help="The model store: versions, promotion, rollback.",
                         pretty_exceptions_show_locals=False, no_args_is_help=True)

ByOption = Annotated[Optional[str], typer.Option("--by", help="Who makes the change (default: OS user@host)")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (recorded with the change)")]
DocumentJsonOption = Annotated[bool, typer.Option(
    "--json", help="Accepted for uniformity: this command always prints JSON")]


class _Context:
    """Settings, the store and a session factory for one command; ``read_only`` never
    prepares (creates or migrates) the home, ``database`` False does not need one."""

    def __init__(self, home: Path | None, read_only: bool = False, database: bool = True) -> None:
        from worker.db.engine import make_engine, make_session_factory
        from worker.classify.export import ensure_export
        from worker.store.versions import ModelStore

        if read_only:
            self.settings = ready_settings(home, database=database)
        else:
            from worker.process.home import prepare

            self.settings = settings_for(home)
            prepare(self.settings)
        self.engine = make_engine(self.settings.database_url) if database else None
        self.sessions = make_session_factory(self.engine) if database else None
        self.store = ModelStore(self.settings.model_store_dir, export=ensure_export)

    def __enter__(self) -> _Context:
        return self

    def __exit__(self, *exc) -> None:
        if self.engine is not None:
            self.engine.dispose()


def _print_change(change, verb: str, as_json: bool) -> None:
    if as_json:
        emit_json({"action": ModelAction(change.action).value, "version": change.version,
                   "previous_version": change.previous_version, "actor": change.actor,
                   "reason": change.reason})
    else:
        typer.echo(f"{verb} {change.version} (was {change.previous_version}) by {change.actor}")


@models_app.command("list")
def models_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Every stored version; * marks the current one (read-only)."""
    from worker.store import admin

    with _Context(home, read_only=True, database=False) as ctx:
        rows = admin.list_versions(ctx.store)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        typer.echo("no model versions in the store")
    for r in rows:
        auc = "n/a" if r["melanoma_auc"] is None else f"{r['melanoma_auc']:.3f}"
        typer.echo(f"{'*' if r['current'] else ' '} {r['version']:<32} created {r['created_at'][:19]}  "
                   f"parent {r['parent_version'] or '-':<28} sha256 {r['sha256'][:12]}  test mel AUC {auc}")


@models_app.command("show")
def models_show(version: str, home: HomeOption = None,
                history: Annotated[bool, typer.Option("--history", help="Also the change log")] = False,
                as_json: DocumentJsonOption = False) -> None:
    """model.json, files and model card of one version (JSON; read-only)."""
    from worker.errors import ModelNotAvailable
    from worker.store import admin

    with _Context(home, read_only=True, database=history) as ctx:
        try:
            info = admin.show(ctx.store, version)
        except ModelNotAvailable as exc:
            fail(str(exc))
        if history:
            with ctx.sessions() as s:
                info["events"] = [e for e in admin.events(s) if version in (e["version"], e["previous_version"])]
    emit_json(info)


@models_app.command("promote")
def models_promote(version: str, reason: ReasonOption, by: ByOption = None, home: HomeOption = None,
                   as_json: JsonOption = False) -> None:
    """Make VERSION current; workers switch on their next task."""
    from worker.errors import TriageError
    from worker.store import admin

    with _Context(home) as ctx:
        try:
            change = admin.promote(ctx.store, ctx.sessions, version, admin.actor_name(by), reason)
        except TriageError as exc:
            fail(str(exc))
    _print_change(change, "promoted", as_json)


@models_app.command("approve")
def models_approve(version: str, reason: ReasonOption, by: ByOption = None, home: HomeOption = None,
                   as_json: JsonOption = False) -> None:
    """Make a retrained challenger that waits for approval current (a person's decision)."""
    from worker.errors import TriageError
    from worker.store import admin

    with _Context(home) as ctx:
        try:
            change = admin.approve(ctx.store, ctx.sessions, version, admin.actor_name(by), reason)
        except TriageError as exc:
            fail(str(exc))
    _print_change(change, "approved and promoted", as_json)


@models_app.command("pending")
def models_pending(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Retrained challengers that passed the gates and wait for `models approve` (read-only)."""
    from worker.store import admin

    with _Context(home, read_only=True) as ctx, ctx.sessions() as s:
        rows = admin.pending_approvals(s)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        typer.echo("no challenger waits for approval")
    for r in rows:
        typer.echo(f"{r['version']}  (retrain run {r['run_id']}, gated against {r['champion']}, "
                   f"finished {(r['finished_at'] or '')[:19]})")
        for reason in r["reasons"]:
            typer.echo(f"  - {reason}")


@models_app.command("rollback")
def models_rollback(reason: ReasonOption, by: ByOption = None,
                    to: Annotated[Optional[str], typer.Option("--to", help="Target version")] = None,
                    home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Back to the version current before the latest promotion or rollback (or --to)."""
    from worker.errors import TriageError
    from worker.store import admin

    with _Context(home) as ctx:
        try:
            change = admin.rollback(ctx.store, ctx.sessions, admin.actor_name(by), reason, to)
        except TriageError as exc:
            fail(str(exc))
    _print_change(change, "rolled back to", as_json)


@models_app.command("shadow")
def models_shadow(version: Annotated[Optional[str], typer.Argument(help="candidate version")] = None,
                  off: Annotated[bool, typer.Option("--off", help="stop the shadow run")] = False,
                  reason: ReasonOption = "", by: ByOption = None, home: HomeOption = None,
                  as_json: JsonOption = False) -> None:
    """Run a candidate VERSION beside the current one on live traffic, unreported (or --off)."""
    from worker.errors import TriageError
    from worker.store import admin

    if (version is None) == (not off):
        fail("give a VERSION or --off", ExitCode.USAGE)
    with _Context(home) as ctx:
        try:
            change = admin.set_shadow(ctx.store, ctx.sessions, None if off else version,
                                      admin.actor_name(by), reason)
        except TriageError as exc:
            fail(str(exc))
    if as_json:
        _print_change(change, "", as_json)
    else:
        typer.echo(f"{ModelAction(change.action).value}: {change.version} by {change.actor}")


@models_app.command("apply-loso")
def models_apply_loso(
    loso: Annotated[Path, typer.Option("--loso", exists=True, help="loso.json of `train --loso` (or its folder)")],
    version: Annotated[Optional[str], typer.Argument(help="Base version (default: current)")] = None,
    allow_other_recipe: Annotated[bool, typer.Option(
        "--allow-other-recipe", help="Apply a LOSO run of another recipe (input size, backbone)")] = False,
    rule: Annotated[LosoRule, typer.Option(
        "--rule", help="shift: the validation threshold moved by the worst source's logit shift; absolute: "
                       "the probability every held-out source needed (both capped by the version's own "
                       "validation)")] = LosoRule.SHIFT,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a version with VERSION's weights and the urgent threshold that held on the worst
    held-out source of a leave-one-source-out run (not current: `models promote` does that)."""
    import shlex
    import sys

    from worker.errors import TriageError
    from worker.training.loso import load_loso
    from worker.training.loso_policy import LosoPolicyError, apply_loso

    with _Context(home, database=False) as ctx:
        base = version or ctx.store.current_version()
        if base is None:
            fail("no VERSION given and no current version", ExitCode.NOT_READY)
        command = "melanoma-triage models apply-loso " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        try:
            added, choice = apply_loso(ctx.store, base, load_loso(loso), command.strip(), allow_other_recipe,
                                       ctx.settings.home / "loso-staging", rule=rule.value)
        except (TriageError, LosoPolicyError) as exc:
            fail(str(exc))
    if as_json:
        emit_json({"added_version": added, "base_version": base, **choice})
        return
    typer.echo(f"urgent threshold {choice['base_threshold']:.4f} -> {choice['threshold']:.4f} "
               f"({choice['rule']} rule, logit shift {choice['logit_shift']:+.3f}, set by {choice['worst_source']}"
               f"{'; capped by its own validation' if choice['capped'] else ''})")
    typer.echo(choice["sentence"])
    for difference in choice["recipe_differences"]:
        typer.echo(f"  warning: {difference}")
    typer.echo(f"added version {added} (not current): melanoma-triage models promote {added} --reason '...'")


@models_app.command("history")
def models_history(home: HomeOption = None, limit: int = 50, as_json: DocumentJsonOption = False) -> None:
    """The change log of the model in service (JSON; read-only)."""
    from worker.store import admin

    with _Context(home, read_only=True) as ctx, ctx.sessions() as s:
        emit_json(admin.events(s, limit))


def label(
    ref: Annotated[str, typer.Argument(metavar="JOB_OR_IMAGE", help="job id, image id or image sha256")],
    diagnosis: Annotated[LesionClass, typer.Option("--diagnosis", help="confirmed lesion class")],
    source: Annotated[TruthSource, typer.Option("--source", help="where the diagnosis comes from")],
    by: ByOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Record a confirmed diagnosis for one image."""
    from worker.retrain import truth
    from worker.store import admin

    with _Context(home) as ctx:
        try:
            with ctx.sessions.begin() as s:
                image_id, added = truth.add_label(s, ref, diagnosis.value, source, admin.actor_name(by))
        except truth.LabelError as exc:
            fail(str(exc))
    if as_json:
        emit_json({"image_id": image_id, "added": added})
    else:
        typer.echo(f"{'recorded' if added else 'already recorded'}: image {image_id}")


def label_import(
    csv_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    source: Annotated[Optional[TruthSource], typer.Option(
        "--source", help="when the CSV has no source column")] = None,
    by: ByOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import a batch of confirmed diagnoses from a CSV file.

    Columns: job_id|image_id|sha256|accession_number, diagnosis[, source][, recorded_by].
    Prints counts and failing line numbers; exit code 1 when any line failed (the good
    lines are stored).
    """
    from worker.retrain import truth
    from worker.store import admin

    with _Context(home) as ctx:
        try:
            report = truth.import_csv(ctx.sessions, csv_file, admin.actor_name(by), source)
        except truth.LabelError as exc:
            fail(str(exc))
    if as_json:
        emit_json(report.as_dict())
    else:
        typer.echo(f"added {report.added}, unchanged {report.unchanged}, failed {len(report.errors)}")
        for line, reason in report.errors:
            typer.echo(f"  line {line}: {reason}")
    if report.errors:
        raise typer.Exit(int(ExitCode.FAILED))


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:5.1%}"


def metrics(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Sensitivity, specificity and PPV of the triage levels per model version (read-only).

    Counted on the cases whose confirmed diagnosis has come back.
    """
    from worker.retrain import truth

    with _Context(home, read_only=True) as ctx, ctx.sessions() as s:
        result = truth.triage_metrics(s)
    if as_json:
        emit_json(result)
        return
    if not result:
        typer.echo("no predictions with confirmed ground truth yet")
    for version, m in result.items():
        typer.echo(f"model {version}: {m['n']} confirmed cases ({m['n_melanoma']} melanoma, "
                   f"{m['n_indeterminate']} indeterminate)")
        for level in ("urgent", "soon", "referral"):
            r = m[level]
            typer.echo(f"  {level:<9} sensitivity {_pct(r['sensitivity'])}  specificity "
                       f"{_pct(r['specificity'])}  PPV {_pct(r['ppv'])}   (tp {r['tp']} fp {r['fp']} "
                       f"fn {r['fn']} tn {r['tn']})")


_RETRAIN_EXIT = {RetrainState.PROMOTED: ExitCode.OK, RetrainState.KEPT: ExitCode.OK,
                 RetrainState.PENDING_APPROVAL: ExitCode.OK, RetrainState.BUSY: ExitCode.BUSY}


def retrain(
    now: Annotated[bool, typer.Option("--now", help="Run one retraining here, now")] = False,
    negative_control: Annotated[bool, typer.Option(
        "--negative-control", help="Drill: train on shuffled labels; the gate must refuse it")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """The scheduled retraining, by hand: train, compare on the locked set, promote or keep.

    Exit code 0 promoted or kept, 1 failed, 4 another retraining holds the lease.
    """
    import logging
    import time

    from worker.process.home import prepare
    from worker.retrain.cycle import run_retrain

    if not now:
        fail("retraining runs on its schedule (settings.retrain_cron); use --now to run it here",
             ExitCode.USAGE)
    logging.basicConfig(level=logging.WARNING)
    settings = settings_for(home)
    prepare(settings)
    t0 = time.monotonic()
    with progress("retraining") as steps, stdout_as_log(steps):  # the trainer's log: stdout keeps the result
        outcome = run_retrain(settings, trigger="manual", negative_control=negative_control,
                              progress=lambda step, total, message: steps.step(
                                  message, completed=step - 1, total=total))
    state = RetrainState(outcome.state)
    typer.echo(f"retrain {state.value} in {time.monotonic() - t0:.1f} s", err=True)
    if as_json:
        emit_json(outcome.as_dict())
    else:
        typer.echo(f"state: {state.value}  champion: {outcome.champion}  challenger: {outcome.challenger}")
        for reason in outcome.decision.get("reasons", []) or ([outcome.error] if outcome.error else []):
            typer.echo(f"  - {reason}")
        if outcome.decision.get("awaiting_approval"):
            typer.echo(outcome.decision["awaiting_approval"])
    raise typer.Exit(int(_RETRAIN_EXIT.get(state, ExitCode.FAILED)))


def register(app: typer.Typer) -> None:
    """Add the model-store, ground-truth and retraining commands to ``app``."""
    app.add_typer(models_app, name="models")
    app.command("label")(label)
    app.command("label-import")(label_import)
    app.command("metrics")(metrics)
    app.command("retrain")(retrain)
