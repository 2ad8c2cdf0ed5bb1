"""Re-run the evaluation step of ``melanoma-triage train`` on a finished version folder.

    .venv/bin/python scripts/rerender_version.py VERSION_DIR [--data ../shared/data]

It loads the saved model and calibration, then rebuilds the test split from ``split.csv``
and the data. It writes ``metrics.json``, the figures, ``evaluation.pdf`` and
``model_card.md`` the way ``train`` does (same title, seed and bootstrap). Use it when only
the reporting code changed: the model and ``model.json`` are left alone, so the version
name and sha256 hold. Remove ``confidently_wrong.png`` (archive thumbnails) before
committing a shipped version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from schemas import ModelMetadata  # noqa: E402
from worker.store.versions import METADATA_FILE, MODEL_FILE  # noqa: E402
from worker.classify.inference import predict_probabilities  # noqa: E402
from worker.training import datachecks, dataset, manifest, network  # noqa: E402
from worker.training.evaluation import evaluate_frame  # noqa: E402
from worker.training.model_card import rewrite_model_card  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("version_dir", type=Path)
    ap.add_argument("--data", type=Path, nargs="+", default=[Path("../shared/data")])
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    ap.add_argument("--seed", type=int, default=42, help="the seed the version was trained with")
    args = ap.parse_args()
    import keras

    d = args.version_dir
    network.configure_threads(2)
    meta = ModelMetadata.model_validate_json((d / METADATA_FILE).read_text())
    df = datachecks.check_and_resolve(manifest.scan(list(args.data))).resolved
    split = pd.read_csv(d / "split.csv")
    df = df.merge(split[["sha256", "subset"]], on="sha256", how="inner")
    te = df[df["subset"] == "test"].reset_index(drop=True)
    model = keras.saving.load_model(d / MODEL_FILE, compile=False)
    probs = predict_probabilities(model, dataset.build_cache(te, meta.input_size, args.cache_dir),
                                  meta.temperature)
    metrics = evaluate_frame(probs, te, meta.thresholds, d, title=f"Test split ({len(te)} images)",
                             seed=args.seed)
    rewrite_model_card(d)
    print(f"{d}: melanoma AUC {metrics['melanoma']['auc']['value']:.4f}, "
          f"balanced accuracy {metrics['balanced_accuracy']['value']:.4f}")


if __name__ == "__main__":
    main()
