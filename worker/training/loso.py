"""Leave-one-source-out (LOSO) evaluation: how a recipe does at a clinic it has never seen.

Our own split mixes every archive into training, validation and test, so it cannot show what
happens at a new site: the urgent threshold chosen on the pooled validation split flagged
77-89 % of benign lesions at two external sites. Here, for each source (``isic-9class``,
``ham10000``, ``isic2017``; after the data checks a distinct image belongs to the source of its
kept copy) the recipe is trained on the other sources (``train.train(cfg, manifest=rows)``:
the usual lesion-grouped split, the urgent threshold chosen on the pooled validation split of
the training sources) and scored on the held-out source: melanoma AUC, sensitivity and
specificity at that threshold, with 95 % percentile-bootstrap intervals.

Rows of the training sources that share a lesion id, image id or content hash with the
held-out source are left out of that fold (a HAM10000 lesion can have one image kept as
ISIC 2017 and another as HAM10000).

The worst-source rules (:func:`worst_source_rules`) say which threshold keeps melanoma
sensitivity >= 0.95 on every held-out source, and what specificity that costs.

Layout of the output folder::

    data_quality.json/.md        the data checks, run once
    fold-<source>/model/         the fold's version folder (everything ``train`` writes)
    fold-<source>/heldout/       metrics.json, figures and evaluation.pdf on the held-out source
    fold-<source>/heldout.csv    image id, sha256, melanoma, P(melanoma) per held-out image
    fold-<source>/fold.json      the fold's result; its presence marks the fold done
    loso.json, loso.md           all folds and the worst-source rules

Resumable per fold: a fold with ``fold.json`` is skipped (refused when another recipe made
it); an interrupted fold's training continues from its checkpoints with ``resume``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from schemas import MELANOMA_INDEX, ModelMetadata
from worker.training.config import TrainConfig, recipe, same_recipe
from worker.training.loso_report import (  # noqa: F401 (re-exported for callers)
    REQUIRED_SENSITIVITY,
    expected_specificity_line,
    loso_markdown,
)

LOSO_FILE = "loso.json"
LOSO_TABLE = "loso.md"
FOLD_FILE = "fold.json"
HELDOUT_CSV = "heldout.csv"
#: Fewer held-out melanomas than this: the source's needed threshold is marked uncertain.
MIN_MELANOMA = 30
#: A fold trained on less than this share of the images is reported but sets no threshold rule.
MIN_TRAINING_SHARE = 0.5
#: An upward move keeps this melanoma sensitivity on every held-out source (the validation margin).
UPWARD_TARGET = 0.97
_EPS = 1e-6


def _say(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] loso: {msg}", flush=True)


def resolved_rows(cfg: TrainConfig, manifest: pd.DataFrame | None = None) -> pd.DataFrame:
    """The checked, resolved rows of ``cfg.data`` (data_quality.* into ``cfg.out``), or the
    given resolved manifest."""
    from worker.training import datachecks
    from worker.training import manifest as manifests

    if manifest is not None:
        return manifests.require_manifest(manifest)
    scan = manifests.scan(list(cfg.data))
    return datachecks.run_checks(scan, cfg.out).resolved.reset_index(drop=True)


def fold_rows(df: pd.DataFrame, held_out: str) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(training rows, held-out rows, training rows left out for sharing a lesion, image id
    or content hash with the held-out source)."""
    from worker.training.datachecks import image_groups

    df = df.reset_index(drop=True)
    groups = image_groups(df, keys=("lesion_id", "image_id", "sha256"))
    held = (df["source"] == held_out).to_numpy()
    shared = groups.isin(set(groups[held])).to_numpy() & ~held
    return (df[~held & ~shared].reset_index(drop=True), df[held].reset_index(drop=True), int(shared.sum()))


def heldout_probabilities(version_dir: Path, rows: pd.DataFrame, cache_dir: Path) -> np.ndarray:
    """Calibrated probabilities of a version folder's model on ``rows`` (in row order)."""
    import keras

    from worker.classify.inference import predict_probabilities
    from worker.store.versions import METADATA_FILE, MODEL_FILE
    from worker.training import dataset

    meta = ModelMetadata.model_validate_json((version_dir / METADATA_FILE).read_text())
    model = keras.saving.load_model(version_dir / MODEL_FILE, compile=False)
    images = dataset.build_cache(rows, meta.input_size, cache_dir)
    return predict_probabilities(model, images, meta.temperature)


def _done_fold(path: Path, cfg: TrainConfig) -> dict | None:
    """The finished fold at ``path``, None when there is none; refuses another recipe's."""
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if not same_recipe(result.get("recipe") or {}, recipe(cfg)):
        raise ValueError(f"{path} was made with another recipe ({result.get('recipe')}); "
                         "use a new output folder for this one")
    return result


def run_fold(cfg: TrainConfig, df: pd.DataFrame, held_out: str) -> dict:
    """Train on every source but ``held_out``, score it; the fold's result (fold.json)."""
    from worker.training.train import train

    fold_dir = cfg.out / f"fold-{held_out}"
    done = _done_fold(fold_dir / FOLD_FILE, cfg)
    if done is not None:
        _say(f"fold {held_out}: already done, skipped")
        return done
    train_rows, held_rows, dropped = fold_rows(df, held_out)
    if held_rows.empty or train_rows.empty:
        raise ValueError(f"fold {held_out}: {len(train_rows)} training and {len(held_rows)} held-out rows")
    _say(f"fold {held_out}: training on {len(train_rows)} images of "
         f"{sorted(set(train_rows['source']))} ({dropped} left out: shared with {held_out})")
    fold_cfg = replace(cfg, data=(), out=fold_dir / "model", command=f"{cfg.command}  # fold: {held_out} held out")
    meta = train(fold_cfg, manifest=train_rows)
    _say(f"fold {held_out}: scoring {len(held_rows)} held-out images")
    probs = heldout_probabilities(fold_cfg.out, held_rows, cfg.cache_dir)
    metrics = heldout_metrics(cfg, probs, held_rows, meta, fold_dir / "heldout",
                              f"LOSO fold: {held_out} held out ({len(held_rows)} images)")
    held_rows[["image_id", "sha256", "melanoma"]].assign(p_melanoma=probs[:, MELANOMA_INDEX]).to_csv(
        fold_dir / HELDOUT_CSV, index=False)
    result = fold_result(cfg, held_out, meta, metrics, len(train_rows), dropped)
    tmp = fold_dir / (FOLD_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(fold_dir / FOLD_FILE)  # written last: its presence means the fold is complete
    return result


def heldout_metrics(cfg: TrainConfig, probs: np.ndarray, rows: pd.DataFrame, meta: ModelMetadata, out: Path,
                    title: str) -> dict:
    """The full evaluation (metrics.json, figures, PDF) of the held-out rows; melanoma numbers
    alone when none has a nine-class label (ISIC 2017 held out: melanoma / not melanoma only)."""
    from worker.training.evaluation import METRICS_FILE, evaluate_frame
    from worker.training.metrics import json_ready, melanoma_metrics

    if rows["label"].notna().any():
        return evaluate_frame(probs, rows, meta.thresholds, out, title=title, seed=cfg.seed, n_boot=cfg.n_boot)
    y = rows["melanoma"].to_numpy().astype(int)
    metrics = json_ready({"title": title, "n": len(rows), "n_nine_class": 0, "n_melanoma": int(y.sum()),
                          "melanoma": melanoma_metrics(probs[:, MELANOMA_INDEX], y, meta.thresholds,
                                                       seed=cfg.seed, n_boot=cfg.n_boot),
                          "balanced_accuracy": None})
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=1, allow_nan=False))
    return metrics


def fold_result(cfg: TrainConfig, held_out: str, meta: ModelMetadata, metrics: dict, n_train: int,
                dropped: int) -> dict:
    """fold.json: the recipe, the fold's model, and its numbers on the held-out source."""
    mel = metrics["melanoma"]
    test = (meta.metrics.get("test") or {}).get("melanoma") or {}
    return {
        "held_out": held_out, "recipe": recipe(cfg), "version": meta.version,
        "n_train_rows": n_train, "n_left_out_shared": dropped,
        "n": metrics["n"], "n_melanoma": metrics["n_melanoma"], "n_nine_class": metrics["n_nine_class"],
        "threshold": meta.thresholds.urgent_melanoma,
        "validation": {"sensitivity": meta.thresholds.urgent_sensitivity,
                       "specificity": meta.thresholds.urgent_specificity},
        "own_split_test_auc": test.get("auc"),
        "melanoma_auc": mel["auc"], "sensitivity": mel["sensitivity"], "specificity": mel["specificity"],
        "balanced_accuracy": metrics["balanced_accuracy"] if metrics["n_nine_class"] else None,
        "train_seconds": meta.metrics.get("train_seconds"),
    }


# --------------------------------------------------------------------------- worst-source rules

def logit(p: float) -> float:
    p = min(max(float(p), _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def training_share(fold: dict) -> float | None:
    """The share of all images the fold's model was trained on (None: an older fold.json)."""
    if "n_train_rows" not in fold:
        return None
    total = fold["n_train_rows"] + fold["n"] + fold.get("n_left_out_shared", 0)
    return fold["n_train_rows"] / total if total else None


def needed_threshold(y: np.ndarray, p: np.ndarray, target: float = REQUIRED_SENSITIVITY) -> float | None:
    """Largest threshold with sensitivity >= ``target`` on these cases; None without melanomas."""
    from worker.training.calibration import sensitivity_threshold

    return sensitivity_threshold(y, p, target) if int(np.sum(y)) else None


def _at(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    from worker.training.metrics import binary_sens_spec, finite_or_none

    sens, spec = binary_sens_spec(y, p, threshold)
    return {"threshold": float(threshold), "sensitivity": finite_or_none(sens), "specificity": finite_or_none(spec)}


def worst_source_rules(folds: dict[str, dict], scores: dict[str, tuple[np.ndarray, np.ndarray]],
                       target: float = REQUIRED_SENSITIVITY) -> dict:
    """Thresholds that keep sensitivity >= ``target`` on every held-out source.

    * absolute: one probability for every fold, the lowest threshold any held-out source
      needed (the literal reading; it assumes the folds' calibrated probabilities agree);
    * shift (the policy, ``loso_policy``): each fold's validation threshold moved by the same
      amount on the logit scale: the largest downward move any held-out source needed; when
      every held-out source had room instead, the smallest upward move that keeps sensitivity
      >= ``UPWARD_TARGET`` (the margin validation keeps) on each of them. A move transfers to
      a model trained on every source, whose validation threshold differs from the folds'
      (``loso_policy`` raises a version's threshold no further than its own validation allows);
    * shift without this source: the shift fitted on the other held-out sources only, applied
      to this one: an estimate for a site that took no part in choosing the rule.

    ``scores``: per source (melanoma 0/1, P(melanoma)) of its held-out images.

    A fold whose model was trained on less than ``MIN_TRAINING_SHARE`` of the images (holding
    out HAM10000 leaves a third, and almost no confirmed nevus) is reported but sets no rule:
    it measures a model that has not seen the class mix, not the shipped model at a new clinic.
    ``shift_all_folds`` says what the rule would be with it.
    """
    needed = {s: needed_threshold(*scores[s], target) for s in folds}
    all_moves = {s: logit(needed[s]) - logit(folds[s]["threshold"]) for s in folds if needed[s] is not None}
    share = {s: training_share(f) for s, f in folds.items()}
    moves = {s: m for s, m in all_moves.items() if share[s] is None or share[s] >= MIN_TRAINING_SHARE}
    if not moves:
        moves = all_moves  # no comparable fold: every fold counts
    if not moves:
        return {"target_sensitivity": target, "defined": False,
                "reason": "no held-out source has a melanoma"}
    up_moves = {s: logit(needed_threshold(*scores[s], UPWARD_TARGET)) - logit(folds[s]["threshold"])
                for s in all_moves}

    def rule(sources) -> tuple[float, str]:
        """(logit shift, the source that set it) from these sources' folds."""
        worst = min(sources, key=all_moves.get)
        if all_moves[worst] < 0:
            return all_moves[worst], worst
        worst = min(sources, key=up_moves.get)  # every source had room: up, keeping the margin
        return max(0.0, up_moves[worst]), worst

    worst_abs = min(moves, key=lambda s: needed[s])
    shift, worst = rule(moves)
    per_source = {}
    for s, fold in folds.items():
        y, p = scores[s]
        others = [o for o in moves if o != s]
        loo = rule(others)[0] if others else None
        per_source[s] = {
            "needed_threshold": needed[s], "logit_move": all_moves.get(s), "n_melanoma": int(np.sum(y)),
            "uncertain": int(np.sum(y)) < MIN_MELANOMA, "training_share": share[s], "in_rule": s in moves,
            "absolute": _at(y, p, needed[worst_abs]),
            # min(): the logit round trip must not lift the worst source's threshold past its scores
            "shift": _at(y, p, min(sigmoid(logit(fold["threshold"]) + shift),
                                 1.0 if needed[s] is None or s not in moves else needed[s])),
            "shift_without_this_source": (None if loo is None else
                                          {"logit_shift": loo, **_at(y, p, sigmoid(logit(fold["threshold"]) + loo))}),
        }
    specs = {s: d["shift"]["specificity"] for s, d in per_source.items()
             if d["shift"]["specificity"] is not None and d["in_rule"]}
    expected = min(specs, key=specs.get) if specs else None
    shift_all, worst_all = rule(all_moves)
    return {
        "target_sensitivity": target, "defined": True, "min_training_share": MIN_TRAINING_SHARE,
        "absolute": {"threshold": needed[worst_abs], "worst_source": worst_abs},
        "shift": {"logit_shift": shift, "worst_source": worst},
        "shift_all_folds": {"logit_shift": shift_all, "worst_source": worst_all,
                            "specificity": {s: _at(*scores[s], sigmoid(logit(folds[s]["threshold"]) + shift_all)
                                                   )["specificity"] for s in folds}},
        "per_source": per_source,
        "expected_at_new_site": {"specificity": specs.get(expected) if expected else None, "worst_source": expected,
                                 "specificity_range": [min(specs.values()), max(specs.values())] if specs else None},
    }


# --------------------------------------------------------------------------- the run

def _fold_scores(out: Path, source: str) -> tuple[np.ndarray, np.ndarray]:
    rows = pd.read_csv(out / f"fold-{source}" / HELDOUT_CSV)
    return rows["melanoma"].to_numpy().astype(int), rows["p_melanoma"].to_numpy().astype(float)


def summarise(cfg: TrainConfig, folds: dict[str, dict], target: float = REQUIRED_SENSITIVITY) -> dict:
    """loso.json from the finished folds in ``cfg.out``."""
    scores = {s: _fold_scores(cfg.out, s) for s in folds}
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": cfg.command, "recipe": recipe(cfg), "sources": sorted(folds),
        "required_sensitivity": target, "n_boot": cfg.n_boot, "ci_level": 0.95,
        "folds": folds, "rules": worst_source_rules(folds, scores, target),
        "method": __doc__.strip().split("\n\nLayout")[0],
    }


def run_loso(cfg: TrainConfig, manifest: pd.DataFrame | None = None,
             sources: list[str] | None = None) -> dict:
    """Every fold (skipping finished ones), then loso.json and loso.md in ``cfg.out``."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    df = resolved_rows(cfg, manifest)
    found = sorted(set(df["source"]))
    sources = sources or found
    unknown = sorted(set(sources) - set(found))
    if unknown or len(found) < 2:
        raise ValueError(f"LOSO needs two or more sources in the data and known --source names; "
                         f"found {found}, asked {sorted(sources)}")
    folds = {s: run_fold(cfg, df, s) for s in sources}
    loso = summarise(cfg, folds)
    (cfg.out / LOSO_FILE).write_text(json.dumps(loso, indent=1, allow_nan=False))
    (cfg.out / LOSO_TABLE).write_text(loso_markdown(loso))
    _say(f"done: {cfg.out / LOSO_FILE}")
    return loso


def load_loso(path: Path) -> dict:
    """A loso.json (a file, or a folder holding one)."""
    path = Path(path)
    return json.loads((path / LOSO_FILE if path.is_dir() else path).read_text())
