"""Cached-feature training: the frozen part of the network runs once per image and view.

On two CPU cores one fine-tuning run of a LOSO fold costs 40-70 minutes, so a recipe
comparison with several seeds per fold cannot afford to run the backbone again for every
epoch. Here the frozen backbone (the network up to its ``pool`` layer: colour constancy,
scaling, backbone, global average pooling) runs **once** per image for a few views (view 0:
the image as served; views 1..k: the recipe's training augmentation with a fixed seed per
view), the pooled features are stored on disk (float16, one file per view and chunk, so an
interrupted extraction resumes at its last finished chunk), and only the top (the logits
head, optionally one hidden layer) is trained on them: seconds per seed instead of an hour.

A head trained here is a complete model once put back on its backbone
(:func:`attach_head`): the same input, the same ``logits`` output, exportable to LiteRT.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from schemas import CLASS_NAMES

FEATURE_LAYER = "pool"
#: Images per feature file: an interrupted extraction loses at most one chunk.
CHUNK = 1024
BATCH = 32


def feature_model(model):
    """The part of a classifier network up to (and including) its ``pool`` layer."""
    import keras

    return keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output, name="features")


def view_batches(images: np.ndarray, view: int, augmentation: str, seed: int):
    """Batches of float32 images of one view: view 0 as given, view k>0 augmented with the
    recipe's training augmentation (a fixed seed per view, so a rerun gives the same view)."""
    from worker.training import augment

    layer = None if view == 0 else augment.augmentation_layer(images.shape[1], augmentation, seed + 1000 * view)
    for start in range(0, len(images), BATCH):
        batch = np.asarray(images[start:start + BATCH], dtype=np.float32)
        yield batch if layer is None else np.asarray(layer(batch, training=True))


def extract(net, images: np.ndarray, out_dir: Path, views: int, augmentation: str = "camera",
            seed: int = 0, progress=None) -> np.ndarray:
    """(views, n, d) float16 pooled features of ``images`` under ``net`` (a full classifier:
    its ``pool`` output is used), cached in ``out_dir``; finished chunks are reused."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fnet = feature_model(net)
    n = len(images)
    per_view = []
    for view in range(views):
        chunks = []
        for c0 in range(0, n, CHUNK):
            path = out_dir / f"view{view}-chunk{c0 // CHUNK:04d}.npy"
            if path.is_file():
                chunks.append(np.load(path))
                continue
            part = images[c0:c0 + CHUNK]
            feats = np.concatenate([np.asarray(fnet(b, training=False)) for b in
                                    view_batches(part, view, augmentation, seed + c0)]).astype(np.float16)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, feats)
            tmp.replace(path)
            chunks.append(feats)
            if progress:
                progress(f"features view {view}: {min(c0 + CHUNK, n)}/{n}")
        per_view.append(np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float16))
    return np.stack(per_view)


@dataclass(frozen=True)
class HeadRecipe:
    """What is trained on the cached features (everything else is fixed by the features)."""

    name: str
    hidden: int = 0  # 0: the logits layer alone; >0: one ReLU layer of this width first
    dropout: float = 0.3
    epochs: int = 20
    lr: float = 3e-3
    l2: float = 1e-4
    weight_power: float = 0.5  # sample weights: inverse class frequency to this power
    views: int = 1  # how many cached views training draws from (1: the plain view only)
    three_class: bool = True  # ISIC 2017 rows keep their three-class labels (False: melanoma only)
    batch_size: int = 512

    def as_dict(self) -> dict:
        return asdict(self)


def build_head(dim: int, recipe: HeadRecipe, seed: int):
    """features (dim) -> dropout -> [Dense(hidden, relu) -> dropout] -> Dense(9) logits."""
    import keras

    keras.utils.set_random_seed(seed)
    reg = keras.regularizers.L2(recipe.l2) if recipe.l2 else None
    inputs = keras.Input((dim,), name="features")
    x = keras.layers.Dropout(recipe.dropout, name="dropout")(inputs)
    if recipe.hidden:
        x = keras.layers.Dense(recipe.hidden, activation="relu", kernel_regularizer=reg, name="hidden")(x)
        x = keras.layers.Dropout(recipe.dropout, name="hidden_dropout")(x)
    logits = keras.layers.Dense(len(CLASS_NAMES), kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, logits, name="head")


def train_head(features: np.ndarray, masks: np.ndarray, recipe: HeadRecipe, seed: int):
    """A head fitted on ``features`` (views, n, d) with partial-label masks (n, 9); each epoch
    draws one of the first ``recipe.views`` views per image."""
    import keras

    from worker.training import dataset, network

    head = build_head(features.shape[-1], recipe, seed)
    head.compile(optimizer=keras.optimizers.Adam(recipe.lr), loss=network.partial_label_loss)
    weights = dataset.sample_weights(masks, recipe.weight_power)
    rng = np.random.default_rng(seed)
    n_views = max(1, min(recipe.views, features.shape[0]))
    rows = np.arange(features.shape[1])
    if n_views == 1:  # one view: one fit call (much less per-epoch overhead)
        head.fit(features[0].astype(np.float32), masks, sample_weight=weights, batch_size=recipe.batch_size,
                 epochs=recipe.epochs, shuffle=True, verbose=0)
        return head
    for _ in range(recipe.epochs):
        x = features[rng.integers(0, n_views, len(rows)), rows].astype(np.float32)
        head.fit(x, masks, sample_weight=weights, batch_size=recipe.batch_size, epochs=1,
                 shuffle=True, verbose=0)
    return head


def head_logits(head, features: np.ndarray) -> np.ndarray:
    """Logits of the plain view (view 0) of ``features`` (views, n, d) or (n, d)."""
    x = features[0] if features.ndim == 3 else features
    return np.asarray(head.predict(x.astype(np.float32), batch_size=1024, verbose=0))


def attach_head(net, head):
    """``net`` (a classifier with a ``pool`` layer) with its top replaced by ``head``: the
    same input and a ``logits`` output, a single Keras model (exportable as it is)."""
    import keras

    x = net.get_layer(FEATURE_LAYER).output
    for layer in head.layers[1:]:
        x = layer(x)
    return keras.Model(net.inputs, x, name=net.name)


def training_masks(rows, three_class: bool) -> np.ndarray:
    """Partial-label masks of resolved rows; ``three_class`` False hides the ISIC 2017
    diagnosis (melanoma / not melanoma only), as before that source had three classes."""
    from worker.training import dataset

    if three_class:
        return dataset.label_masks(rows)
    hidden = rows.copy()
    hidden.loc[hidden["source"] == "isic2017", "label"] = None
    hidden["label"] = hidden["label"].astype(object).where(hidden["label"].notna(), None)
    return dataset.label_masks(hidden)


def write_json(path: Path, payload: dict) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float))
    tmp.replace(path)
