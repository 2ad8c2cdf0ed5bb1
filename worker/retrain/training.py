"""Challenger trainers: ``TrainRequest -> ModelMetadata``, writing a complete version folder.

The default is the product's own training (``worker.training.train``, its default recipe). A
deployment may name another with ``TRIAGE_RETRAIN_TRAINER=module:function`` (tests use a
tiny network to stay within seconds). A trainer gets its data as rows, already scanned and
checked by the retraining run, never as folders to scan again.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from schemas import ModelMetadata

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_TRAINER = "worker.retrain.training:train_product"


@dataclass(frozen=True)
class TrainRequest:
    """What a challenger trainer gets from the retraining run."""

    #: Resolved rows to train on, train-role only (``worker.training.manifest.MANIFEST_COLUMNS``).
    manifest: pd.DataFrame
    out: Path  # the version folder to write
    parent_version: str | None
    champion_dir: Path | None  # the champion's version folder (for a warm start)
    cache_dir: Path
    command: str
    options: dict = field(default_factory=dict)  # settings.retrain_train_args


Trainer = Callable[[TrainRequest], ModelMetadata]


def train_product(req: TrainRequest) -> ModelMetadata:
    """``worker.training.train.train`` with ``retrain_train_args`` as TrainConfig overrides.

    No warm start: TrainConfig starts from ImageNet weights (or none), which keeps every
    version reproducible from its data manifest and command.
    """
    from worker.training.config import TrainConfig
    from worker.training.train import train

    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"data", "out", "command",
                                                                 "parent_version", "cache_dir"}
    opts = {k: v for k, v in req.options.items() if k in names}
    cfg = TrainConfig(data=(), out=req.out, command=req.command,
                      parent_version=req.parent_version, cache_dir=req.cache_dir, **opts)
    return train(cfg, manifest=req.manifest)


def load_trainer(spec: str) -> Trainer:
    """``module:function`` -> the function."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"trainer {spec!r} must look like module:function")
    return getattr(importlib.import_module(module), name)
