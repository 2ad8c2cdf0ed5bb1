"""A site's recalibration of the melanoma probability, as the workers apply it.

A site version (``melanoma-triage calibrate``) keeps the weights and temperature of its base
and adds ``recalibration.json``: a monotone map of the melanoma probability fitted on the
site's confirmed cases (Platt scaling on the melanoma logit, or isotonic regression on it
when the site has enough cases; ``worker.calibration.recalibrate`` fits it). The other eight
probabilities are rescaled by ``(1 - p'_mel) / (1 - p_mel)``: they keep their ratios, so the
class call among them and the "soon" sum's share of the non-melanoma mass are unchanged, and
the nine still sum to 1. The version's thresholds are on the recalibrated probabilities.

A version without the file serves ``softmax(logits / T)`` unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from schemas import MELANOMA_INDEX

RECALIBRATION_FILE = "recalibration.json"
METHODS = ("platt", "isotonic")
#: The melanoma probability is clipped to [EPS, 1 - EPS] before taking its logit.
EPS = 1e-6


@dataclass(frozen=True)
class Recalibration:
    """``method`` "platt": p' = sigmoid(slope * logit(p) + intercept); "isotonic": p' by
    linear interpolation of (``knots_logit``, ``knots_p``), flat beyond the ends."""

    method: str
    slope: float = 1.0
    intercept: float = 0.0
    knots_logit: list[float] = field(default_factory=list)
    knots_p: list[float] = field(default_factory=list)
    #: What the report says: the site's confirmed cases it was fitted on, and when.
    n_cases: int = 0
    n_melanoma: int = 0
    fitted_on: str = ""  # ISO date

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"recalibration method {self.method!r} not in {METHODS}")
        if self.method == "platt" and not self.slope > 0:
            raise ValueError(f"Platt slope must be positive (a monotone map), got {self.slope}")
        if self.method == "isotonic":
            x, y = np.asarray(self.knots_logit), np.asarray(self.knots_p)
            if x.size < 2 or x.size != y.size or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
                raise ValueError("isotonic recalibration needs >= 2 increasing knots")

    def melanoma(self, p_mel: np.ndarray) -> np.ndarray:
        """The recalibrated melanoma probability of raw ``p_mel`` (any shape)."""
        p = np.clip(np.asarray(p_mel, dtype=np.float64), EPS, 1 - EPS)
        z = np.log(p) - np.log1p(-p)
        if self.method == "platt":
            return 1.0 / (1.0 + np.exp(-(self.slope * z + self.intercept)))
        return np.interp(z, self.knots_logit, self.knots_p)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Nine probabilities (one row or ``(n, 9)``) with the melanoma axis recalibrated and
        the other eight renormalised to the rest."""
        p = np.asarray(probs, dtype=np.float64)
        mel = p[..., MELANOMA_INDEX]
        new = self.melanoma(mel)
        others = p.sum(axis=-1) - mel
        n_other = p.shape[-1] - 1
        # (Melanoma holding all the mass, the rest is shared equally: never with softmax in float64.)
        safe = np.where(others > 0, others, 1.0)
        out = np.where((others > 0)[..., None], p * ((1.0 - new) / safe)[..., None],
                       ((1.0 - new) / n_other)[..., None] * np.ones_like(p))
        out[..., MELANOMA_INDEX] = new
        return out

    def note(self, version: str) -> str:
        """The report's line: which calibration the printed percentages use."""
        return (f"{version}, calibrated on {self.n_cases} confirmed cases of this site "
                f"({self.fitted_on})")

    def to_json(self) -> str:
        return json.dumps({"schema": 1, **asdict(self)}, indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> Recalibration:
        return cls(**{k: v for k, v in data.items() if k != "schema"})


def load_recalibration(version_dir: Path) -> Recalibration | None:
    """The version's recalibration, or None when it serves the model's own probabilities."""
    path = Path(version_dir) / RECALIBRATION_FILE
    if not path.is_file():
        return None
    return Recalibration.from_dict(json.loads(path.read_text()))
