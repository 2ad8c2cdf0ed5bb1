"""Score a stored version on every image of one source (e.g. the shipped model on derm7pt, a
source it never saw: its leave-one-source-out fold for free).

    python benchmarks/eval_version_on_source.py --out runs/feat --source derm7pt [--version V]
    python benchmarks/eval_version_on_source.py --out runs/feat --source test-split

``--source test-split``: the version's own ``split.csv`` test rows (its own-split test set, scored
with today's labels: ISIC 2017 rows now carry their three-class diagnosis).

Uses the resolved rows and decoded-image cache of ``benchmarks/loso_features.py extract``.
Prints and writes ``<out>/version-<source>.json``: melanoma AUC (95 % bootstrap interval),
sensitivity and specificity at the version's urgent threshold, the best specificity at
sensitivity 0.95, and seborrheic keratosis recall (argmax).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--store", type=Path, default=Path("model_store"))
    ap.add_argument("--version", default=None)
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    args = ap.parse_args(argv)

    import keras

    from benchmarks.loso_features import load_rows
    from schemas import MELANOMA_INDEX
    from worker.classify.inference import predict_probabilities
    from worker.store.versions import MODEL_FILE, ModelStore
    from worker.training import dataset, network
    from worker.training.feature_search import score
    from worker.training.metrics import binary_sens_spec

    network.configure_threads(1)
    store = ModelStore(args.store)
    version = args.version or store.current_version()
    meta = store.metadata(version)
    rows = load_rows(args.out)
    images = np.load(args.cache_dir / f"images-{dataset.cache_key(rows, meta.input_size)}.npy", mmap_mode="r")
    if args.source == "test-split":
        import pandas as pd

        split = pd.read_csv(store.version_dir(version) / "split.csv", dtype=str)
        idx = np.flatnonzero(rows["sha256"].isin(set(split.loc[split["subset"] == "test", "sha256"])).to_numpy())
    else:
        idx = np.flatnonzero(rows["source"].to_numpy() == args.source)
    model = keras.saving.load_model(store.version_dir(version) / MODEL_FILE, compile=False)
    probs = predict_probabilities(model, np.asarray(images[idx]), meta.temperature)
    sub = rows.iloc[idx].reset_index(drop=True)
    result = score(probs, sub, intervals=True)
    sens, spec = binary_sens_spec(sub["melanoma"].to_numpy(), probs[:, MELANOMA_INDEX], meta.thresholds.urgent_melanoma)
    result |= {"version": version, "source": args.source, "urgent_threshold": meta.thresholds.urgent_melanoma,
               "sensitivity_at_urgent": float(sens), "specificity_at_urgent": float(spec)}
    (args.out / f"version-{args.source}.json").write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
