"""Training-side commands for the lead's typer app: ``train``, ``evaluate``, ``predict`` and
``data describe|check``. Heavy imports (TensorFlow, the pipeline) happen inside commands.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from worker.training.network import (
    BACKBONES,
    DEFAULT_UNFREEZE,
    DEFAULT_WEIGHTS,
    IMAGENET,
    LITE0_WEIGHTS,
)

data_app = typer.Typer(help="Inspect and check training data.", pretty_exceptions_show_locals=False)


def _store(store: Path | None):
    from worker.model_store import ModelStore, shipped_store_root

    return ModelStore(store if store is not None else shipped_store_root())


def train_command(
    data: list[Path] = typer.Option(..., "--data", help="data root(s); layouts are detected"),
    out: Path = typer.Option(..., "--out", help="version folder to write"),
    epochs: int = typer.Option(20, help="maximum fine-tuning epochs (early stopping may end sooner)"),
    head_epochs: int = typer.Option(2, help="epochs with the pretrained base frozen"),
    input_size: int = typer.Option(224, help="square input size in pixels"),
    backbone: str = typer.Option("lite0", help=f"one of {', '.join(BACKBONES)}"),
    weights: str = typer.Option(IMAGENET, help=f"'{IMAGENET}' (the backbone's ImageNet file: "
                                f"{DEFAULT_WEIGHTS} or {LITE0_WEIGHTS}), a path, or 'none'"),
    seed: int = typer.Option(42),
    resume: bool = typer.Option(False, help="continue from OUT/checkpoints"),
    batch_size: int = typer.Option(32),
    cache_dir: Path = typer.Option(Path("runs/cache"), help="decoded-image cache folder"),
    threads: int = typer.Option(2, help="TensorFlow intra-op threads"),
    partial_labels: bool = typer.Option(True, help="train on ISIC 2017 melanoma-only labels"),
    unfreeze_from: str | None = typer.Option(None, help="first base layer (name prefix) fine-tuned in "
                                              f"phase 2; default {DEFAULT_UNFREEZE}"),
    patience: int = typer.Option(6, help="early-stopping patience (epochs)"),
    lr_head: float = typer.Option(1e-3, help="learning rate, frozen-base phase"),
    lr_fine: float = typer.Option(3e-4, help="learning rate, fine-tuning phase"),
    lr_schedule: str = typer.Option("cosine", help="fine-tuning: 'plateau' (x0.3 when flat) or 'cosine'"),
    limit: int | None = typer.Option(None, help="smoke runs: a random subset of this many images"),
    parent_version: str | None = typer.Option(None),
    n_boot: int = typer.Option(1000, help="bootstrap resamples for confidence intervals"),
    jit: bool = typer.Option(True, help="XLA-compile the training step (off: faster start, tiny runs)"),
) -> None:
    """Check data, train, calibrate and evaluate; write a complete model store version folder."""
    from worker.training.train import TrainConfig, train

    cfg = TrainConfig(
        data=tuple(data), out=out, input_size=input_size, backbone=backbone,
        weights=weights,
        head_epochs=head_epochs, epochs=epochs, batch_size=batch_size, seed=seed, resume=resume,
        cache_dir=cache_dir, threads=threads, partial_labels=partial_labels,
        unfreeze_from=unfreeze_from, patience=patience, lr_head=lr_head, lr_fine=lr_fine, limit=limit,
        lr_schedule=lr_schedule,
        parent_version=parent_version, n_boot=n_boot, jit_compile="auto" if jit else False,
        command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )
    meta = train(cfg)
    typer.echo(meta.version)


def evaluate_command(
    model: str | None = typer.Option(None, "--model", help="version (default: current)"),
    data: list[Path] = typer.Option(..., "--data", help="data root(s)"),
    store: Path | None = typer.Option(None, help="model store root (default: shipped store)"),
    out: Path | None = typer.Option(None, help="output folder (default runs/eval-<version>)"),
    cache_dir: Path = typer.Option(Path("runs/cache")),
    threads: int = typer.Option(2),
    n_boot: int = typer.Option(1000),
) -> None:
    """Evaluate a stored version on data it did not train on (its test split plus unseen images)."""
    from worker.training.train import evaluate_version

    st = _store(store)
    version = model or st.current_version()
    if version is None:
        raise typer.BadParameter("no --model given and the store has no current version")
    out = out or Path("runs") / f"eval-{version}"
    metrics = evaluate_version(st, version, list(data), out, cache_dir, threads, n_boot)
    mel = metrics.get("melanoma", {})
    typer.echo(f"evaluated {version} on {metrics.get('n', '?')} images -> {out}")
    typer.echo(json.dumps({k: mel.get(k) for k in ("auc", "sensitivity", "specificity") if k in mel}, default=str))


def _image_paths(paths: list[Path]):
    """Files as given; folders walked recursively in name order (hidden files skipped)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*")
                              if p.is_file() and not any(part.startswith(".") for part in
                                                         p.relative_to(path).parts))
        else:
            yield path


def predict_command(
    paths: list[Path] = typer.Argument(..., help="image files or folders (recursive): JPEG, PNG, DICOM"),
    model: str | None = typer.Option(None, "--model", help="version (default: current)"),
    store: Path | None = typer.Option(None, help="model store root (default: shipped store)"),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or table"),
    threads: int = typer.Option(1),
) -> None:
    """Classify and triage images with the workers' decoding and inference code; one JSON
    line (or table row) per image, and a line with "error" for a rejected input."""
    from worker.classify.inference import Classifier, configure_tensorflow
    from worker.errors import InputRejected
    from worker.imaging.decode import decode_file
    from worker.imaging.quality import assess_quality

    if fmt not in ("jsonl", "table"):
        raise typer.BadParameter("--format must be jsonl or table")
    configure_tensorflow(threads)
    clf = Classifier.from_store(_store(store), model)
    if fmt == "table":
        typer.echo(f"{'path':40} {'triage':14} {'class':28} {'P(mel)':>7}  model {clf.version}")
    for path in _image_paths(paths):
        try:
            rgb = decode_file(path).rgb
        except InputRejected as exc:
            row = {"path": str(path), "error": exc.code, "reason": exc.reason}
        else:
            usable, _ = assess_quality(rgb)
            row = json.loads(clf.predict(rgb, usable_image=usable, path=str(path)).model_dump_json())
        if fmt == "jsonl":
            typer.echo(json.dumps(row))
        elif "error" in row:
            typer.echo(f"{row['path'][-40:]:40} {'rejected':14} {row['error']:28} {'':>7}")
        else:
            typer.echo(f"{row['path'][-40:]:40} {row['triage']:14} {row['predicted_class']:28} "
                       f"{row['melanoma_probability']:7.3f}")


@data_app.command("check")
def data_check(
    data: list[Path] = typer.Option(..., "--data", help="data root(s)"),
    out: Path = typer.Option(Path("runs/data-check"), help="where data_quality.json/.md go"),
) -> None:
    """Run the data checks (duplicates, conflicts, unreadable files) and write the report."""
    from worker.training import datachecks, manifest

    result = datachecks.run_checks(manifest.scan(list(data)), out)
    typer.echo((out / "data_quality.md").read_text())
    typer.echo(f"{len(result.resolved)} images kept; report in {out}")


@data_app.command("describe")
def data_describe(
    data: list[Path] = typer.Option(..., "--data", help="data root(s)"),
    out: Path = typer.Option(Path("runs/data-describe"), help="where the plots and summary go"),
) -> None:
    """Class distribution, sample grid and image sizes of the raw manifest."""
    from worker.training import manifest
    from worker.training.describe import describe_dataset

    df = manifest.build_manifest(list(data))
    out.mkdir(parents=True, exist_ok=True)
    typer.echo(describe_dataset(df, out))


def register(app: typer.Typer) -> None:
    """Add the training commands to ``app`` (the lead's ``melanoma-triage``)."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("predict")(predict_command)
    app.add_typer(data_app, name="data")
