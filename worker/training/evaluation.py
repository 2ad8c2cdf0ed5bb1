"""Model evaluation as a command's worth of artefacts: metrics.json, figures and a one-page PDF.

The notebook printed accuracy, precision, recall, F1 and ROC AUC; this keeps those per class
and adds what a triage decision rests on: melanoma sensitivity/specificity at the stored
urgent threshold with bootstrap confidence intervals, calibration, per-source behaviour
(a model can look good on one archive and fail on another) and the triage levels the
thresholds actually produce.

The numbers come from :mod:`worker.training.metrics`, the figures from
:mod:`worker.training.figures`, the PDF from :mod:`worker.training.evaluation_report`; this
module runs them in order and owns the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.messages import TriageThresholds
from worker.training.evaluation_report import REPORT_PDF, write_evaluation_pdf
from worker.training.figures import EVALUATION_FIGURES, write_evaluation_figures
from worker.training.metrics import N_BOOT, evaluation_metrics

METRICS_FILE = "metrics.json"


def evaluate_predictions(
    probs: np.ndarray,
    labels: np.ndarray,
    melanoma: np.ndarray,
    thresholds: TriageThresholds,
    paths: list[str],
    out_dir: Path,
    title: str,
    seed: int = 0,
    sources: list[str] | None = None,
    n_boot: int = N_BOOT,
) -> dict:
    """Compute every metric, write metrics.json, the figures and evaluation.pdf; return the
    metrics dict.

    ``labels`` is -1 where only melanoma / not-melanoma is known (ISIC 2017): those rows
    count for melanoma metrics, triage counts and the confidently-wrong grid only.
    """
    metrics = evaluation_metrics(probs, labels, melanoma, thresholds, paths, title, seed=seed,
                                 sources=sources, n_boot=n_boot)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_evaluation_figures(metrics, probs, labels, melanoma, out_dir)
    metrics["files"] = [METRICS_FILE, *EVALUATION_FIGURES, REPORT_PDF]
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    write_evaluation_pdf(metrics, out_dir, out_dir / REPORT_PDF)
    return metrics


def evaluate_frame(probs: np.ndarray, df: pd.DataFrame, thresholds: TriageThresholds, out_dir: Path,
                   title: str, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """:func:`evaluate_predictions` on the rows of a resolved manifest (labels, melanoma flags,
    paths and sources taken from ``df``, in its row order)."""
    from worker.training.dataset import label_indices

    return evaluate_predictions(
        probs, label_indices(df), df["melanoma"].to_numpy().astype(int), thresholds, df["path"].tolist(),
        out_dir, title=title, seed=seed, sources=df["source"].tolist(), n_boot=n_boot,
    )


def unseen_rows(df: pd.DataFrame, split_csv: Path) -> pd.DataFrame:
    """Rows of ``df`` a version never trained or validated on: its split.csv's train/val rows
    are left out, matched by content hash and by image id."""
    if not Path(split_csv).is_file():
        return df.reset_index(drop=True)
    sp = pd.read_csv(split_csv)
    used = sp[sp["subset"].isin(["train", "val"])]
    keep = ~(df["sha256"].isin(set(used["sha256"])) | df["image_id"].isin(set(used["image_id"])))
    return df[keep].reset_index(drop=True)


def evaluate_version(store, version: str, data: list[Path], out: Path, cache_dir: Path,
                     threads: int = 2, n_boot: int = N_BOOT) -> dict:
    """Evaluate a stored version on its own test split plus any image it never saw.

    Rows of the version's split.csv marked train/val are excluded, so a re-run on the
    training data reproduces the test-split numbers.
    """
    import keras

    from worker.classify.inference import predict_probabilities
    from worker.training import datachecks, dataset, manifest, network

    network.configure_threads(threads)
    store.verify(version)
    meta = store.metadata(version)
    checks = datachecks.run_checks(manifest.scan(list(data)), out)
    df = unseen_rows(checks.resolved, store.version_dir(version) / "split.csv")
    if df.empty:
        raise ValueError("every image in --data was used for training or validation")
    images = dataset.build_cache(df, meta.input_size, cache_dir)
    model = keras.saving.load_model(store.model_path(version), compile=False)
    probs = predict_probabilities(model, images, meta.temperature)
    return evaluate_frame(probs, df, meta.thresholds, out, title=f"{version}: {len(df)} held-out images",
                          n_boot=n_boot)
