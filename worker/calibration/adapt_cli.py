"""``melanoma-triage adapt``: a derived version for a site from its unlabelled images."""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from worker.cli.options import HomeOption, JsonOption, settings_for
from worker.cli.output import ExitCode, emit_json, fail

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".dcm", ".dicom"})


def _model_input(data: bytes, size: int) -> np.ndarray | None:
    """The model input of one image file's bytes; None when it is unreadable or unusable
    (quality gate): such an image tells nothing about the site's lesions."""
    from worker.classify.preprocess import to_model_input
    from worker.imaging import assess_quality, decode_bytes

    try:
        rgb = decode_bytes(data).rgb
    except Exception:  # unreadable: left out, counted
        return None
    if not assess_quality(rgb)[0]:
        return None
    return to_model_input(rgb, size)


def folder_images(folder: Path, size: int) -> tuple[np.ndarray, int]:
    """(images, files left out) of every image file under ``folder``."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    kept = [x for x in (_model_input(p.read_bytes(), size) for p in files) if x is not None]
    return _stack(kept, size), len(files) - len(kept)


def archive_images(settings, since: datetime, size: int) -> tuple[np.ndarray, int]:
    """(images, images left out) of this home's archive received since ``since``."""
    from sqlalchemy import select

    from worker.db.engine import make_engine, make_session_factory
    from worker.db.models import Image
    from worker.intake import archive

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as s:
            paths = s.scalars(select(Image.archive_path).where(Image.received_at >= since,
                                                               Image.archive_path.is_not(None))).all()
    finally:
        engine.dispose()
    kept = []
    for path in paths:
        try:
            data = archive.load(path)
        except OSError:
            continue
        x = _model_input(data, size)
        if x is not None:
            kept.append(x)
    return _stack(kept, size), len(paths) - len(kept)


def site_images(settings, folder: Path | None, since: datetime | None, size: int) -> tuple[np.ndarray, int]:
    """(images, left out) from ``folder`` or, when it is None, this home's archive since ``since``."""
    if folder is not None:
        return folder_images(folder, size)
    return archive_images(settings, since if since.tzinfo else since.replace(tzinfo=timezone.utc), size)


def _stack(kept: list, size: int) -> np.ndarray:
    return np.stack(kept) if kept else np.zeros((0, size, size, 3), dtype=np.uint8)


def locked_set(version_dir: Path, data_dirs: list[Path], size: int):
    """The base version's locked evaluation set: its ``split.csv`` test rows, found in the
    training data by content hash, with their truth."""
    import pandas as pd

    from worker.calibration.adapt import AdaptRefused, LockedSet
    from worker.training import datachecks, dataset, manifest

    split_csv = version_dir / "split.csv"
    if not split_csv.is_file():
        raise AdaptRefused(f"{version_dir.name} has no split.csv: no locked evaluation set to guard with")
    if not data_dirs:
        raise AdaptRefused("no training data to find the locked evaluation set in: pass --data "
                           "or set TRIAGE_TRAINING_DATA_DIRS")
    split = pd.read_csv(split_csv, dtype=str)
    test = set(split.loc[split["subset"] == "test", "sha256"])
    rows = datachecks.run_checks(manifest.scan(data_dirs)).resolved
    rows = rows[rows["sha256"].isin(test)].reset_index(drop=True)
    if rows.empty:
        raise AdaptRefused(f"none of the {len(test)} test images of {version_dir.name} is in {data_dirs}")
    images = np.stack([dataset.to_model_input(dataset.load_rgb(p), size) for p in rows["path"]])
    return LockedSet(images=images, melanoma=rows["melanoma"].to_numpy().astype(int),
                     labels=dataset.label_indices(rows))


def adapt(
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the site's unlabelled images")] = None,
    since: Annotated[Optional[datetime], typer.Option("--since", help="Or: this home's archive since (UTC)")] = None,
    version: Annotated[Optional[str], typer.Option("--version", help="Base version (default: current)")] = None,
    bn: Annotated[bool, typer.Option("--bn/--no-bn", help="Re-estimate BatchNorm statistics (off by default: "
                                     "measured, it lowered AUC at a held-out source)")] = False,
    bn_mode: Annotated[str, typer.Option("--bn-mode", help="aligned: map the site's activations onto the "
                                         "locked set's; site: plain AdaBN (the site's statistics)")] = "aligned",
    threshold: Annotated[bool, typer.Option("--threshold/--no-threshold",
                                            help="Move the urgent threshold by the label-free shift")] = True,
    direction: Annotated[str, typer.Option("--direction", help="down: the shift may only lower the urgent "
                                           "threshold; both: either way")] = "down",
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="Training data (the locked set; "
                                                       "default TRIAGE_TRAINING_DATA_DIRS)")] = None,
    min_images: Annotated[int, typer.Option("--min-images", min=2)] = 50,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the proposal, add no version")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Propose a version adapted to this site from its unlabelled images: the urgent threshold
    moved by a label-free shift estimate (and, with --bn, re-estimated BatchNorm statistics),
    guarded by sensitivity >= 0.95 on the locked evaluation set.
    The new version is not current: `models promote` does that. Its id is the last line.

    Exit code 0: proposed (or shown, with --dry-run); 1: refused or the gate failed.
    """
    import keras

    from worker.calibration import adapt as adaptation
    from worker.classify.export import ensure_export
    from worker.classify.inference import configure_tensorflow
    from worker.process.home import prepare
    from worker.retrain.gates import GatePolicy
    from worker.store.versions import MODEL_FILE, ModelStore

    if (images is None) == (since is None):
        fail("give the site's images: --images FOLDER or --since DATE (one of them)")
    if bn_mode not in adaptation.BN_MODES or direction not in adaptation.DIRECTIONS:
        fail(f"--bn-mode is one of {', '.join(adaptation.BN_MODES)}; --direction one of "
             f"{', '.join(adaptation.DIRECTIONS)}")
    settings = settings_for(home)
    prepare(settings)
    configure_tensorflow(1)
    store = ModelStore(settings.model_store_dir, export=ensure_export)
    base, meta = _base_version(store, version)
    size = meta.input_size
    site, left_out = site_images(settings, images, since, size)
    policy = adaptation.AdaptPolicy(bn=bn, bn_mode=bn_mode, threshold=threshold, direction=direction,
                                    min_images=min_images)
    gate_policy = GatePolicy(min_sensitivity=settings.retrain_min_sensitivity, max_ece=settings.retrain_max_ece)
    model = keras.saving.load_model(store.version_dir(base) / MODEL_FILE, compile=False)
    try:
        locked = locked_set(store.version_dir(base), list(data or settings.training_data_dirs), size)
        proposal = adaptation.propose(model, meta, site, locked, policy, gate_policy)
    except adaptation.AdaptRefused as exc:
        if as_json:
            emit_json({"proposed": False, "reason": str(exc), "site_images": len(site), "left_out": left_out})
        fail(str(exc))
    added = None
    if proposal.passed and not dry_run:
        command = "melanoma-triage adapt " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        added = adaptation.write_version(store, model, proposal, command.strip(), settings.home / "adaptation")
    _report(proposal, added, left_out, dry_run, as_json)


def _base_version(store, version: str | None):
    """(name, metadata) of the base version (default: current), checked; exits when absent."""
    from worker.errors import ModelNotAvailable

    base = version or store.current_version()
    if base is None:
        fail("no current model version", ExitCode.NOT_READY)
    try:
        store.verify(base)
        return base, store.metadata(base)
    except ModelNotAvailable as exc:
        fail(str(exc))


def _report(proposal, added: str | None, left_out: int, dry_run: bool, as_json: bool) -> None:
    """The proposal on stdout (the new version's id last); exit 1 when the gate said no."""
    from worker.calibration.adapt import format_proposal

    if as_json:
        emit_json({"proposed": proposal.passed, "added_version": added, "left_out": left_out, **proposal.as_dict()})
    else:
        for line in format_proposal(proposal, left_out):
            typer.echo(line)
        if proposal.passed and dry_run:
            typer.echo("dry run: no version added")
    if not proposal.passed:
        raise typer.Exit(int(ExitCode.FAILED))
    if added and not as_json:
        typer.echo(f"added version (not current): melanoma-triage models promote {added} --reason 'site adaptation'")
        typer.echo(added)


def register(app: typer.Typer) -> None:
    """Add ``adapt`` to ``app``."""
    app.command("adapt")(adapt)
