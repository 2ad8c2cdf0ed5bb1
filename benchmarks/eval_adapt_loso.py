"""``adapt`` measured on every leave-one-source-out fold: adapt on half of the held-out source's
images (labels unseen), score the other half, before and after.

    python benchmarks/eval_adapt_loso.py --out runs/feat --store model_store [--folds derm7pt ...]

Needs ``benchmarks/loso_features.py extract`` first (the resolved rows, the decoded-image cache
and the cached ImageNet features). The model of each fold:

* ``derm7pt``: the shipped version (trained on the three older sources: it never saw derm7pt);
  its locked set is its own ``split.csv`` test split;
* the other sources: the cached-feature fold model (frozen EfficientNet-Lite0 ImageNet
  backbone with Shades of Gray, a linear head trained on the other sources' train and
  validation subsets, seed 1) put back on its backbone as one Keras model; its urgent
  threshold keeps sensitivity 0.95 on its validation subset; its locked set is the training
  sources' test subset.

The held-out source is split in two halves by lesion (seeded); at most ``--cap`` images of each
half are used (HAM10000 has 6,000). Variants: the threshold shift alone on every fold (either way, and only downwards: ``adapt``'s
default); on the ``--bn-folds`` (default derm7pt) also
plain AdaBN (``site``) and aligned re-normalisation, each with the base threshold (under the
guard) and with the shifted one. At most ``--locked-cap`` locked-set images are used (a random subset). Written to
``<out>/adapt/<fold>.json`` (resumable per fold) and ``<out>/adapt/adapt.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from schemas import MELANOMA_INDEX  # noqa: E402

VARIANTS = ("threshold", "threshold-down", "adabn-site", "adabn-site+threshold", "adabn-aligned", "adabn-aligned+threshold")


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def halves(rows: pd.DataFrame, seed: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers (into ``rows``) of the adaptation half and the scoring half, by lesion."""
    lesions = rows["lesion_id"].astype(str).to_numpy()
    uniq = np.unique(lesions)
    rng = np.random.default_rng(seed)
    first = set(rng.permutation(uniq)[: len(uniq) // 2])
    a = np.flatnonzero([lid in first for lid in lesions])
    b = np.flatnonzero([lid not in first for lid in lesions])
    return rng.permutation(a)[:cap], rng.permutation(b)[:cap]


def at(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    from worker.training.feature_search import auc
    from worker.training.metrics import binary_sens_spec

    sens, spec = binary_sens_spec(y, p, threshold)
    return {"auc": auc(y, p), "threshold": float(threshold), "sensitivity": float(sens), "specificity": float(spec),
            "urgent_rate": float(np.mean(p >= threshold))}


def fold_model(rows: pd.DataFrame, feats: np.ndarray, fold: str, size: int):
    """(Keras model, ModelMetadata, locked row numbers) of a cached-feature fold model."""
    from datetime import UTC, datetime

    from schemas import ModelMetadata, TriageThresholds
    from worker.training import features, network, split
    from worker.training.calibration import sensitivity_threshold
    from worker.training.feature_search import fold_indices, softmax

    tr, _ = fold_indices(rows, fold)
    subset = split.assign_subsets(rows.iloc[tr].reset_index(drop=True), seed=42).to_numpy()
    fit, val, test = tr[subset == "train"], tr[subset == "val"], tr[subset == "test"]
    recipe = features.HeadRecipe("linear")
    head = features.train_head(feats[:, fit], features.training_masks(rows.iloc[fit].reset_index(drop=True), True),
                               recipe, seed=1)
    p_val = softmax(features.head_logits(head, feats[:, val]))[:, MELANOMA_INDEX]
    threshold = sensitivity_threshold(rows["melanoma"].to_numpy()[val], p_val, 0.95)
    net = network.build_network(size, network.resolve_weights(network.IMAGENET, "lite0"), backbone="lite0",
                                colour_constancy="shades_of_gray")
    model = features.attach_head(net, head)
    meta = ModelMetadata(version=f"features-{fold}", created_at=datetime.now(UTC), sha256="0" * 64, input_size=size,
                         thresholds=TriageThresholds(urgent_melanoma=threshold, soon_keratinocyte=0.5,
                                                     min_confidence=0.2))
    return model, meta, test


def shipped_model(store_root: Path, rows: pd.DataFrame):
    import keras

    from worker.store.versions import MODEL_FILE, ModelStore

    store = ModelStore(store_root)
    version = store.current_version()
    split = pd.read_csv(store.version_dir(version) / "split.csv", dtype=str)
    test = set(split.loc[split["subset"] == "test", "sha256"])
    locked = np.flatnonzero(rows["sha256"].isin(test).to_numpy())
    model = keras.saving.load_model(store.version_dir(version) / MODEL_FILE, compile=False)
    return model, store.metadata(version), locked


def run_fold(fold: str, rows, images, feats, args) -> dict:
    import keras

    from worker.calibration import adapt
    from worker.training import dataset

    if fold == "derm7pt":
        model, meta, locked_idx = shipped_model(args.store, rows)
        locked_idx = np.random.default_rng(args.seed).permutation(locked_idx)[:args.locked_cap]
    else:
        model, meta, locked_idx = fold_model(rows, feats, fold, images.shape[1])
        locked_idx = np.random.default_rng(args.seed).permutation(locked_idx)[:args.locked_cap]
    held = np.flatnonzero(rows["source"].to_numpy() == fold)
    a, b = halves(rows.iloc[held].reset_index(drop=True), args.seed, args.cap)
    a, b = held[a], held[b]
    locked = adapt.LockedSet(images=np.asarray(images[locked_idx]), melanoma=rows["melanoma"].to_numpy()[locked_idx],
                             labels=dataset.label_indices(rows.iloc[locked_idx]))
    y_b = rows["melanoma"].to_numpy()[b]
    img_b, img_a = np.asarray(images[b]), np.asarray(images[a])
    p_b = adapt.probabilities(model, img_b, meta.temperature)[:, MELANOMA_INDEX]
    base_locked = adapt.probabilities(model, locked.images, meta.temperature)[:, MELANOMA_INDEX]
    out = {"fold": fold, "model": meta.version, "n_adapt": len(a), "n_score": len(b), "n_score_melanoma": int(y_b.sum()),
           "n_locked": len(locked_idx), "before": at(y_b, p_b, meta.thresholds.urgent_melanoma)}
    for name, direction in (("threshold", "both"), ("threshold-down", "down")):
        shifted = adapt.propose(model, meta, img_a, locked, adapt.AdaptPolicy(bn=False, direction=direction),
                                base_locked=base_locked)
        out[name] = {**at(y_b, p_b, shifted.threshold), "shift_log_odds": shifted.shift_log_odds,
                     "locked_ceiling": shifted.locked_ceiling, "locked_after": shifted.locked["after"]}
    if fold in args.bn_folds:
        weights = model.get_weights()
        for mode in ("site", "aligned"):
            model.set_weights(weights)
            both = adapt.propose(model, meta, img_a, locked, adapt.AdaptPolicy(bn=True, bn_mode=mode, direction="both"),
                                 base_locked=base_locked)
            p_after = adapt.probabilities(model, img_b, meta.temperature)[:, MELANOMA_INDEX]
            # one adaptation serves both variants: the base threshold (capped by the adapted
            # model's locked-set ceiling) and the shifted one
            out[f"adabn-{mode}"] = {**at(y_b, p_after, min(meta.thresholds.urgent_melanoma, both.locked_ceiling)),
                                    "locked_ceiling": both.locked_ceiling}
            out[f"adabn-{mode}+threshold"] = {**at(y_b, p_after, both.threshold), "shift_log_odds": both.shift_log_odds,
                                              "locked_ceiling": both.locked_ceiling, "locked_after": both.locked["after"]}
    for name in VARIANTS:
        if name in out:
            _say(f"{fold} {name}: {out[name]}")
    keras.backend.clear_session()
    return out


def markdown(results: list[dict]) -> str:
    lines = ["| held-out source (model) | adapt / score images | variant | AUC | threshold | sensitivity | "
             "specificity | locked-set sensitivity |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name in ("before", *VARIANTS):
            if name not in r:
                continue
            v = r[name]
            locked = v.get("locked_after", {}).get("sensitivity")
            lines.append(f"| {r['fold']} ({r['model']}) | {r['n_adapt']} / {r['n_score']} ({r['n_score_melanoma']} mel) "
                         f"| {name} | {v['auc']:.3f} | {v['threshold']:.4f} | {v['sensitivity']:.3f} | "
                         f"{v['specificity']:.3f} | {'' if locked is None else f'{locked:.3f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--store", type=Path, default=Path("model_store"))
    ap.add_argument("--folds", nargs="+", default=["derm7pt", "isic-9class", "isic2017", "ham10000"])
    ap.add_argument("--cap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bn-folds", nargs="*", default=["derm7pt"],
                    help="folds where the BatchNorm variants are measured too (each costs minutes)")
    ap.add_argument("--tag", default="", help="results under <out>/adapt-<tag>/ (default <out>/adapt/)")
    ap.add_argument("--locked-cap", type=int, default=700, help="at most this many locked-set images")
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    args = ap.parse_args(argv)
    from benchmarks.loso_features import load_rows
    from worker.training import dataset, network
    from worker.training.feature_search import load_features

    network.configure_threads(1)
    rows = load_rows(args.out)
    images = np.load(args.cache_dir / f"images-{dataset.cache_key(rows, 224)}.npy", mmap_mode="r")
    feats = None
    adapt_dir = args.out / ("adapt" if not args.tag else f"adapt-{args.tag}")
    adapt_dir.mkdir(exist_ok=True)
    results = []
    for fold in args.folds:
        path = adapt_dir / f"{fold}.json"
        if not path.is_file():
            if fold != "derm7pt" and feats is None:
                feats = load_features(args.out)[:1]
            path.write_text(json.dumps(run_fold(fold, rows, images, feats, args), indent=1, default=float))
        results.append(json.loads(path.read_text()))
    (adapt_dir / "adapt.md").write_text(markdown(results))
    _say(f"wrote {adapt_dir / 'adapt.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
