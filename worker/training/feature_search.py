"""Recipe search on cached features (:mod:`worker.training.features`): every recipe, fold and
seed, resumable, with the seed spread and a ranking by the worst fold.

Layout under ``out/search/``::

    <recipe>/<fold>-s<seed>.json   one fold of one seed (its presence marks it done)
    <recipe>/<fold>-s<seed>.npy    P(melanoma) of the held-out rows (row order of the fold)
    <recipe>/own-s<seed>.json      the own lesion-grouped split of all sources
    search.json, search.md         the summary

A fold trains on every other source (rows sharing a lesion, image id or content hash with
the held-out source left out, as in ``train --loso``) and scores the held-out source's plain
view. The ranking key is the worst fold's mean AUC over seeds; a recipe is only "better"
than another where the difference is larger than both seed spreads on that fold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from schemas import CLASS_NAMES, MELANOMA_INDEX
from worker.training import features
from worker.training.features import HeadRecipe
from worker.training.metrics import bootstrap_ci, finite_or_none

SK_INDEX = CLASS_NAMES.index("seborrheic_keratosis")
REQUIRED_SENSITIVITY = 0.95
OWN = "own"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < int(np.sum(y)) < len(y) else None


def specificity_at_sensitivity(y: np.ndarray, p: np.ndarray, target: float = REQUIRED_SENSITIVITY):
    """(threshold, specificity) at the largest threshold keeping sensitivity >= target."""
    pos = np.sort(p[y == 1])
    if not len(pos):
        return None, None
    k = int(np.floor((1 - target) * len(pos) + 1e-9))
    thr = float(pos[k])
    neg = p[y == 0]
    return thr, float(np.mean(neg < thr)) if len(neg) else None


def _interval(stat, *arrays) -> tuple[float | None, float | None]:
    """95 % percentile bootstrap interval (``metrics.bootstrap_ci``, 500 resamples)."""
    _, low, high = bootstrap_ci(stat, *arrays, n_boot=500)
    return finite_or_none(low), finite_or_none(high)


def sk_recall(labels: np.ndarray, pred: np.ndarray) -> float | None:
    sk = labels == SK_INDEX
    return float(np.mean(pred[sk] == SK_INDEX)) if sk.any() else None


def score(probs: np.ndarray, rows: pd.DataFrame, intervals: bool = False) -> dict:
    """Melanoma AUC, specificity at sensitivity 0.95 and seborrheic keratosis recall."""
    from worker.training import dataset

    y = rows["melanoma"].to_numpy().astype(int)
    p = probs[:, MELANOMA_INDEX]
    labels = dataset.label_indices(rows)
    pred = probs.argmax(axis=1)
    thr, spec = specificity_at_sensitivity(y, p)
    out = {"n": len(rows), "n_melanoma": int(y.sum()), "n_seborrheic_keratosis": int((labels == SK_INDEX).sum()),
           "melanoma_auc": auc(y, p), "threshold_for_sensitivity_095": thr, "specificity_at_095": spec,
           "sk_recall": sk_recall(labels, pred)}
    if intervals:
        out["melanoma_auc_ci"] = _interval(auc, y, p)
        out["sk_recall_ci"] = _interval(sk_recall, labels, pred)
    return out


def fold_indices(rows: pd.DataFrame, held_out: str) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the training and held-out rows of one LOSO fold."""
    from worker.training.loso import fold_rows

    train, held, _ = fold_rows(rows.assign(_row=np.arange(len(rows))), held_out)
    return train["_row"].to_numpy(), held["_row"].to_numpy()


def own_indices(rows: pd.DataFrame, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the own split's training (train + validation) and test rows."""
    from worker.training import split

    subset = split.assign_subsets(rows.reset_index(drop=True), seed=seed).to_numpy()
    return np.flatnonzero(subset != "test"), np.flatnonzero(subset == "test")


def run_one(feats: np.ndarray, rows: pd.DataFrame, recipe: HeadRecipe, seed: int, fold: str,
            out_dir: Path, indices: dict | None = None) -> dict:
    """One recipe, seed and fold (``OWN``: the own split); cached in ``out_dir``. ``indices``:
    a dict that memoises each fold's (train, test) row numbers across calls."""
    path = out_dir / f"{fold}-s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    indices = {} if indices is None else indices
    if fold not in indices:
        indices[fold] = own_indices(rows) if fold == OWN else fold_indices(rows, fold)
    tr, te = indices[fold]
    masks = features.training_masks(rows.iloc[tr].reset_index(drop=True), recipe.three_class)
    head = features.train_head(feats[:, tr], masks, recipe, seed)
    probs = softmax(features.head_logits(head, feats[:, te]))
    result = {"recipe": recipe.as_dict(), "seed": seed, "fold": fold, "n_train": len(tr),
              **score(probs, rows.iloc[te].reset_index(drop=True), intervals=fold == OWN)}
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / f"{fold}-s{seed}.npy", probs[:, MELANOMA_INDEX].astype(np.float32))
    features.write_json(path, result)
    return result


def summarise(results: list[dict], folds: list[str]) -> dict:
    """Per recipe and fold: mean, min and max over seeds; the worst fold's mean; ranking."""
    table: dict[str, dict] = {}
    for r in results:
        entry = table.setdefault(r["recipe"]["name"], {}).setdefault(r["fold"], [])
        entry.append(r)
    summary = {}
    for name, per_fold in table.items():
        rec = {}
        for fold, rs in per_fold.items():
            aucs = [r["melanoma_auc"] for r in rs if r["melanoma_auc"] is not None]
            specs = [r["specificity_at_095"] for r in rs if r["specificity_at_095"] is not None]
            sks = [r["sk_recall"] for r in rs if r["sk_recall"] is not None]
            rec[fold] = {"seeds": [r["seed"] for r in rs], "auc_mean": float(np.mean(aucs)),
                         "auc_min": float(np.min(aucs)), "auc_max": float(np.max(aucs)),
                         "spec095_mean": float(np.mean(specs)) if specs else None,
                         "sk_recall_mean": float(np.mean(sks)) if sks else None}
        loso = [rec[f]["auc_mean"] for f in folds if f in rec]
        summary[name] = {"folds": rec, "worst_fold_auc": min(loso) if loso else None,
                         "mean_fold_auc": float(np.mean(loso)) if loso else None}
    ranking = sorted(summary, key=lambda n: -(summary[n]["worst_fold_auc"] or -1))
    return {"folds": folds, "recipes": summary, "ranking_by_worst_fold": ranking}


def markdown(summary: dict) -> str:
    folds = summary["folds"]
    lines = ["| recipe | " + " | ".join(folds) + " | worst | own split AUC | own SK recall |",
             "|---|" + "---|" * (len(folds) + 3)]
    for name in summary["ranking_by_worst_fold"]:
        rec = summary["recipes"][name]
        cells = []
        for f in folds:
            c = rec["folds"].get(f)
            cells.append(f"{c['auc_mean']:.3f} ({c['auc_min']:.3f}–{c['auc_max']:.3f})" if c else "–")
        own = rec["folds"].get(OWN)
        own_auc = f"{own['auc_mean']:.3f} ({own['auc_min']:.3f}–{own['auc_max']:.3f})" if own else "–"
        own_sk = f"{own['sk_recall_mean']:.2f}" if own and own["sk_recall_mean"] is not None else "–"
        worst = rec["worst_fold_auc"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {worst:.3f} | {own_auc} | {own_sk} |")
    return "\n".join(lines) + "\n\nMelanoma AUC on the held-out source: mean over seeds (min–max).\n"


def load_features(out: Path) -> np.ndarray:
    """(views, n, d) from ``out/features`` (the chunks ``features.extract`` wrote)."""
    feat_dir = Path(out) / "features"
    views = sorted({p.name.split("-")[0] for p in feat_dir.glob("view*-chunk*.npy") if ".tmp" not in p.name})
    per_view = [np.concatenate([np.load(p) for p in sorted(feat_dir.glob(f"{v}-chunk*.npy"))
                                if ".tmp" not in p.name]) for v in views]
    if not per_view:
        raise FileNotFoundError(f"no features in {feat_dir}")
    n = len(per_view[0])
    return np.stack([v for v in per_view if len(v) == n])  # a view still being extracted is left out


def run_search(out: Path, recipes: list[HeadRecipe], seeds: list[int], threads: int, rows: pd.DataFrame,
               progress=print, folds: list[str] | None = None) -> int:
    from worker.training import network

    network.configure_threads(threads)
    feats = load_features(out)
    if feats.shape[1] != len(rows):
        raise ValueError(f"{feats.shape[1]} feature rows for {len(rows)} images: extraction unfinished")
    folds = folds or sorted(set(rows["source"]))
    short = [r.name for r in recipes if r.views > feats.shape[0]]
    if short:
        raise ValueError(f"recipes {short} need more views than the {feats.shape[0]} extracted")
    results, indices = [], {}
    for recipe in recipes:
        for fold in [*folds, OWN]:
            for seed in seeds:
                r = run_one(feats, rows, recipe, seed, fold, out / "search" / recipe.name, indices)
                progress(f"{recipe.name} {fold} seed {seed}: AUC {r['melanoma_auc']:.3f}")
                results.append(r)
    summary = summarise(results, folds)
    features.write_json(out / "search.json", {**summary, "results": results})
    (out / "search.md").write_text(markdown(summary))
    progress(f"wrote {out / 'search.md'}")
    return 0
