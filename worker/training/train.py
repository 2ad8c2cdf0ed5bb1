"""One training run: data checks -> split -> cache -> two-phase fine-tuning -> calibration ->
evaluation -> a complete, self-contained model store version folder.

Output folder (``--out``)::

    model.keras  model.json  split.csv  data_quality.json/.md  calibration.json
    metrics.json  evaluation.pdf  *.png  training_log.csv  model_card.md
    checkpoints/  (resume state; the store ignores it)
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from schemas import CLASS_NAMES, ModelMetadata, TriageThresholds
from worker.model_store import METADATA_FILE, MODEL_FILE, file_sha256
from worker.training import calibration, datachecks, dataset, manifest, network, split

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
LAST_WEIGHTS = "last.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
LOG_FILE = "training_log.csv"


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[Path, ...]
    out: Path
    input_size: int = 224
    backbone: str = "lite0"
    weights: Path | str | None = network.IMAGENET  # "imagenet": the backbone's file; None: scratch
    head_epochs: int = 2
    epochs: int = 20  # maximum fine-tuning epochs (early stopping may end sooner)
    batch_size: int = 32
    seed: int = 42
    resume: bool = False
    cache_dir: Path = Path("runs/cache")
    threads: int = 2
    patience: int = 6
    lr_head: float = 1e-3
    lr_fine: float = 3e-4
    unfreeze_from: str | None = None  # layer-name prefix; None: network.DEFAULT_UNFREEZE
    lr_schedule: str = "cosine"  # phase 2: "plateau" (x0.3 after 2 flat epochs) or "cosine"
    partial_labels: bool = True
    limit: int | None = None  # smoke runs: a random subset of this many images
    parent_version: str | None = None
    command: str = field(default_factory=lambda: shlex.join(sys.argv))
    verbose: int | None = None
    n_boot: int = 1000
    jit_compile: bool | str = "auto"  # XLA (Keras default); off saves compile time in tests


def _say(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def prepare_data(cfg: TrainConfig) -> tuple[pd.DataFrame, str, dict]:
    """Manifest, checks (reports written into ``cfg.out``), split (split.csv)."""
    scan = manifest.scan(list(cfg.data))
    man_hash = manifest.manifest_sha256(scan.manifest)
    checks = datachecks.run_checks(scan, cfg.out)
    df = checks.resolved
    if cfg.limit is not None and cfg.limit < len(df):
        df = df.sample(n=cfg.limit, random_state=cfg.seed).reset_index(drop=True)
    df = split.split_frame(df, seed=cfg.seed)
    split.check_no_leak(df)
    split.write_split(df, cfg.out / "split.csv")
    return df, man_hash, checks.report


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


def fit(cfg: TrainConfig, model, train_ds, val_ds) -> None:
    """Phase 1 (frozen base) then phase 2 (fine-tuning); resumable from ``checkpoints/``."""
    import keras

    ckpt = cfg.out / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    state = {"phase": 1, "epoch": 0, "best_val_loss": math.inf}
    if cfg.resume and (ckpt / STATE_FILE).is_file():
        state = json.loads((ckpt / STATE_FILE).read_text())
        model.load_weights(ckpt / LAST_WEIGHTS)
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
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=network.partial_label_loss,
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
            model.fit(train_ds, validation_data=val_ds, epochs=end_epoch, initial_epoch=initial,
                      callbacks=callbacks, verbose=verbose)
        if (ckpt / BEST_WEIGHTS).is_file():
            model.load_weights(ckpt / BEST_WEIGHTS)  # best of every epoch so far, both phases
        state = {"phase": phase + 1, "epoch": end_epoch, "best_val_loss": best[0]}
        (ckpt / STATE_FILE).write_text(json.dumps(state))


def evaluate_test_split(out: Path, probs: np.ndarray, test_df: pd.DataFrame, thresholds: TriageThresholds,
                        seed: int, n_boot: int = 1000) -> dict:
    """The test-split evaluation a version folder carries (metrics.json, figures, PDF)."""
    from worker.training.evaluation import evaluate_predictions

    return evaluate_predictions(
        probs, dataset.label_indices(test_df), test_df["melanoma"].to_numpy().astype(int), thresholds,
        test_df["path"].tolist(), out, title=f"Test split ({len(test_df)} images)", seed=seed,
        sources=test_df["source"].tolist(), n_boot=n_boot,
    )


def predict_logits(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    out = [fn(tf.convert_to_tensor(images[i:i + batch_size], dtype=tf.float32)).numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def summarize(metrics: dict) -> dict:
    """The headline numbers for model.json (the full set stays in metrics.json)."""
    keep = {}
    for key in ("n", "melanoma", "nine_class", "calibration", "soon", "per_source"):
        if key in metrics:
            keep[key] = metrics[key]
    text = json.dumps(keep, default=str)
    if len(text) > 60_000:  # keep model.json readable
        keep = {k: keep[k] for k in ("n", "melanoma") if k in keep}
    return json.loads(json.dumps(keep, default=str))


def save_clean_model(cfg: TrainConfig, model, path: Path) -> None:
    """An uncompiled copy (no optimizer state, no custom loss): loads with plain Keras."""
    clean = network.build_network(cfg.input_size, weights=None, backbone=cfg.backbone)
    clean.set_weights(model.get_weights())
    clean.save(path)


def train(cfg: TrainConfig) -> ModelMetadata:
    import keras

    t0 = time.time()
    cfg.out.mkdir(parents=True, exist_ok=True)
    network.configure_threads(cfg.threads)
    keras.utils.set_random_seed(cfg.seed)

    _say("manifest, data checks, split")
    df, man_hash, report = prepare_data(cfg)
    counts = df.groupby("subset").size().to_dict()
    _say(f"{len(df)} images after resolution: {counts}")

    images = dataset.build_cache(df, cfg.input_size, cfg.cache_dir)
    masks = dataset.label_masks(df)
    labels = dataset.label_indices(df)
    mel = df["melanoma"].to_numpy().astype(int)
    sub = df["subset"].to_numpy()
    tr, va, te = (sub == "train"), (sub == "val"), (sub == "test")
    if not cfg.partial_labels:
        tr = tr & (labels >= 0)
    sample_weights = dataset.sample_weights(masks[tr])
    train_ds = dataset.make_dataset(images[tr], masks[tr], sample_weights, cfg.batch_size, True, cfg.seed)
    val_ds = dataset.make_dataset(images[va], masks[va], None, 64, False)

    start_weights = network.resolve_weights(cfg.weights, cfg.backbone)
    model = network.build_network(cfg.input_size, start_weights, backbone=cfg.backbone)
    fit(cfg, model, train_ds, val_ds)
    train_seconds = time.time() - t0

    _say("calibration on the validation split")
    val_logits = predict_logits(model, images[va])
    calib = calibration.calibrate(val_logits, masks[va], labels[va], mel[va])
    temperature = calib["temperature"]
    thresholds = TriageThresholds(**calib["thresholds"])
    (cfg.out / "calibration.json").write_text(json.dumps(calib, indent=1))

    _say("evaluation on the held-out test split")
    test_probs = calibration.softmax_t(predict_logits(model, images[te]), temperature)
    metrics = evaluate_test_split(cfg.out, test_probs, df[te].reset_index(drop=True), thresholds,
                                  cfg.seed, cfg.n_boot)

    by_source = per_source_metrics(test_probs, labels[te], mel[te], df.loc[te, "source"].tolist(),
                                   thresholds, cfg.seed, cfg.n_boot)
    (cfg.out / "metrics_by_source.json").write_text(json.dumps(by_source, indent=1))

    ckpt = cfg.out / CHECKPOINT_DIR
    if (ckpt / LOG_FILE).is_file():
        shutil.copyfile(ckpt / LOG_FILE, cfg.out / LOG_FILE)
    tmp_model = cfg.out / (MODEL_FILE + ".tmp.keras")
    save_clean_model(cfg, model, tmp_model)
    tmp_model.replace(cfg.out / MODEL_FILE)
    sha = file_sha256(cfg.out / MODEL_FILE)
    created = datetime.now(UTC)
    meta = ModelMetadata(
        version=f"{created:%Y%m%d-%H%M}-{sha[:8]}", created_at=created,
        parent_version=cfg.parent_version, sha256=sha, input_size=cfg.input_size,
        class_names=list(CLASS_NAMES), temperature=temperature, thresholds=thresholds,
        metrics={"test": summarize(metrics), "test_by_source": by_source, "validation_calibration": {
            k: calib[k] for k in ("nll_before", "nll_after", "ece_before", "ece_after")},
            "split_counts": {k: int(v) for k, v in counts.items()},
            "train_seconds": round(train_seconds, 1)},
        training_command=cfg.command, data_manifest_sha256=man_hash,
        notes=(f"{network.BACKBONE_TITLES[cfg.backbone]} @ {cfg.input_size}px, weights "
               f"{'ImageNet' if start_weights else 'none (from scratch)'}, partial-label loss "
               f"{'on' if cfg.partial_labels else 'off'}, seed {cfg.seed}"),
    )
    (cfg.out / METADATA_FILE).write_text(meta.model_dump_json(indent=1))
    write_model_card(cfg.out, meta, report, calib, metrics, cfg)
    _say(f"done: version {meta.version} in {time.time() - t0:.0f} s")
    return meta


def per_source_metrics(probs: np.ndarray, labels: np.ndarray, melanoma: np.ndarray, sources: list[str],
                       thresholds: TriageThresholds, seed: int = 0, n_boot: int = 1000) -> dict:
    """Per-source headline metrics with percentile-bootstrap 95% CIs (evaluation helper's bootstrap)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from worker.classify.triage import class_call
    from worker.training.metrics import (
        binary_sens_spec,
        bootstrap_ci,
        expected_calibration_error,
    )

    def ci(t):
        f = lambda v: None if v is None or not math.isfinite(v) else float(v)
        return {"value": f(t[0]), "ci_low": f(t[1]), "ci_high": f(t[2])}

    mel_idx = calibration.MEL
    src = np.asarray(sources)
    out = {}
    for name in sorted(set(sources)):
        m = src == name
        y, p = melanoma[m], probs[m, mel_idx]
        known = labels[m] >= 0
        kl, kp = labels[m][known], probs[m][known]
        t = thresholds.urgent_melanoma
        auc = lambda yy, pp: roc_auc_score(yy, pp) if 0 < yy.sum() < yy.size else None
        bal = lambda ll, pp: balanced_accuracy_score(ll, class_call(pp, thresholds.class_bias)) if ll.size else None
        out[name] = {
            "n": int(m.sum()), "n_melanoma": int(y.sum()), "n_nine_class": int(known.sum()),
            "melanoma_auc": ci(bootstrap_ci(auc, y, p, n_boot=n_boot, seed=seed)),
            "urgent_sensitivity": ci(bootstrap_ci(lambda a, b, t=t: binary_sens_spec(a, b, t)[0], y, p,
                                                  n_boot=n_boot, seed=seed)),
            "urgent_specificity": ci(bootstrap_ci(lambda a, b, t=t: binary_sens_spec(a, b, t)[1], y, p,
                                                  n_boot=n_boot, seed=seed)),
            "balanced_accuracy": ci(bootstrap_ci(bal, kl, kp, n_boot=n_boot, seed=seed))
            if kl.size else None,
            "ece": expected_calibration_error(kp, kl) if kl.size else None,
        }
    return out


#: Release targets on the held-out test split (see model_card.md).
TARGETS = {"melanoma_auc": 0.90, "urgent_sensitivity": 0.95, "balanced_accuracy": 0.65, "ece": 0.05}


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ci(d) -> str:
    if not isinstance(d, dict):
        return _fmt(d)
    return f"{_fmt(d.get('value'))} ({_fmt(d.get('ci_low'))}-{_fmt(d.get('ci_high'))})"


def _val(d):
    return d.get("value") if isinstance(d, dict) else d


def _target_rows(metrics: dict) -> list[str]:
    mel = metrics.get("melanoma", {})
    rows = [
        ("melanoma-vs-rest ROC AUC", mel.get("auc"), ">=", TARGETS["melanoma_auc"]),
        ("melanoma sensitivity at the urgent threshold", mel.get("sensitivity"), ">=", TARGETS["urgent_sensitivity"]),
        ("melanoma specificity at the urgent threshold", mel.get("specificity"), None, None),
        ("nine-class balanced accuracy", metrics.get("balanced_accuracy"), ">=", TARGETS["balanced_accuracy"]),
        ("top-label ECE (15 bins)", metrics.get("ece"), "<=", TARGETS["ece"]),
        ("soon sensitivity (BCC/SCC/AK)", metrics.get("soon", {}).get("sensitivity"), None, None),
        ("soon specificity", metrics.get("soon", {}).get("specificity"), None, None),
    ]
    out = ["| metric | test value (95% bootstrap CI) | target | met |", "|---|---|---|---|"]
    for name, d, op, target in rows:
        v = _val(d)
        met = "" if target is None or v is None else ("yes" if (v >= target if op == ">=" else v <= target) else "**no**")
        out.append(f"| {name} | {_ci(d)} | {'' if target is None else f'{op} {target}'} | {met} |")
    return out


def _source_rows(meta: ModelMetadata, metrics: dict) -> list[str]:
    by_source = meta.metrics.get("test_by_source")
    if not by_source:
        return [f"| {s} | {d.get('n')} | {d.get('n_melanoma')} | {_ci(d.get('melanoma_auc'))} | "
                f"{_ci(d.get('balanced_accuracy'))} |" for s, d in (metrics.get("per_source") or {}).items()]
    rows = ["", "| source | urgent sensitivity | urgent specificity | ECE |", "|---|---|---|---|"]
    rows += [f"| {s} | {_ci(d.get('urgent_sensitivity'))} | {_ci(d.get('urgent_specificity'))} | "
             f"{_fmt(d.get('ece'))} |" for s, d in by_source.items()]
    return [f"| {s} | {d.get('n')} | {d.get('n_melanoma')} | {_ci(d.get('melanoma_auc'))} | "
            f"{_ci(d.get('balanced_accuracy'))} |" for s, d in by_source.items()] + rows


def _class_call_line(calib: dict, metrics: dict) -> str:
    call = calib.get("class_call") or {}
    scores = call.get("balanced_accuracy_by_beta") or {}
    if not call.get("class_bias"):
        return "- class call (`predicted_class`): the most probable class"
    beta = call["beta"]
    test = metrics.get("class_call") or {}
    return (f"- class call (`predicted_class`, not triage): argmax of log p + class bias, prior "
            f"correction beta {beta}; balanced accuracy with plain argmax -> with the bias: validation "
            f"{_fmt(scores.get('0.0'))} -> {_fmt(scores.get(str(float(beta))))}, "
            f"test {_fmt(test.get('balanced_accuracy_argmax'))} -> {_fmt(test.get('balanced_accuracy'))} "
            f"(test accuracy {_fmt(test.get('accuracy_argmax'))} -> {_fmt(test.get('accuracy'))})")


def render_model_card(meta: ModelMetadata, report: dict, calib: dict, metrics: dict) -> str:
    final = report["final"]
    th = meta.thresholds
    nine = metrics.get("nine_class", {})
    lines = [
        f"# Model card: {meta.version}", "",
        "## Intended use",
        "Decision support for triaging dermoscopy images of single skin lesions into urgent "
        "(suspected melanoma), soon (suspected BCC/SCC/actinic keratosis), routine or "
        "indeterminate. Not a diagnosis: every report is reviewed by a clinician. Not for "
        "clinical (non-dermoscopic) photographs, mucosal or nail lesions, or children.", "",
        "## Model",
        f"- {meta.notes}",
        f"- input: RGB {meta.input_size}x{meta.input_size} float 0..255 (scaling is inside the model), "
        "squashed to square by `worker.classify.preprocess.to_model_input`; output: 9 logits; calibrated "
        f"probabilities = softmax(logits / T), T = {meta.temperature:.4f} (fitted on validation; "
        f"validation NLL {_fmt(calib.get('nll_before'))} -> {_fmt(calib.get('nll_after'))}, "
        f"ECE {_fmt(calib.get('ece_before'))} -> {_fmt(calib.get('ece_after'))})",
        f"- training command: `{meta.training_command}`",
        f"- training wall time: {meta.metrics.get('train_seconds', 'n/a')} s (fit only) on 2 CPU cores",
        f"- data manifest sha256: `{meta.data_manifest_sha256}`", "",
        "## Training data",
        f"{final['images']} distinct images after de-duplication and label-conflict resolution "
        "(data_quality.md lists every rule and case). Split by lesion / image id / content-hash "
        f"group, stratified, 70/15/15 (split.csv): {meta.metrics.get('split_counts')}.", "",
        "| class | images |", "|---|---|",
    ] + [f"| {k} | {v} |" for k, v in final["per_class"].items()] + [
        "", "| source | images |", "|---|---|",
    ] + [f"| {k} | {v} |" for k, v in final["per_source"].items()] + [
        "", "## Operating points (chosen on the validation split; calibration.json has the rules)",
        f"- urgent: P(melanoma) >= {th.urgent_melanoma:.4f} (validation sensitivity "
        f"{_fmt(th.urgent_sensitivity)}, specificity {_fmt(th.urgent_specificity)})",
        f"- soon: P(BCC)+P(SCC)+P(AK) >= {th.soon_keratinocyte:.4f} (validation sensitivity "
        f"{_fmt(th.soon_sensitivity)}, specificity {_fmt(th.soon_specificity)})",
        f"- indeterminate: top probability < {th.min_confidence:.4f} (validation share "
        f"{_fmt(calib.get('indeterminate_share_validation'))}) or an unusable image",
        _class_call_line(calib, metrics), "",
        f"## Performance on the held-out test split ({metrics.get('n')} images, "
        f"{metrics.get('n_nine_class')} with nine-class labels)", "",
    ] + _target_rows(metrics) + [
        "", f"Triage levels on the test split: {metrics.get('triage_counts')}", "",
        "### Per class (nine-class rows)", "",
        "| class | support | precision | recall | F1 | one-vs-rest AUC |", "|---|---|---|---|---|---|",
    ] + [
        f"| {c} | {d.get('support')} | {_fmt(d.get('precision'))} | {_fmt(d.get('recall'))} | "
        f"{_fmt(d.get('f1'))} | {_fmt(d.get('auc'))} |"
        for c, d in (nine.get("per_class") or {}).items()
    ] + [
        "", "### Per source", "",
        "| source | images | melanoma | melanoma AUC | balanced accuracy |", "|---|---|---|---|---|",
    ] + _source_rows(meta, metrics) + [
        "", "## Known limitations",
        "- seborrheic_keratosis has no trustworthy training image in the supplied data: every "
        "isic-9class image of that folder is a byte-identical copy of a melanoma-folder image "
        "(no verdict: dropped; ISIC 2017 says melanoma: melanoma) or is contradicted by ISIC 2017. "
        "The model cannot predict it; HAM10000 `bkl` (which includes seborrheic keratoses) is "
        "mapped to pigmented_benign_keratosis.",
        "- squamous_cell_carcinoma, dermatofibroma, vascular_lesion and actinic_keratosis are rare: "
        "their per-class metrics have wide confidence intervals.",
        "- The urgent threshold buys 95% melanoma sensitivity with low specificity: many benign "
        "lesions are triaged urgent. That is the stated safety trade-off, not an error.",
        "- Data come from public archives (HAM10000 Vienna/Queensland, ISIC); performance on other "
        "dermatoscopes, skin types and populations is unknown; the images are mostly of light skin.",
        f"- A small network ({meta.notes or 'see model.json'}) trained on 2 CPU cores in about an hour; "
        "targets that are not met are marked **no** above.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(out: Path, meta: ModelMetadata, report: dict, calib: dict, metrics: dict,
                     cfg: TrainConfig | None = None) -> None:
    (Path(out) / "model_card.md").write_text(render_model_card(meta, report, calib, metrics))


def rewrite_model_card(version_dir: Path) -> None:
    """Re-render model_card.md from the artefacts in a version folder (model untouched)."""
    d = Path(version_dir)
    meta = ModelMetadata.model_validate_json((d / METADATA_FILE).read_text())
    load = lambda name: json.loads((d / name).read_text())
    write_model_card(d, meta, load("data_quality.json"), load("calibration.json"), load("metrics.json"))


def evaluate_version(store, version: str, data: list[Path], out: Path, cache_dir: Path,
                     threads: int = 2, n_boot: int = 1000) -> dict:
    """Evaluate a stored version on its own test split plus any image it never saw.

    Rows of the version's split.csv marked train/val are excluded (matched by content hash
    and by image id), so a re-run on the training data reproduces the test-split numbers.
    """
    import keras

    network.configure_threads(threads)
    store.verify(version)
    meta = store.metadata(version)
    vdir = store.version_dir(version)
    checks = datachecks.run_checks(manifest.scan(list(data)), out)
    df = checks.resolved
    seen_sha, seen_id = set(), set()
    if (vdir / "split.csv").is_file():
        sp = pd.read_csv(vdir / "split.csv")
        used = sp[sp["subset"].isin(["train", "val"])]
        seen_sha, seen_id = set(used["sha256"]), set(used["image_id"])
    keep = ~(df["sha256"].isin(seen_sha) | df["image_id"].isin(seen_id))
    df = df[keep].reset_index(drop=True)
    if df.empty:
        raise ValueError("every image in --data was used for training or validation")
    images = dataset.build_cache(df, meta.input_size, cache_dir)
    model = keras.saving.load_model(store.model_path(version), compile=False)
    probs = calibration.softmax_t(predict_logits(model, images), meta.temperature)
    from worker.training.evaluation import evaluate_predictions

    return evaluate_predictions(
        probs, dataset.label_indices(df), df["melanoma"].to_numpy().astype(int), meta.thresholds,
        df["path"].tolist(), out, title=f"{version}: {len(df)} held-out images",
        sources=df["source"].tolist(), n_boot=n_boot,
    )
