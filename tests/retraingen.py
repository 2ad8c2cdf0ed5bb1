"""Tiny, trivially separable dermoscopy-like data for retraining tests (seconds, no ../shared).

Layout written: ``<root>/isic-9class/<class>/<name>.png`` (the folder-per-class layout that
``worker.training.manifest`` recognises). Each class has its own lesion colour, so a small
network learns it in a couple of epochs and a shuffled-label network cannot.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from schemas import ModelMetadata

#: Lesion colour per generated class (melanoma: very dark blue-black).
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "melanoma": (25, 20, 45),
    "nevus": (150, 95, 60),
    "basal_cell_carcinoma": (235, 120, 150),
    "pigmented_benign_keratosis": (110, 140, 110),
}
SKIN = (225, 180, 160)


def tiny_lesion(cls: str, seed: int, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3)
    radius = size * rng.uniform(0.30, 0.34)
    inside = (np.hypot(yy - cy, xx - cx) < radius)[..., None]
    img = np.where(inside, np.array(CLASS_COLOURS[cls], np.float32), np.array(SKIN, np.float32))
    img = img + rng.normal(0, 8, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def write_tiny_dataset(root: Path, per_class: int = 20, seed: int = 0, size: int = 40) -> Path:
    """``per_class`` images of each class in CLASS_COLOURS; returns ``root``."""
    for k, cls in enumerate(CLASS_COLOURS):
        folder = root / "isic-9class" / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            s = seed * 100_000 + k * 1000 + i
            (folder / f"gen_{cls[:3]}_{s}.png").write_bytes(png_bytes(tiny_lesion(cls, s, size)))
    return root


def resolved_rows(root: Path):
    """The manifest rows a retraining run would hand its trainer for the data under ``root``."""
    from worker.training import datachecks, manifest

    return datachecks.run_checks(manifest.scan([root])).resolved


def tiny_trainer(req) -> ModelMetadata:
    """A challenger trainer for tests: the product's split, cache and calibration on the rows
    the retraining run hands over, with a tiny CNN instead of MobileNet (seconds on one core).

    ``req.options``: ``input_size`` (32), ``epochs`` (40), ``seed`` (0)."""
    from datetime import datetime, timezone

    import keras
    import numpy as np

    from schemas import CLASS_NAMES, ModelMetadata, TriageThresholds
    from worker.store.versions import METADATA_FILE, MODEL_FILE, file_sha256
    from worker.training import calibration, dataset, network
    from worker.training.train import TrainConfig, prepare_data

    size = int(req.options.get("input_size", 32))
    seed = int(req.options.get("seed", 0))
    req.out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(data=(), out=req.out, input_size=size, weights=None, seed=seed,
                      cache_dir=req.cache_dir, command=req.command, parent_version=req.parent_version)
    df, man_hash, _ = prepare_data(cfg, req.manifest)
    images = dataset.build_cache(df, size, req.cache_dir, progress=False).astype(np.float32)
    masks, labels = dataset.label_masks(df), dataset.label_indices(df)
    mel = df["melanoma"].to_numpy().astype(int)
    sub = df["subset"].to_numpy()
    tr, va = sub == "train", sub == "val"

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(len(CLASS_NAMES))(x))
    model.compile(optimizer=keras.optimizers.Adam(0.03), loss=network.partial_label_loss)
    model.fit(images[tr], masks[tr], epochs=int(req.options.get("epochs", 40)),
              batch_size=64, verbose=0)

    val_logits = np.asarray(model(images[va], training=False))
    calib = calibration.calibrate(val_logits, masks[va], labels[va], mel[va])
    if calib["temperature"] < 1.0:
        # Perfectly separated tiny validation data pushes T to its lower bound and every
        # probability to 1.0, which makes the urgent threshold meaningless: never sharpen.
        calib["temperature"] = 1.0
        probs = calibration.softmax_t(val_logits, 1.0)
        calib["thresholds"] = calibration.choose_thresholds(probs, labels[va], mel[va]).model_dump()
    # A tiny validation split (a handful of melanomas) makes "the smallest validation melanoma
    # probability" a noisy threshold; the test network uses half of it (a cautious operating
    # point), so that a competent challenger meets the 0.95 sensitivity gate on the locked set.
    calib["thresholds"]["urgent_melanoma"] = calib["thresholds"]["urgent_melanoma"] / 2
    model.save(req.out / MODEL_FILE)
    sha = file_sha256(req.out / MODEL_FILE)
    created = datetime.now(timezone.utc)
    meta = ModelMetadata(
        version=f"{created:%Y%m%d-%H%M%S}-{sha[:8]}", created_at=created,
        parent_version=req.parent_version, sha256=sha, input_size=size,
        temperature=calib["temperature"], thresholds=TriageThresholds(**calib["thresholds"]),
        metrics={"validation_calibration": {k: calib[k] for k in ("ece_before", "ece_after")}},
        training_command=req.command, data_manifest_sha256=man_hash, notes="tests.retraingen tiny CNN")
    (req.out / METADATA_FILE).write_text(meta.model_dump_json(indent=1))
    (req.out / "model_card.md").write_text(f"# Model card: {meta.version}\n\nTiny test network.\n")
    return meta


def crashing_trainer(req) -> ModelMetadata:
    """Dies half-way: a partial model file in the staging folder, then an exception."""
    req.out.mkdir(parents=True, exist_ok=True)
    (req.out / "model.keras").write_bytes(b"PK\x03\x04 half-written")
    raise RuntimeError("trainer died half-way (test)")


def killed_trainer(req) -> ModelMetadata:
    """Dies like an OOM kill: a partial model file, then SIGKILL of its own process."""
    import os
    import signal

    req.out.mkdir(parents=True, exist_ok=True)
    (req.out / "model.keras").write_bytes(b"PK\x03\x04 half-written")
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")
