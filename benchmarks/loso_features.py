"""Recipe search on cached features: four-fold leave-one-source-out, several seeds per recipe.

Two steps (both resumable; run them with ``nice -n 10`` and one thread on the shared machine):

    python benchmarks/loso_features.py extract --data ../shared/data --out runs/feat --views 3
    python benchmarks/loso_features.py search --out runs/feat --seeds 1 2 3

``extract`` scans and checks the data (four sources), caches the images, builds the frozen
backbone (EfficientNet-Lite0 ImageNet, Shades of Gray inside the model, 224 px) and stores its
pooled features for view 0 (as served) and ``views - 1`` camera-augmented views
(:mod:`worker.training.features`). ``search`` trains every recipe of ``RECIPES`` (or
``--recipes``) on each fold's training sources for each seed, scores the held-out source, and
writes ``search.json`` / ``search.md``: per recipe and fold the mean held-out melanoma AUC and
its seed spread (min-max), and the recipe ranking by the worst fold's mean AUC. It also trains
each recipe on the own lesion-grouped split of all four sources (``own_split``) and reports
melanoma AUC and seborrheic keratosis recall on its test rows with bootstrap intervals.
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

from worker.training import features  # noqa: E402
from worker.training.features import HeadRecipe  # noqa: E402

ROWS_FILE = "rows.csv"
RECIPES = {
    "linear": HeadRecipe("linear"),
    "linear-3views": HeadRecipe("linear-3views", views=3),
    "linear-melanoma-only-2017": HeadRecipe("linear-melanoma-only-2017", three_class=False),
    "linear-balanced": HeadRecipe("linear-balanced", weight_power=1.0),
    "mlp256": HeadRecipe("mlp256", hidden=256, dropout=0.4),
    "linear-unweighted": HeadRecipe("linear-unweighted", weight_power=0.0),
    "linear-l2-1e-3": HeadRecipe("linear-l2-1e-3", l2=1e-3),
    "linear-60-epochs": HeadRecipe("linear-60-epochs", epochs=60, lr=1e-3),
    "linear-no-dropout": HeadRecipe("linear-no-dropout", dropout=0.0),
    "linear-weight-0.25": HeadRecipe("linear-weight-0.25", weight_power=0.25),
    "linear-unweighted-melanoma-only-2017": HeadRecipe("linear-unweighted-melanoma-only-2017", weight_power=0.0,
                                                       three_class=False),
    "mlp256-unweighted": HeadRecipe("mlp256-unweighted", hidden=256, dropout=0.4, weight_power=0.0),
    "mlp256-3views": HeadRecipe("mlp256-3views", hidden=256, dropout=0.4, views=3),
}


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cmd_extract(args) -> int:
    from worker.training import datachecks, dataset, manifest, network

    network.configure_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / ROWS_FILE
    if rows_path.is_file():
        rows = pd.read_csv(rows_path, dtype={"label": object}, keep_default_na=False)
        rows["label"] = rows["label"].where(rows["label"] != "", None)
    else:
        scan = manifest.scan(args.data)
        rows = datachecks.run_checks(scan, args.out).resolved
        rows.to_csv(rows_path, index=False)
    _say(f"{len(rows)} images: {rows['source'].value_counts().to_dict()}")
    images = dataset.build_cache(rows, args.size, args.cache_dir)
    net = network.build_network(args.size, network.resolve_weights(network.IMAGENET, args.backbone),
                                backbone=args.backbone, colour_constancy=args.colour_constancy)
    feats = features.extract(net, images, args.out / "features", args.views, args.augmentation,
                             seed=args.seed, progress=_say)
    _say(f"features {feats.shape} in {args.out / 'features'}")
    return 0


def load_rows(out: Path) -> pd.DataFrame:
    rows = pd.read_csv(out / ROWS_FILE, dtype={"label": object, "lesion_id": object}, keep_default_na=False)
    rows["label"] = rows["label"].astype(object).where(rows["label"] != "", None)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract")
    ex.add_argument("--data", type=Path, nargs="+", default=[Path("../shared/data")])
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--views", type=int, default=3)
    ex.add_argument("--size", type=int, default=224)
    ex.add_argument("--backbone", default="lite0")
    ex.add_argument("--colour-constancy", default="shades_of_gray")
    ex.add_argument("--augmentation", default="camera")
    ex.add_argument("--seed", type=int, default=42)
    ex.add_argument("--threads", type=int, default=1)
    ex.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    se = sub.add_parser("search")
    se.add_argument("--out", type=Path, required=True)
    se.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    se.add_argument("--recipes", nargs="+", default=list(RECIPES))
    se.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.cmd == "extract":
        return cmd_extract(args)
    from worker.training import feature_search

    return feature_search.run_search(args.out, [RECIPES[r] for r in args.recipes], args.seeds,
                                     args.threads, load_rows(args.out), progress=_say)


if __name__ == "__main__":
    sys.exit(main())
