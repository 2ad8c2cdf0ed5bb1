"""What one training run is asked to do, with its defaults: the one place they are written.

Kept apart from ``train.py`` (pandas, scipy, scikit-learn, TensorFlow) so the command line
can show these defaults in ``--help`` without importing the trainer, and a system that only
submits jobs can load the CLI without the ``[train]`` extras.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from worker.training import augment, network

#: Fine-tuning learning-rate schedules ``train.fit`` knows.
LR_SCHEDULES = ("cosine", "plateau")
#: Colour constancy inside the network (``network.COLOUR_CONSTANCY``): the same in training
#: and serving because it is part of the model file.
COLOUR_CONSTANCY = network.COLOUR_CONSTANCY
#: Training augmentation (:mod:`worker.training.augment`): ``standard`` (geometry, mild
#: colour) or ``camera`` (also white balance, exposure curve, blur and dermoscope borders).
AUGMENTATIONS = augment.AUGMENTATIONS


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[Path, ...]
    out: Path
    input_size: int = 224
    backbone: str = "lite0"
    weights: Path | str | None = network.IMAGENET  # "imagenet": the backbone's file; None: scratch
    head_epochs: int = 2
    epochs: int = 20  # maximum fine-tuning epochs (early stopping may end sooner)
    batch_size: int = 32
    seed: int = 42
    resume: bool = False
    cache_dir: Path = Path("runs/cache")
    threads: int = 2
    patience: int = 6
    lr_head: float = 1e-3
    lr_fine: float = 3e-4
    unfreeze_from: str | None = None  # layer-name prefix; None: network.DEFAULT_UNFREEZE
    lr_schedule: str = "cosine"  # phase 2: "plateau" (x0.3 after 2 flat epochs) or "cosine"
    partial_labels: bool = True
    colour_constancy: str = "none"  # one of COLOUR_CONSTANCY
    augmentation: str = "standard"  # one of AUGMENTATIONS
    #: Sample weights: inverse class frequency to this power (0.5: square root; 0: none). On
    #: cached features, 0 and 0.25 transferred better to unseen sources (README, issue 20).
    weight_power: float = 0.5
    limit: int | None = None  # smoke runs: a random subset of this many images
    parent_version: str | None = None
    command: str = field(default_factory=lambda: shlex.join(sys.argv))
    verbose: int | None = None
    n_boot: int = 1000
    jit_compile: bool | str = "auto"  # XLA (Keras default); off saves compile time in tests


#: TrainConfig fields that do not change what is trained (paths, logging, resources, lineage).
NOT_RECIPE = frozenset({"data", "out", "cache_dir", "command", "verbose", "resume", "threads",
                        "n_boot", "jit_compile", "parent_version"})


def recipe(cfg: TrainConfig) -> dict:
    """What a model is trained with: the TrainConfig fields that change the model (JSON-ready).

    Stored in model.json (``recipe``) and in every LOSO fold, so that retraining repeats the
    champion's recipe and a LOSO run is applied only to a version of its own recipe."""
    out = {}
    for f in fields(cfg):
        if f.name not in NOT_RECIPE:
            value = getattr(cfg, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def same_recipe(stored: dict, current: dict) -> bool:
    """``stored`` (an older record, which may lack fields added since: they had their
    defaults then) describes the same recipe as ``current``."""
    plain = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    return all(stored.get(k, plain.get(k)) == v for k, v in current.items())


def default(name: str) -> Any:
    """The default of one ``TrainConfig`` field (for command-line options)."""
    for f in fields(TrainConfig):
        if f.name == name:
            if f.default is MISSING:
                raise KeyError(f"TrainConfig.{name} has no plain default")
            return f.default
    raise KeyError(f"TrainConfig has no field {name!r}")
