"""Does test-time augmentation help at a clinic the model has never seen? (issue 12, item 2)

    .venv/bin/python benchmarks/eval_tta.py --loso runs/loso-base [--data ../shared/data] [--threads 1]

For every fold of a finished ``train --loso`` run: the fold's model scores its held-out source
with the logits averaged over 1 (as served), 2 (+ left-right flip), 4 (+ up-down flip,
180 degree turn) and 8 (every flip and quarter turn) views of each image. Prints the melanoma
AUC per fold and view count, and the cost in model calls (the serving budget is one call:
each view is one more).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The eight flips and quarter turns of an (n, h, w, 3) batch: index 2k + f is k turns of
#: the image, left-right flipped first when f is 1 (index 5 is the up-down flip).
DIHEDRAL = [lambda x, k=k, f=f: np.rot90(x[:, :, ::-1] if f else x, k, axes=(1, 2))
            for k in range(4) for f in (0, 1)]
#: Views averaged per count: as served; + left-right flip; + 180-degree turn and up-down flip; all.
VIEWS = {1: [0], 2: [0, 1], 4: [0, 1, 4, 5], 8: list(range(8))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loso", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "runs" / "cache")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import keras
    from sklearn.metrics import roc_auc_score

    from schemas import MELANOMA_INDEX, ModelMetadata
    from worker.classify.inference import predict_logits, softmax_t
    from worker.training import dataset, network
    from worker.training.config import TrainConfig
    from worker.training.loso import fold_rows, resolved_rows

    network.configure_threads(args.threads)
    loso = json.loads((args.loso / "loso.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        df = resolved_rows(TrainConfig(data=(args.data,), out=Path(tmp)))
    results = {}
    for source in loso["folds"]:
        vdir = args.loso / f"fold-{source}" / "model"
        meta = ModelMetadata.model_validate_json((vdir / "model.json").read_text())
        model = keras.saving.load_model(vdir / "model.keras", compile=False)
        _, held, _ = fold_rows(df, source)
        images = dataset.build_cache(held, meta.input_size, args.cache_dir, progress=False)
        y = held["melanoma"].to_numpy().astype(int)
        per_view = [predict_logits(model, np.ascontiguousarray(view(images))) for view in DIHEDRAL]
        results[source] = {}
        for n, idx in VIEWS.items():
            logits = np.mean([per_view[i] for i in idx], axis=0)
            p = softmax_t(logits, meta.temperature)[:, MELANOMA_INDEX]
            results[source][n] = float(roc_auc_score(y, p))
        print(f"{source:12} " + "  ".join(f"{n} view(s) AUC {auc:.4f}" for n, auc in results[source].items()),
              flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
