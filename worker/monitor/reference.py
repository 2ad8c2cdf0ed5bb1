"""The reference a model version is watched against: its outputs and simple image statistics
on validation images, stored as ``reference.json`` in the version folder.

What is stored, per validation image (rounded; ~40 kB for 1,300 images, no identifiers):
the calibrated melanoma probability, the combined keratinocyte probability (the ``soon``
rule), the top class probability, whether the quality gate found the image usable, and its
colour statistics (``worker.imaging.colour_statistics``). Keeping the scores rather than
only rates lets any threshold set be replayed: a site-calibrated version (same weights, new
thresholds; ``worker.calibration``) without a reference of its own (``calibrate`` writes one
from the site's traffic, ``worker.monitor.shift.traffic_reference``) reuses its parent's and
gets its own expected urgent rate from it.

Distributions are summarised as ten quantile bins of the reference values, the bins the
population stability index of ``worker.monitor.shift`` counts live values in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from schemas import MELANOMA, SOON_CLASSES, TriageThresholds
from worker.durable import write_atomic
from worker.store.versions import ModelStore, shipped_store_root

REFERENCE_FILE = "reference.json"
SCHEMA = 1
#: Quantile bins per distribution.
N_BINS = 10
#: Colour statistics kept per image (keys of ``colour_statistics``).
IMAGE_STATISTICS = ("brightness", "contrast", "saturation", "red_blue")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".dcm"})


@dataclass
class ImageRecord:
    """What one validation image contributes to a reference."""

    melanoma: float
    keratinocyte: float
    top: float
    usable: bool
    stats: dict[str, float] = field(default_factory=dict)


def quantile_edges(values: np.ndarray, n_bins: int = N_BINS) -> list[float]:
    """Inner bin edges at the reference's quantiles (duplicates dropped: ties at 0 or 1)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return []
    inner = np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1])
    return [float(x) for x in np.unique(inner)]


def bin_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts of ``values`` in the bins (-inf, e1], (e1, e2], ..., (ek, inf)."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64),
                          side="left")
    return np.bincount(idx, minlength=len(edges) + 1)


def distribution(values: np.ndarray) -> dict:
    """Bins, fractions, mean and median of one reference distribution."""
    v = np.asarray(values, dtype=np.float64)
    edges = quantile_edges(v)
    counts = bin_counts(v, edges)
    return {"edges": edges, "fractions": [float(c) / max(1, v.size) for c in counts],
            "mean": float(v.mean()) if v.size else None, "median": float(np.median(v)) if v.size else None}


def triage_rates(melanoma: np.ndarray, keratinocyte: np.ndarray, top: np.ndarray,
                 thresholds: TriageThresholds) -> dict[str, float]:
    """The share of each triage level among usable images: ``classify.triage.decide``,
    vectorised, with the same order of rules (urgent, soon, low confidence, routine)."""
    mel, ker, top = (np.asarray(a, dtype=np.float64) for a in (melanoma, keratinocyte, top))
    n = max(1, mel.size)
    urgent = mel >= thresholds.urgent_melanoma
    soon = ~urgent & (ker >= thresholds.soon_keratinocyte)
    unsure = ~urgent & ~soon & (top < thresholds.min_confidence)
    routine = ~urgent & ~soon & ~unsure
    return {"urgent": float(urgent.sum() / n), "soon": float(soon.sum() / n),
            "indeterminate": float(unsure.sum() / n), "routine": float(routine.sum() / n)}


@dataclass
class Reference:
    """A loaded ``reference.json``; ``version`` is the version it was computed for."""

    data: dict

    @property
    def version(self) -> str:
        return self.data["version"]

    def scores(self, usable_only: bool = True) -> dict[str, np.ndarray]:
        s = self.data["scores"]
        keep = np.asarray(s["usable"], bool) if usable_only else np.ones(len(s["usable"]), bool)
        return {k: np.asarray(s[k], dtype=np.float64)[keep] for k in ("melanoma", "keratinocyte", "top")}

    def expected_rates(self, thresholds: TriageThresholds) -> dict[str, float]:
        """Triage rates the validation images give under ``thresholds``, and the unusable share."""
        s = self.scores()
        rates = triage_rates(s["melanoma"], s["keratinocyte"], s["top"], thresholds)
        usable = np.asarray(self.data["scores"]["usable"], bool)
        rates["unusable"] = float(1 - usable.mean()) if usable.size else 0.0
        return rates

    def distribution(self, name: str) -> dict:
        return self.data["distributions"][name]


def build_reference(version: str, records: list[ImageRecord], thresholds: TriageThresholds,
                    source: str) -> dict:
    """The ``reference.json`` document for ``records`` (one per validation image)."""
    if not records:
        raise ValueError("a reference needs at least one image")
    usable = np.array([r.usable for r in records], bool)
    mel = np.array([r.melanoma for r in records])
    dists = {"melanoma_probability": distribution(mel[usable])}
    for name in IMAGE_STATISTICS:
        dists[name] = distribution(np.array([r.stats[name] for r in records]))
    ker = np.array([r.keratinocyte for r in records])
    top = np.array([r.top for r in records])
    doc = {
        "schema": SCHEMA,
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "n_images": len(records),
        "n_usable": int(usable.sum()),
        "thresholds": {k: getattr(thresholds, k) for k in ("urgent_melanoma", "soon_keratinocyte",
                                                           "min_confidence")},
        "rates": triage_rates(mel[usable], ker[usable], top[usable], thresholds)
        | {"unusable": float(1 - usable.mean())},
        "distributions": dists,
        "scores": {
            "melanoma": [round(float(x), 6) for x in mel],
            "keratinocyte": [round(float(x), 6) for x in ker],
            "top": [round(float(x), 6) for x in top],
            "usable": [bool(x) for x in usable],
        },
    }
    return doc


def save_reference(folder: Path, doc: Mapping) -> Path:
    """Write ``reference.json`` atomically into a version folder."""
    path = Path(folder) / REFERENCE_FILE
    write_atomic(path, (json.dumps(doc, indent=1) + "\n").encode())
    return path


def load_reference(store: ModelStore, version: str, shipped: Path | None = None) -> Reference | None:
    """The reference of ``version``: its own file, else (same weights and temperature) its
    parent's, else the shipped store's copy; None when there is none."""
    seen: set[str] = set()
    candidates = [store, ModelStore(shipped or shipped_store_root())]
    current = version
    while current and current not in seen:
        seen.add(current)
        for s in candidates:
            path = s.version_dir(current) / REFERENCE_FILE
            if path.is_file():
                return Reference(json.loads(path.read_text()))
        try:
            meta, parent = store.metadata(current), store.metadata(current).parent_version
            if not parent:
                return None
            pmeta = store.metadata(parent)
        except Exception:
            return None
        if pmeta.sha256 != meta.sha256 or pmeta.temperature != meta.temperature:
            return None  # other weights: the parent's outputs say nothing about this version
        current = parent
    return None


# --------------------------------------------------------------------------- computing one

def score_image(rgb: np.ndarray, probabilities: Callable[[np.ndarray], Mapping[str, float]]) -> ImageRecord:
    """One image through the serving path: quality gate, colour statistics, calibrated
    probabilities."""
    from worker.imaging.colour_statistics import colour_statistics
    from worker.imaging.quality import assess_quality

    usable, _ = assess_quality(rgb)
    probs = probabilities(rgb)
    stats = colour_statistics(rgb)
    return ImageRecord(melanoma=float(probs[MELANOMA]),
                       keratinocyte=float(sum(probs[c] for c in SOON_CLASSES)),
                       top=float(max(probs.values())), usable=bool(usable),
                       stats={k: stats[k] for k in IMAGE_STATISTICS})


def images_under(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, in a stable order."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def split_images(version_dir: Path, data_dirs: Iterable[Path], subset: str = "val") -> list[Path]:
    """Files under ``data_dirs`` whose content (sha256) the version's ``split.csv`` puts in
    ``subset``; one file per listed image."""
    import csv

    with open(Path(version_dir) / "split.csv", newline="") as f:
        wanted = {row["sha256"] for row in csv.DictReader(f) if row.get("subset") == subset}
    found: dict[str, Path] = {}
    for folder in data_dirs:
        for path in images_under(folder):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in wanted and digest not in found:
                found[digest] = path
    return [found[d] for d in sorted(found)]


def compute_reference(store: ModelStore, version: str, paths: list[Path], source: str,
                      progress: Callable[[int, int], None] | None = None) -> dict:
    """Score ``paths`` with ``version`` exactly as the workers would, and build its reference.

    Unreadable files are skipped (the count is recorded in ``source``)."""
    from worker.classify.inference import Classifier
    from worker.errors import InputRejected
    from worker.imaging import decode_file

    classifier = Classifier.from_store(store, version)
    records: list[ImageRecord] = []
    skipped = 0
    for i, path in enumerate(paths):
        try:
            rgb = decode_file(path).rgb
        except InputRejected:
            skipped += 1
            continue
        records.append(score_image(rgb, classifier.probabilities))
        if progress:
            progress(i + 1, len(paths))
    note = f"; {skipped} unreadable file(s) skipped" if skipped else ""
    return build_reference(version, records, classifier.metadata.thresholds, source + note)
