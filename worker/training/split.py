"""Leak-free train/validation/test split.

Group = union of lesion id, image id and content hash (no lesion and no identical image
on both sides); stratified on the label (melanoma-only rows as ``melanoma`` /
``not_melanoma``); fixed seed. 20 stratified group folds: 3 test, 3 validation, 14 train
(70/15/15).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from worker.training.datachecks import image_groups

SUBSETS = ("train", "val", "test")
N_FOLDS = 20
TEST_FOLDS = (0, 1, 2)
VAL_FOLDS = (3, 4, 5)


def strata(df: pd.DataFrame) -> pd.Series:
    mel_only = df["melanoma"].map({1: "melanoma", 0: "not_melanoma"})
    return df["label"].where(df["label"].notna(), mel_only).astype(str)


def assign_subsets(df: pd.DataFrame, seed: int = 42) -> pd.Series:
    """A ``subset`` value per row of a resolved manifest."""
    groups = image_groups(df, keys=("lesion_id", "image_id", "sha256")).to_numpy()
    y = strata(df).to_numpy()
    subset = np.empty(len(df), dtype=object)
    n_folds = N_FOLDS if len(df) >= 200 else 5
    test_folds, val_folds = (TEST_FOLDS, VAL_FOLDS) if n_folds == N_FOLDS else ((0,), (1,))
    sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    import warnings
    with warnings.catch_warnings():  # rare classes with fewer members than folds
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, idx) in enumerate(sgkf.split(np.zeros(len(df)), y, groups)):
            subset[idx] = "test" if fold in test_folds else "val" if fold in val_folds else "train"
    return pd.Series(subset, index=df.index, name="subset")


def split_frame(df: pd.DataFrame, seed: int = 42) -> pd.DataFrame:
    out = df.copy()
    out["subset"] = assign_subsets(df, seed)
    return out


def write_split(df_with_subset: pd.DataFrame, path: Path) -> None:
    df_with_subset[["image_id", "sha256", "source", "subset"]].to_csv(path, index=False)


def check_no_leak(df_with_subset: pd.DataFrame) -> None:
    """Raise if a lesion, image id or content hash sits in two subsets."""
    for key in ("lesion_id", "image_id", "sha256"):
        n = df_with_subset.groupby(key)["subset"].nunique()
        if (n > 1).any():
            raise AssertionError(f"{key} on both sides of the split: {list(n[n > 1].index[:5])}")
