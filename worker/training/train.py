"""One training run: data checks -> split -> cache -> two-phase fine-tuning -> calibration ->
evaluation -> a complete, self-contained model store version folder.

The data come from folders (``TrainConfig.data``, scanned and checked here) or as an already
resolved manifest frame (``train(cfg, manifest=df)``, the retraining path).

Output folder (``--out``)::

    model.keras  model.json  split.csv  data_quality.json/.md  calibration.json
    metrics.json  evaluation.pdf  *.png  training_log.csv  model_card.md
    checkpoints/  (resume state; the store ignores it)
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from schemas import CLASS_NAMES, ModelMetadata, TriageThresholds
from worker.classify.inference import predict_logits, softmax_t
from worker.store.versions import METADATA_FILE, MODEL_FILE, file_sha256
from worker.training import calibration, datachecks, dataset, manifest, network, split
from worker.training.config import TrainConfig, recipe
from worker.training.evaluation import evaluate_frame
from worker.training.model_card import write_model_card

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
LAST_WEIGHTS = "last.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
LOG_FILE = "training_log.csv"


def _say(msg: str) -> None:
    """Progress with a timestamp, flushed: training logs are read while a run is going."""
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def prepare_data(cfg: TrainConfig, resolved: pd.DataFrame | None = None) -> tuple[pd.DataFrame, str, dict]:
    """Resolved rows, then the ``limit`` subset and the split (split.csv); data_quality.json/.md
    go into ``cfg.out``.

    ``resolved`` None: scan ``cfg.data`` and run the data checks (the manifest hash is over
    the scanned files). Otherwise the rows are taken as already checked and resolved (the
    manifest columns, e.g. from retraining) and the hash is over those rows.
    """
    if resolved is None:
        scan = manifest.scan(list(cfg.data))
        man_hash = manifest.manifest_sha256(scan.manifest)
        checks = datachecks.run_checks(scan, cfg.out)
        df, report = checks.resolved, checks.report
    else:
        df = manifest.require_manifest(resolved)
        if df.empty:
            raise ValueError("the manifest handed to the trainer has no rows")
        man_hash = manifest.manifest_sha256(df)
        report = datachecks.report_for_resolved(df)
        datachecks.write_report(datachecks.CheckResult(resolved=df, report=report), cfg.out)
    if cfg.limit is not None and cfg.limit < len(df):
        df = df.sample(n=cfg.limit, random_state=cfg.seed).reset_index(drop=True)
    df = split.split_frame(df, seed=cfg.seed)
    split.check_no_leak(df)
    split.write_split(df, cfg.out / "split.csv")
    return df, man_hash, report


class _EpochState:
    """Keras callback factory: after every epoch save the last weights and the resume state."""

    @staticmethod
    def make(ckpt: Path, phase: int, best: list[float]):
        import keras

        class EpochState(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                val = float((logs or {}).get("val_loss", math.inf))
                best[0] = min(best[0], val)
                self.model.save_weights(ckpt / LAST_WEIGHTS)
                tmp = ckpt / (STATE_FILE + ".tmp")
                tmp.write_text(json.dumps({"phase": phase, "epoch": epoch + 1, "best_val_loss": best[0]}))
                tmp.replace(ckpt / STATE_FILE)

        return EpochState()


def cosine_lr(peak: float, epoch: int, epochs: int, floor: float = 0.02) -> float:
    """Half-cosine from ``peak`` (epoch 0) towards ``floor * peak`` (after the last epoch)."""
    frac = min(max(epoch, 0), epochs) / max(epochs, 1)
    return float(peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))))


def fit(cfg: TrainConfig, model, arrays: SplitArrays) -> None:
    """Phase 1 (frozen base) then phase 2 (fine-tuning); resumable from ``checkpoints/``.

    The augmentation runs where :func:`worker.training.augment.training_inputs` puts it for
    the Keras backend; ``trainer`` is what ``fit`` trains and the checkpoints hold (``model``
    itself, or a wrapper sharing its layers)."""
    import keras

    from worker.training.augment import training_inputs

    trainer, data = training_inputs(model, arrays.training(),
                                    (arrays.images[arrays.val], arrays.masks[arrays.val]),
                                    cfg.batch_size, cfg.augmentation, cfg.seed)
    ckpt = cfg.out / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    state = {"phase": 1, "epoch": 0, "best_val_loss": math.inf}
    if cfg.resume and (ckpt / STATE_FILE).is_file():
        state = json.loads((ckpt / STATE_FILE).read_text())
        trainer.load_weights(ckpt / LAST_WEIGHTS)
        _say(f"resuming: phase {state['phase']}, {state['epoch']} epochs done")
    elif (ckpt / LOG_FILE).exists():
        (ckpt / LOG_FILE).unlink()
    best = [float(state["best_val_loss"])]
    verbose = cfg.verbose if cfg.verbose is not None else (1 if sys.stdout.isatty() else 2)
    phases = [(1, cfg.head_epochs, cfg.lr_head), (2, cfg.head_epochs + cfg.epochs, cfg.lr_fine)]
    for phase, end_epoch, lr in phases:
        if state["phase"] > phase:
            continue  # finished before the interruption
        network.set_trainable(model, phase, cfg.unfreeze_from or network.DEFAULT_UNFREEZE[cfg.backbone])
        trainer.compile(optimizer=keras.optimizers.Adam(lr), loss=network.partial_label_loss,
                        metrics=[network.melanoma_auc_metric(), network.allowed_accuracy_metric()],
                        jit_compile=cfg.jit_compile)
        initial = state["epoch"] if state["phase"] == phase else phases[phase - 2][1]
        callbacks = [
            _EpochState.make(ckpt, phase, best),
            keras.callbacks.ModelCheckpoint(ckpt / BEST_WEIGHTS, monitor="val_loss", save_best_only=True,
                                            save_weights_only=True, initial_value_threshold=best[0]
                                            if math.isfinite(best[0]) else None),
            keras.callbacks.CSVLogger(ckpt / LOG_FILE, append=True),
        ]
        if phase == 2:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                                           restore_best_weights=False))
            if cfg.lr_schedule == "cosine":
                # per epoch, from the absolute epoch index: a resumed run continues the same curve
                callbacks.append(keras.callbacks.LearningRateScheduler(
                    lambda epoch, _lr: cosine_lr(cfg.lr_fine, epoch - cfg.head_epochs, cfg.epochs)))
            elif cfg.lr_schedule == "plateau":
                callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3,
                                                                   patience=2, min_lr=1e-6))
            else:
                raise ValueError(f"lr_schedule must be 'plateau' or 'cosine', not {cfg.lr_schedule!r}")
        if initial < end_epoch:
            _say(f"phase {phase}: epochs {initial + 1}..{end_epoch}, lr {lr:g}"
                 f"{' (cosine)' if phase == 2 and cfg.lr_schedule == 'cosine' else ''}")
            trainer.fit(**data, epochs=end_epoch, initial_epoch=initial, callbacks=callbacks,
                        verbose=verbose)
        if (ckpt / BEST_WEIGHTS).is_file():
            trainer.load_weights(ckpt / BEST_WEIGHTS)  # best of every epoch so far, both phases
        state = {"phase": phase + 1, "epoch": end_epoch, "best_val_loss": best[0]}
        (ckpt / STATE_FILE).write_text(json.dumps(state))


def summarize(metrics: dict) -> dict:
    """The headline numbers for model.json (the full set stays in metrics.json; per source
    they are in model.json's ``test_by_source``)."""
    keep = {}
    for key in ("n", "melanoma", "nine_class", "calibration", "soon"):
        if key in metrics:
            keep[key] = metrics[key]
    text = json.dumps(keep, default=str)
    if len(text) > 60_000:  # keep model.json readable
        keep = {k: keep[k] for k in ("n", "melanoma") if k in keep}
    return json.loads(json.dumps(keep, default=str))


def save_clean_model(cfg: TrainConfig, model, path: Path) -> None:
    """An uncompiled copy (no optimizer state, no custom loss): loads with plain Keras."""
    clean = network.build_network(cfg.input_size, weights=None, backbone=cfg.backbone,
                                  colour_constancy=cfg.colour_constancy)
    clean.set_weights(model.get_weights())
    clean.save(path)


@dataclass(frozen=True)
class SplitArrays:
    """The cached images and targets of a split frame, in its row order, with a boolean row
    selector per subset (``train`` leaves out melanoma-only rows without partial labels)."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    melanoma: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    weight_power: float = 0.5  # sample weights: inverse class frequency to this power

    @classmethod
    def from_frame(cls, df: pd.DataFrame, cfg: TrainConfig) -> SplitArrays:
        labels = dataset.label_indices(df)
        sub = df["subset"].to_numpy()
        train = sub == "train"
        if not cfg.partial_labels:
            train = train & (labels >= 0)
        return cls(images=dataset.build_cache(df, cfg.input_size, cfg.cache_dir),
                   masks=dataset.label_masks(df), labels=labels,
                   melanoma=df["melanoma"].to_numpy().astype(int), train=train, val=sub == "val",
                   test=sub == "test", weight_power=cfg.weight_power)

    def training(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The training rows: uint8 images, label masks and softened inverse-frequency weights."""
        masks = self.masks[self.train]
        return self.images[self.train], masks, dataset.sample_weights(masks, self.weight_power)


def train(cfg: TrainConfig, manifest: pd.DataFrame | None = None) -> ModelMetadata:
    """One complete training run into ``cfg.out``.

    ``manifest`` None: the data come from the folders in ``cfg.data`` (scanned and checked
    here). Otherwise ``manifest`` is an already resolved frame with the manifest columns
    (``worker.training.manifest.MANIFEST_COLUMNS``: what ``datachecks.run_checks(...).resolved``
    returns) and ``cfg.data`` is ignored (pass ``()``): retraining hands its rows over
    without writing them back to disk as folder layouts.
    """
    import keras

    t0 = time.time()
    cfg.out.mkdir(parents=True, exist_ok=True)
    network.configure_threads(cfg.threads)
    keras.utils.set_random_seed(cfg.seed)

    _say("manifest, data checks, split" if manifest is None else "resolved manifest, split")
    df, man_hash, report = prepare_data(cfg, manifest)
    counts = {str(k): int(v) for k, v in df.groupby("subset").size().items()}
    _say(f"{len(df)} images after resolution: {counts}")
    arrays = SplitArrays.from_frame(df, cfg)

    start_weights = network.resolve_weights(cfg.weights, cfg.backbone)
    model = network.build_network(cfg.input_size, start_weights, backbone=cfg.backbone,
                                  colour_constancy=cfg.colour_constancy)
    fit(cfg, model, arrays)
    train_seconds = time.time() - t0

    _say("calibration on the validation split")
    va = arrays.val
    calib = calibration.calibrate(predict_logits(model, arrays.images[va]), arrays.masks[va],
                                  arrays.labels[va], arrays.melanoma[va])
    (cfg.out / "calibration.json").write_text(json.dumps(calib, indent=1))

    _say("evaluation on the held-out test split")
    te = arrays.test
    test_probs = softmax_t(predict_logits(model, arrays.images[te]), calib["temperature"])
    metrics = evaluate_frame(test_probs, df[te].reset_index(drop=True), TriageThresholds(**calib["thresholds"]),
                             cfg.out, title=f"Test split ({int(te.sum())} images)", seed=cfg.seed,
                             n_boot=cfg.n_boot)
    (cfg.out / "metrics_by_source.json").write_text(json.dumps(metrics["per_source"], indent=1))

    meta = write_version(cfg, model, VersionFacts(
        manifest_sha256=man_hash, calibration=calib, metrics=metrics, split_counts=counts,
        train_seconds=train_seconds, imagenet_start=start_weights is not None))
    write_model_card(cfg.out, meta, report, calib, metrics)
    _say(f"done: version {meta.version} in {time.time() - t0:.0f} s")
    return meta


@dataclass(frozen=True)
class VersionFacts:
    """What a finished run learnt about itself, for model.json."""

    manifest_sha256: str
    calibration: dict
    metrics: dict
    split_counts: dict
    train_seconds: float
    imagenet_start: bool


def write_version(cfg: TrainConfig, model, facts: VersionFacts) -> ModelMetadata:
    """model.keras (atomically), the training log and model.json into ``cfg.out``."""
    ckpt = cfg.out / CHECKPOINT_DIR
    if (ckpt / LOG_FILE).is_file():
        shutil.copyfile(ckpt / LOG_FILE, cfg.out / LOG_FILE)
    tmp_model = cfg.out / (MODEL_FILE + ".tmp.keras")
    save_clean_model(cfg, model, tmp_model)
    tmp_model.replace(cfg.out / MODEL_FILE)
    sha = file_sha256(cfg.out / MODEL_FILE)
    created = datetime.now(UTC)
    calib = facts.calibration
    meta = ModelMetadata(
        version=f"{created:%Y%m%d-%H%M}-{sha[:8]}", created_at=created,
        parent_version=cfg.parent_version, sha256=sha, input_size=cfg.input_size,
        class_names=list(CLASS_NAMES), temperature=calib["temperature"],
        thresholds=TriageThresholds(**calib["thresholds"]),
        metrics={"test": summarize(facts.metrics), "test_by_source": facts.metrics["per_source"],
                 "validation_calibration": {
                     k: calib[k] for k in ("nll_before", "nll_after", "ece_before", "ece_after")},
                 "split_counts": facts.split_counts,
                 "train_seconds": round(facts.train_seconds, 1)},
        training_command=cfg.command, data_manifest_sha256=facts.manifest_sha256, recipe=recipe(cfg),
        notes=(f"{network.BACKBONE_TITLES[cfg.backbone]} @ {cfg.input_size}px, weights "
               f"{'ImageNet' if facts.imagenet_start else 'none (from scratch)'}, partial-label loss "
               f"{'on' if cfg.partial_labels else 'off'}, colour constancy {cfg.colour_constancy}, "
               f"augmentation {cfg.augmentation}, seed {cfg.seed}"),
    )
    (cfg.out / METADATA_FILE).write_text(meta.model_dump_json(indent=1))
    return meta
