"""Training-side commands for the lead's typer app: ``train``, ``evaluate``, ``predict`` and
``data describe|check``. Heavy imports (TensorFlow, pandas, the pipeline) happen inside
commands; option defaults come from :class:`worker.training.config.TrainConfig`.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path

import typer

from worker.cli.output import ExitCode, emit_json, fail, progress, stdout_as_log
from worker.training.config import AUGMENTATIONS, COLOUR_CONSTANCY, LR_SCHEDULES, default
from worker.training.efficientnet_lite import VARIANTS, native_size
from worker.training.network import BACKBONES, DEFAULT_UNFREEZE, DEFAULT_WEIGHTS, IMAGENET

#: ``--backbone`` choices (``--help`` lists them).
Backbone = Enum("Backbone", {name.upper(): name for name in BACKBONES}, type=str)
#: Where ``--weights imagenet`` looks for a Lite backbone's file, and the Lite ImageNet sizes.
LITE_WEIGHTS_PATTERN = "runs/weights/efficientnet_<backbone>_imagenet.npz"
LITE_SIZES = "ImageNet input size: " + ", ".join(f"{v} {native_size(v)}" for v in VARIANTS)
#: ``--lr-schedule`` choices.
LrSchedule = Enum("LrSchedule", {name.upper(): name for name in LR_SCHEDULES}, type=str)
#: ``--colour-constancy`` and ``--augmentation`` choices.
ColourConstancy = Enum("ColourConstancy", {name.upper(): name for name in COLOUR_CONSTANCY}, type=str)
Augmentation = Enum("Augmentation", {name.upper(): name for name in AUGMENTATIONS}, type=str)


class PredictFormat(str, Enum):
    """``predict --format``: one JSON line per image, or a table for people."""

    JSONL = "jsonl"
    TABLE = "table"


data_app = typer.Typer(help="Inspect and check training data.", pretty_exceptions_show_locals=False,
                       no_args_is_help=True)


def _store(store: Path | None):
    from worker.store.versions import ModelStore, shipped_store_root

    return ModelStore(store if store is not None else shipped_store_root())


def train_command(
    data: list[Path] = typer.Option(..., "--data", help="data root(s); layouts are detected"),
    out: Path = typer.Option(..., "--out", help="version folder to write"),
    epochs: int = typer.Option(default("epochs"),
                               help="maximum fine-tuning epochs (early stopping may end sooner)"),
    head_epochs: int = typer.Option(default("head_epochs"), help="epochs with the pretrained base frozen"),
    input_size: int = typer.Option(default("input_size"), help="square input size in pixels"),
    backbone: Backbone = typer.Option(default("backbone"), help=f"network architecture ({LITE_SIZES})"),
    weights: str = typer.Option(default("weights"), help=f"'{IMAGENET}' (the backbone's ImageNet file: "
                                f"{DEFAULT_WEIGHTS} or {LITE_WEIGHTS_PATTERN}), a path, or 'none'"),
    seed: int = typer.Option(default("seed")),
    resume: bool = typer.Option(default("resume"), help="continue from OUT/checkpoints"),
    batch_size: int = typer.Option(default("batch_size")),
    cache_dir: Path = typer.Option(default("cache_dir"), help="decoded-image cache folder"),
    threads: int = typer.Option(default("threads"), help="TensorFlow intra-op threads"),
    partial_labels: bool = typer.Option(default("partial_labels"),
                                        help="train on ISIC 2017 melanoma-only labels"),
    unfreeze_from: str | None = typer.Option(default("unfreeze_from"),
                                             help="first base layer (name prefix) fine-tuned in "
                                                  f"phase 2; default {DEFAULT_UNFREEZE}"),
    patience: int = typer.Option(default("patience"), help="early-stopping patience (epochs)"),
    lr_head: float = typer.Option(default("lr_head"), help="learning rate, frozen-base phase"),
    lr_fine: float = typer.Option(default("lr_fine"), help="learning rate, fine-tuning phase"),
    lr_schedule: LrSchedule = typer.Option(default("lr_schedule"),
                                           help="fine-tuning: plateau (x0.3 when flat) or cosine"),
    colour_constancy: ColourConstancy = typer.Option(default("colour_constancy"),
                                                     help="white balance inside the model (training "
                                                          "and serving alike)"),
    augmentation: Augmentation = typer.Option(default("augmentation"),
                                              help="standard, or camera: also white balance, "
                                                   "exposure, blur, dermoscope borders"),
    weight_power: float = typer.Option(default("weight_power"), min=0.0, max=1.0,
                                       help="sample weights: inverse class frequency to this power "
                                            "(0.5 square root, 0 none)"),
    limit: int | None = typer.Option(default("limit"),
                                     help="smoke runs: a random subset of this many images"),
    parent_version: str | None = typer.Option(default("parent_version")),
    n_boot: int = typer.Option(default("n_boot"), help="bootstrap resamples for confidence intervals"),
    jit: bool = typer.Option(default("jit_compile") is not False,
                             help="XLA-compile the training step (off: faster start, tiny runs)"),
    loso: bool = typer.Option(False, "--loso", help="Leave-one-source-out instead: per source, train this "
                              "recipe on the others and score it; OUT gets loso.json and loso.md, no version "
                              "(resumable per fold)"),
    loso_source: list[str] | None = typer.Option(None, "--loso-source",
                                                 help="With --loso: hold out only these sources"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON on stdout"),
) -> None:
    """Check data, train, calibrate and evaluate; write a complete model store version folder.

    Prints the new version; the trainer's log and a progress bar go to stderr. With --loso:
    the leave-one-source-out table instead (`models apply-loso` turns it into a threshold).
    """
    from worker.training.config import TrainConfig

    cfg = TrainConfig(
        data=tuple(data), out=out, input_size=input_size, backbone=Backbone(backbone).value,
        weights=weights, head_epochs=head_epochs, epochs=epochs, batch_size=batch_size, seed=seed,
        resume=resume, cache_dir=cache_dir, threads=threads, partial_labels=partial_labels,
        unfreeze_from=unfreeze_from, patience=patience, lr_head=lr_head, lr_fine=lr_fine, limit=limit,
        lr_schedule=LrSchedule(lr_schedule).value, parent_version=parent_version, n_boot=n_boot,
        colour_constancy=ColourConstancy(colour_constancy).value,
        augmentation=Augmentation(augmentation).value, weight_power=weight_power,
        jit_compile=default("jit_compile") if jit else False,
        command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )
    if loso:
        _loso(cfg, loso_source, as_json)
        return
    with progress("training") as steps, stdout_as_log(steps):
        from worker.training.train import train

        meta = train(cfg)
    if as_json:
        emit_json({"version": meta.version, "out": str(out), "sha256": meta.sha256,
                   "test": meta.metrics.get("test")})
    else:
        typer.echo(meta.version)


def _loso(cfg, sources: list[str] | None, as_json: bool) -> None:
    """``train --loso``: every fold, then the table (stdout) and loso.json."""
    with progress("leave-one-source-out") as steps, stdout_as_log(steps):
        from worker.training.loso import LOSO_FILE, loso_markdown, run_loso

        result = run_loso(cfg, sources=sources or None)
    if as_json:
        emit_json({"out": str(cfg.out / LOSO_FILE), "rules": result["rules"],
                   "folds": {s: {k: f[k] for k in ("n", "n_melanoma", "threshold", "melanoma_auc", "sensitivity",
                                                   "specificity")} for s, f in result["folds"].items()}})
    else:
        typer.echo(loso_markdown(result))


def _version_loso(st, version: str) -> dict | None:
    from worker.training.loso import LOSO_FILE, load_loso

    path = st.version_dir(version) / LOSO_FILE
    return load_loso(path) if path.is_file() else None


def evaluate_command(
    model: str | None = typer.Option(None, "--model", help="version (default: current)"),
    data: list[Path] = typer.Option(..., "--data", help="data root(s)"),
    store: Path | None = typer.Option(None, help="model store root (default: shipped store)"),
    out: Path | None = typer.Option(None, help="output folder (default runs/eval-<version>)"),
    cache_dir: Path = typer.Option(default("cache_dir"), help="decoded-image cache folder"),
    threads: int = typer.Option(default("threads"), help="TensorFlow intra-op threads"),
    n_boot: int = typer.Option(default("n_boot"), help="bootstrap resamples for confidence intervals"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON on stdout"),
) -> None:
    """Evaluate a stored version on data it did not train on (its test split plus unseen images)."""
    st = _store(store)
    version = model or st.current_version()
    if version is None:
        fail(f"no --model given and the store {st.root} has no current version", ExitCode.NOT_READY)
    out = out or Path("runs") / f"eval-{version}"
    with progress(f"evaluating {version}") as steps, stdout_as_log(steps):
        from worker.training.evaluation import evaluate_version

        metrics = evaluate_version(st, version, list(data), out, cache_dir, threads, n_boot)
    mel = metrics.get("melanoma", {})
    headline = {k: mel.get(k) for k in ("auc", "sensitivity", "specificity") if k in mel}
    loso = _version_loso(st, version)
    if as_json:
        emit_json({"version": version, "n": metrics.get("n"), "out": str(out), "melanoma": headline,
                   **({"loso": {"rules": loso.get("rules"), "folds": loso.get("folds")}} if loso else {})})
    else:
        typer.echo(f"evaluated {version} on {metrics.get('n', '?')} images -> {out}")
        typer.echo(json.dumps(headline, default=str))
        if loso:
            from worker.training.loso import loso_markdown

            typer.echo("\nleave-one-source-out (the version's loso.json):\n" + loso_markdown(loso))


def _image_paths(paths: list[Path]) -> Iterator[Path]:
    """Files as given; folders walked recursively in name order (hidden files skipped)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*")
                              if p.is_file() and not any(part.startswith(".") for part in
                                                         p.relative_to(path).parts))
        else:
            yield path


def _predict_row(clf, path: Path) -> dict:
    """One output row: the prediction, or the reason the input was rejected."""
    from worker.errors import InputRejected
    from worker.imaging.decode import DRAFT_MIN_SIDE, decode_file
    from worker.imaging.quality import assess_quality

    try:
        rgb = decode_file(path, draft_min_side=DRAFT_MIN_SIDE).rgb  # as the workers decode
    except InputRejected as exc:
        return {"path": str(path), "error": exc.code.value, "reason": exc.reason}
    usable, _ = assess_quality(rgb)
    return json.loads(clf.predict(rgb, usable_image=usable, path=str(path)).model_dump_json())


def _table_row(row: dict) -> str:
    if "error" in row:
        return f"{row['path'][-40:]:40} {'rejected':14} {row['error']:28} {'':>7}"
    return (f"{row['path'][-40:]:40} {row['triage']:14} {row['predicted_class']:28} "
            f"{row['melanoma_probability']:7.3f}")


def predict_command(
    paths: list[Path] = typer.Argument(..., help="image files or folders (recursive): JPEG, PNG, DICOM"),
    model: str | None = typer.Option(None, "--model", help="version (default: current)"),
    store: Path | None = typer.Option(None, help="model store root (default: shipped store)"),
    fmt: PredictFormat = typer.Option(PredictFormat.JSONL, "--format", help="output format"),
    threads: int = typer.Option(1, help="inference threads (LiteRT)"),
) -> None:
    """Classify and triage images with the workers' decoding and inference code.

    One JSON line (or table row) per image, and a line with "error" for a rejected input.
    Exit code 1 when any input was rejected, 3 when there is no model.
    """
    from worker.classify.inference import Classifier
    from worker.errors import ModelNotAvailable

    files = list(_image_paths(paths))
    with progress("loading the model") as steps:
        try:
            clf = Classifier.from_store(_store(store), model, threads=threads)
        except ModelNotAvailable as exc:
            fail(str(exc), ExitCode.NOT_READY)
        if fmt is PredictFormat.TABLE:
            typer.echo(f"{'path':40} {'triage':14} {'class':28} {'P(mel)':>7}  model {clf.version}")
        steps.step(f"predicting with {clf.version}", completed=0, total=len(files))
        rejected = 0
        for path in files:
            row = _predict_row(clf, path)
            rejected += "error" in row
            typer.echo(json.dumps(row) if fmt is PredictFormat.JSONL else _table_row(row))
            steps.advance()
    if rejected:
        raise typer.Exit(int(ExitCode.FAILED))


@data_app.command("check")
def data_check(
    data: list[Path] = typer.Option(..., "--data", help="data root(s)"),
    out: Path = typer.Option(Path("runs/data-check"), help="where data_quality.json/.md go"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON on stdout"),
) -> None:
    """Run the data checks (duplicates, conflicts, unreadable files) and write the report."""
    with progress("scanning and decode-checking the images", total=2) as steps:
        from worker.training import datachecks, manifest

        scanned = manifest.scan(list(data))
        steps.step("checking duplicates and label conflicts", completed=1)
        result = datachecks.run_checks(scanned, out)
        steps.advance()
    if as_json:
        emit_json({"kept": len(result.resolved), "out": str(out), "report": result.report})
    else:
        typer.echo((out / "data_quality.md").read_text())
        typer.echo(f"{len(result.resolved)} images kept; report in {out}")


@data_app.command("describe")
def data_describe(
    data: list[Path] = typer.Option(..., "--data", help="data root(s)"),
    out: Path = typer.Option(Path("runs/data-describe"), help="where the plots and summary go"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON on stdout"),
) -> None:
    """Class distribution, sample grid and image sizes of the raw manifest."""
    with progress("scanning the images", total=2) as steps:
        from worker.training import manifest
        from worker.training.describe import describe_dataset

        df = manifest.build_manifest(list(data))
        steps.step("plotting", completed=1)
        out.mkdir(parents=True, exist_ok=True)
        summary = describe_dataset(df, out)
        steps.advance()
    if as_json:
        emit_json({"images": len(df), "out": str(out),
                   "files": sorted(p.name for p in out.iterdir()), "summary": summary})
    else:
        typer.echo(summary)


def register(app: typer.Typer) -> None:
    """Add the training commands to ``app`` (the lead's ``melanoma-triage``)."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("predict")(predict_command)
    app.add_typer(data_app, name="data")
