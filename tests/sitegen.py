"""A simulated site in the database, for the shift monitor and site calibration tests.

``add_case`` writes what the pipeline would have written for one image (an archived PNG,
``images``, ``jobs`` done, a reported ``predictions`` row triaged with the version's own
thresholds) and, optionally, the confirmed diagnosis that came back (``ground_truth``).
Everything is generated: no files outside ``tmp_path``, no ../shared.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from schemas import CLASS_NAMES, MELANOMA, JobState, TriageThresholds
from worker.classify.triage import decide, named_class
from worker.db.models import GroundTruth, Image, Job, Prediction


def probabilities(melanoma: float, keratinocyte: float = 0.0) -> dict[str, float]:
    """Nine probabilities summing to 1: melanoma, basal cell carcinoma (a ``soon`` class),
    the rest on nevus."""
    probs = dict.fromkeys(CLASS_NAMES, 0.0)
    probs[MELANOMA] = float(melanoma)
    probs["basal_cell_carcinoma"] = float(keratinocyte)
    probs["nevus"] = max(0.0, 1.0 - melanoma - keratinocyte)
    return probs


def site_png(seed: int, gains: tuple[float, float, float] = (1.0, 1.0, 1.0), size: int = 48) -> bytes:
    """A small dermoscopy-like PNG (``tests.imagegen.lesion_rgb``), colour-cast by ``gains``."""
    from tests.imagegen import lesion_rgb

    rgb = np.clip(lesion_rgb((size, size), seed=seed) * np.array(gains), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def add_case(sessions, archive_dir: Path, version: str, thresholds: TriageThresholds, melanoma: float,
             keratinocyte: float = 0.0, usable: bool = True, diagnosis: str | None = None,
             source: str = "histopathology", data: bytes | None = None, seed: int = 0,
             shadow: bool = False) -> str:
    """One finished job (and its truth, when ``diagnosis``); returns the image id."""
    data = data if data is not None else site_png(seed)
    sha = hashlib.sha256(data).hexdigest()
    path = Path(archive_dir) / f"{sha}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    probs = probabilities(melanoma, keratinocyte)
    with sessions.begin() as s:
        image = s.query(Image).filter_by(sha256=sha).one_or_none()
        if image is None:
            image = Image(sha256=sha, archive_path=str(path), size_bytes=len(data), source_door="cli",
                          source_format="png", width=48, height=48)
            s.add(image)
            s.flush()
            job = Job(image_id=image.id, state=JobState.DONE.value, attempts=1)
            s.add(job)
            s.flush()
        else:
            job = image.job
        s.add(Prediction(job_id=job.id, model_version=version, shadow=shadow,
                         predicted_class=named_class(probs, thresholds),
                         triage_level=decide(probs, thresholds, usable).value, image_usable=usable,
                         **{f"p_{n}": p for n, p in probs.items()}))
        if diagnosis is not None:
            s.add(GroundTruth(image_id=image.id, diagnosis=diagnosis, source=source, recorded_by="test"))
        return image.id


def add_site(sessions, archive_dir: Path, version: str, thresholds: TriageThresholds, n_melanoma: int,
             n_benign: int, seed: int = 0, mel_scores: tuple[float, float] = (-1.0, 1.0),
             benign_scores: tuple[float, float] = (-4.0, 1.0), labelled: bool = True) -> None:
    """A site whose melanoma probabilities are logistic(normal(mean, sd)) per class: melanomas
    around ``mel_scores``, benign lesions (nevi) around ``benign_scores``."""
    rng = np.random.default_rng(seed)

    def draw(mean_sd: tuple[float, float], n: int) -> np.ndarray:
        return 1 / (1 + np.exp(-rng.normal(mean_sd[0], mean_sd[1], n)))

    cases = [(p, MELANOMA) for p in draw(mel_scores, n_melanoma)]
    cases += [(p, "nevus") for p in draw(benign_scores, n_benign)]
    for i, (p, dx) in enumerate(cases):
        add_case(sessions, archive_dir, version, thresholds, float(p), diagnosis=dx if labelled else None,
                 seed=seed * 100_000 + i)


def add_calibrated_site(sessions, archive_dir: Path, version: str, thresholds: TriageThresholds, n: int,
                        seed: int = 0, beta: tuple[float, float] = (0.6, 1.8)) -> int:
    """``n`` labelled cases whose melanoma probability is honest: p ~ Beta(*beta), and the
    diagnosis is melanoma with probability p (nevus otherwise). Returns the melanoma count."""
    rng = np.random.default_rng(seed)
    p = rng.beta(*beta, n)
    is_mel = rng.random(n) < p
    for i in range(n):
        add_case(sessions, archive_dir, version, thresholds, float(p[i]),
                 diagnosis=MELANOMA if is_mel[i] else "nevus", seed=seed * 100_000 + i)
    return int(is_mel.sum())


def add_miscalibrated_site(sessions, archive_dir: Path, version: str, thresholds: TriageThresholds, n: int,
                           seed: int = 0, beta: tuple[float, float] = (0.6, 1.8), slope: float = 1.0,
                           shift: float = 2.0) -> int:
    """``add_calibrated_site``'s cases as a base model miscalibrated at this site reports them:
    the honest melanoma probability p becomes sigmoid(slope * logit(p) + shift) (by default
    far too high, as another camera can make it: top-label ECE about 0.13-0.16). The ranking, hence every threshold's sensitivity and
    specificity, is the honest one's. Returns the melanoma count."""
    rng = np.random.default_rng(seed)
    p = np.clip(rng.beta(*beta, n), 1e-4, 1 - 1e-4)
    is_mel = rng.random(n) < p
    shown = 1 / (1 + np.exp(-(slope * np.log(p / (1 - p)) + shift)))
    for i in range(n):
        add_case(sessions, archive_dir, version, thresholds, float(shown[i]),
                 diagnosis=MELANOMA if is_mel[i] else "nevus", seed=seed * 100_000 + i)
    return int(is_mel.sum())
