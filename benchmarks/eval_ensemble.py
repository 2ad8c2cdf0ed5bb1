"""Does a small ensemble help at a clinic the model has never seen? (issue 12, item 2)

    .venv/bin/python benchmarks/eval_ensemble.py runs/loso-s43 runs/loso-s44 [...] [--n-boot 1000]

Each argument is a finished ``train --loso`` run (seeds or recipes). For every held-out source
that every run scored, the members' P(melanoma) from ``fold-<source>/heldout.csv`` are combined
as the mean of their logits (the served ensemble would average the members' melanoma logits the
same way) and scored like one model: melanoma AUC with its 95 % bootstrap interval, the
probability the source needed for melanoma sensitivity 0.95 and the specificity there. Every
member is scored the same way beside it. Reads only the CSV files: no model is run. An ensemble
of k members costs k model calls per image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.training.loso import HELDOUT_CSV, needed_threshold  # noqa: E402
from worker.training.loso_report import REQUIRED_SENSITIVITY  # noqa: E402
from worker.training.metrics import binary_sens_spec, bootstrap_ci  # noqa: E402

_EPS = 1e-7


def logits(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def held_out_scores(runs: list[Path], source: str) -> tuple[np.ndarray, np.ndarray]:
    """(melanoma 0/1, P(melanoma) per run as columns), rows matched by sha256."""
    frames = [pd.read_csv(run / f"fold-{source}" / HELDOUT_CSV).set_index("sha256") for run in runs]
    first = frames[0]
    for run, frame in zip(runs[1:], frames[1:]):
        if set(frame.index) != set(first.index):
            raise SystemExit(f"{run}: fold {source} scored other images than {runs[0]}")
    probs = np.column_stack([frame.loc[first.index, "p_melanoma"].to_numpy() for frame in frames])
    return first["melanoma"].to_numpy().astype(int), probs


def score(y: np.ndarray, p: np.ndarray, n_boot: int) -> dict:
    auc, low, high = bootstrap_ci(roc_auc_score, y, p, n_boot=n_boot)
    threshold = needed_threshold(y, p, REQUIRED_SENSITIVITY)
    sens, spec = binary_sens_spec(y, p, threshold)
    return {"auc": auc, "low": low, "high": high, "threshold": threshold, "sensitivity": sens,
            "specificity": spec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="finished train --loso output folders")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    if len(args.runs) < 2:
        raise SystemExit("an ensemble needs at least two runs")
    folds = [{p.parent.name.removeprefix("fold-") for p in run.glob(f"fold-*/{HELDOUT_CSV}")}
             for run in args.runs]
    common = sorted(set.intersection(*folds))
    if not common:
        raise SystemExit("no held-out source was scored by every run")
    print(f"| held-out source | model | melanoma AUC (95 % CI) | P(melanoma) for sensitivity "
          f"{REQUIRED_SENSITIVITY} | sensitivity | specificity there |")
    print("|---|---|---|---|---|---|")
    for source in common:
        y, probs = held_out_scores(args.runs, source)
        mean_logit = logits(probs).mean(axis=1)
        rows = [(run.name, probs[:, i]) for i, run in enumerate(args.runs)]
        rows.append((f"ensemble of {len(args.runs)}", 1 / (1 + np.exp(-mean_logit))))
        for name, p in rows:
            s = score(y, p, args.n_boot)
            print(f"| {source} ({int(y.sum())} melanomas, {len(y)} images) | {name} | {s['auc']:.3f} "
                  f"({s['low']:.3f}–{s['high']:.3f}) | {s['threshold']:.4f} | {s['sensitivity']:.3f} | "
                  f"{s['specificity']:.3f} |")


if __name__ == "__main__":
    main()
