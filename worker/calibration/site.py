"""A site version from the site's confirmed cases: recalibrated probabilities, thresholds
chosen with the trade-off in view, the same promotion gate, a new model version.

1. **Cases**: every image with a confirmed diagnosis (``worker.retrain.truth``, the same
   precedence rule as ``metrics``) and the *weights' own* probabilities: a prediction by a
   version with the same weights and temperature and no site recalibration
   (:func:`raw_versions`), or the archived image rescored by one. Unusable images (quality
   gate) are left out: they are indeterminate whatever the thresholds.
2. **Evidence**: at least ``min_melanoma`` (30) melanomas and ``min_benign`` (100) other
   lesions, or nothing is proposed.
3. **Recalibration** (``worker.calibration.recalibrate``): Platt scaling of the melanoma
   logit (isotonic where the cases suffice and it does better), judged out of bag, and
   kept only if it beats the base's own probabilities out of bag; the workers apply it (``worker.classify.recalibration``), so the printed percentages mean
   what they say at the site. ``recalibrate=False`` gives a threshold-only version.
4. **Operating points** (``worker.calibration.thresholds``), on the recalibrated
   probabilities: for sensitivity 0.90, 0.93, 0.95 and 0.97 (and the one asked for) the
   threshold, the specificity and the share of lesions flagged urgent, out of bag with
   intervals (and the share of the site's recent traffic, confirmed or not, flagged). ``required_sensitivity`` picks one; who chose it and why goes on the model
   card. The soon threshold the same way (target 0.90, as in training) when there are
   ``min_keratinocyte`` (30) BCC/SCC/actinic keratoses, else the base's. ``min_confidence``
   and the class call stay the base's.
5. **Gate**: the promotion gate of retraining (``worker.retrain.gates``, same policy
   settings) on the site's cases, the site version judged on its *own* probabilities out
   of bag (each case recalibrated by maps fitted without it): evidence, AUC
   non-inferiority against the base's probabilities, calibration error, and melanoma
   sensitivity (out of bag: the in-sample sensitivity at a threshold chosen on the same
   cases would pass by construction) against the sensitivity the site chose, not the
   product default (``retrain_min_sensitivity``), which is printed beside it.
6. **Version**: ``worker.store.derived``: a new folder with the base's model file and
   artefacts, ``model.json`` with the new thresholds, ``recalibration.json``,
   ``parent_version`` = base, the provenance in ``notes``, ``training_command`` and
   ``metrics["site"]``, ``site_calibration.json`` (the whole proposal) and a model card;
   added to the store, not made current: ``models promote`` and ``models rollback`` do that.
   Its shift-monitor reference is the site's own recent traffic (``calibrate`` passes it
   in), else the parent's, both mapped into the site version's probabilities
   (``worker.calibration.site_reference``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas import CLASS_NAMES, MELANOMA, MELANOMA_INDEX, SOON_CLASSES, ModelMetadata, TriageThresholds
from worker.calibration.recalibrate import RecalibrationFit, recalibrate
from worker.calibration.thresholds import (TABLE_SENSITIVITIES, OperatingPoint, interval_at, operating_table,
                                           wilson)
from worker.classify.recalibration import RECALIBRATION_FILE, Recalibration, load_recalibration
from worker.db.models import Image, Job, Prediction
from worker.errors import TriageError
from worker.monitor.shift import live_window
from worker.store.versions import METADATA_FILE, ModelStore

PROPOSAL_FILE = "site_calibration.json"
#: ``kind`` of the derived version: in its name (``<time>-<sha8>-site-<tag>``) and the key of
#: the provenance in ``model.json`` ``metrics``.
SITE_KIND = "site"
SOON_SENSITIVITY = 0.90
#: The site's latest reported images the share of all lesions flagged is estimated on, and
#: the fewest that are worth it.
TRAFFIC_IMAGES = 1000
MIN_TRAFFIC = 50


class CalibrationRefused(TriageError):
    """Not enough evidence, or the gate said no: nothing is proposed."""


@dataclass(frozen=True)
class SitePolicy:
    min_melanoma: int = 30
    min_benign: int = 100
    min_keratinocyte: int = 30
    required_sensitivity: float = 0.95
    soon_sensitivity: float = SOON_SENSITIVITY
    n_boot: int = 1000
    confidence: float = 0.95
    seed: int = 0
    #: False: a threshold-only version (the base's probabilities), as before issue 23.
    recalibrate: bool = True
    table_sensitivities: tuple[float, ...] = TABLE_SENSITIVITIES


@dataclass
class SiteCases:
    """The site's usable confirmed cases with the weights' own probabilities."""

    image_sha256: list[str]
    diagnoses: list[str]
    probs: np.ndarray  # (n, 9), softmax(logits / T), CLASS_NAMES order
    counts: dict = field(default_factory=dict)
    #: Melanoma probabilities (the weights' own) of the site's latest usable reported images,
    #: confirmed or not: what the share of *all* lesions flagged is estimated on.
    traffic: np.ndarray | None = None

    @property
    def melanoma(self) -> np.ndarray:
        return np.array([d == MELANOMA for d in self.diagnoses])

    def digest(self) -> str:
        """Names the case set (content hashes and diagnoses; no patient data)."""
        h = hashlib.sha256()
        for sha, dx in sorted(zip(self.image_sha256, self.diagnoses)):
            h.update(f"{sha}:{dx}\n".encode())
        return h.hexdigest()


def _same_weights(store: ModelStore, base: str) -> list[tuple[str, Recalibration | None]]:
    meta = store.metadata(base)
    out = []
    for v in store.list_versions():
        try:
            m = store.metadata(v)
            if m.sha256 == meta.sha256 and m.temperature == meta.temperature:
                out.append((v, load_recalibration(store.version_dir(v))))
        except Exception:
            continue
    return out


def equivalent_versions(store: ModelStore, base: str) -> list[str]:
    """Versions whose probabilities are the base's: same model file, temperature and site
    recalibration."""
    own = load_recalibration(store.version_dir(base))
    return [v for v, r in _same_weights(store, base) if r == own]


def raw_versions(store: ModelStore, base: str) -> list[str]:
    """Versions that print the weights' own probabilities: same model file and temperature,
    no site recalibration. A site calibration is fitted on those."""
    return [v for v, r in _same_weights(store, base) if r is None]


def gather_cases(session: Session, store: ModelStore, base: str,
                 rescore: Callable[[list[str]], dict[str, np.ndarray]] | None = None) -> SiteCases:
    """Confirmed cases with the weights' own probabilities (:func:`raw_versions`);
    ``rescore`` (archive paths -> probability rows) scores the confirmed images no such
    version has predicted yet (those a site version reported, for one)."""
    from worker.retrain.truth import effective_truth

    truth = effective_truth(session)
    versions = raw_versions(store, base)
    latest: dict[str, tuple[np.ndarray, bool]] = {}
    if truth:
        rows = session.execute(
            select(Prediction, Job.image_id).join(Job, Job.id == Prediction.job_id)
            .where(Job.image_id.in_(list(truth)), Prediction.model_version.in_(versions))
            .order_by(Prediction.created_at))
        for pred, image_id in rows:
            probs = pred.probabilities()
            latest[image_id] = (np.array([probs[c] for c in CLASS_NAMES]), bool(pred.image_usable))
    images = {i: (sha, path) for i, sha, path in session.execute(
        select(Image.id, Image.sha256, Image.archive_path).where(Image.id.in_(list(truth))))} if truth else {}
    missing = [i for i in truth if i not in latest and images.get(i, (None, None))[1]]
    rescored = 0
    if missing and rescore is not None:
        scored = rescore([images[i][1] for i in missing])
        for i in missing:
            if images[i][1] in scored:
                latest[i] = (scored[images[i][1]], True)
                rescored += 1
    # In content order, so that the same cases give the same bootstrap draws (image ids are random).
    keep = sorted((i for i, (_, usable) in latest.items() if usable), key=lambda i: (images[i][0] or "", i))
    counts = {"confirmed": len(truth), "scored": len(latest), "rescored": rescored,
              "unscored": len(truth) - len(latest),
              "unusable": sum(not usable for _, usable in latest.values()), "used": len(keep)}
    traffic = np.array([r.melanoma for r in live_window(session, versions, TRAFFIC_IMAGES) if r.usable])
    counts["traffic"] = int(traffic.size)
    return SiteCases(image_sha256=[images[i][0] or "" for i in keep], diagnoses=[truth[i][0] for i in keep],
                     probs=np.array([latest[i][0] for i in keep]).reshape(-1, len(CLASS_NAMES)), counts=counts,
                     traffic=traffic if traffic.size >= MIN_TRAFFIC else None)


@dataclass
class Proposal:
    base_version: str
    thresholds: TriageThresholds
    urgent: OperatingPoint
    soon: OperatingPoint | None
    base_urgent: dict  # the base threshold on these cases: sensitivity/specificity intervals
    base_soon: dict
    gate: dict
    counts: dict
    cases_sha256: str
    created_at: str
    #: The operating points shown before one is chosen (sensitivity 0.90 ... 0.97).
    table: list[OperatingPoint] = field(default_factory=list)
    #: ``Recalibration`` fields (None: threshold-only) and how it did out of bag.
    recalibration: dict | None = None
    recalibration_fit: dict | None = None
    #: Who chose the operating point and why (``--by``, ``--reason``).
    chosen_by: str | None = None
    reason: str | None = None

    @property
    def passed(self) -> bool:
        return bool(self.gate.get("promote"))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["thresholds"] = self.thresholds.model_dump()
        return d


def _gate(cases: SiteCases, base: ModelMetadata, thresholds: TriageThresholds, urgent: OperatingPoint,
          site_probs: np.ndarray, recalibrated: bool, gate_policy) -> dict:
    """The retraining gate: the base on its own probabilities, the site version on
    ``site_probs`` (out of bag) and its out-of-bag sensitivity."""
    from worker.retrain import gates

    y = cases.melanoma.astype(int)
    labels = np.array([CLASS_NAMES.index(d) for d in cases.diagnoses])
    champion = gates.score(base.version, cases.probs, y, labels, base.thresholds.urgent_melanoma, MELANOMA_INDEX)
    challenger = gates.score(f"{base.version} calibrated for this site", site_probs, y, labels,
                             thresholds.urgent_melanoma, MELANOMA_INDEX)
    # The threshold was chosen on these cases: judge its sensitivity out of bag.
    challenger = replace(challenger, sensitivity=urgent.expected_sensitivity)
    diff = gates.paired_auc_difference(y, cases.probs[:, MELANOMA_INDEX], site_probs[:, MELANOMA_INDEX],
                                       gate_policy.n_boot, gate_policy.confidence, gate_policy.seed)
    decision = gates.decide(champion, challenger, diff, gate_policy)
    return {**decision.as_dict(), "policy": gates.policy_dict(gate_policy),
            "champion": asdict(champion), "challenger": asdict(challenger),
            "sensitivity_note": "challenger sensitivity is the out-of-bag estimate",
            "probabilities_note": ("challenger probabilities: the site recalibration, out of bag" if recalibrated
                                   else "challenger probabilities: the base's (threshold-only version)")}


def _operating_points(y: np.ndarray, scores: np.ndarray, policy: SitePolicy,
                      traffic: np.ndarray | None) -> tuple[list, OperatingPoint]:
    """The table, and the row of the required sensitivity (added when not in the table);
    with ``traffic`` (the site version's melanoma probabilities of recent images), the share
    of it each threshold flags."""
    wanted = tuple(sorted(set(policy.table_sensitivities) | {policy.required_sensitivity}))
    rows = operating_table(y, scores, wanted, policy.n_boot, policy.confidence, policy.seed)
    if traffic is not None:
        rows = [replace(r, traffic_flagged=wilson(float((traffic >= r.threshold).mean()), traffic.size,
                                                  policy.confidence)) for r in rows]
    chosen = next(r for r in rows if r.required_sensitivity == policy.required_sensitivity)
    return rows, chosen


def propose(cases: SiteCases, base: ModelMetadata, policy: SitePolicy = SitePolicy(), gate_policy=None,
            now: datetime | None = None, chosen_by: str | None = None, reason: str | None = None) -> Proposal:
    """Recalibration, operating points and thresholds for this site, or CalibrationRefused
    with the reason."""
    from worker.retrain import gates

    y = cases.melanoma
    n_mel, n_other = int(y.sum()), int((~y).sum())
    if n_mel < policy.min_melanoma or n_other < policy.min_benign:
        raise CalibrationRefused(
            f"not enough confirmed cases: {n_mel} melanomas and {n_other} other lesions usable, "
            f"{policy.min_melanoma} and {policy.min_benign} needed ({cases.counts})")
    now = now or datetime.now(timezone.utc)
    fit: RecalibrationFit | None = None
    probs, oob_probs = cases.probs, cases.probs
    if policy.recalibrate:
        fit = recalibrate(cases.probs, y, policy.n_boot, policy.seed, fitted_on=f"{now:%Y-%m-%d}")
        if fit.recalibration is not None:
            probs, oob_probs = fit.recalibration.apply(cases.probs), fit.oob_probs
    recal = fit.recalibration if fit else None
    traffic = None if cases.traffic is None else recal.melanoma(cases.traffic) if recal else cases.traffic
    table, urgent = _operating_points(y, probs[:, MELANOMA_INDEX], policy, traffic)
    soon_idx = [CLASS_NAMES.index(c) for c in SOON_CLASSES]
    y_soon = np.isin(cases.diagnoses, list(SOON_CLASSES))
    soon = None
    if y_soon.sum() >= policy.min_keratinocyte and (~y_soon).sum() >= policy.min_benign:
        soon = operating_table(y_soon, probs[:, soon_idx].sum(axis=1), (policy.soon_sensitivity,), policy.n_boot,
                               policy.confidence, policy.seed)[0]
    bt = base.thresholds
    # The base threshold on the base's own probabilities (what the site has today).
    raw_soon = cases.probs[:, soon_idx].sum(axis=1)
    soon_sens, soon_spec = interval_at(y_soon, raw_soon, bt.soon_keratinocyte, 2 * policy.n_boot, policy.confidence,
                                       policy.seed) if y_soon.any() and (~y_soon).any() else (None, None)
    thresholds = bt.model_copy(update={
        "urgent_melanoma": urgent.threshold, "urgent_sensitivity": urgent.expected_sensitivity,
        "urgent_specificity": urgent.expected_specificity,
        **({"soon_keratinocyte": soon.threshold, "soon_sensitivity": soon.expected_sensitivity,
            "soon_specificity": soon.expected_specificity} if soon else {})})
    sens, spec = interval_at(y, cases.probs[:, MELANOMA_INDEX], bt.urgent_melanoma, 2 * policy.n_boot,
                             policy.confidence, policy.seed)
    # The sensitivity the site chose is the floor its version is held to (a governance
    # decision, recorded with who made it); the product default is kept beside it.
    gate_policy = gate_policy or gates.GatePolicy()
    default_sensitivity = gate_policy.min_sensitivity
    gate_policy = replace(gate_policy, min_positives=policy.min_melanoma, min_negatives=policy.min_benign,
                          min_sensitivity=policy.required_sensitivity)
    gate = _gate(cases, base, thresholds, urgent, oob_probs, recal is not None, gate_policy)
    gate["default_min_sensitivity"] = default_sensitivity
    return Proposal(base_version=base.version, thresholds=thresholds, urgent=urgent, soon=soon,
                    base_urgent={"threshold": bt.urgent_melanoma, "sensitivity": asdict(sens),
                                 "specificity": asdict(spec)},
                    base_soon={"threshold": bt.soon_keratinocyte,
                               "sensitivity": asdict(soon_sens) if soon_sens else None,
                               "specificity": asdict(soon_spec) if soon_spec else None},
                    gate=gate,
                    counts=cases.counts | {"melanoma": n_mel, "other": n_other, "keratinocyte": int(y_soon.sum()),
                                           "keratinocyte_needed": policy.min_keratinocyte},
                    cases_sha256=cases.digest(), created_at=now.isoformat(timespec="seconds"), table=table,
                    recalibration=asdict(recal) if recal else None,
                    recalibration_fit=fit.summary() if fit else None, chosen_by=chosen_by, reason=reason)


def write_version(store: ModelStore, proposal: Proposal, command: str, staging_root: Path,
                  reference: dict | None = None) -> str:
    """The proposal as a new version in the store (``worker.store.derived``: the base's weights
    and artefacts, the new thresholds and recalibration; not current); returns its name.
    ``reference``: the shift monitor's reference from the site's traffic in the weights' own
    probabilities (``shift.traffic_reference`` over :func:`raw_versions`); without one, the
    parent's. Either is mapped into the site version's probabilities."""
    from worker.calibration.proposal_text import model_card, version_notes
    from worker.calibration.site_reference import site_reference
    from worker.monitor.reference import REFERENCE_FILE
    from worker.store.derived import derive_version

    base_dir = store.version_dir(proposal.base_version)
    base = store.metadata(proposal.base_version)
    card = base_dir / "model_card.md"
    base_card = card.read_text() if card.is_file() else None
    provenance = proposal.as_dict()
    recal = Recalibration(**proposal.recalibration) if proposal.recalibration else None
    reference = site_reference(store, proposal.base_version, reference, recal, proposal.thresholds)

    def finish(folder: Path) -> None:
        version = json.loads((folder / METADATA_FILE).read_text())["version"]
        (folder / "model_card.md").write_text(model_card(version, base_card, proposal))
        if recal is None:  # threshold-only: never the base's own site recalibration
            (folder / RECALIBRATION_FILE).unlink(missing_ok=True)
        if reference is not None:
            (folder / REFERENCE_FILE).write_text(json.dumps(reference | {"version": version}, indent=1))

    extra = {PROPOSAL_FILE: json.dumps(provenance, indent=1)}
    if recal is not None:
        extra[RECALIBRATION_FILE] = recal.to_json()
    return derive_version(
        store, base.version, proposal.thresholds, kind=SITE_KIND, provenance=provenance, command=command,
        notes=version_notes(base, proposal), extra_files=extra, finish=finish,
        staging_root=staging_root, now=datetime.fromisoformat(proposal.created_at))


def archive_rescorer(store: ModelStore, base: str, bind=None) -> Callable[[list[str]], dict[str, np.ndarray]]:
    """Scores archived images with the base's weights and temperature, without any site
    recalibration (the probabilities a site calibration is fitted on); ``bind``: the database
    that holds ``db:`` locations (``TRIAGE_STORAGE=database``)."""

    def rescore(paths: list[str]) -> dict[str, np.ndarray]:
        from worker.classify.inference import Classifier
        from worker.imaging import assess_quality, decode_bytes
        from worker.intake import archive

        classifier = Classifier.from_store(store, base, site_recalibration=False)
        out = {}
        for path in paths:
            try:
                rgb = decode_bytes(archive.load(path, bind)).rgb
            except Exception:  # gone or unreadable: counted as unscored
                continue
            if assess_quality(rgb)[0]:
                probs = classifier.probabilities(rgb)
                out[path] = np.array([probs[c] for c in CLASS_NAMES])
        return out

    return rescore
