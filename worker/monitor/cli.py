"""``melanoma-triage monitor reference|shift``: the shift monitor's commands.

``reference`` scores a version's validation images (or any folder of images) and writes its
``reference.json``; ``shift`` compares the latest predictions with it (read-only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from worker.cli.options import HomeOption, JsonOption, ready_settings, settings_for
from worker.cli.output import emit_json, fail, progress

monitor_app = typer.Typer(help="Site shift monitor: reference distributions and live comparison.",
                          pretty_exceptions_show_locals=False, no_args_is_help=True)

StoreOption = Annotated[Optional[Path], typer.Option(
    "--store", help="Model store root (default: the home's; `model_store` for the shipped one)")]


def reference(
    version: Annotated[str, typer.Argument(help="model version")],
    data: Annotated[list[Path], typer.Option("--data", exists=True, file_okay=False,
                                             help="Folder(s) holding the images (repeatable)")],
    subset: Annotated[str, typer.Option(
        "--subset", help="`val`/`test`/`train`: the version's split.csv rows found under --data "
                         "(by content); `all`: every image under --data")] = "val",
    store_root: StoreOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compute VERSION's reference.json (its outputs and image statistics on validation images)."""
    from worker.errors import ModelNotAvailable
    from worker.monitor import reference as ref
    from worker.store.versions import ModelStore

    store = ModelStore(store_root or settings_for(home).model_store_dir)
    try:
        folder = store.version_dir(version)
        store.metadata(version)
    except ModelNotAvailable as exc:
        fail(str(exc))
    if subset == "all":
        paths = [p for d in data for p in ref.images_under(d)]
        source = f"every image under {', '.join(d.name for d in data)}"
    else:
        if not (folder / "split.csv").is_file():
            fail(f"{version} has no split.csv: pass --subset all and a folder of validation images")
        paths = ref.split_images(folder, data, subset)
        source = f"the {subset} split of {version} (split.csv), {len(paths)} images found by content"
    if not paths:
        fail("no images found")
    with progress(f"scoring {len(paths)} images with {version}", total=len(paths)) as steps:
        doc = ref.compute_reference(store, version, paths, source,
                                    progress=lambda i, n: steps.advance())
    path = ref.save_reference(folder, doc)
    if as_json:
        emit_json({k: doc[k] for k in ("version", "n_images", "n_usable", "rates", "source")} | {"path": str(path)})
        return
    rates = doc["rates"]
    typer.echo(f"wrote {path}: {doc['n_images']} images ({doc['n_usable']} usable); urgent rate "
               f"{rates['urgent']:.3f}, soon {rates['soon']:.3f}, routine {rates['routine']:.3f}, "
               f"indeterminate {rates['indeterminate']:.3f}, unusable {rates['unusable']:.3f}")


def shift(
    window: Annotated[int, typer.Option("--window", min=1, help="Latest predictions compared")] = 200,
    images: Annotated[bool, typer.Option("--images/--no-images",
                                         help="Also compare image statistics (reads the archive)")] = True,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compare the latest predictions of the current model with its reference (read-only)."""
    from worker.db.engine import make_engine, make_session_factory
    from worker.monitor import shift as sh
    from worker.store.versions import ModelStore

    settings = ready_settings(home)
    engine = make_engine(settings.database_url)
    try:
        report = sh.check(make_session_factory(engine), ModelStore(settings.model_store_dir), window, images)
    finally:
        engine.dispose()
    if as_json:
        emit_json(report.as_dict())
    else:
        typer.echo("\n".join(sh.format_lines(report)))


monitor_app.command("reference")(reference)
monitor_app.command("shift")(shift)


def register(app: typer.Typer) -> None:
    """Add ``monitor reference|shift`` to ``app``."""
    app.add_typer(monitor_app, name="monitor")
